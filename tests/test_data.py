from __future__ import annotations

import json

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
    train, test = load_data(DataConfig(source="digits"))
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 8, 8)
    assert len(train) + len(test) == 1797
    assert train.class_names == [str(i) for i in range(10)]
    # stratified hold-out: every class in both splits
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))


def test_parquet_folder_in_hub_schema(parquet_dir):
    train, test = load_data(DataConfig(source=str(parquet_dir)))
    assert (len(train), len(test)) == (64, 32)
    assert train.class_names == CLASSES
    assert train.images.shape == (64, 3, 16, 16)
    # pixel values survive the round trip (PNG is lossless)
    imgs, labels = coloured_images(64, 16, seed=0)
    assert np.array_equal(train.images[5].permute(1, 2, 0).numpy(), imgs[5])
    assert train.labels.tolist() == labels


def test_single_parquet_file_is_the_train_split(parquet_dir):
    train, test = load_data(DataConfig(source=str(parquet_dir / "train.parquet"), test_fraction=0.25))
    assert len(train) == 48 and len(test) == 16


def test_arrow_folder_with_named_columns(arrow_dir):
    train, test = load_data(DataConfig(source=str(arrow_dir)))  # columns detected from the Image/ClassLabel types
    assert (len(train), len(test)) == (40, 20)
    train2, _ = load_data(DataConfig(source=str(arrow_dir), image_column="picture", label_column="category"))
    assert torch.equal(train.images, train2.images)


def test_image_folder_mixed_modes_and_sizes(image_folder):
    train, test = load_data(DataConfig(source=str(image_folder), image_size=24))
    assert train.class_names == sorted(CLASSES)
    assert train.images.shape[1:] == (3, 24, 24)
    assert len(train) + len(test) == 24


def test_variable_sizes_default_to_224(image_folder):
    train, _ = load_data(DataConfig(source=str(image_folder)))
    assert train.image_size == (224, 224)


def test_balanced_subsets(parquet_dir):
    train, test = load_data(DataConfig(source=str(parquet_dir), max_train=20, max_test=8))
    assert torch.bincount(train.labels).tolist() == [5, 5, 5, 5]
    assert torch.bincount(test.labels).tolist() == [2, 2, 2, 2]
    train, _ = load_data(DataConfig(source=str(parquet_dir), per_class=3))
    assert torch.bincount(train.labels).tolist() == [3, 3, 3, 3]


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
    train, _ = load_data(DataConfig(source=str(parquet_dir)))
    assert len(train) == 64


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
    train, _ = load_data(DataConfig(source=str(tmp_path), test_fraction=0.5))
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
    train, test = load_data(cfg)
    assert len(train) + len(test) == 7 and train.skipped + test.skipped == 1


@pytest.mark.skipif(not (SHARED / "data" / "cifar10" / "test.parquet").exists(), reason="../shared not present")
def test_shared_cifar10_loads_like_the_hub():
    train, test = load_data(DataConfig(source=str(SHARED / "data" / "cifar10"), max_train=100, max_test=50))
    assert train.class_names[:2] == ["airplane", "automobile"] and train.images.shape == (100, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [10] * 10
