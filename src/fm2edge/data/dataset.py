"""One dataset type for every source: decoded uint8 images, integer labels and class names.

Sources (scikit-learn digits, a hub id, local parquet/arrow files, an image folder) are opened through
Hugging Face ``datasets`` where it applies; images are then decoded once into a uint8 N x 3 x H x W array cached on
disk and memory-mapped, so epochs never re-decode and memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fm2edge.config import DataConfig
from fm2edge.data.folders import (
    Columns,
    FolderScan,
    column_group,
    looks_like_image_folder,
    named_group,
    scan_folder,
)
from fm2edge.data.images import decode, find_images, peek_size
from fm2edge.data.splits import (
    check_classes,
    check_disjoint,
    content_hash,
    filed_elsewhere,
    image_hashes,
    label_conflicts,
    near_copies,
    perceptual_hashes,
    shared_with,
)
from fm2edge.errors import Fm2EdgeError, HubUnreachableError, is_offline_error
from fm2edge.runs import atomic_dir, atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("img", "image", "images", "pixel_values", "picture", "photo")
LABEL_COLUMNS = ("label", "labels", "fine_label", "target", "class", "category")
# Photos larger than this are stored at 256 px: 1.14x a 224 px model input (the "resize 256, crop 224" of ImageNet
# evaluation), so random-resized crops for 224 px models still cut from more pixels than they show.
DEFAULT_VARIABLE_SIZE = 256
VAL_NAMES = ("val", "validation", "valid")  # what sources (image folders: "validation") call a validation split
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# local data files are keyed by their bytes up to this total size, by name, size and time above it
CONTENT_KEY_LIMIT = 4 << 30


@dataclass
class ImageData:
    """Images as a uint8 tensor (N, 3, H, W), labels as int64 (N,), and the dataset's class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    fingerprint: str
    skipped: int = 0
    hashes: np.ndarray | None = None  # per-image pixel digests (see fm2edge.data.splits), computed when first asked
    perceptual: np.ndarray | None = None  # per-image perceptual hashes (splits.perceptual_hashes), likewise
    rows: np.ndarray | None = None  # each image's row in its source split, where known (to name it)
    near: tuple | None = None  # (a training split's fingerprint, splits.near_copies against it), once searched

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def subset(self, indices: np.ndarray | torch.Tensor) -> ImageData:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        digest = hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:12]
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx.numpy()]

        return ImageData(self.images[idx], self.labels[idx], self.class_names, f"{self.fingerprint}-{digest}",
                         hashes=pick(self.hashes), perceptual=pick(self.perceptual), rows=pick(self.rows))

    def image_hashes(self) -> np.ndarray:
        """Each image's pixel digest (N x 16 bytes), computed once."""
        if self.hashes is None:
            self.hashes = image_hashes(self.images)
        return self.hashes

    def perceptual_hashes(self) -> np.ndarray:
        """Each image's perceptual hash (N x 8 bytes: :func:`fm2edge.data.splits.perceptual_hashes`), computed once."""
        if self.perceptual is None:
            self.perceptual = perceptual_hashes(self.images)
        return self.perceptual

    @property
    def content_hash(self) -> str:
        """A short hash of this split's (image, label) pairs: equal in two runs that used the same images."""
        return content_hash(self.image_hashes(), self.labels)


def balanced_indices(labels: np.ndarray, n: int | None = None, per_class: int | None = None) -> np.ndarray:
    """Deterministic class-balanced selection, in source order.

    Classes are interleaved by rank of appearance (the first image of every class, then the second of every class,
    ...) and the first ``n`` are kept, so every class gets n // C or one more while it has images. ``per_class``
    keeps the first k images of each class. On a source already interleaved by class (the shared CIFAR-10 copy)
    this equals ``range(n)``, a dataset's ``select(range(5000))``.
    """
    labels = np.asarray(labels)
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        return np.sort(keep)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((np.arange(len(labels)), rank))
    return np.sort(order[:n])


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0, groups: np.ndarray | None = None,
                  names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) index split for sources without a test split; where ``groups`` ties images together
    (a sub-folder of a class folder), whole groups are held out (:func:`group_split`; ``names``: the classes, for
    its messages)."""
    from sklearn.model_selection import train_test_split

    if is_grouped(groups):
        return group_split(labels, groups, fraction, seed, "test", names)
    if len(labels) < 2:
        raise Fm2EdgeError(f"the source has {len(labels)} image(s) and no test split; give it more images or a "
                           f"test split")
    counts = np.bincount(labels)
    # a class with one image trains on it: held out, it would be a tested class without a training image
    single = np.isin(labels, np.flatnonzero(counts == 1))
    idx, rest = np.flatnonzero(single), np.flatnonzero(~single)
    n_test = max(1, math.ceil(fraction * len(labels)))  # as scikit-learn rounds a fractional test_size
    if len(rest) < 2:
        raise Fm2EdgeError("the source has no class with two images to hold one out for testing, and no test "
                           "split; give it more images per class or a test split")
    n_test = min(n_test, len(rest) - 1)
    classes = len(np.unique(labels[rest]))
    # a stratified split needs at least one test and one training image per class
    stratified = classes <= n_test <= len(rest) - classes
    train, test = train_test_split(rest, test_size=n_test, random_state=seed,
                                   stratify=labels[rest] if stratified else None)
    return np.sort(np.concatenate([train, idx])), np.sort(test)


def validation_split(labels: np.ndarray, fraction: float, seed: int = 0, groups: np.ndarray | None = None,
                     names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified (train, validation) positions in ``labels``: ``fraction`` of the images, and at least one of
    every class, for validation (whole ``groups`` where images are grouped: :func:`group_split`); None when some
    class has fewer than two images (nothing would be left to train on or to check with)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    classes = int((counts > 0).sum())
    if fraction <= 0 or classes == 0 or counts[counts > 0].min() < 2:
        return None
    if is_grouped(groups):
        return group_split(labels, groups, fraction, seed, "validation", names)
    n_val = min(max(classes, math.ceil(fraction * len(labels))), len(labels) - classes)
    train, val = train_test_split(np.arange(len(labels)), test_size=n_val, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def is_grouped(groups: np.ndarray | None) -> bool:
    """Whether ``groups`` ties any two images together (otherwise every image is its own group)."""
    return groups is not None and len(np.unique(groups)) < len(groups)


def group_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int = 0, split: str = "held-out",
                names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions with no group on both sides: per class, whole groups in a seeded order are held
    out while they fit in the class's share (``fraction`` of its images, rounded; one group at least), and one
    group at least is kept. A class whose images all share one group cannot be held out whole: its images are held
    out one by one, with a warning naming the group; a class with one image is kept for training. Where whole
    groups overshoot the share by far (two folders of 40 for a 25% test split), the run says how many were held out.
    ``split`` names the split in those messages ("test", "validation"), ``names`` the classes.

    Groups a column names (``--data.group_column``: a patient, a site) may hold several classes, and are never
    broken: :func:`column_group_split`.

    Written here rather than taken from scikit-learn: ``GroupShuffleSplit`` ignores the classes (a class can lose
    every training image) and ``StratifiedGroupKFold`` can put a class's only group in the held-out fold."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if any(named_group(g) is not None for g in groups):
        return column_group_split(labels, groups, fraction, seed)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < 2:
            continue
        folders, unit = np.unique(groups[where], return_inverse=True)
        name = f"'{names[c]}'" if names is not None else f"class {c}"
        if len(folders) == 1:
            log.warning("every image of %s the %s split is drawn from is in '%s'; its %s images come from that same "
                        "folder as its training images, so they may look alike: put its images in two sub-folders or "
                        "more (one per shoot) to hold them out whole", name, split, folders[0], split)
            unit = np.arange(len(where))
        sizes = np.bincount(unit)
        target = max(1, round(fraction * len(where)))
        taken: list[int] = []
        held = 0
        for u in rng.permutation(len(sizes)):
            if len(taken) == len(sizes) - 1 or held >= target:
                break
            if held + sizes[u] <= target:
                taken.append(int(u))
                held += sizes[u]
        if not taken:  # every group is larger than the share: the smallest, rather than none
            taken = [int(np.argmin(sizes))]
        if (count := int(sizes[taken].sum())) > max(target + 1, 1.5 * target):
            log.info("the %s split holds %d of the %d folders of %s whole: %d of its %d images (%.0f%% asked); more "
                     "sub-folders per class make the shares closer", split, len(taken), len(sizes), name, count,
                     len(where), 100 * fraction)
        out[where[np.isin(unit, taken)]] = True
    return np.flatnonzero(~out), np.flatnonzero(out)


def column_group_split(labels: np.ndarray, groups: np.ndarray, fraction: float,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions where ``groups`` may hold images of several classes (a patient with two kinds of
    lesion): no group on both sides, ever. Whole groups in a seeded order are held out while every class stays
    within its share (``fraction`` of its images, rounded; one at least) and keeps a training image; then a class
    left with no held-out image gets the smallest group that holds it, where that leaves every class a training
    image. A class that cannot be held out so is named in a warning (its held-out images would come from groups
    that training also sees)."""
    names, unit = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(names), int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (unit, labels), 1)
    total = counts.sum(0)
    target = np.where(total >= 2, np.maximum(1, np.round(fraction * total)), 0)
    held, taken = np.zeros_like(total), np.zeros(len(names), dtype=bool)

    def fits(u: int, cap: np.ndarray) -> bool:  # within ``cap``, and every class keeps a training image
        after = held + counts[u]
        return bool(np.all(after <= cap) and np.all(after[total > 0] < total[total > 0]))

    for u in np.random.default_rng(seed).permutation(len(names)):
        if np.all(held >= target):
            break
        if fits(u, target):
            taken[u], held = True, held + counts[u]
    for c in np.flatnonzero((target > 0) & (held == 0)):
        options = [u for u in np.flatnonzero(~taken & (counts[:, c] > 0)) if fits(u, total)]
        if options:
            u = min(options, key=lambda u: (counts[u].sum(), u))
            taken[u], held = True, held + counts[u]
            continue
        mine = [named_group(names[u]) or str(names[u]) for u in np.flatnonzero(counts[:, c])]
        log.warning("no image of one class can be held out: its %d image(s) are in group(s) %s, and holding one "
                    "out would leave a class without training images; its held-out images are missing, so give it "
                    "images in more groups", total[c], ", ".join(f"'{g}'" for g in mine[:3])
                    + (", ..." if len(mine) > 3 else ""))
    out = taken[unit]
    return np.flatnonzero(~out), np.flatnonzero(out)


# ---------------------------------------------------------------- opening sources


@dataclass
class _Split:
    """One split before decoding: a row accessor for encoded images, the labels, and a stable fingerprint."""

    rows: Any  # sequence of encoded images (bytes / path / PIL) or an array of decoded HWC uint8 images
    labels: np.ndarray
    class_names: list[str]
    fingerprint: str
    groups: np.ndarray | None = None  # images held out together (an image folder's sub-folders); None: each alone


def _digits() -> dict[str, _Split]:
    import sklearn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 intensities 0..16 -> 0..255, replicated to RGB, like any greyscale image.
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    names = [str(n) for n in bunch.target_names]
    return {"train": _Split(rgb, bunch.target.astype(np.int64), names, f"sklearn-digits-{sklearn.__version__}")}


def _open_hf(cfg: DataConfig) -> Any:
    from datasets import load_dataset, load_from_disk

    path = Path(cfg.source).expanduser()
    if path.exists():
        if path.is_dir() and is_saved_dataset(path):
            return load_from_disk(str(path))
        if path.is_file():
            kind = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise Fm2EdgeError(f"data.source '{cfg.source}' is a file of an unsupported type; give a .parquet or "
                                   f".arrow file, or a folder of them, or an image folder root/<class>/<image>")
            return load_dataset(kind, data_files={cfg.train_split: str(path)})
        if not any(path.iterdir()):
            raise Fm2EdgeError(f"data.source '{cfg.source}' is an empty folder; put parquet/arrow files or "
                               f"class sub-folders of images in it")
        if not any(f.suffix in (".parquet", ".arrow", ".csv", ".json", ".jsonl") for f in path.rglob("*")):
            raise Fm2EdgeError(f"data.source '{cfg.source}' holds neither images nor parquet/arrow files; lay it out "
                               f"as root/<class>/<image> or root/<split>/<class>/<image>, or give parquet files")
        return load_dataset(str(path))
    if cfg.source.startswith((".", "/", "~")) or not HUB_ID.match(cfg.source):
        raise Fm2EdgeError(f"data.source '{cfg.source}' does not exist; give an existing folder or file, "
                           f"a hub dataset id like 'uoft-cs/cifar10', or 'digits'")
    try:
        return load_dataset(cfg.source, revision=cfg.revision)
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; classify, then re-raise
        if is_offline_error(exc):
            raise HubUnreachableError("dataset", cfg.source, "point --data.source at a local copy (a parquet or "
                                      "arrow folder, or an image folder)") from exc
        if type(exc).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError"):
            raise Fm2EdgeError(f"data.source '{cfg.source}' is neither a local path nor a dataset on the hub") from exc
        raise


def _folder_splits(cfg: DataConfig, root: Path) -> dict[str, _Split]:
    """An image folder's splits (see :mod:`fm2edge.data.folders`), keyed by the bytes of its images."""
    scan = folder_scan(cfg, root)
    content = files_key(scan.files + scan.metadata, root)
    return {name: _Split(np.array([str(f) for f in split.files], dtype=object), np.asarray(split.labels, np.int64),
                         scan.class_names, f"{content}-{name}", np.array(split.groups, dtype=object))
            for name, split in scan.splits.items()}


def folder_scan(cfg: DataConfig, root: Path) -> FolderScan:
    """The image folder ``root`` resolved as ``cfg`` reads it (:func:`fm2edge.data.folders.scan_folder`)."""
    return scan_folder(root, folder_names(cfg), cfg.train_split, Columns(cfg.label_column, cfg.group_column),
                       cfg.labels)


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()


def image_folder(cfg: DataConfig) -> Path | None:
    """``cfg.source`` as a folder of image files read by :mod:`fm2edge.data.folders`, or None for other sources."""
    path = Path(cfg.source).expanduser()
    return path if path.is_dir() and not is_saved_dataset(path) and looks_like_image_folder(path) else None


def folder_names(cfg: DataConfig) -> dict[str, str]:
    """Split folders named on the command line (``--data.test_split holdout``), each keeping its name."""
    return {n: n for n in (cfg.train_split, cfg.test_split, cfg.val_split) if n}


def source_splits(cfg: DataConfig) -> dict[str, _Split]:
    """Every split ``cfg.source`` has, before any is chosen or decoded."""
    if cfg.source in ("digits", "sklearn:digits"):
        return _digits()
    folder = image_folder(cfg)
    return _hf_splits(cfg) if folder is None else _folder_splits(cfg, folder)


def files_key(files: list[Path], root: Path) -> str:
    """A key for local data files that follows their bytes, not their times or place, so that a copied, re-extracted
    or touched dataset keeps its caches (decoded images, features, teacher outputs); ``datasets``' own fingerprint
    of local files changes with their modification times. Files over CONTENT_KEY_LIMIT in total are keyed by
    relative path, size and modification time instead, which keeps keying cheap."""
    by_content = sum(f.stat().st_size for f in files) <= CONTENT_KEY_LIMIT
    digest = hashlib.blake2b(digest_size=16)
    for f in files:
        name = f.relative_to(root) if f != root and f.is_relative_to(root) else f.name  # a labels file elsewhere
        digest.update(f"{name}:{f.stat().st_size}:".encode())
        if by_content:
            with open(f, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "blake2b").digest())
        else:
            digest.update(str(f.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def local_files(source: str) -> tuple[list[Path], Path] | None:
    """The files of a local source opened by ``load_dataset`` (a data file, or a folder of data files or of
    images), with the root they are named from; None for hub ids and ``save_to_disk`` folders, whose
    fingerprints already follow their content."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    if path.is_file():
        return [path], path.parent
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        return None
    files = sorted(f for f in path.rglob("*") if f.is_file() and not any(part.startswith(".") for part in
                                                                         f.relative_to(path).parts))
    return files, path


def _pick_column(features: dict, given: str | None, candidates: tuple[str, ...], kind: str, source: str,
                 type_name: str) -> str:
    names = list(features)
    if given is not None:
        if given not in features:
            raise Fm2EdgeError(f"data.{kind}_column '{given}' is not a column of '{source}'; its columns are {names}")
        return given
    typed = [n for n, f in features.items() if type(f).__name__ == type_name]
    if typed:
        return typed[0]
    for cand in candidates:
        if cand in features:
            return cand
    raise Fm2EdgeError(f"cannot tell which column of '{source}' holds the {kind}s (columns: {names}); "
                       f"name it with --data.{kind}_column")


def _hf_splits(cfg: DataConfig) -> dict[str, _Split]:
    from datasets import Dataset, DatasetDict
    from datasets import Image as ImageFeature

    dsd = _open_hf(cfg)
    if isinstance(dsd, Dataset):
        dsd = DatasetDict({cfg.train_split: dsd})
    if cfg.val_split and cfg.val_split not in dsd:
        raise Fm2EdgeError(f"data.source '{cfg.source}' has no split '{cfg.val_split}'; its splits are {list(dsd)}; "
                           f"choose one with --data.val_split, or leave it empty to hold out --data.val_fraction of "
                           f"the training images")
    wanted = {cfg.train_split, cfg.test_split, *(VAL_NAMES if cfg.val_split is None else (cfg.val_split,))}
    local = local_files(cfg.source)
    content = files_key(*local) if local else None
    splits, columns = {}, {}
    for split, ds in dsd.items():
        if split not in wanted:
            continue
        if len(ds) == 0:
            raise Fm2EdgeError(f"split '{split}' of data.source '{cfg.source}' is empty")
        img_col = _pick_column(ds.features, cfg.image_column, IMAGE_COLUMNS, "image", cfg.source, "Image")
        lbl_col = _pick_column(ds.features, cfg.label_column, LABEL_COLUMNS, "label", cfg.source, "ClassLabel")
        columns[split] = (img_col, lbl_col, np.asarray(ds.with_format("numpy")[lbl_col]))
    # labels without a ClassLabel (text or plain numbers) are the classes of every split together, so a class that a
    # test split lacks keeps the training split's numbering (and one it alone has is named by check_classes)
    plain = [raw for split, (_, col, raw) in columns.items() if not hasattr(dsd[split].features[col], "names")]
    values = np.unique(np.concatenate(plain)) if plain else None
    for split, (img_col, lbl_col, raw) in columns.items():
        ds, feature = dsd[split], dsd[split].features[lbl_col]
        if hasattr(feature, "names"):
            names = list(feature.names)
            labels = raw.astype(np.int64)
        else:
            names = [str(v) for v in values]
            labels = np.searchsorted(values, raw).astype(np.int64)
        if isinstance(ds.features[img_col], ImageFeature):
            ds = ds.cast_column(img_col, ImageFeature(decode=False))
        rows = _EncodedColumn(ds, img_col)
        source_key = ds._fingerprint if content is None else f"{content}-{split}"
        splits[split] = _Split(rows, labels, names, f"{source_key}-{img_col}-{lbl_col}",
                               hub_groups(ds, cfg, split) if cfg.group_column else None)
    if cfg.train_split not in splits:
        raise Fm2EdgeError(f"data.source '{cfg.source}' has no split '{cfg.train_split}'; its splits are "
                           f"{list(dsd)}; choose one with --data.train_split")
    return splits


def hub_groups(ds: Any, cfg: DataConfig, split: str) -> np.ndarray:
    """Each row's group from the column ``--data.group_column`` names (an empty cell: the row alone)."""
    if cfg.group_column not in ds.column_names:
        raise Fm2EdgeError(f"split '{split}' of data.source '{cfg.source}' has no column '{cfg.group_column}' "
                           f"(--data.group_column); its columns are {ds.column_names}")
    return np.array([column_group(v, f"{split}/{i}") for i, v in enumerate(ds[cfg.group_column])], dtype=object)


class _EncodedColumn:
    """Indexable view of an image column that yields encoded bytes or a path, never a decoded PIL image."""

    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def take(self, indices: np.ndarray) -> list:
        cells = self.ds.select(indices.tolist())[self.column] if len(indices) != len(self.ds) else self.ds[self.column]
        out = []
        for cell in cells:
            if isinstance(cell, dict):
                out.append(cell.get("bytes") or cell.get("path"))
            else:
                out.append(cell)
        return out


def _check_labels(labels: np.ndarray, names: list[str], where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        bad = labels[(labels < 0) | (labels >= len(names))]
        raise Fm2EdgeError(f"{where} has labels outside the class range 0..{len(names) - 1} (e.g. {int(bad[0])}); "
                           f"fix the label column or its class names")


# ---------------------------------------------------------------- decoding + cache


def cache_root(cfg: DataConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("FM2EDGE_CACHE") or Path.home() / ".cache" / "fm2edge"
    return Path(root) / "images"


def _target_size(rows: list, size: int | None) -> tuple[int, int] | None:
    """The (height, width) to store ``rows`` at: ``size`` square when given; the images' own size when they share
    one of at most 256 px; else a square of the largest shorter side among them, at most 256 px (each image's
    shorter side resized to it and centre-cropped). Thumbnails of 100-128 px are kept at 128 px, not enlarged to
    256 (four times the memory and cache for no more information; a student's default input follows the stored
    size either way); camera photos of any size are stored at 256."""
    if size is not None:
        return (size, size)
    sizes: set[tuple[int, int]] = set()
    for r in rows:
        try:
            h, w = peek_size(r)
        except Exception:  # noqa: BLE001 - unreadable headers are reported by the decoder, which decides
            continue
        sizes.add((h, w))
        if min(h, w) >= DEFAULT_VARIABLE_SIZE:
            break  # no later image changes the answer: 256 px
    if not sizes:
        return None
    if len(sizes) == 1 and max(only := next(iter(sizes))) <= DEFAULT_VARIABLE_SIZE:
        return only
    # photos of one camera share a size: stored as decoded, 500 of 4032 x 3024 would hold 18 GB
    side = min(DEFAULT_VARIABLE_SIZE, max(min(s) for s in sizes))
    log.info("images differ in size or are larger than %d px; storing them at %d x %d", DEFAULT_VARIABLE_SIZE,
             side, side)
    return (side, side)


def _decode_all(rows: list, size: tuple[int, int] | None, out: np.ndarray, on_bad: str, where: str) -> np.ndarray:
    """Decode ``rows`` into ``out`` (N, H, W, 3); returns a bool mask of images that decoded."""

    def one(i: int) -> bool:
        try:
            out[i] = decode(rows[i], size)
            return True
        except (OSError, ValueError, SyntaxError) as exc:
            if on_bad == "error":
                which = f"image '{rows[i]}'" if isinstance(rows[i], str) else f"image {i} of {where}"
                raise Fm2EdgeError(f"{which} cannot be decoded ({exc}); remove it, or pass "
                                   f"--data.on_bad_image skip to drop and count bad images") from exc
            return False

    from tqdm.auto import tqdm

    # Threads, not processes: PIL releases the GIL while decoding, and threads share the output array.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        ok = list(tqdm(pool.map(one, range(len(rows)), chunksize=256), total=len(rows), desc=f"decode {where}",
                       unit="img", disable=len(rows) < 5000, leave=False))
    return np.asarray(ok, dtype=bool)


def _materialise(split: _Split, indices: np.ndarray, cfg: DataConfig, where: str) -> ImageData:
    digest = hashlib.sha1(indices.astype(np.int64).tobytes()).hexdigest()[:16]
    # v2: photos turned upright by their EXIF orientation, JPEGs decoded at reduced scale (data.images.decode);
    # v3: images of one size above 256 px stored at 256 (_target_size); v4: images of several sizes at their largest
    # shorter side up to 256 px, no longer all at 256
    key = hashlib.sha1(f"{split.fingerprint}|{digest}|{cfg.image_size}|v4".encode()).hexdigest()[:24]
    folder = cache_root(cfg) / key
    labels = split.labels[indices]
    if not (folder / "meta.json").exists():
        if isinstance(split.rows, np.ndarray) and split.rows.dtype == np.uint8:  # decoded (scikit-learn digits)
            arr = split.rows[indices]
            if cfg.image_size is not None:
                from PIL import Image

                from fm2edge.data.images import resize_center_crop

                arr = np.stack([np.asarray(resize_center_crop(Image.fromarray(a), cfg.image_size)) for a in arr])
            ok = np.ones(len(arr), dtype=bool)
        else:
            rows = list(split.rows.take(indices))
            size = _target_size(rows, cfg.image_size)
            if size is None:
                raise Fm2EdgeError(f"no image of {where} can be read; check data.source and data.image_column")
            arr = np.zeros((len(rows), size[0], size[1], 3), dtype=np.uint8)
            ok = _decode_all(rows, size, arr, cfg.on_bad_image, where)
        with atomic_dir(folder, lock=True) as tmp:
            stored = np.ascontiguousarray(arr[ok].transpose(0, 3, 1, 2))
            np.save(tmp / "images.npy", stored)
            np.save(tmp / "labels.npy", labels[ok])
            np.save(tmp / "hashes.npy", image_hashes(stored))
            np.save(tmp / "perceptual.npy", perceptual_hashes(torch.from_numpy(stored)))
            np.save(tmp / "rows.npy", indices[ok].astype(np.int64))
            (tmp / "meta.json").write_text(json.dumps({"where": where, "skipped": int((~ok).sum()),
                                                       "fingerprint": split.fingerprint}))
    meta = json.loads((folder / "meta.json").read_text())
    if meta["skipped"]:
        log.warning("%s: skipped %d image(s) that could not be decoded", where, meta["skipped"])
    # copy-on-write map: pages load lazily and torch gets a writable array without a copy
    images = torch.from_numpy(np.load(folder / "images.npy", mmap_mode="c"))
    if len(images) == 0:
        raise Fm2EdgeError(f"{where} holds no decodable image")
    rows = np.load(folder / "rows.npy") if (folder / "rows.npy").exists() else \
        indices.astype(np.int64) if not meta["skipped"] else None  # a cache written before rows were kept
    return ImageData(images, torch.from_numpy(np.load(folder / "labels.npy")), split.class_names,
                     fingerprint=key, skipped=meta["skipped"], hashes=_stored(folder / "hashes.npy", image_hashes,
                                                                              images),
                     perceptual=_stored(folder / "perceptual.npy", perceptual_hashes, images), rows=rows)


def _stored(path: Path, make, images: torch.Tensor) -> np.ndarray:
    """A cache's per-image hashes (``make(images)``), kept at ``path``; a cache written before they were kept gets
    them now (atomically)."""
    if path.exists():
        return np.load(path)
    hashes = make(images)
    buf = io.BytesIO()
    np.save(buf, hashes)
    atomic_write_bytes(path, buf.getvalue())
    return hashes


@dataclass
class SplitPlan:
    """Which rows of which split make the training, validation and test sets (before decoding)."""

    train: _Split
    train_idx: np.ndarray  # labelled training images
    pool: np.ndarray  # every training-split image that is not test data (unlabelled extras come from here)
    labelled: np.ndarray  # the labelled subset (training + a held-out validation share)
    val: _Split | None
    val_idx: np.ndarray | None
    val_name: str | None
    test: _Split
    test_idx: np.ndarray


def plan_splits(cfg: DataConfig) -> SplitPlan:
    splits = source_splits(cfg)
    if cfg.val_split is not None and cfg.val_split not in splits:
        raise Fm2EdgeError(f"data.source '{cfg.source}' has no split '{cfg.val_split}'; its splits are "
                           f"{list(splits)}; choose one with --data.val_split")
    train = splits[cfg.train_split] if cfg.train_split in splits else splits["train"]
    _check_labels(train.labels, train.class_names, f"split '{cfg.train_split}' of '{cfg.source}'")
    separate_test = cfg.test_split in splits and cfg.test_split != cfg.train_split
    if separate_test:
        test = splits[cfg.test_split]
        test_idx = np.arange(len(test.labels))
        train_idx = np.arange(len(train.labels))
        _same_classes(train, test, cfg, cfg.test_split)
        _check_labels(test.labels, test.class_names, f"split '{cfg.test_split}' of '{cfg.source}'")
    else:
        log.info("'%s' has no split '%s'; holding out %.0f%% of '%s' as test data",
                 cfg.source, cfg.test_split, 100 * cfg.test_fraction, cfg.train_split)
        train_idx, test_idx = holdout_split(train.labels, cfg.test_fraction, groups=train.groups,
                                            names=train.class_names)
        test = train
    pool = train_idx
    labelled = train_idx[balanced_indices(train.labels[train_idx], cfg.max_train, cfg.per_class)]
    test_idx = test_idx[balanced_indices(test.labels[test_idx], cfg.max_test)]
    val_name = _validation_name(cfg, splits, cfg.test_split if separate_test else None)
    if val_name is not None:  # the source's own validation split
        val = splits[val_name]
        _same_classes(train, val, cfg, val_name)
        _check_labels(val.labels, val.class_names, f"split '{val_name}' of '{cfg.source}'")
        plan = SplitPlan(train, labelled, pool, labelled, val, np.arange(len(val.labels)), val_name, test, test_idx)
    else:
        held = validation_split(train.labels[labelled], cfg.val_fraction,
                                groups=None if train.groups is None else train.groups[labelled],
                                names=train.class_names)
        if held is None:
            if cfg.val_fraction > 0:
                log.warning("too few labelled images per class to hold out a validation split; the last epoch is "
                            "kept and nothing is chosen by validation accuracy")
            plan = SplitPlan(train, labelled, pool, labelled, None, None, None, test, test_idx)
        else:
            plan = SplitPlan(train, labelled[held[0]], pool, labelled, train, labelled[held[1]], None, test, test_idx)
    _check_plan(plan, cfg)
    return plan


def _validation_name(cfg: DataConfig, splits: dict, test_name: str | None) -> str | None:
    """The source's own validation split, if it has one that is not the test split. A named test split that is the
    source's validation split (``--data.test_split validation`` on a train/ + val/ folder: "val is my test set")
    sends validation to held-out training images, with a word; naming one split for both is refused."""
    if cfg.val_split is not None:
        if cfg.val_split == test_name:
            raise Fm2EdgeError(f"--data.val_split and --data.test_split both name '{cfg.val_split}': the images that "
                               f"choose the kept weights would also report the test accuracy; name another "
                               f"validation split, or leave --data.val_split empty to hold out --data.val_fraction "
                               f"of the training images")
        return cfg.val_split
    found = next((n for n in VAL_NAMES if n in splits and n != cfg.train_split), None)
    if found is not None and found == test_name:
        log.warning("'%s' is the test split (--data.test_split %s), so it cannot also choose epochs: validation "
                    "images are held out from '%s' (--data.val_fraction %g) instead", found, test_name,
                    cfg.train_split, cfg.val_fraction)
        return None
    return found


def _check_plan(plan: SplitPlan, cfg: DataConfig) -> None:
    """The split invariants that rows alone decide (see :mod:`fm2edge.data.splits`); pixels are compared once
    decoded, in :func:`load_data`."""
    others = {cfg.test_split: plan.test.labels[plan.test_idx]}
    if plan.val is not None:
        others[plan.val_name or f"{cfg.train_split} (held-out validation)"] = plan.val.labels[plan.val_idx]
        if plan.val is plan.test:
            check_disjoint(plan.val_idx, plan.test_idx, cfg.train_split)
    if plan.test is plan.train:
        check_disjoint(plan.labelled, plan.test_idx, cfg.train_split)
    check_classes(plan.train.class_names, plan.train.labels[plan.train_idx], others, cfg.source)
    for name, found in groups_across_splits(plan, cfg).items():
        log.warning("%d group(s) of column '%s' have images in both '%s' and '%s' (e.g. '%s'): the %s accuracy then "
                    "partly measures recognising them; move each group's images into one split", len(found),
                    cfg.group_column, cfg.train_split, name, found[0], name)


def groups_across_splits(plan: SplitPlan, cfg: DataConfig) -> dict[str, list[str]]:
    """The groups (``--data.group_column``) that have training images and images in the source's own validation
    or test split, by that split (held-out shares never share a group: :func:`group_split`)."""
    out = {}
    trained = set() if plan.train.groups is None else set(plan.train.groups[plan.pool].tolist())
    held = {cfg.test_split: (plan.test, plan.test_idx), plan.val_name: (plan.val, plan.val_idx)}
    for name, (split, idx) in held.items():
        if split is not None and split is not plan.train and split.groups is not None:
            found = sorted(filter(None, map(named_group, set(split.groups[idx].tolist()) & trained)))
            if found:
                out[name] = found
    return out


def _same_classes(train: _Split, other: _Split, cfg: DataConfig, name: str) -> None:
    if other.class_names != train.class_names:
        raise Fm2EdgeError(f"splits '{cfg.train_split}' and '{name}' of '{cfg.source}' name different classes; give "
                           f"splits of one dataset")


def load_data(cfg: DataConfig) -> tuple[ImageData, ImageData | None, ImageData]:
    """Open ``cfg.source`` and return (train, validation, test) as decoded, class-balanced ``ImageData``.

    Validation is the source's own split (``val``, ``validation``, ``valid``, or ``data.val_split``), else a
    stratified ``data.val_fraction`` of the labelled training images; None when neither can be had. Validation
    never holds a test image, by row or by pixels (an image filed under both is left out of validation, with a
    word)."""
    return load_planned(plan_splits(cfg), cfg)


def load_planned(plan: SplitPlan, cfg: DataConfig) -> tuple[ImageData, ImageData | None, ImageData]:
    """Decode the images a :func:`plan_splits` plan chose (see :func:`load_data`). A split held out here from the
    training images keeps none with a training image's pixels (a photo saved twice, or two that become one once
    resized): it would score the model on an image it trained on."""
    train = _materialise(plan.train, plan.train_idx, cfg, f"{cfg.source}:{cfg.train_split}")
    test = _materialise(plan.test, plan.test_idx, cfg, f"{cfg.source}:{cfg.test_split}")
    if plan.test is plan.train:
        test = _without_copies(test, train, "test", "training", f"'{cfg.source}' (held out from its training images)")
        if test is None:
            raise Fm2EdgeError(f"every image held out of '{cfg.source}' for testing has the pixels of a training "
                               f"image: the folder holds copies of its photos; remove the copies, or give it a "
                               f"test split")
    val = None
    if plan.val is not None:
        where = f"{cfg.source}:{plan.val_name or f'{cfg.train_split} (held-out validation)'}"
        val = _materialise(plan.val, plan.val_idx, cfg, where)
        if plan.val is plan.train:
            val = _without_copies(val, train, "validation", "training", where)
        if val is not None:
            val = _without_copies(val, test, "validation", "test", where)
    if train.skipped or test.skipped or (val is not None and val.skipped):  # skipping may have emptied a class
        others = {"test": test.labels.numpy(), **({"validation": val.labels.numpy()} if val is not None else {})}
        check_classes(train.class_names, train.labels.numpy(), others,
                      f"{cfg.source} (once its undecodable images were skipped)")
    if conflicts := label_conflicts(train.image_hashes(), train.labels.numpy()):
        log.warning("%d training image(s) of '%s' have the pixels of one filed under another class: one of each is "
                    "mislabelled; `fm2edge data %s` names them", sum(map(len, conflicts)), cfg.source, cfg.source)
    leaked = int(shared_with(train.image_hashes(), test.image_hashes()).sum())
    if leaked:
        crossed = int(filed_elsewhere(train.image_hashes(), train.labels.numpy(), test.image_hashes(),
                                      test.labels.numpy()).sum())
        log.warning("%d training image(s) of '%s' are also test images (same pixels)%s; the test accuracy may "
                    "flatter the model: remove them from one split", leaked, cfg.source,
                    f", {crossed} of them filed there under another class (one of each pair is mislabelled)"
                    if crossed else "")
    alike = near_copies(test, train)
    if alike is not None and len(alike[0]):
        log.warning("%d of the %d test images of '%s' look like a training image (the same photo resized, re-saved "
                    "or lightly edited, by their perceptual hashes and structural similarity); the test accuracy may "
                    "flatter the model: `fm2edge data %s` names them", len(alike[0]), len(test), cfg.source, cfg.source)
    return train, val, test


def _without_copies(data: ImageData, of: ImageData, name: str, other: str, where: str) -> ImageData | None:
    """``data`` less the images whose pixels ``of`` also holds (None when none is left), with a word."""
    shared = shared_with(data.image_hashes(), of.image_hashes())
    if not shared.any():
        return data
    log.warning("%d of the %d %s images of %s are also %s images (same pixels) and are left out of the %s split",
                int(shared.sum()), len(data), name, where, other, name)
    if shared.all():
        if name == "validation":
            log.warning("no validation image is left: the last epoch is kept")
        return None
    return replace(data.subset(np.flatnonzero(~shared)), skipped=data.skipped)


def load_left_out(cfg: DataConfig, n: int | None = None, last: bool = False) -> ImageData:
    """Labelled training images that ``load_data(cfg)`` leaves out (beyond max_train / per_class), the first ``n`` of
    them in source order (the last ``n`` with ``last``; all when ``n`` is None), with their labels. Test and
    validation images are never among them, nor images of a group (``--data.group_column``, a sub-folder) that
    validation holds: a check on them reads neither split, and training on them sees no validation subject."""
    plan = plan_splits(cfg)
    rest = np.setdiff1d(plan.pool, plan.labelled)
    if plan.val is plan.train and plan.train.groups is not None:
        rest = rest[~np.isin(plan.train.groups[rest], plan.train.groups[plan.val_idx])]
    rest = rest if n is None else rest[max(0, len(rest) - n):] if last else rest[:n]
    if len(rest) == 0:
        raise Fm2EdgeError(f"'{cfg.source}' has no training images beyond the {len(plan.labelled)} labelled ones; "
                           f"lower --data.max_train or drop the unlabelled images")
    return _materialise(plan.train, rest, cfg, f"{cfg.source}:{cfg.train_split}:left-out")


def load_unlabeled(cfg: DataConfig, n: int | None, last: bool = False) -> ImageData:
    """Training images that ``load_data(cfg)`` leaves out (see :func:`load_left_out`), with every label set to -1:
    extra images for distillation without labels."""
    data = load_left_out(cfg, n, last)
    return ImageData(data.images, torch.full_like(data.labels, -1), data.class_names, f"{data.fingerprint}-unlabeled",
                     data.skipped)


def is_dataset(source: str) -> bool:
    """True when ``source`` names a dataset (a parquet/arrow file or folder, a saved dataset, a hub id) rather than
    image files, a folder of them or a glob."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.suffix in (".parquet", ".arrow")
    if path.is_dir():
        return (path / "dataset_dict.json").exists() or any(path.rglob("*.parquet")) or any(path.rglob("*.arrow"))
    return not glob_chars(source) and HUB_ID.match(source) is not None and not source.startswith((".", "/", "~"))


def glob_chars(text: str) -> bool:
    return any(c in text for c in "*?[")


def load_unlabeled_source(source: str, cfg: DataConfig, size: tuple[int, int]) -> ImageData:
    """Every image of ``source`` as training images without labels (label -1), stored at ``size`` like the labelled
    ones: image files, a folder of them in any layout (searched recursively), a glob, or a dataset (its
    ``cfg.train_split``, or its only split; any label column is ignored) such as the pseudo-labels that
    `fm2edge predict --predict.pseudo_labels` writes."""
    from dataclasses import replace

    if is_dataset(source):
        from datasets import Dataset
        from datasets import Image as ImageFeature

        dsd = _open_hf(replace(cfg, source=source))
        if isinstance(dsd, Dataset):
            ds = dsd
        elif cfg.train_split in dsd or len(dsd) == 1:
            ds = dsd[cfg.train_split] if cfg.train_split in dsd else next(iter(dsd.values()))
        else:
            raise Fm2EdgeError(f"the unlabelled source '{source}' has splits {list(dsd)} and no "
                               f"'{cfg.train_split}'; name the one to use with --data.train_split")
        column = _pick_column(ds.features, cfg.image_column, IMAGE_COLUMNS, "image", source, "Image")
        if isinstance(ds.features[column], ImageFeature):
            ds = ds.cast_column(column, ImageFeature(decode=False))
        local = local_files(source)
        source_key = ds._fingerprint if local is None else files_key(*local)
        rows, fingerprint = _EncodedColumn(ds, column), f"{source_key}-{column}"
    else:
        files = find_images([source])
        rows = np.array([str(f) for f in files], dtype=object)
        fingerprint = files_key(files, Path(os.path.commonpath(files)))
    split = _Split(rows, np.full(len(rows), -1, dtype=np.int64), [], fingerprint)
    data = _materialise(split, np.arange(len(rows)), replace(cfg, image_size=size[0]), f"{source} (unlabelled)")
    return ImageData(data.images, torch.full_like(data.labels, -1), [], f"{data.fingerprint}-unlabeled",
                     data.skipped)

