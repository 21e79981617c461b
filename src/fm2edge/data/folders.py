"""Image folders: the one place that knows how a folder of photos becomes labelled splits.

Two layouts are read: ``root/<class>/<image>`` (one split, "train") and ``root/<split>/<class>/<image>`` with split
folders named as the Hugging Face hub names them (train/training; val/valid/validation/dev; test/testing/eval/
evaluation) or as ``--data.*_split`` names them; where no folder has such a name but every one names a split among
other words, one of them training (``seg_train``, ``seg_test``, ``TrainingSet``), they are read as those splits rather
than as classes called "seg_train" and "seg_test". A folder whose only content is a folder of the same name
(``seg_train/seg_train/``, as archives often unpack) is read through. A class folder may hold sub-folders
(``cats/2019/IMG_1.jpg``, as torchvision's ``ImageFolder`` reads them): their images are the class's, and each
sub-folder is a *group*, kept whole when images are held out for validation or testing (photos of one shoot or one
burst, nearly alike, would otherwise sit on both sides of the split and inflate the held-out accuracy).

Labels may instead be listed beside the images, as the Hugging Face image folder reads them: a ``metadata.csv`` (or
``metadata.jsonl``) in the data folder, or in each split folder, with a ``file_name`` column (each image's path from
that file's folder) and a label column (``--data.label_column``, else ``label`` or another name the hub uses for
one). A metadata file without a label column (captions, camera settings) leaves the labels to the class folders, as
the hub's image folder does. Images it does not list are skipped and counted; a listed file that is missing is an
error. A labels file anywhere else (``--data.labels labels.csv``, as Kaggle ships ``train/`` beside ``labels.csv``)
lists each image by its path from the data folder, or by its file name with or without the extension where that
name is unique, and its class; its images form the training split, the rest are skipped and counted.

Written here rather than left to ``datasets``' ``imagefolder`` builder because on real folders that builder gives
wrong numbers without a word: it does not follow symbolic links (a linked ``train/`` ends in an EmptyDatasetError),
it merges the class folders of every split into one label set (a class that exists only under ``test/`` becomes a
class with no training image), and it blames every image of a split on one misplaced file. Here links are followed,
hidden and non-image files are skipped and counted, class names are kept exactly as the folders spell them (spaces
and non-ASCII included), and a misplaced image is named by itself.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fm2edge.data.images import HEIF_FIX, HEIF_SKIPPED, IMAGE_SUFFIXES, unreadable_kind
from fm2edge.errors import Fm2EdgeError

log = logging.getLogger(__name__)

# folder name (lower case) -> the split it holds, as the hub's data-files patterns name them
SPLIT_NAMES = {"train": "train", "training": "train",
               "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
               "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}


@dataclass
class FolderSplit:
    """One split of an image folder: image paths, integer labels into the folder's class names, the folder, and
    each image's group (:func:`group_of`)."""

    folder: Path
    files: list[Path]
    labels: list[int]
    groups: list[str] = field(default_factory=list)


@dataclass
class FolderScan:
    """What an image folder resolves to: its splits, its class names (from the training split), and what was
    skipped on the way (hidden files, non-image files, broken links)."""

    root: Path
    layout: str  # "root/<class>/<image>" or "root/<split>/<class>/<image>"
    splits: dict[str, FolderSplit]
    class_names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)
    metadata: list[Path] = field(default_factory=list)  # the label files read (part of what keys the caches)

    @property
    def files(self) -> list[Path]:
        return [f for s in self.splits.values() for f in s.files]

    @property
    def sub_folders(self) -> int:
        """How many sub-folders of class folders hold images (each one a group kept whole)."""
        return sum(len({g for g in s.groups if not g.startswith((IMAGE_GROUP, COLUMN_GROUP))})
                   for s in self.splits.values())


# The group of an image directly in its class folder: the image alone (nothing says which of them are alike).
IMAGE_GROUP = "image:"
# The group a column names (--data.group_column: a patient, a site, a camera): kept whole whatever its classes.
COLUMN_GROUP = "group:"


@dataclass(frozen=True)
class Columns:
    """The columns of a metadata or labels file that fm2edge reads beside the image's name: its class (``label``;
    empty: found by name) and its group (``group``; empty: each image its own)."""

    label: str | None = None
    group: str | None = None


def column_group(value: object, name: str) -> str:
    """The group of an image whose group column holds ``value``: that value's, or the image alone where it is
    empty."""
    text = "" if value is None else str(value).strip()
    return COLUMN_GROUP + text if text else IMAGE_GROUP + name


def named_group(group: object) -> str | None:
    """The value a group column gave ``group`` (:func:`column_group`); None for any other group."""
    text = str(group)
    return text.removeprefix(COLUMN_GROUP) if text.startswith(COLUMN_GROUP) else None


def group_of(rel: Path) -> str:
    """The group of an image at ``rel`` (``<class>/.../<image>``, relative to its split folder): the sub-folder it
    sits in (``cats/2019``), or the image itself where it sits directly in its class folder."""
    return str(rel.parent) if len(rel.parts) > 2 else IMAGE_GROUP + str(rel)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def walk_files(root: Path) -> tuple[list[Path], dict[str, int]]:
    """Every file below ``root`` as a path relative to it, symbolic links followed (a linked folder seen twice is
    read once), sorted; hidden entries, non-image files and broken links are skipped and counted."""
    found: list[Path] = []
    skipped = {"hidden": 0, "not an image": 0, "broken link": 0, HEIF_SKIPPED: 0}
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        skipped["hidden"] += sum(1 for d in dirs if d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(folder, name)
            if name.startswith("."):
                skipped["hidden"] += 1
            elif not path.exists():
                skipped["broken link"] += 1
            elif not is_image(path):
                skipped[unreadable_kind(path)] += 1
            else:
                found.append(path.relative_to(root))
    if heif := skipped[HEIF_SKIPPED]:  # photos, not clutter: every command says so
        log.warning("%s: skipped %d HEIC/HEIF photo(s): %s", root, heif, HEIF_FIX)
    return sorted(found), {k: v for k, v in skipped.items() if v}


def split_of(name: str, named: dict[str, str]) -> str | None:
    """The split a top-level folder holds: a name given with --data.*_split first, then the hub's names."""
    return named.get(name, SPLIT_NAMES.get(name.lower()))


def split_in_words(name: str) -> str | None:
    """The split a folder's name names among other words (``seg_train``, ``TrainingSet``, ``test-images``: its
    words split at punctuation and capitals), when it names exactly one."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)
    found = {SPLIT_NAMES[w.lower()] for w in words if w.lower() in SPLIT_NAMES}
    return found.pop() if len(found) == 1 else None


def splits_in_words(root: Path, tops: list[str]) -> dict[str, str]:
    """``tops`` (top-level folders, none of them named as a split) read as splits where their names say so among
    other words: every one of them names a split, one of them training (``seg_train``, ``seg_test``). Where some do
    and others do not (``seg_train``, ``seg_test``, ``seg_pred``), one error: a classifier of splits is never what
    was meant. Empty where no two name different splits, one of them training: those are class folders."""
    found = {t: split_in_words(t) for t in tops}
    like = [t for t in tops if found[t]]
    if "train" not in found.values() or len(set(found.values()) - {None}) < 2:
        return {}
    if len(like) < len(tops):
        others = [t for t in tops if not found[t]]
        raise Fm2EdgeError(f"image folder '{root}' holds folders named like splits ({', '.join(like)}) beside others "
                           f"({', '.join(others)}), where class folders should be; move the others out of the data "
                           f"folder, or give the folder of one split's class folders as --data.source")
    log.info("'%s': reading %s as the %s split(s)", root, ", ".join(like), ", ".join(found[t] for t in like))
    return {t: found[t] for t in like}


def classes_named_like_splits(split_tops: list[str], tops: list[str], named: dict[str, str], train: str) -> bool:
    """Whether top-level folders whose names are split names are classes after all: ``valid`` beside ``invalid``
    (an inspection set's classes) or ``test`` beside ``production``. So where some of the folders are not named as
    splits, none of those that are was named on the command line, and none is the training split (split folders
    without one cannot be read as splits anyway); all named as splits (``val``, ``test``) stays an error that asks
    for the training split."""
    return (bool(split_tops) and len(split_tops) < len(tops) and not set(split_tops) & set(named)
            and train not in {split_of(t, named) for t in split_tops})


def read_through(folder: Path, rel: list[Path]) -> tuple[Path, list[Path]]:
    """``folder`` and its files (relative to it) read through a sub-folder of the same name that holds them all
    (``seg_train/seg_train/<class>/``, as archives often unpack), however deep the repetition."""
    while rel and all(len(f.parts) > 2 and f.parts[0] == folder.name for f in rel):
        log.info("'%s' holds only '%s': reading the classes in it", folder, folder.name)
        folder, rel = folder / folder.name, [Path(*f.parts[1:]) for f in rel]
    return folder, rel


def scan_folder(root: Path, named: dict[str, str] | None = None, train: str = "train",
                columns: Columns = Columns(), labels_file: str | None = None) -> FolderScan:
    """Resolve ``root`` into splits and classes, or raise one error naming the misplaced file or folder and the fix.

    ``named`` maps folder names given on the command line (``--data.test_split holdout``) to the split they are;
    ``train`` is the training split's name (the one whose class folders name the classes); ``columns`` the
    columns of a metadata or labels file that hold the labels and groups; ``labels_file`` a file that lists every
    image's class (``--data.labels``), read instead of the folders.
    """
    named = named or {}
    files, skipped = walk_files(root)
    if labels_file:
        return scan_listed(root, find_labels_file(root, labels_file), columns, files, skipped, train)
    metadata = metadata_files(root, named)
    labels = {top: read_metadata(path, columns) for top, path in metadata.items()}
    if labels and all(v is not None for v in labels.values()):
        return scan_metadata(root, metadata, labels, files, skipped, (named, train))
    if columns.group:
        raise Fm2EdgeError(f"--data.group_column '{columns.group}' names a column of a labels or metadata file, and "
                           f"image folder '{root}' is labelled by its class folders; give the file that lists each "
                           f"image's class and group (--data.labels FILE), or leave --data.group_column empty (a "
                           f"class folder's sub-folders are its groups)")
    try:
        return scan_classes(root, files, skipped, named, train)
    except Fm2EdgeError:
        if not metadata:
            raise
        path = next(metadata[t] for t, v in labels.items() if v is None)
        raise Fm2EdgeError(f"'{path}' has no label column ({', '.join(LABEL_NAMES)}) and the images are not in class "
                           f"folders; name the column that holds each image's class with --data.label_column") from None


def no_images(root: Path, skipped: dict[str, int], fix: str) -> Fm2EdgeError:
    """The error for an image folder with no image file: HEIC photos named where they are the reason, else ``fix``."""
    heif = skipped.get(HEIF_SKIPPED)
    return Fm2EdgeError(f"image folder '{root}' holds no image files ({', '.join(IMAGE_SUFFIXES)})"
                        + (f" but {heif} HEIC/HEIF photo(s): {HEIF_FIX}" if heif else f"; {fix}"))


def scan_classes(root: Path, files: list[Path], skipped: dict[str, int], named: dict[str, str],
                 train: str) -> FolderScan:
    """``root``'s ``files`` (relative to it) resolved into splits and classes by their folders (see
    :func:`scan_folder`)."""
    if not files:
        raise no_images(root, skipped, "lay it out as root/<class>/<image> or root/<split>/<class>/<image>")
    root, files = read_through(root, files)
    tops = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    split_tops = [t for t in tops if split_of(t, named)]
    if classes_named_like_splits(split_tops, tops, named, train):
        log.info("'%s': %s named like a split beside %s, with no training split: all read as class folders", root,
                 ", ".join(split_tops), ", ".join(t for t in tops if t not in split_tops))
        split_tops = []
    if not split_tops and (in_words := splits_in_words(root, tops)):
        named, split_tops = {**in_words, **named}, list(in_words)
    if split_tops and len(split_tops) < len(tops):
        others = [t for t in tops if t not in split_tops]
        raise Fm2EdgeError(f"image folder '{root}' mixes split folders ({', '.join(split_tops)}) with other folders "
                           f"({', '.join(others)}); put every class folder inside a split folder, or rename the "
                           f"split folders")
    if split_tops:
        layout = "root/<split>/<class>/<image>"
        groups = {t: [Path(*f.parts[1:]) for f in files if f.parts[0] == t] for t in split_tops}
        loose = [f for f in files if len(f.parts) == 1]
        if loose:
            raise _misplaced(root, loose, layout)
    else:
        layout = "root/<class>/<image>"
        groups = {"": files}
    by_split: dict[str, tuple[Path, list[Path]]] = {}
    for top, rel in groups.items():
        split = split_of(top, named) if top else train
        if split in by_split:
            first = by_split[split][0].name
            raise Fm2EdgeError(f"image folder '{root}' has two folders for the {split} split ('{first}' and "
                               f"'{top}'); keep one")
        folder, rel = read_through(root / top, rel) if top else (root, rel)
        misplaced = [folder.relative_to(root) / f for f in rel if len(f.parts) < 2]
        if misplaced:
            raise _misplaced(root, misplaced, layout)
        by_split[split] = (folder, rel)
    if train not in by_split:
        raise Fm2EdgeError(f"image folder '{root}' has split folders ({', '.join(split_tops)}) but none for training; "
                           f"name one 'train', or choose it with --data.train_split")
    train_classes = sorted({f.parts[0] for f in by_split[train][1]})
    if len(train_classes) < 2:
        raise one_class(root, by_split[train], train_classes[0])
    index = {c: i for i, c in enumerate(train_classes)}
    splits = {}
    order = {train: 0, "validation": 1, "test": 2}
    for split, (folder, rel) in sorted(by_split.items(), key=lambda item: (order.get(item[0], 3), item[0])):
        strays = sorted({f.parts[0] for f in rel} - set(index))
        if strays:
            raise Fm2EdgeError(f"class '{strays[0]}' has images in '{folder / strays[0]}' but none for training in "
                               f"'{by_split[train][0]}'; add training images for it, or move that folder out of "
                               f"the data folder")
        splits[split] = FolderSplit(folder, [folder / f for f in rel], [index[f.parts[0]] for f in rel],
                                    [group_of(f) for f in rel])
    empty = [str(d) for d in empty_class_folders(by_split)]
    for d in empty:
        log.warning("class folder '%s' holds no images and is left out", d)
    return FolderScan(root, layout, splits, train_classes, skipped, empty)


METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
LABEL_NAMES = ("label", "labels", "class", "category", "target")  # the label columns the hub's datasets use


def metadata_files(root: Path, named: dict[str, str]) -> dict[str, Path]:
    """The metadata files that label ``root``'s images, by split: one in ``root`` (the training split), or one in
    each split folder that has one."""
    def found(folder: Path) -> Path | None:
        return next((folder / n for n in METADATA_NAMES if (folder / n).is_file()), None)

    if top := found(root):
        return {"": top}
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and split_of(d.name, named)]
    out = {d.name: m for d in split_dirs if (m := found(d))}
    if out and (bare := [d.name for d in split_dirs if d.name not in out]):
        raise Fm2EdgeError(f"image folder '{root}' has metadata files in {', '.join(out)} but not in "
                           f"{', '.join(bare)}; add a metadata.csv there too (columns file_name and label)")
    return out


# An image's row in a metadata or labels file, read: {its path: (class, group)}.
Listed = dict[str, tuple[str, str]]


def read_metadata(path: Path, columns: Columns) -> Listed | None:
    """``file_name`` -> (label as text, group) from a metadata.csv or .jsonl; None where it has no label column
    (``columns.label``, else one of LABEL_NAMES: a caption or a camera is not a class), as the hub's image folder
    then takes the labels from the class folders; one error naming the file and its columns where it has no
    ``file_name`` column or not a column named."""
    rows = read_rows(path)
    have = list(rows[0]) if rows else []
    column = columns.label or next((c for c in LABEL_NAMES if c in have), None)
    lacking = next((c for c in (columns.label, columns.group) if c and c not in have), None)
    if "file_name" not in have or lacking:
        wanted = "a file_name column" if "file_name" not in have else f"a '{lacking}' column"
        raise Fm2EdgeError(f"'{path}' has columns {have or 'none'}; it needs {wanted}: one row per image, its "
                           f"path from '{path.parent}' and its class")
    if column is None:
        return None
    return {(name := str(Path(r["file_name"]))): (str(r[column]), column_group(r.get(columns.group), name))
            for r in rows if r.get(column) not in (None, "")}


def scan_metadata(root: Path, metadata: dict[str, Path], labels: dict[str, Listed], files: list[Path],
                  skipped: dict[str, int], splits_named: tuple[dict[str, str], str]) -> FolderScan:
    """An image folder labelled by metadata files (see the module's docstring; ``labels``: each one's
    :func:`read_metadata`): each split's images those files list; unlisted images skipped and counted.
    ``splits_named``: (``named``, ``train``) as :func:`scan_folder` takes them."""
    named, train = splits_named
    layout = "root/metadata.csv" if "" in metadata else "root/<split>/metadata.csv"
    by_split: dict[str, tuple[Path, Listed]] = {}
    for top, path in metadata.items():
        by_split[split_of(top, named) if top else train] = (path.parent, labels[top])
    if train not in by_split:
        raise Fm2EdgeError(f"image folder '{root}' has metadata files for {', '.join(sorted(by_split))} but none for "
                           f"training; add one to the training split's folder")
    listed = {(root / f).resolve() for f in files}
    for folder, labels in by_split.values():
        missing = [n for n in labels if (folder / n).resolve() not in listed]
        if missing:
            raise Fm2EdgeError(f"'{folder / missing[0]}' is listed in '{folder}' metadata ({len(missing)} such "
                               f"file(s)) but is not an image there; fix the file_name column or add the image")
    return labelled_scan(root, layout, by_split, train, (files, skipped), sorted(metadata.values()),
                         "a metadata file")


def labelled_scan(root: Path, layout: str, by_split: dict[str, tuple[Path, Listed]], train: str,
                  walked: tuple[list[Path], dict[str, int]], label_files: list[Path], named: str) -> FolderScan:
    """The scan of images labelled by ``label_files`` (metadata or labels files, ``named`` so in messages):
    ``by_split`` maps each split to its folder and {image path from that folder: (class, group)}; ``walked`` is
    :func:`walk_files`' answer for ``root``. Images no file lists are skipped and counted."""
    files, skipped = walked
    train_classes = sorted({label for label, _ in by_split[train][1].values()})
    if len(train_classes) < 2:
        raise Fm2EdgeError(f"'{label_files[0]}' labels every training image "
                           f"'{train_classes[0] if train_classes else ''}'; a classifier needs at least two classes")
    index = {c: i for i, c in enumerate(train_classes)}
    splits: dict[str, FolderSplit] = {}
    for split, (folder, labels) in sorted(by_split.items(), key=lambda item: item[0] != train):
        strays = sorted({label for label, _ in labels.values()} - set(index))
        if strays:
            raise Fm2EdgeError(f"class '{strays[0]}' is in '{folder}' metadata but no training image has it; "
                               f"label some training images '{strays[0]}', or drop its rows")
        names = sorted(labels)
        splits[split] = FolderSplit(folder, [folder / n for n in names], [index[labels[n][0]] for n in names],
                                    [labels[n][1] for n in names])
    inside = sum(f.resolve().is_relative_to(root.resolve()) for f in label_files)
    skipped = {k: v for k, v in {**skipped, "not an image": skipped.get("not an image", 0) - inside}.items()
               if v}  # the label files themselves are not skipped images
    unlisted = len(files) - sum(len(s.files) for s in splits.values())
    if unlisted:
        skipped[f"not in {named}"] = unlisted
        log.warning("%s: %d image(s) not listed in %s are left out", root, unlisted, named)
    return FolderScan(root, layout, splits, train_classes, skipped, metadata=label_files)


FILE_COLUMNS = ("file_name", "file", "filename", "file_path", "filepath", "path", "image", "image_name",
                "image_id", "img", "id")  # the columns that name images in labels files people have, first wins


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV (header first) or JSON Lines file, each a dict by column."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in fh if line.strip()]
        return list(csv.DictReader(fh))


def find_labels_file(root: Path, given: str) -> Path:
    """``--data.labels`` as an existing file: the path as given, else inside the data folder."""
    path = next((p for p in (Path(given).expanduser(), root / given) if p.is_file()), None)
    if path is None:
        raise Fm2EdgeError(f"labels file '{given}' does not exist (looked in the current folder and in '{root}'); "
                           f"give the CSV that lists each image's file and class")
    return path


def read_labels_file(path: Path, columns: Columns) -> list[tuple[str, str, str]]:
    """(image as the file names it, class, group) rows of a labels file (``--data.labels``): the first column
    FILE_COLUMNS names (case aside) names the image; ``columns.label``, else a column LABEL_NAMES names, else the
    file's one other column (the group column aside) holds its class; ``columns.group``, where given, its group
    (an empty cell: the image alone). Rows without a class are left out (a test list with empty labels)."""
    rows = read_rows(path)
    have = [str(c) for c in rows[0]] if rows else []
    lower = {c.lower(): c for c in have}
    file_col = next((lower[n] for n in FILE_COLUMNS if n in lower), None)
    others = [c for c in have if c not in (file_col, columns.group)]
    label = columns.label or next((lower[n] for n in LABEL_NAMES if n in lower), None) or \
        (others[0] if len(others) == 1 else None)
    if file_col is None or label not in have or (columns.group and columns.group not in have):
        wanted = (f"a column naming each image ({', '.join(FILE_COLUMNS[:3])}, id, ...)" if file_col is None else
                  f"a '{columns.label}' column" if columns.label and columns.label not in have else
                  f"a '{columns.group}' column (--data.group_column)" if label in have else
                  "its class column named: give --data.label_column")
        raise Fm2EdgeError(f"labels file '{path}' has columns {have or 'none'}; it needs {wanted}")
    return [(name, str(r[label]).strip(), column_group(r.get(columns.group), name)) for r in rows
            if r.get(file_col) not in (None, "") and r.get(label) not in (None, "")
            and (name := str(r[file_col]).strip())]


def match_listed(root: Path, files: list[Path], listed: list[tuple[str, str, str]], path: Path) -> Listed:
    """{image path from ``root``: (class, group)} for the images ``listed`` (by :func:`read_labels_file`) names among
    ``files``: by path from the data folder or from the labels file's folder, else by file name, else by file name
    without its extension (Kaggle's ids), where one image has it; one error for a name no image or several have."""
    by_path = {f.as_posix(): f for f in files}
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_name.setdefault(f.name, []).append(f)
        by_stem.setdefault(f.stem, []).append(f)
    here, top = path.parent.resolve(), root.resolve()
    base = here.relative_to(top).as_posix() + "/" if here.is_relative_to(top) and here != top else ""
    out: Listed = {}
    missing: list[str] = []
    for name, label, group in listed:
        key = name.replace("\\", "/").removeprefix("./")
        exact, leaf = by_path.get(key) or by_path.get(base + key), Path(key).name
        found = [exact] if exact else by_name.get(leaf) or by_stem.get(leaf) or []
        if len(found) > 1:
            raise Fm2EdgeError(f"'{name}' in labels file '{path}' names {len(found)} images ('{found[0]}', "
                               f"'{found[1]}'); give each image's path from '{root}' in that column")
        if not found:
            missing.append(name)
            continue
        rel = found[0].as_posix()
        first, first_group = out.setdefault(rel, (label, group))
        if first != label:
            raise Fm2EdgeError(f"'{rel}' is listed twice in labels file '{path}', as '{first}' and '{label}'; "
                               f"keep one row for it")
        named = named_group(first_group), named_group(group)
        if None not in named and named[0] != named[1]:  # which group holds it decides which split it may join
            raise Fm2EdgeError(f"'{rel}' is listed twice in labels file '{path}', in groups '{named[0]}' and "
                               f"'{named[1]}'; keep one row for it")
        if named[0] is None and named[1] is not None:  # a row with its group over one without
            out[rel] = (label, group)
    if missing:
        raise Fm2EdgeError(f"'{missing[0]}' is listed in labels file '{path}' ({len(missing)} such row(s)) but no "
                           f"image in '{root}' has that path or name; fix the row or add the image")
    return out


def scan_listed(root: Path, path: Path, columns: Columns, files: list[Path], skipped: dict[str, int],
                train: str) -> FolderScan:
    """An image folder labelled by a labels file (``--data.labels``): its images are the training split."""
    if not files:
        raise no_images(root, skipped, f"put the images that '{path}' lists in it")
    labels = match_listed(root, files, read_labels_file(path, columns), path)
    return labelled_scan(root, f"images listed in {path.name}", {train: (root, labels)}, train, (files, skipped),
                         [path], path.name)


def one_class(root: Path, train: tuple[Path, list[Path]], name: str) -> Fm2EdgeError:
    """The error for a training split with one class folder; where that folder's sub-folders hold images (perhaps
    the data folder given one level too high: ``photos/PetImages/{Cat,Dog}``), it names the folder to give then."""
    folder, rel = train
    inner = sorted({f.parts[1] for f in rel if len(f.parts) > 2})
    fix = "add a folder of images for each other class"
    if len(inner) >= 2:
        listed = f"{', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}"
        fix += (f", or, if its sub-folders ({listed}) are the classes, "
                + (f"give --data.source '{folder / name}'" if folder == root else f"move them up into '{folder}'"))
    return Fm2EdgeError(f"image folder '{root}' has only one class folder ('{name}'); a classifier needs at least "
                        f"two: {fix}")


def empty_class_folders(by_split: dict[str, tuple[Path, list[Path]]]) -> list[Path]:
    """Class folders (not hidden) that hold no image, in each split folder."""
    out = []
    for folder, rel in by_split.values():
        used = {f.parts[0] for f in rel}
        out += [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".") and d.name not in used]
    return out


def _misplaced(root: Path, odd: list[Path], layout: str) -> Fm2EdgeError:
    more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    tables = sorted(p.name for p in root.glob("*.csv"))
    listed = (f"give the file that lists every image's class: --data.labels {root / tables[0]}" if tables else
              "list every image's class in a metadata.csv with columns file_name and label")
    return Fm2EdgeError(f"image folder '{root}' is laid out {layout}, but '{odd[0]}'{more} is not inside a class "
                        f"folder; move it into its class folder, or out of the data folder (or {listed})")


def looks_like_image_folder(path: Path) -> bool:
    """True for a folder that holds image files (in any layout) and no parquet/arrow data files."""
    images = False
    for _folder, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(n.endswith((".parquet", ".arrow")) for n in names):
            return False
        images = images or any(is_image(Path(n)) and not n.startswith(".") for n in names)
    return images
