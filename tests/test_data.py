from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, SHARED, coloured_images, hub_dataset, image_folder_with_a_truncated_png
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fm2edge.config import DataConfig
from fm2edge.data import balanced_indices, holdout_split, load_data
from fm2edge.data.images import decode, to_rgb
from fm2edge.errors import Fm2EdgeError


def test_digits_source_is_offline_and_held_out():
    train, val, test = load_data(DataConfig(source="digits"))
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 8, 8)
    assert len(train) + len(val) + len(test) == 1797
    assert (len(val), len(test)) == (135, 450)  # 10% of the 1,347 non-test images; 25% of all
    assert train.class_names == [str(i) for i in range(10)]
    # stratified hold-outs: every class in every split
    assert set(train.labels.tolist()) == set(val.labels.tolist()) == set(test.labels.tolist()) == set(range(10))


def test_parquet_folder_in_hub_schema(parquet_dir):
    train, val, test = load_data(DataConfig(source=str(parquet_dir)))
    assert (len(train), len(val), len(test)) == (57, 7, 32)  # validation: 10% of 64, rounded up
    assert train.class_names == CLASSES
    train, _, _ = load_data(DataConfig(source=str(parquet_dir), val_fraction=0))
    assert train.images.shape == (64, 3, 16, 16)
    # pixel values survive the round trip (PNG is lossless)
    imgs, labels = coloured_images(64, 16, seed=0)
    assert np.array_equal(train.images[5].permute(1, 2, 0).numpy(), imgs[5])
    assert train.labels.tolist() == labels


def test_single_parquet_file_is_the_train_split(parquet_dir):
    train, val, test = load_data(DataConfig(source=str(parquet_dir / "train.parquet"), test_fraction=0.25))
    assert (len(train), len(val), len(test)) == (43, 5, 16)


def test_arrow_folder_with_named_columns(arrow_dir):
    train, val, test = load_data(DataConfig(source=str(arrow_dir)))  # columns detected from the Image/ClassLabel types
    assert (len(train), len(val), len(test)) == (36, 4, 20)
    train2, _, _ = load_data(DataConfig(source=str(arrow_dir), image_column="picture", label_column="category"))
    assert torch.equal(train.images, train2.images)


def test_image_folder_mixed_modes_and_sizes(image_folder):
    train, val, test = load_data(DataConfig(source=str(image_folder), image_size=24))
    assert train.class_names == sorted(CLASSES)
    assert train.images.shape[1:] == (3, 24, 24)
    assert len(train) + len(val) + len(test) == 24


def test_images_of_several_sizes_are_stored_at_their_largest_shorter_side(image_folder, tmp_path):
    train, _, _ = load_data(DataConfig(source=str(image_folder)))
    assert train.image_size == (24, 24)  # 20-32 px wide, 20-24 px high: not enlarged

    def folder(name: str, sizes: list[tuple[int, int]]) -> Path:
        for c in ("a", "b"):
            (tmp_path / name / c).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                Image.new("RGB", (w, h), (60 * i, 90 if c == "a" else 0, 0)).save(tmp_path / name / c / f"{i}.jpg")
        return tmp_path / name

    def stored(name: str, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        cfg = DataConfig(source=str(folder(name, sizes)), val_fraction=0, test_fraction=0.5)
        return load_data(cfg)[0].image_size

    assert stored("thumbnails", [(100, 100), (128, 96), (120, 128)]) == (120, 120)
    assert stored("one-wide-size", [(300, 200)] * 2) == (200, 200)  # wider than 256 px: a square, not enlarged
    assert stored("photos", [(640, 480), (120, 100), (4000, 3000)]) == (256, 256)  # room for crops of 224 px


def test_photos_of_one_large_size_are_stored_at_256(tmp_path):
    """Photos from one camera share a size; stored as decoded, a few hundred would fill a laptop's memory."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (600, 400), (40 * i, 200 if c == "a" else 0, 90)).save(tmp_path / c / f"{i}.png")
    train, _, _ = load_data(DataConfig(source=str(tmp_path), val_fraction=0, test_fraction=0.34))
    assert train.image_size == (256, 256)
    assert train.images[0, :, 128, 128].tolist() in ([0, 200, 90], [0, 0, 90], [40, 200, 90], [40, 0, 90],
                                                      [80, 200, 90], [80, 0, 90])  # the photo's pixels, resized
    small = tmp_path / "small"
    for c in ("a", "b"):
        (small / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 32), (i, 0, 0)).save(small / c / f"{i}.png")
    train, _, _ = load_data(DataConfig(source=str(small), val_fraction=0, test_fraction=0.34))
    assert train.image_size == (32, 48)  # one small size: kept as it is


def test_balanced_subsets(parquet_dir):
    # max_train and per_class count every labelled image, the held-out validation share included
    train, val, test = load_data(DataConfig(source=str(parquet_dir), max_train=20, max_test=8))
    assert torch.bincount(train.labels).tolist() == [4, 4, 4, 4]
    assert torch.bincount(val.labels).tolist() == [1, 1, 1, 1]
    assert torch.bincount(test.labels).tolist() == [2, 2, 2, 2]
    train, val, _ = load_data(DataConfig(source=str(parquet_dir), per_class=3))
    assert torch.bincount(train.labels).tolist() == [2, 2, 2, 2]
    assert torch.bincount(val.labels).tolist() == [1, 1, 1, 1]


def test_balanced_indices_unbalanced_source():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    idx = balanced_indices(labels, n=9)
    assert np.bincount(labels[idx]).tolist() == [4, 2, 3]
    assert np.all(np.diff(idx) > 0)  # source order kept
    assert balanced_indices(labels).tolist() == list(range(17))
    assert np.array_equal(balanced_indices(np.tile(np.arange(3), 5), n=6), np.arange(6))  # interleaved = range(n)


def test_holdout_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), 25)
    a_tr, a_te = holdout_split(labels, 0.2, seed=0)
    b_tr, b_te = holdout_split(labels, 0.2, seed=0)
    assert np.array_equal(a_te, b_te) and len(set(a_tr) & set(a_te)) == 0
    assert np.bincount(labels[a_te]).tolist() == [5, 5, 5, 5]


def test_decode_cache_is_reused(parquet_dir, monkeypatch):
    load_data(DataConfig(source=str(parquet_dir)))
    import fm2edge.data.dataset as ds

    def fail(*a, **k):
        raise AssertionError("decoded again although the cache holds these images")

    monkeypatch.setattr(ds, "_decode_all", fail)
    train, val, _ = load_data(DataConfig(source=str(parquet_dir)))
    assert len(train) + len(val) == 64


def test_a_copied_or_touched_local_dataset_keeps_its_key_and_a_changed_one_gets_another(parquet_dir, tmp_path,
                                                                                          monkeypatch):
    """Caches keyed on the data (decoded images, features, teacher outputs) follow the files' bytes: a copy of the
    folder elsewhere, with new modification times, is the same data and decodes nothing; a changed file is other
    data."""
    import os
    import shutil

    import fm2edge.data.dataset as ds

    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    copy = tmp_path / "copy"
    shutil.copytree(parquet_dir, copy)
    for f in copy.iterdir():
        os.utime(f, (1e9, 1e9))
    real = ds._decode_all
    monkeypatch.setattr(ds, "_decode_all", lambda *a, **k: pytest.fail("decoded again although the data is the same"))
    moved_train, _, moved_test = load_data(DataConfig(source=str(copy)))
    assert (moved_train.fingerprint, moved_test.fingerprint) == (train.fingerprint, test.fingerprint)
    monkeypatch.setattr(ds, "_decode_all", real)
    from conftest import hub_dataset

    hub_dataset(64, seed=5).to_parquet(str(copy / "train.parquet"))
    changed, _, _ = load_data(DataConfig(source=str(copy)))
    assert changed.fingerprint != train.fingerprint and not torch.equal(changed.images, train.images)


def test_rgba_transparency_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    out = np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert (out == 255).all()


def test_sixteen_bit_grey_is_scaled():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(to_rgb(img))
    assert out.shape == (4, 4, 3) and (out == 255).all()


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(["RGB", "L", "RGBA", "P", "LA", "1", "CMYK", "I", "F"]),
       w=st.integers(1, 40), h=st.integers(1, 40), size=st.one_of(st.none(), st.integers(1, 32)))
def test_decode_any_mode_and_size(mode, w, h, size):
    rng = np.random.default_rng(w * 100 + h)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    out = decode(img, None if size is None else (size, size))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == ((h, w) if size is None else (size, size))


def test_a_phone_photo_stored_sideways_is_decoded_upright(tmp_path):
    """Phones store portrait photos sideways with an EXIF orientation; training, the folder scan and predict see
    the photo as a viewer shows it."""
    from fm2edge.data.images import EXIF_ORIENTATION, peek_size
    from fm2edge.predict import to_uint8_chw

    upright = np.zeros((64, 32, 3), dtype=np.uint8)
    upright[:32, :, 0] = 255  # red on top
    upright[32:, :, 2] = 255  # blue below
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the sensor's sideways pixels
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "turn 90 degrees clockwise to view"
    path = tmp_path / "portrait.jpg"
    stored.save(path, quality=95, exif=exif)
    assert Image.open(path).size == (64, 32)
    out = decode(str(path), None)
    assert out.shape == (64, 32, 3) and peek_size(str(path)) == (64, 32)
    assert out[:28, :, 0].mean() > 200 and out[36:, :, 2].mean() > 200 and out[:28, :, 2].mean() < 50
    assert torch.equal(to_uint8_chw(path), torch.from_numpy(np.array(out)).permute(2, 0, 1))
    small = decode(str(path), (16, 16))  # the centre square, still the right way up: red above blue
    assert small[:6, :, 0].mean() > 200 and small[10:, :, 2].mean() > 200


def test_a_large_jpeg_is_decoded_at_reduced_scale_to_nearly_the_same_pixels(tmp_path, monkeypatch):
    from fm2edge.data import images

    yy, xx = np.mgrid[0:1536, 0:2048]
    arr = np.stack([xx / 8 % 256, yy / 6 % 256, (xx + yy) / 14 % 256], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(arr).save(path, quality=92)
    full = np.asarray(images.resize_center_crop(Image.open(path).convert("RGB"), 256))
    resized_from = []
    crop = images.resize_center_crop
    monkeypatch.setattr(images, "resize_center_crop",
                        lambda img, size: resized_from.append(img.size) or crop(img, size))
    out = decode(str(path), (256, 256))
    assert resized_from == [(512, 384)]  # a quarter of each side still covers 256 px
    assert out.shape == full.shape and np.abs(out.astype(int) - full).mean() < 1  # 0.1 levels here


# ---------------------------------------------------------------- errors


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(Fm2EdgeError, match="does not exist"):
        load_data(DataConfig(source=str(tmp_path / "nope")))


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(Fm2EdgeError, match="empty folder"):
        load_data(DataConfig(source=str(tmp_path)))


def test_wrong_column_names_the_columns(parquet_dir):
    with pytest.raises(Fm2EdgeError, match=r"data.label_column 'lbl' is not a column .* \['img', 'label'\]"):
        load_data(DataConfig(source=str(parquet_dir), label_column="lbl"))


def test_hub_id_offline_says_so():
    with pytest.raises(Fm2EdgeError, match="unreachable"):
        load_data(DataConfig(source="someone/no-such-dataset-xyz"))


def test_labels_outside_class_range(tmp_path):
    from datasets import Dataset

    ds = hub_dataset(8, 0).cast_column("label", __import__("datasets").Value("int64"))
    table = ds.to_dict()
    table["label"] = [0, 1, 2, 3, 0, 1, 2, 3]
    # integer labels without ClassLabel names are mapped to sorted unique values -> always in range
    Dataset.from_dict(table, features=ds.features).to_parquet(str(tmp_path / "train.parquet"))
    train, _, _ = load_data(DataConfig(source=str(tmp_path), test_fraction=0.5))
    assert train.class_names == ["0", "1", "2", "3"]

    from datasets import ClassLabel, Features
    from datasets import Image as ImageFeature

    bad = tmp_path / "bad"
    bad.mkdir()
    feats = Features({"img": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    rows = hub_dataset(4, 0).to_dict()
    import pyarrow as pa
    import pyarrow.parquet as pq

    tbl = pa.table({"img": [{"bytes": r["bytes"], "path": None} for r in rows["img"]], "label": [0, 1, 5, 1]})
    meta = json.dumps({"info": {"features": feats.to_dict()}})
    tbl = tbl.replace_schema_metadata({"huggingface": meta})
    pq.write_table(tbl, bad / "train.parquet")
    with pytest.raises(Fm2EdgeError, match="outside the class range"):
        load_data(DataConfig(source=str(bad), test_fraction=0.5))


def test_corrupt_image_error_or_skip(tmp_path):
    from fm2edge.data.dataset import cache_root

    root = image_folder_with_a_truncated_png(tmp_path / "imgs")
    with pytest.raises(Fm2EdgeError, match="cannot be decoded.*on_bad_image skip"):
        load_data(DataConfig(source=str(root), test_fraction=0.5))
    cfg = DataConfig(source=str(root), test_fraction=0.5, on_bad_image="skip")
    assert not any(p.name.endswith(".tmp") for p in cache_root(cfg).glob("*")) if cache_root(cfg).exists() else True
    train, val, test = load_data(cfg)
    assert len(train) + len(val or []) + len(test) == 7 and train.skipped + test.skipped == 1


def test_the_data_summary_skips_what_it_cannot_read(tmp_path):
    """`fm2edge data --data.on_bad_image skip` counts a truncated and an empty image and gives the sizes of the
    others (their headers read) instead of failing on the empty file's header."""
    from fm2edge.data.summary import summarise

    root = image_folder_with_a_truncated_png(tmp_path / "imgs")
    imgs, labels = coloured_images(16, 12, 1)
    for i, (a, y) in enumerate(zip(imgs, labels, strict=True)):  # enough of each class for every split
        Image.fromarray(a).save(root / CLASSES[y] / f"more{i}.png")
    (root / "red" / "empty.jpg").write_bytes(b"")
    out = summarise(DataConfig(source=str(root), test_fraction=0.25, on_bad_image="skip",
                               cache_dir=str(tmp_path / "cache")))
    assert out["undecodable"] == 2
    assert out["original_sizes"]["min"] == out["original_sizes"]["max"] == [12, 12]


def test_the_originals_sides_are_given_as_ranges_each_on_its_own():
    """Landscape and portrait photos of 300 x 400 are 300-400 px on each side, not "up to 400 x 400"."""
    from fm2edge.data.summary import original_sizes_text

    assert original_sizes_text({"min": [32, 32], "max": [400, 400], "median": [300.0, 400.0]}) == \
        "32-400 px high, 32-400 px wide (median 300 x 400)"
    assert original_sizes_text({"min": [12, 12], "max": [12, 12], "median": [12.0, 12.0]}) == \
        "12 px high, 12 px wide (median 12 x 12)"


@pytest.mark.skipif(not (SHARED / "data" / "cifar10" / "test.parquet").exists(), reason="../shared not present")
def test_shared_cifar10_loads_like_the_hub():
    train, val, test = load_data(DataConfig(source=str(SHARED / "data" / "cifar10"), max_train=100, max_test=50))
    assert train.class_names[:2] == ["airplane", "automobile"] and train.images.shape == (90, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [9] * 10
    assert torch.bincount(val.labels).tolist() == [1] * 10


def test_a_sources_own_validation_split_is_used(tmp_path):
    """An image folder laid out train/, val/, test/ (datasets calls val/ "validation") keeps its own validation
    images; naming a split the source lacks is one error that lists the splits there are."""
    from conftest import CLASSES, coloured_images

    for split, n, seed in (("train", 16, 0), ("val", 8, 1), ("test", 8, 2)):
        imgs, labels = coloured_images(n, 12, seed)
        for i, (a, y) in enumerate(zip(imgs, labels, strict=True)):
            (tmp_path / split / CLASSES[y]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(tmp_path / split / CLASSES[y] / f"{i}.png")
    train, val, test = load_data(DataConfig(source=str(tmp_path)))
    assert (len(train), len(val), len(test)) == (16, 8, 8)
    with pytest.raises(Fm2EdgeError, match=r"no split 'dev'; its splits are \['train', 'validation', 'test'\]"):
        load_data(DataConfig(source=str(tmp_path), val_split="dev"))


def test_validation_needs_two_images_of_every_class_and_can_be_off(parquet_dir):
    train, val, _ = load_data(DataConfig(source=str(parquet_dir), per_class=1))
    assert val is None and len(train) == 4  # one image per class: nothing can be held out
    train, val, _ = load_data(DataConfig(source=str(parquet_dir), per_class=2))
    assert (len(train), len(val)) == (4, 4)  # at least one validation image per class
    assert sorted(val.labels.tolist()) == [0, 1, 2, 3]
    train, val, _ = load_data(DataConfig(source=str(parquet_dir), val_fraction=0))
    assert val is None and len(train) == 64


def test_a_parquet_folders_validation_file_is_its_validation_split(tmp_path):
    from conftest import hub_dataset

    hub_dataset(24, seed=0).to_parquet(str(tmp_path / "train.parquet"))
    hub_dataset(12, seed=1).to_parquet(str(tmp_path / "validation.parquet"))
    hub_dataset(8, seed=2).to_parquet(str(tmp_path / "test.parquet"))
    train, val, test = load_data(DataConfig(source=str(tmp_path)))
    assert (len(train), len(val), len(test)) == (24, 12, 8)


def test_a_loose_image_is_named_a_deeper_one_read_and_an_empty_class_said(tmp_path, caplog):
    from PIL import Image as PILImage

    for c, cls in enumerate(("ants", "bees")):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(3):  # every image its own pixels (a copy would be left out of the held-out test split)
            PILImage.new("RGB", (20, 20), (i * 40 + 10, 100 * c, 0)).save(tmp_path / "photos" / cls / f"{i}.png")
    (tmp_path / "photos" / "wasps").mkdir()
    with caplog.at_level("WARNING"):
        train, _, _ = load_data(DataConfig(source=str(tmp_path / "photos"), val_fraction=0))
    assert "'" in caplog.text and "wasps' holds no images" in caplog.text
    assert train.class_names == ["ants", "bees"]
    (tmp_path / "photos" / "bees" / "more").mkdir()
    PILImage.new("RGB", (20, 20)).save(tmp_path / "photos" / "bees" / "more" / "x.png")  # a sub-folder: still bees
    train, _, test = load_data(DataConfig(source=str(tmp_path / "photos"), val_fraction=0))
    assert len(train) + len(test) == 7 and train.class_names == ["ants", "bees"]
    PILImage.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "photos" / "x.png")
    with pytest.raises(Fm2EdgeError, match=r"but 'x.png' is not inside a class folder; move"):
        load_data(DataConfig(source=str(tmp_path / "photos")))


def heic_folder(root, n: int = 12, jpegs: int = 0):
    """root/<class>/<i>.heic for ``n`` coloured images (as phones save photos), and ``jpegs`` more as JPEG."""
    pytest.importorskip("pillow_heif")
    imgs, labels = coloured_images(n + jpegs, 32, 3)
    for i, (a, y) in enumerate(zip(imgs, labels, strict=True)):
        (root / CLASSES[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / CLASSES[y] / f"{i}.{'heic' if i < n else 'jpg'}", quality=95)
    return imgs, labels


def test_heic_photos_are_read_where_their_plugin_is_installed(tmp_path):
    """HEIC, what phones save, is read like any photo with the ``heif`` extra: every image counted, each class's
    colour kept through the lossy format."""
    imgs, labels = heic_folder(tmp_path, 12, 6)
    train, val, test = load_data(DataConfig(source=str(tmp_path), image_size=32))
    assert len(train) + len(val) + len(test) == 18
    both = torch.cat([train.images, val.images, test.images]).float().mean((2, 3))
    ys = torch.cat([train.labels, val.labels, test.labels])
    for c in range(len(CLASSES)):  # the channel of each class's colour stays its brightest
        mean = both[ys == c].mean(0)
        want = np.mean([a.reshape(-1, 3).mean(0) for a, y in zip(imgs, labels, strict=True)
                        if CLASSES[y] == train.class_names[c]], 0)
        assert int(mean.argmax()) == int(want.argmax())


def test_heic_photos_without_their_plugin_are_counted_and_named_not_dropped_silently(tmp_path, monkeypatch, caplog):
    """Without pillow-heif, HEIC photos are not images Pillow can read: a folder that mixes them with JPEGs says how
    many it skipped and the install that reads them; a folder of HEIC alone is one error saying the same."""
    from fm2edge.data import folders, images

    heic_folder(tmp_path / "mixed", 6, 12)
    heic_folder(tmp_path / "phone", 6)
    plain = tuple(s for s in images.IMAGE_SUFFIXES if s not in images.HEIF_SUFFIXES)
    monkeypatch.setattr(folders, "IMAGE_SUFFIXES", plain)
    monkeypatch.setattr(images, "IMAGE_SUFFIXES", plain)
    with caplog.at_level("WARNING"):
        scan = folders.scan_folder(tmp_path / "mixed")
    assert len(scan.files) == 12 and scan.skipped == {images.HEIF_SKIPPED: 6}
    assert "skipped 6 HEIC/HEIF photo(s): pip install 'fm2edge[heif]'" in caplog.text
    with pytest.raises(Fm2EdgeError, match=r"no image files .* but 6 HEIC/HEIF photo\(s\): pip install"):
        folders.scan_folder(tmp_path / "phone")
    with pytest.raises(Fm2EdgeError, match="it holds HEIC/HEIF photos: pip install"):
        images.find_images([str(tmp_path / "phone")])
