"""Split invariants on the layouts people have: validation never holds a test image, every tested class is
trained, links are followed, misplaced images are named, and a validation split too small to rank says so."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fm2edge.cli import main
from fm2edge.config import DataConfig
from fm2edge.data import load_data
from fm2edge.data.splits import (
    balanced_selection_noise,
    binomial_half_width,
    effective_images,
    label_conflicts,
    selection_noise,
)
from fm2edge.errors import Fm2EdgeError
from fm2edge.train import Selection


def photos(root, counts: dict[str, int], size: int = 12, seed: int = 0):
    """root/<rel>/<i>.png for each {rel: n}: every image distinct (random pixels, tinted by its folder name)."""
    rng = np.random.default_rng(seed)
    for rel, n in counts.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        tint = np.array([hash(rel.split("/")[-1]) % 200, 60, 120])
        for i in range(n):
            arr = np.clip(tint + rng.integers(0, 56, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / rel / f"{i}.png")
    return root


def hashes(data):
    return {h.tobytes() for h in data.image_hashes()}


def test_a_test_split_named_validation_takes_validation_from_the_training_images(tmp_path, caplog):
    """Case 1: train/ + val/ and --data.test_split validation ("val is my test set"): validation used to be the
    very images that report the test accuracy."""
    root = photos(tmp_path / "p", {"train/ants": 30, "train/bees": 30, "val/ants": 10, "val/bees": 10})
    with caplog.at_level(logging.WARNING):
        train, val, test = load_data(DataConfig(source=str(root), test_split="validation"))
    assert len(test) == 20 and len(val) == 6 and len(train) == 54  # validation: 10% of the 60 training images
    assert not hashes(val) & hashes(test)
    assert "held out from 'train'" in caplog.text
    with pytest.raises(Fm2EdgeError, match="both name 'validation'"):
        load_data(DataConfig(source=str(root), test_split="validation", val_split="validation"))


def test_a_class_only_in_the_test_folder_is_named(tmp_path):
    """Case 2: test/wasps/ with no training images became a third class without a word."""
    root = photos(tmp_path / "p", {"train/ants": 8, "train/bees": 8, "test/ants": 4, "test/bees": 4,
                                   "test/wasps": 3})
    with pytest.raises(Fm2EdgeError, match=r"class 'wasps' has images in '.*test/wasps' but none for training"):
        load_data(DataConfig(source=str(root)))


def test_a_class_only_in_a_parquet_test_split_is_named(tmp_path):
    from conftest import hub_dataset

    hub_dataset(16, seed=0).filter(lambda r: r["label"] < 3).to_parquet(str(tmp_path / "train.parquet"))
    hub_dataset(8, seed=1).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(Fm2EdgeError, match="class 'grey' has images in split 'test' .* but no training image"):
        load_data(DataConfig(source=str(tmp_path)))


def test_text_labels_number_the_classes_of_every_split_alike(tmp_path):
    """A parquet dataset whose labels are text: a test split that lacks a class keeps the training split's numbers
    (each split once numbered its own labels, and splits that named different classes were refused)."""
    from conftest import hub_dataset

    def as_text(ds):
        names = ds.features["label"].names
        return ds.map(lambda r: {"kind": names[r["label"]]}).remove_columns("label").rename_column("kind", "label")

    train = as_text(hub_dataset(24, seed=0))
    as_text(hub_dataset(24, seed=0)).to_parquet(str(tmp_path / "train.parquet"))
    test = as_text(hub_dataset(16, seed=1)).filter(lambda r: r["label"] != sorted(set(train["label"]))[0])
    test.to_parquet(str(tmp_path / "test.parquet"))
    loaded_train, _, loaded_test = load_data(DataConfig(source=str(tmp_path), val_fraction=0))
    assert loaded_train.class_names == loaded_test.class_names == sorted(set(train["label"]))
    names = loaded_test.class_names
    assert [names[i] for i in loaded_test.labels.tolist()] == test["label"]


def test_split_folders_that_are_links_are_followed(tmp_path):
    """Case 3: train -> elsewhere/train ended in a raw EmptyDatasetError traceback."""
    real = photos(tmp_path / "real", {"train/ants": 8, "train/bees": 8, "test/ants": 4, "test/bees": 4})
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "train").symlink_to(real / "train")
    (tmp_path / "linked" / "test").symlink_to(real / "test")
    (real / "test" / "bees" / "more.png").symlink_to(real / "train" / "bees" / "0.png")  # a linked file too
    (tmp_path / "linked" / "train" / "ants" / "loop").symlink_to(tmp_path / "linked")  # a link back up: not read
    train, val, test = load_data(DataConfig(source=str(tmp_path / "linked")))
    assert len(train) + len(val) == 16 and len(test) == 9  # the linked file counts (and is a training image)


def test_one_image_outside_the_class_folders_is_the_one_named(tmp_path):
    """Case 4: the 398 well-placed images were blamed and the misplaced one not named."""
    root = photos(tmp_path / "p", {"train/ants": 10, "train/bees": 10, "test/ants": 5, "test/bees": 5})
    Image.new("RGB", (12, 12)).save(root / "train" / "stray.png")
    with pytest.raises(Fm2EdgeError) as err:
        load_data(DataConfig(source=str(root)))
    assert "'train/stray.png' is not inside a class folder" in str(err.value)
    assert "more" not in str(err.value) and "test/" not in str(err.value)


def shoots(root, per_class: dict[str, list[int]], size: int = 12):
    """root/<class>/shoot <k>/<i>.png: for each class, one sub-folder per count (a shoot's images, nearly alike)."""
    return photos(root, {f"{c}/shoot {k}": n for c, counts in per_class.items() for k, n in enumerate(counts)}, size)


def sides(data, root) -> set[str]:
    """The file names (relative to ``root``) of ``data``'s images, found by their pixels."""
    where = {np.asarray(Image.open(f).convert("RGB")).tobytes(): f.relative_to(root).as_posix()
             for f in sorted(root.rglob("*.png"))}
    return {where[img.permute(1, 2, 0).numpy().tobytes()] for img in data.images}


def groups_of(data, root) -> set[str]:
    """The sub-folders (relative to ``root``) that ``data``'s images came from, found by their pixels."""
    return {str(Path(f).parent) for f in sides(data, root)}


def test_sub_folders_of_class_folders_are_read_and_held_out_whole(tmp_path):
    root = shoots(tmp_path / "p", {"cats": [4, 5, 3, 6, 2, 4, 5, 3], "dogs": [5, 4, 6, 3, 4, 2, 5, 4]})
    (root / "cats" / "loose.png").write_bytes((root / "cats" / "shoot 0" / "0.png").read_bytes())  # a copy: left out
    train, val, test = load_data(DataConfig(source=str(root), test_fraction=0.25, val_fraction=0.25))
    assert train.class_names == ["cats", "dogs"]
    # 65 images and the copy, read; the copy is left out where it is held out and its original trains
    assert len(train) + len(val) + len(test) in (65, 66)
    trained, validated, tested = groups_of(train, root), groups_of(val, root), groups_of(test, root)
    assert not trained & tested and not trained & validated and not validated & tested
    assert {g.split("/")[0] for g in tested} == {g.split("/")[0] for g in validated} == {"cats", "dogs"}
    assert 10 <= len(test) <= 24  # about a quarter, whole shoots at a time


def test_split_folders_named_among_other_words_and_doubled_folders_are_read_as_meant(tmp_path, capsys):
    """Archives as people download them: ``seg_train/seg_train/<class>``, ``seg_test/seg_test/<class>`` (split names
    among other words, each folder unpacked into one of the same name); ``photos/photos/<class>``."""
    root = photos(tmp_path / "intel", {"seg_train/seg_train/forest": 8, "seg_train/seg_train/sea": 8,
                                       "seg_test/seg_test/forest": 3, "seg_test/seg_test/sea": 3})
    train, val, test = load_data(DataConfig(source=str(root)))
    assert train.class_names == ["forest", "sea"]
    assert len(test) == 6 and len(train) + len(val) == 16  # the test split is the test folder's
    assert main(["data", str(root)]) == 0
    assert "split folders: train from seg_train/seg_train/, test from seg_test/seg_test/" in capsys.readouterr().out
    doubled = photos(tmp_path / "photos", {"photos/ants": 6, "photos/bees": 6})
    assert load_data(DataConfig(source=str(doubled)))[0].class_names == ["ants", "bees"]
    # split words as class names where no two folders name different splits, one of them training: classes
    tubes = photos(tmp_path / "tubes", {"test_tubes": 6, "beakers": 6})
    assert load_data(DataConfig(source=str(tubes)))[0].class_names == ["beakers", "test_tubes"]
    # a folder beside them that names no split: one error, not a classifier of splits
    (root / "seg_pred" / "seg_pred").mkdir(parents=True)
    Image.new("RGB", (12, 12)).save(root / "seg_pred" / "seg_pred" / "0.png")
    assert main(["data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "folders named like splits (seg_test, seg_train) beside others (seg_pred)" in err, err


def test_images_labelled_by_a_metadata_file_as_the_hub_reads_them(tmp_path, capsys):
    root = photos(tmp_path / "p", {"images": 16, "test": 6})
    rows = [f"images/{i}.png,{'ant' if i % 2 else 'bee'}" for i in range(15)]  # images/15.png is not listed
    (root / "metadata.csv").write_text("file_name,label\n" + "\n".join(rows) + "\n")
    train, val, test = load_data(DataConfig(source=str(root), test_fraction=0.25))
    assert train.class_names == ["ant", "bee"]
    assert len(train) + len(val) + len(test) == 15 and set(test.labels.tolist()) == {0, 1}
    assert main(["data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(root/metadata.csv)" in out and "skipped: 7 not in a metadata file" in out, out  # images/15, test/*
    # relabelled: the cached images do not keep the old labels
    (root / "metadata.csv").write_text("file_name,label\n" + "\n".join(r.replace("ant", "cow") for r in rows))
    relabelled = load_data(DataConfig(source=str(root), test_fraction=0.25))
    assert relabelled[0].class_names == ["bee", "cow"]
    assert sum(int((d.labels == 0).sum()) for d in relabelled) == 8  # images/0, 2, ..., 14 are bees
    # one metadata file per split folder, JSON lines for the test split, the label column named
    split = photos(tmp_path / "s", {"train/x": 12, "test/x": 4})
    (split / "train" / "metadata.csv").write_text("file_name,kind\n" + "".join(
        f"x/{i}.png,{'a' if i < 6 else 'b'}\n" for i in range(12)))
    (split / "test" / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"x/{i}.png", "kind": "ab"[i % 2]}) + "\n" for i in range(4)))
    with pytest.raises(Fm2EdgeError, match=r"test/metadata.jsonl' has columns \['file_name', 'kind'\]; it needs a "
                                            r"'class' column"):
        load_data(DataConfig(source=str(split), label_column="class"))
    train, _, test = load_data(DataConfig(source=str(split), label_column="kind", val_fraction=0))
    assert train.class_names == ["a", "b"] and test.labels.tolist() == [0, 1, 0, 1]
    assert train.labels.bincount().tolist() == [6, 6]
    (split / "test" / "metadata.jsonl").write_text("".join(  # relabelled: the cached images keep no old label
        json.dumps({"file_name": f"x/{i}.png", "kind": "ba"[i % 2]}) + "\n" for i in range(4)))
    relabelled = load_data(DataConfig(source=str(split), label_column="kind", val_fraction=0))
    assert relabelled[2].labels.tolist() == [1, 0, 1, 0]


def test_a_metadata_file_without_labels_leaves_them_to_the_class_folders(tmp_path):
    """Captions beside class folders (the hub's image folder reads them so): the folders still name the classes."""
    root = photos(tmp_path / "p", {"ants": 6, "bees": 6})
    (root / "metadata.csv").write_text("file_name,caption\n" + "".join(f"ants/{i}.png,an ant\n" for i in range(6)))
    train, _, _ = load_data(DataConfig(source=str(root)))
    assert train.class_names == ["ants", "bees"]


@pytest.mark.parametrize("metadata,match", [
    ("file_name,label\nimages/0.png,a\nimages/99.png,b\n", r"'.*images/99.png' is listed in .* not an image"),
    ("path,label,notes\nimages/0.png,a,x\n", r"has columns \['path', 'label', 'notes'\]; it needs a file_name column"),
    ("file_name,kind,notes\nimages/0.png,a,x\n", r"has no label column \(label, .*\) and the images are not in "
                                                 r"class folders; name the column .* with --data.label_column"),
    ("file_name,label\nimages/0.png,a\nimages/1.png,a\n", r"labels every training image 'a'"),
])
def test_a_bad_metadata_file_is_one_line(metadata, match, tmp_path, capsys):
    root = photos(tmp_path / "p", {"images": 4})
    (root / "metadata.csv").write_text(metadata)
    assert main(["data", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


def test_images_listed_in_a_labels_file_as_kaggle_ships_them(tmp_path, capsys):
    """train/<id>.jpg beside labels.csv (id,breed), the ids without their extension, and an unlabelled test/."""
    root = photos(tmp_path / "dogs", {"train": 16, "test": 4})
    for f in (root / "test").iterdir():
        f.rename(f.with_name("t" + f.name))  # Kaggle's test ids are not its training ids
    (root / "labels.csv").write_text("id,breed\n" + "".join(f"{i},{'pug' if i % 2 else 'husky'}\n" for i in range(16)))
    assert main(["data", str(root)]) == 2  # the folders name no class: the error names the file to give
    assert f"--data.labels {root / 'labels.csv'}" in capsys.readouterr().err
    train, val, test = load_data(DataConfig(source=str(root), labels="labels.csv", test_fraction=0.25))
    assert train.class_names == ["husky", "pug"] and len(train) + len(val) + len(test) == 16
    assert main(["data", str(root), "--data.labels", "labels.csv"]) == 0
    out = capsys.readouterr().out
    assert "(images listed in labels.csv)" in out and "skipped: 4 not in labels.csv" in out, out  # test/*
    # a JSON Lines file outside the folder, paths from the folder, the class column among others, then relabelled
    listing = tmp_path / "classes.jsonl"
    rows = [{"file_name": f"train/{i}.png", "kind": "ab"[i < 8], "note": "x"} for i in range(16)]
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source=str(root), labels=str(listing), label_column="kind", val_fraction=0, test_fraction=0.25)
    assert load_data(cfg)[0].labels.bincount().tolist() == [6, 6]
    listing.write_text("".join(json.dumps({**r, "kind": "ab"[i >= 4]}) + "\n" for i, r in enumerate(rows)))
    assert load_data(cfg)[0].labels.bincount().tolist() == [3, 9]  # the cached images keep no old label


@pytest.mark.parametrize("listing,match", [
    ("id,label\n1,a\n2,b\n99,b\n", r"'99' is listed in labels file .* but no image in .* has that path or name"),
    ("id,label\n0.png,a\n1,b\n", r"'0.png' in labels file .* names 2 images .*; give each image's path"),
    ("id,label\ntrain/0.png,a\ntrain/1.png,b\n./train/1.png,a\n", r"'train/1.png' is listed twice .* as 'b' "
                                                                      r"and 'a'"),
    ("id,label\n1,b\n1,a\n", r"'train/1.png' is listed twice .* as 'b' and 'a'"),
    ("name,label\ntrain/0.png,a\n", r"has columns \['name', 'label'\]; it needs a column naming each image"),
    ("id,kind,notes\ntrain/0.png,a,x\n", r"it needs its class column named: give --data.label_column"),
    (None, r"labels file 'labels.csv' does not exist"),
])
def test_a_bad_labels_file_is_one_line(listing, match, tmp_path, capsys):
    root = photos(tmp_path / "p", {"train": 4, "more": 1})  # train/0.png and more/0.png
    if listing:
        (root / "labels.csv").write_text(listing)
    assert main(["data", str(root), "--data.labels", "labels.csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


def test_an_image_listed_in_two_groups_is_one_line_and_one_row_with_its_group_keeps_it(tmp_path, capsys):
    """An image in two rows of one class but two patients could join either side of the split: one error naming
    both; listed once with its patient and once without, the patient's row counts."""
    root = photos(tmp_path / "p", {"train": 8})
    rows = "".join(f"train/{i}.png,{'ab'[i % 2]},p{i // 2}\n" for i in range(8))
    (root / "labels.csv").write_text("image,label,patient\n" + rows + "train/1.png,b,p3\n")
    assert main(["data", str(root), "--data.labels", "labels.csv", "--data.group_column", "patient"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'train/1.png' is listed twice" in err[0] and "in groups 'p0' and 'p3'" in err[0], err
    from fm2edge.data.folders import column_group, match_listed, named_group

    files = [Path(f"train/{i}.png") for i in range(8)]
    listed = [("train/1.png", "b", column_group("", "train/1.png")), ("train/1.png", "b", column_group("p0", ""))]
    assert named_group(match_listed(root, files, listed, root / "labels.csv")["train/1.png"][1]) == "p0"


def test_a_group_column_keeps_each_patients_images_on_one_side(tmp_path, capsys):
    """Four images per patient, two of each class: held out by image, a patient's images sit on both sides of the
    split (the test accuracy then partly measures recognising the patient); by --data.group_column, never."""
    root = photos(tmp_path / "p", {"train": 60})
    patient = {f"train/{i}.png": f"p{i // 4}" if i < 56 else "" for i in range(60)}  # the last four: no patient
    (root / "labels.csv").write_text("image,label,patient\n" + "".join(
        f"train/{i}.png,{'ab'[i % 2]},{patient[f'train/{i}.png']}\n" for i in range(60)))
    def patients(cfg):
        return [{patient[f] for f in sides(d, root)} - {""} for d in load_data(cfg)]
    by_image = patients(DataConfig(source=str(root), labels="labels.csv", test_fraction=0.25, val_fraction=0.2))
    assert by_image[0] & by_image[2], "held out by image, patients straddle the split (else this test shows nothing)"
    cfg = DataConfig(source=str(root), labels="labels.csv", group_column="patient", test_fraction=0.25,
                     val_fraction=0.2)
    train, val, test = patients(cfg)
    assert not train & val and not train & test and not val & test and val and test
    assert main(["data", str(root), "--data.labels", "labels.csv", "--data.group_column", "patient",
                 "--json", "true"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert groups["column"] == "patient" and groups["across_splits"] == {}
    assert groups["groups"] == groups["several_classes"] == len(train | val)  # of the labelled training images
    tested = sum(f in sides(d, root) for d in load_data(cfg)[2:] for f in ("train/56.png", "train/57.png",
                                                                           "train/58.png", "train/59.png"))
    assert groups["ungrouped_images"] == 4 - tested
    assert main(["data", str(root), "--data.labels", "labels.csv", "--data.group_column", "patient"]) == 0
    n = len(train | val)
    assert f"groups: {n} in column 'patient' ({n} with images of several classes" in capsys.readouterr().out


def test_unlabelled_extras_hold_no_image_of_a_group_validation_holds(tmp_path):
    """--data.max_train labels part of a patient's images; where validation holds that patient, the rest are not
    the unlabelled images a distillation trains on (`fm2edge auto` takes them): it would see validation's subjects."""
    from fm2edge.data import load_unlabeled

    root = photos(tmp_path / "p", {"train": 80})
    patient = {f"train/{i}.png": f"p{i // 8}" for i in range(80)}  # eight images each, both classes
    (root / "labels.csv").write_text("image,label,patient\n" + "".join(
        f"train/{i}.png,{'ab'[i % 2]},{patient[f'train/{i}.png']}\n" for i in range(80)))
    straddled = 0
    for most in range(18, 42, 3):
        cfg = DataConfig(source=str(root), labels="labels.csv", group_column="patient", max_train=most,
                         val_fraction=0.3, test_fraction=0.25)
        train, val, _ = load_data(cfg)
        extra = load_unlabeled(cfg, None)
        trained, validated, extras = ({patient[f] for f in sides(d, root)} for d in (train, val, extra))
        assert validated and extras and not validated & extras
        straddled += bool(trained & extras)  # a patient partly labelled: the case this guards, where it is validation's
    assert straddled


def test_a_group_column_in_a_parquet_dataset_and_groups_its_test_split_shares_are_named(tmp_path, capsys, caplog):
    from conftest import hub_dataset

    sites = [f"s{i // 3}" for i in range(24)]
    hub_dataset(24, seed=0).add_column("site", sites).to_parquet(str(tmp_path / "train.parquet"))
    from fm2edge.data.dataset import plan_splits

    plan = plan_splits(DataConfig(source=str(tmp_path), group_column="site", val_fraction=0.25))
    groups = plan.train.groups
    assert not set(groups[plan.train_idx]) & set(groups[plan.test_idx]) and len(plan.test_idx)
    assert not set(groups[plan.train_idx]) & set(groups[plan.val_idx]) and len(plan.val_idx)
    with pytest.raises(Fm2EdgeError, match=r"split 'train' of data.source .* has no column 'patient' "
                                           r"\(--data.group_column\); its columns are \['img', 'label', 'site'\]"):
        plan_splits(DataConfig(source=str(tmp_path), group_column="patient"))
    hub_dataset(6, seed=1).add_column("site", ["s0", "s0", "s1", "t1", "t2", ""]).to_parquet(
        str(tmp_path / "test.parquet"))
    with caplog.at_level("WARNING"):
        plan_splits(DataConfig(source=str(tmp_path), group_column="site"))
    assert "2 group(s) of column 'site' have images in both 'train' and 'test' (e.g. 's0')" in caplog.text
    assert main(["data", str(tmp_path), "--data.group_column", "site", "--json", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"]["across_splits"] == {"test": ["s0", "s1"]}


def test_a_group_column_in_a_metadata_file(tmp_path):
    from fm2edge.data.dataset import plan_splits

    root = photos(tmp_path / "p", {"images": 24})  # four sites, three images of each class at each
    (root / "metadata.csv").write_text("file_name,label,site\n" + "".join(
        f"images/{i}.png,{'ab'[i % 2]},s{i // 6}\n" for i in range(24)))
    plan = plan_splits(DataConfig(source=str(root), group_column="site", val_fraction=0))
    groups = plan.train.groups
    assert set(groups[plan.test_idx]) in ({"group:s0"}, {"group:s1"}, {"group:s2"}, {"group:s3"})
    assert not set(groups[plan.train_idx]) & set(groups[plan.test_idx])


@pytest.mark.parametrize("listing,match", [
    ("image,label\ntrain/0.png,a\ntrain/1.png,b\n", r"has columns \['image', 'label'\]; it needs a 'patient' "
                                                   r"column \(--data.group_column\)"),
    (None, r"--data.group_column 'patient' names a column of a labels or metadata file, and image folder .* is "
           r"labelled by its class folders"),
])
def test_a_group_column_the_data_lacks_is_one_line(listing, match, tmp_path, capsys):
    root = photos(tmp_path / "p", {"a": 4, "b": 4} if listing is None else {"train": 4})
    args = ["data", str(root), "--data.group_column", "patient"]
    if listing:
        (root / "labels.csv").write_text(listing)
        args += ["--data.labels", "labels.csv"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), min_size=2, max_size=60),
       st.floats(0.05, 0.5), st.integers(0, 3))
def test_groups_a_column_names_are_never_split_whatever_their_classes(images, fraction, seed):
    """Whatever the (class, group) of each image: held-out and kept images share no group; every class keeps a
    training image; a class with no held-out image has no group whose holding out would leave every class one."""
    from fm2edge.data.dataset import group_split

    labels = np.array([c for c, _ in images])
    groups = np.array([f"group:g{g}" for _, g in images], dtype=object)
    kept, out = group_split(labels, groups, fraction, seed)
    assert sorted([*kept, *out]) == list(range(len(labels)))
    assert not set(groups[kept]) & set(groups[out])
    assert set(labels[kept]) == set(labels)
    for c in np.unique(labels):
        if (labels == c).sum() >= 2 and not (labels[out] == c).any():
            for g in set(groups[kept][labels[kept] == c]):
                rest = kept[groups[kept] != g]
                assert set(labels[rest]) != set(labels), (c, g)


def test_a_split_folder_without_the_metadata_file_the_others_have_is_named(tmp_path, capsys):
    root = photos(tmp_path / "p", {"train/x": 6, "test/x": 2})
    (root / "train" / "metadata.csv").write_text("file_name,label\n" + "".join(f"x/{i}.png,{i % 2}\n"
                                                                               for i in range(6)))
    assert main(["data", str(root)]) == 2
    assert "has metadata files in train but not in test" in capsys.readouterr().err


def test_the_data_summary_counts_sub_folders(tmp_path, capsys):
    root = shoots(tmp_path / "p", {"cats": [3, 3, 3, 3], "dogs": [3, 3, 3, 3]})
    assert main(["data", str(root), "--data.image_size", "12"]) == 0
    assert "sub-folders: 8 in class folders, their images read as the class's; each is kept whole" in \
        capsys.readouterr().out
    assert main(["data", str(root), "--json", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["sub_folders"] == 8


def test_a_class_in_one_sub_folder_is_held_out_image_by_image_with_a_warning(tmp_path, caplog):
    root = shoots(tmp_path / "p", {"cats": [12], "dogs": [3, 4, 3, 4]})
    with caplog.at_level("WARNING"):
        train, val, test = load_data(DataConfig(source=str(root), test_fraction=0.25, val_fraction=0))
    assert "every image of 'cats' the test split is drawn from is in 'cats/shoot 0'; its test images" in caplog.text
    assert {test.class_names[i] for i in test.labels.tolist()} == {"cats", "dogs"}
    assert not groups_of(train, root) & groups_of(test, root) - {"cats/shoot 0"}


def test_whole_folders_far_over_the_share_are_counted_and_the_split_after_them_named(tmp_path, caplog):
    """Two folders of 8 cats and a 25% test split: one whole folder is the test split (8 of 16, said so), and the
    validation split drawn from the one folder left warns by the split's name."""
    root = shoots(tmp_path / "p", {"cats": [8, 8], "dogs": [2, 2, 2, 2, 2, 2, 2, 2]})
    with caplog.at_level("INFO"):
        train, val, test = load_data(DataConfig(source=str(root), test_fraction=0.25, val_fraction=0.2))
    assert "the test split holds 1 of the 2 folders of 'cats' whole: 8 of its 16 images (25% asked)" in caplog.text
    assert "every image of 'cats' the validation split is drawn from is in 'cats/shoot" in caplog.text
    assert "'dogs'" not in caplog.text  # 4 of its 16 in whole folders: the share asked
    assert [test.class_names[i] for i in test.labels.tolist()].count("cats") == 8


def test_a_data_folder_one_level_too_high_names_the_one_to_give(tmp_path):
    root = photos(tmp_path / "p", {"PetImages/Cat": 4, "PetImages/Dog": 4})
    with pytest.raises(Fm2EdgeError, match=r"only one class folder \('PetImages'\); .* or, if its sub-folders "
                                           r"\(Cat, Dog\) are the classes, give --data.source '.*PetImages'$"):
        load_data(DataConfig(source=str(root)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6)), min_size=2, max_size=30),
       st.floats(0.05, 0.5), st.integers(0, 3))
def test_group_split_never_puts_a_group_on_both_sides(shoot_sizes, fraction, seed):
    """Whatever the shoots (class, images), held-out and kept images share no group, except in a class whose
    images are all in one group; every class with two images keeps one and holds one out."""
    from fm2edge.data.dataset import group_split

    labels = np.concatenate([[c] * n for c, n in shoot_sizes])
    groups = np.concatenate([[f"{c}/{k}"] * n for k, (c, n) in enumerate(shoot_sizes)])
    kept, out = group_split(labels, groups, fraction, seed)
    assert sorted([*kept, *out]) == list(range(len(labels)))
    for c in np.unique(labels):
        mine = labels == c
        one_group = len(set(groups[mine])) == 1
        if not one_group:
            assert not set(groups[kept][labels[kept] == c]) & set(groups[out][labels[out] == c])
        if mine.sum() >= 2:
            assert (labels[kept] == c).any() and (labels[out] == c).any()
        else:
            assert not (labels[out] == c).any()


def test_a_folder_with_one_class_says_so(tmp_path):
    """Case 5: said "cannot tell which column holds the labels (columns: ['image'])"."""
    root = photos(tmp_path / "p", {"ants": 10})
    with pytest.raises(Fm2EdgeError, match=r"only one class folder \('ants'\); a classifier needs at least two"):
        load_data(DataConfig(source=str(root)))


def test_a_small_validation_split_says_it_cannot_rank_and_ties_go_to_the_lower_loss(tmp_path, caplog):
    """Case 6: 25 validation images chose epochs anywhere, silently, and ties kept the earliest epoch."""
    root = photos(tmp_path / "p", {"train/ants": 20, "train/bees": 20, "val/ants": 12, "val/bees": 13,
                                   "test/ants": 5, "test/bees": 5})
    with caplog.at_level(logging.WARNING):
        rc = main(["train", "--data.source", str(root), "--model.name", "student:small_cnn", "--model.image_size", "32",
                   "--train.epochs", "2",
                   "--train.device", "cpu", "--run.root", str(tmp_path / "runs"), "--run.name", "r"])
    assert rc == 0
    assert "validation holds 25 images" in caplog.text and "--train.select last" in caplog.text
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    noise = metrics["selected"]["noise"]
    assert noise["noisy"] and noise["val_images"] == 25 and noise["half_width"] > 0.15
    assert set(metrics["splits"]) == {"train", "validation", "test"}
    if sys.platform == "linux":  # the stage's resident high-water mark: at least the torch it imported
        assert metrics["peak_rss_bytes"] > 100 * 2**20
    assert all(len(s["content"]) == 12 for s in metrics["splits"].values())
    from fm2edge.report.job import ReportJob, report_job

    report = report_job(ReportJob(runs=[str(tmp_path / "runs")], output=str(tmp_path / "report")))
    assert any("validation holds 25 images" in c for c in report["cautions"])
    assert "id='cautions'" in (tmp_path / "report" / "report.html").read_text()
    # ties: the later epoch with the lower validation loss wins; a worse loss does not
    sel = Selection()
    assert sel.offer(1, 0.8, 0.9) and sel.offer(2, 0.8, 0.5) and sel.epoch == 2
    assert not sel.offer(3, 0.8, 0.7) and sel.epoch == 2 and sel.stale == 1


def test_selection_noise_thresholds():
    assert binomial_half_width(25) == pytest.approx(0.1825, abs=1e-3)
    assert selection_noise(99)["noisy"] and not selection_noise(500)["noisy"]
    assert "warning" not in selection_noise(1000)
    # what helps: a fixed schedule where epochs are chosen; more validation images where auto's candidates are (they
    # train a fixed schedule already, and --train.select is not one of auto's options)
    assert "--train.select last" in selection_noise(40)["warning"]
    warning = selection_noise(40, "candidates")["warning"]
    assert "--train.select" not in warning and warning.endswith("give validation more images (a val/ folder beside "
                                                                "train/, or a larger --data.val_fraction)")


def test_validation_never_holds_a_test_image_even_when_the_source_files_one_under_both(tmp_path, caplog):
    root = photos(tmp_path / "p", {"train/ants": 10, "train/bees": 10, "val/ants": 5, "val/bees": 5,
                                   "test/ants": 5, "test/bees": 5})
    for i in range(2):  # two test images filed under val/ too (same pixels, other names)
        (root / "val" / "ants" / f"copy{i}.png").write_bytes((root / "test" / "ants" / f"{i}.png").read_bytes())
    with caplog.at_level(logging.WARNING):
        train, val, test = load_data(DataConfig(source=str(root)))
    assert len(val) == 10 and not hashes(val) & hashes(test)
    assert "2 of the 12 validation images" in caplog.text


def test_splits_held_out_here_never_hold_a_training_images_pixels(tmp_path, caplog):
    """A flat folder with each photo of one class saved twice (another name, the same pixels): wherever the split
    puts one copy, the test and validation images it holds out share no pixels with the training images."""
    root = photos(tmp_path / "p", {"ants": 20, "bees": 20})
    for i in range(20):
        (root / "ants" / f"copy{i}.png").write_bytes((root / "ants" / f"{i}.png").read_bytes())
    with caplog.at_level(logging.WARNING):
        train, val, test = load_data(DataConfig(source=str(root), val_fraction=0.2))
    assert not hashes(test) & hashes(train) and not hashes(val) & hashes(train) and not hashes(val) & hashes(test)
    assert "are also training images (same pixels) and are left out of the test split" in caplog.text
    assert "training image(s)" not in caplog.text  # nothing left to warn of
    assert set(test.labels.tolist()) == {0, 1} and len(train) + len(val) + len(test) < 60


def test_a_folder_of_copies_alone_is_one_clear_error(tmp_path):
    root = tmp_path / "p"
    for cls, colour in (("ants", (200, 10, 10)), ("bees", (10, 10, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), colour).save(root / cls / f"{i}.png")
    with pytest.raises(Fm2EdgeError, match="holds copies of its photos; remove the copies"):
        load_data(DataConfig(source=str(root)))


def test_one_photo_filed_under_two_classes_is_named(tmp_path, capsys, caplog):
    hashes = np.array([[1], [2], [1], [3], [2], [1]], dtype=np.uint8)
    assert label_conflicts(hashes, np.array([0, 1, 1, 0, 1, 0])) == [[0, 2, 5]]  # 2 and 4: copies, one class
    root = photos(tmp_path / "p", {"train/ants": 12, "train/bees": 12, "test/ants": 2, "test/bees": 2})
    (root / "train" / "bees" / "ant 3.png").write_bytes((root / "train" / "ants" / "3.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="fm2edge"):
        train, _, _ = load_data(DataConfig(source=str(root), val_fraction=0))
    names = [train.class_names[i] for i in train.labels.tolist()]
    assert names.count("bees") == 13  # reported, not removed: which of the two is right is the user's call
    assert "2 training image(s)" in caplog.text and "filed under another class" in caplog.text
    assert main(["data", str(root), "--data.val_fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "label conflicts: 2 training image(s)" in out
    assert "train/ants/3.png (ants)  =  train/bees/ant 3.png (bees)" in out, out


def test_hidden_and_non_image_files_are_skipped_and_odd_class_names_kept(tmp_path, capsys):
    root = photos(tmp_path / "p", {"big cat": 6, "chien é": 6})
    (root / ".DS_Store").write_bytes(b"x")
    (root / "big cat" / "notes.txt").write_text("x")
    (root / ".cache").mkdir()
    Image.new("RGB", (12, 12)).save(root / ".cache" / "thumb.png")
    train, _, _ = load_data(DataConfig(source=str(root)))
    assert train.class_names == ["big cat", "chien é"]
    assert main(["data", str(root), "--data.image_size", "12"]) == 0
    out = capsys.readouterr().out
    assert "skipped: 2 hidden, 1 not an image" in out and "chien é" in out
    assert main(["data", str(root), "--json", "true"]) == 0
    summary = json.loads(capsys.readouterr().out)
    per_class = summary["splits"]["test"]["per_class"]
    assert set(per_class) == {"big cat", "chien é"} and sum(per_class.values()) == 3  # 25% of 12, stratified
    assert summary["layout"] == "root/<class>/<image>"


def test_content_hashes_match_for_the_same_images_and_differ_for_others(tmp_path):
    a = photos(tmp_path / "a", {"ants": 8, "bees": 8})
    train1, _, _ = load_data(DataConfig(source=str(a)))
    train2, _, _ = load_data(DataConfig(source=str(a), cache_dir=str(tmp_path / "other-cache")))
    assert train1.content_hash == train2.content_hash
    flipped = train1.subset(np.arange(len(train1)))
    flipped.labels = 1 - flipped.labels
    assert flipped.content_hash != train1.content_hash  # labels count too
    assert torch.equal(train1.images, train2.images)


@pytest.mark.parametrize("layout,match", [
    ({"train/ants": 4, "train/bees": 4, "cats": 2}, r"mixes split folders \(train\) with other folders \(cats\)"),
    ({"train/ants": 4, "train/bees": 4, "val/ants": 2, "validation/ants": 2},
     r"two folders for the validation split \('val' and 'validation'\)"),
    ({"test/ants": 4, "test/bees": 4}, r"split folders \(test\) but none for training"),
    ({"train/ants": 4, "train/bees": 4, "train/loose": 0}, None),
])
def test_odd_split_layouts_are_one_line_each(layout, match, tmp_path, capsys):
    root = photos(tmp_path / "p", layout)
    if match is None:  # an empty class folder beside real ones is left out, with a word, not an error
        assert main(["data", str(root)]) == 0
        assert "empty class folder left out" in capsys.readouterr().out
        return
    assert main(["train", "--data.source", str(root), "--train.device", "cpu", "--run.root", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fm2edge: error: image folder") and re.search(match, err[0]), err
    assert not (tmp_path / "r").exists()


def test_a_training_image_that_is_a_test_image_of_another_class_is_named_a_conflict(tmp_path, caplog):
    """Two training photos copied into the test split, one under its own class and one under the other: both count
    as shared, the second as a label conflict too."""
    import shutil

    root = photos(tmp_path / "p", {"train/ants": 6, "train/bees": 6, "test/ants": 3, "test/bees": 3})
    shutil.copy(root / "train/ants/0.png", root / "test/ants/copy.png")
    shutil.copy(root / "train/ants/1.png", root / "test/bees/copy.png")
    with caplog.at_level("WARNING"):
        load_data(DataConfig(source=str(root), val_fraction=0))
    assert "2 training image(s) of" in caplog.text
    assert "also test images (same pixels), 1 of them filed there under another class" in caplog.text


def test_class_folders_named_like_splits_beside_others_are_classes(tmp_path, capsys):
    """An inspection set's `valid/` and `invalid/` (no training split among them) are its two classes; `val/` and
    `test/` alone still ask for the training split (the parametrised layouts above)."""
    root = photos(tmp_path / "p", {"valid": 8, "invalid": 8})
    train, val, test = load_data(DataConfig(source=str(root), test_fraction=0.25))
    assert train.class_names == ["invalid", "valid"] and set(test.labels.tolist()) == {0, 1}
    assert main(["data", str(root)]) == 0
    assert "source: " in capsys.readouterr().out


def test_imbalanced_training_classes_get_a_note_balanced_ones_none(tmp_path, capsys):
    even = photos(tmp_path / "even", {"ants": 8, "bees": 6})
    assert main(["data", str(even)]) == 0
    assert "classes are imbalanced" not in capsys.readouterr().out
    skewed = photos(tmp_path / "skewed", {"ants": 24, "bees": 4})
    assert main(["data", str(skewed)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"note: the training classes are imbalanced \(\d+ 'ants' to \d+ 'bees', \d+\.\d to 1\)", out), out
    assert "--auto.metric balanced_accuracy" in out  # what to do about it
    assert main(["data", str(skewed), "--json", "true"]) == 0
    imbalance = json.loads(capsys.readouterr().out)["imbalance"]
    assert (imbalance["largest"], imbalance["smallest"]) == ("ants", "bees") and imbalance["ratio"] >= 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=12))
def test_balanced_accuracy_is_as_noisy_as_accuracy_on_fewer_images_than_validation_holds(counts):
    """Balanced accuracy over classes of ``counts`` images is as noisy as accuracy on K^2 / sum(1/n_k) images: all
    of them where the classes are equal, never more than validation holds, never fewer than K times the smallest
    class (the harmonic mean), classes without images left out."""
    n = effective_images(counts)
    present = [c for c in counts if c]
    if not present:
        assert n == 0
        return
    assert len(present) * min(present) - 1 <= n <= sum(present)
    if len(set(present)) == 1:
        assert n == sum(present)


def test_a_small_class_makes_balanced_validation_too_coarse_to_rank():
    """216 cats and 27 dogs to train leave 24 and 3 to validate: plain accuracy on 27 images is known to +-17.6
    points, balanced accuracy only as well as accuracy on 10 images, and the warning names the class."""
    noise = balanced_selection_noise([24, 3], ["cat", "dog"], "candidates")
    assert noise["effective_images"] == 10 and noise["val_images"] == 27 and noise["noisy"]
    assert noise["half_width"] == pytest.approx(binomial_half_width(10), abs=1e-4)
    assert noise["half_width"] > selection_noise(27)["half_width"]
    assert "3 of 27 images are 'dog'" in noise["warning"]
    assert not balanced_selection_noise([300, 300], ["a", "b"])["noisy"]


def test_an_imbalance_is_named_by_its_largest_and_smallest_classes_from_two_to_one():
    """The note `fm2edge data` and `fm2edge auto` print: the largest class, the smallest one with images (a class
    with none is not the smallest), and the ratio; classes under 2 to 1 apart say nothing."""
    from fm2edge.data.summary import class_imbalance, imbalance_text

    found = class_imbalance({"ants": 24, "bees": 4, "wasps": 0, "flies": 10})
    assert (found["largest"], found["smallest"], found["ratio"]) == ("ants", "bees", 6.0)
    assert imbalance_text(found) == "the training classes are imbalanced (24 'ants' to 4 'bees', 6.0 to 1)"
    assert imbalance_text(class_imbalance({"ants": 7, "bees": 4})) is None


def smooth_photos(root, counts: dict[str, int], size: int = 48, seed: int = 0):
    """root/<rel>/<i>.png: smooth random images (4 x 4 colours, blown up), which keep their look when resized."""
    rng = np.random.default_rng(seed)
    for rel, n in counts.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            small.resize((size, size), Image.BICUBIC).save(root / rel / f"{i}.png")
    return root


def test_a_held_out_image_that_looks_like_a_training_image_is_named(tmp_path, capsys, caplog):
    root = smooth_photos(tmp_path / "p", {"train/a": 10, "train/b": 10, "test/a": 3, "test/b": 3})
    # the same photo, smaller and re-saved as a JPEG: its pixels differ, so the exact check passes it
    Image.open(root / "train" / "a" / "3.png").resize((40, 40), Image.BILINEAR).save(root / "test" / "a" / "copy.jpg",
                                                                                     quality=80)
    with caplog.at_level("WARNING"):
        train, val, test = load_data(DataConfig(source=str(root), val_fraction=0, image_size=32))
    assert "1 of the 7 test images of" in caplog.text and "look like a training image" in caplog.text
    assert main(["data", str(root), "--data.image_size", "32", "--data.val_fraction", "0", "--json", "true"]) == 0
    near = json.loads(capsys.readouterr().out)["near_copies"]
    assert near["test"] == 1 and near["pairs"][0]["image"] == "test/a/copy.jpg"
    assert near["pairs"][0]["training_image"] == "train/a/3.png" and near["pairs"][0]["bits"] <= near["max_bits"]
    assert near["min_similarity"] <= near["pairs"][0]["similarity"] <= 1.0
    sheet = tmp_path / "pairs.png"
    assert main(["data", str(root), "--data.image_size", "32", "--data.val_fraction", "0", "--pairs", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "near-copies: 1 test image(s) look like a training image" in out and f"drawn side by side in {sheet}" in out
    assert Image.open(sheet).size == (4 * (2 * 96 + 16), 96 + 18)  # one row of four pairs' room, one pair in it


def test_near_copies_are_named_the_most_alike_first(tmp_path, capsys):
    """`fm2edge data` names (and draws) the likeliest copies first, whatever their order in the folder."""
    from PIL import ImageEnhance

    root = smooth_photos(tmp_path / "p", {"train/a": 10, "train/b": 10, "test/a": 3, "test/b": 3})
    edited = ImageEnhance.Contrast(Image.open(root / "train" / "a" / "1.png").convert("RGB")).enhance(0.6)
    edited.save(root / "test" / "a" / "0-edited.png")  # first in the folder, less alike
    Image.open(root / "train" / "b" / "2.png").save(root / "test" / "b" / "9-copy.png")  # last, the same pixels
    assert main(["data", str(root), "--data.image_size", "32", "--data.val_fraction", "0", "--json", "true"]) == 0
    pairs = json.loads(capsys.readouterr().out)["near_copies"]["pairs"]
    assert [p["image"] for p in pairs] == ["test/b/9-copy.png", "test/a/0-edited.png"]
    assert pairs[0]["similarity"] > pairs[1]["similarity"]


def test_distinct_photos_have_no_near_copies_and_tiny_images_are_not_compared(tmp_path, capsys):
    from fm2edge.data.splits import near_copies

    root = smooth_photos(tmp_path / "p", {"a": 30, "b": 30})
    train, _, test = load_data(DataConfig(source=str(root), val_fraction=0))
    assert len(near_copies(test, train)[0]) == 0
    assert main(["data", str(root)]) == 0
    assert "near-copies: no validation or test image looks like a training image" in capsys.readouterr().out
    assert main(["data", "digits"]) == 0
    assert "near-copies: not looked for (images under 16 px" in capsys.readouterr().out


def traffic_light(lit: int, size: int = 64) -> Image.Image:
    """Clip art on a flat black background: three lamps, one lit. Any two hash alike (the grey cells barely
    differ), though which lamp is lit is the whole picture."""
    from PIL import ImageDraw

    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for k, colour in enumerate([(255, 0, 0), (255, 220, 0), (0, 200, 0)]):
        draw.ellipse((22, 4 + 19 * k, 42, 22 + 19 * k), fill=colour if k == lit else tuple(v // 4 for v in colour))
    return image


def test_drawings_that_hash_alike_on_a_flat_background_are_near_copies_only_where_they_are_alike(tmp_path,
                                                                                                monkeypatch):
    """The hash finds candidates; the structural similarity of their grey levels, flat windows left out, decides:
    a red and a yellow traffic light 0 bits apart are two pictures, a photo saved again as a JPEG is one."""
    from fm2edge.data.splits import NEAR_COPY_BITS, near_copies

    root = smooth_photos(tmp_path / "p", {"train/a": 10, "train/b": 10, "test/a": 3, "test/b": 3})
    traffic_light(0).save(root / "train" / "b" / "red.png")
    traffic_light(1).save(root / "test" / "b" / "yellow.png")
    Image.open(root / "train" / "a" / "3.png").save(root / "test" / "a" / "copy.jpg", quality=85)
    train, _, test = load_data(DataConfig(source=str(root), val_fraction=0, image_size=64))

    def position(data, image: Image.Image) -> int:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return next(i for i in range(len(data)) if torch.equal(data.images[i], pixels))

    red, yellow = position(train, traffic_light(0)), position(test, traffic_light(1))
    hash_bits = np.unpackbits(test.perceptual_hashes()[yellow] ^ train.perceptual_hashes()[red]).sum()
    assert hash_bits <= NEAR_COPY_BITS  # the hash alone would call the yellow light a copy of the red one
    at, index, bits, similarity = near_copies(test, train)
    assert yellow not in at.tolist()
    assert len(at) == 1 and index[0] != red and bits[0] <= NEAR_COPY_BITS and similarity[0] >= 0.9  # the JPEG
    monkeypatch.setattr("fm2edge.data.splits.SIMILARITY_CHUNK", 1)  # the pairs scored one at a time: the same
    test.near = None
    again = near_copies(test, train)
    assert all(np.array_equal(x, y) for x, y in zip(again, (at, index, bits, similarity), strict=True))


def test_structural_similarity_is_one_for_equal_images_and_leaves_flat_windows_out():
    from fm2edge.data.splits import NEAR_COPY_SSIM, structural_similarity

    def tensor(*images):
        return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).contiguous()

    lights = tensor(traffic_light(0), traffic_light(1), traffic_light(2))
    flat = torch.full((2, 3, 40, 40), 90, dtype=torch.uint8)
    assert structural_similarity(lights, lights) == pytest.approx(1.0)
    assert structural_similarity(flat[:1], flat[1:]) == pytest.approx(1.0)  # flat all over: every window counts
    apart = structural_similarity(lights[:2], lights[1:])
    assert (apart < NEAR_COPY_SSIM).all()
    # two chunks or one, the same scores
    assert structural_similarity(lights[:2], lights[1:], chunk=1) == pytest.approx(apart)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=12), st.lists(st.integers(0, 2**64 - 1),
                                                                               min_size=0, max_size=30),
       st.integers(0, 64), st.integers(1, 4), st.integers(1, 64))
def test_hash_candidates_are_every_pair_within_the_bits_nearest_first_and_capped_per_image(held, train, max_bits,
                                                                                          per_image, budget):
    """Against a brute-force count, whatever the chunking: each held-out hash's training hashes within max_bits,
    nearest first (ties in training order), the first per_image of them."""
    from fm2edge.data.splits import hash_candidates

    def packed(values):
        return np.array(values, dtype=np.uint64).reshape(-1, 1).view(np.uint8).reshape(-1, 8)

    rows, cols, bits = hash_candidates(packed(held), packed(train), max_bits, per_image, budget=budget)
    want = []
    for i, h in enumerate(held):
        near = sorted((bin(h ^ t).count("1"), j) for j, t in enumerate(train) if bin(h ^ t).count("1") <= max_bits)
        want += [(i, j, d) for d, j in near[:per_image]]
    assert list(zip(rows.tolist(), cols.tolist(), bits.tolist(), strict=True)) == want


def test_run_metrics_count_near_copies(tmp_path):
    from fm2edge.results import start_stage

    root = smooth_photos(tmp_path / "p", {"train/a": 10, "train/b": 10, "test/a": 3, "test/b": 3})
    Image.open(root / "train" / "b" / "0.png").save(root / "test" / "b" / "copy.jpg", quality=85)
    splits = start_stage(DataConfig(source=str(root), image_size=32), "cpu").splits
    assert splits["test"]["near_copies"] == 1 and set(splits["train"]) == {"images", "content"}


def test_popcount_counts_bits_with_and_without_numpys_own(monkeypatch):
    from fm2edge.data import splits

    x = np.random.default_rng(0).integers(0, 2**63, 200, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    want = [bin(int(v)).count("1") for v in x]
    assert splits.popcount(x).tolist() == want
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy before 2.0: the SWAR sum
    assert splits.popcount(x).tolist() == want
    held = np.packbits(np.eye(64, dtype=bool)[:3], axis=1)  # one bit set each
    index, bits = splits.nearest_hashes(held, np.zeros((5, 8), dtype=np.uint8))
    assert bits.tolist() == [1, 1, 1] and index.tolist() == [0, 0, 0]
