"""Labelled image folders the project trains on nowhere else, built from Debian packages (the package archive is
reachable where no dataset hub is), to judge `fm2edge auto` on data it was not developed on.

    python benchmarks/photo_folders.py --out /tmp/photo-folders
    python benchmarks/auto_study.py --source /tmp/photo-folders/gcompris-categories --teacher_factor 3 --minutes 30
    python benchmarks/auto_study.py --source /tmp/photo-folders/fashion300 --teacher_factor 3 --minutes 30

Two folders, each ``<name>/{train,test}/<class>/<image>``:

- ``gcompris-categories``: the 123 photos (about 320 x 220 px, WebP) of the categorisation game in
  ``gcompris-qt-data``: tools, fishes, monuments, renewable energy; every other photo of a class (by file name)
  goes to test, so 63 train and 60 test.
- ``fashion300``: Fashion-MNIST (``dataset-fashion-mnist``, Zalando's product photos, 28 x 28 grey): the first 30
  training images of each of the 10 classes (300) and the first 200 test images of each (2,000). With
  ``--unlabeled N``, ``fashion-unlabeled/`` holds the next N training images without labels.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ("tools", "fishes", "monuments", "renewable")
CATEGORY_RCC = "usr/share/gcompris-qt/rcc/categorization.rcc"
FASHION = "usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")


def unpack_deb(package: str, into: Path) -> Path:
    """Download one Debian package (no install, no root needed for the files) and unpack it under ``into``."""
    subprocess.run(["apt-get", "download", package], cwd=into, check=True, capture_output=True)
    deb = next(into.glob(f"{package}_*.deb"))
    root = into / package
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def qt_resources(path: Path) -> dict[str, bytes]:
    """Every file in a Qt resource bundle (.rcc), by its path inside it.

    Read by hand: no Python library reads Qt's resource format short of PySide6's QResource, a 100+ MB dependency
    for one benchmark. The layout (Qt's rcc.cpp): a "qres" header with the version and the offsets of the tree, the
    data and the names; tree nodes of 14 bytes (version 1) or 22 (with a modification time); a name is a 16-bit
    length, a hash and UTF-16 text; a file's data is a 32-bit size then the bytes, zlib-compressed behind a 32-bit
    length when flag 1 is set."""
    b = path.read_bytes()
    if b[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle")

    def u(o: int, n: int) -> int:
        return int.from_bytes(b[o:o + n], "big")

    version, tree, data, names = u(4, 4), u(8, 4), u(12, 4), u(16, 4)
    node = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name(off: int) -> str:
        o = names + off
        return b[o + 6:o + 6 + 2 * u(o, 2)].decode("utf-16-be")

    def walk(i: int, prefix: str) -> None:
        o = tree + i * node
        here, flags = f"{prefix}/{name(u(o, 4))}" if i else "", u(o + 4, 2)
        if flags & 2:  # a directory: its children are consecutive nodes
            first = u(o + 10, 4)
            for child in range(first, first + u(o + 6, 4)):
                walk(child, here)
            return
        p = data + u(o + 10, 4)
        raw = b[p + 4:p + 4 + u(p, 4)]
        if flags & 4:
            raise ValueError(f"{path}: {here} is zstd-compressed, which this reader does not handle")
        files[here] = zlib.decompress(raw[4:]) if flags & 1 else raw

    walk(0, "")
    return files


def gcompris_categories(package_root: Path, out: Path) -> dict[str, int]:
    files = qt_resources(package_root / CATEGORY_RCC)
    counts: dict[str, int] = {}
    for cls in CATEGORIES:
        photos = sorted(p for p in files if f"/images/{cls}/" in p and p.endswith((".webp", ".jpg", ".png")))
        for k, p in enumerate(photos):
            split = "train" if k % 2 == 0 else "test"
            dst = out / split / cls / Path(p).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(files[p])
            counts[split] = counts.get(split, 0) + 1
    return counts


def idx_images(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        b = f.read()
    n, h, w = (int.from_bytes(b[o:o + 4], "big") for o in (4, 8, 12))
    return np.frombuffer(b, np.uint8, offset=16).reshape(n, h, w)


def idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8)


def first_per_class(labels: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` images of each class, in file order, from its ``start``-th on."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[start:start + k] for c in np.unique(labels)]))


def fashion(package_root: Path, out: Path, train_per_class: int, test_per_class: int, unlabeled: int,
            start: int = 0) -> dict:
    """``fashion<N>`` under ``out`` (``fashion<N>-from<start>`` from each class's ``start``-th image of each split
    on: a second sample of the same kind), and ``fashion-unlabeled`` with ``unlabeled`` other training images."""
    root = package_root / FASHION
    name = f"fashion{10 * train_per_class}" + (f"-from{start}" if start else "")
    counts = {}
    used = np.array([], int)
    for split, stem, k in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        images = idx_images(root / f"{stem}-images-idx3-ubyte.gz")
        labels = idx_labels(root / f"{stem}-labels-idx1-ubyte.gz")
        keep = first_per_class(labels, k, start)
        for i in keep:
            dst = out / name / split / FASHION_CLASSES[labels[i]] / f"{stem}-{i:05d}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(dst)
        counts[split] = len(keep)
        if split == "train":
            used, pool = keep, images
    if unlabeled:
        rest = np.setdiff1d(np.arange(len(pool)), used)[:unlabeled]
        (out / "fashion-unlabeled").mkdir(parents=True, exist_ok=True)
        for i in rest:
            Image.fromarray(pool[i]).save(out / "fashion-unlabeled" / f"train-{i:05d}.png")
        counts["unlabeled"] = len(rest)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train_per_class", type=int, default=30)
    ap.add_argument("--test_per_class", type=int, default=200)
    ap.add_argument("--unlabeled", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="Fashion-MNIST: each class's images from this one on")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gc = unpack_deb("gcompris-qt-data", Path(tmp))
        print("gcompris-categories", gcompris_categories(gc, a.out / "gcompris-categories"))
        fm = unpack_deb("dataset-fashion-mnist", Path(tmp))
        print("fashion", fashion(fm, a.out, a.train_per_class, a.test_per_class, a.unlabeled, a.start))


if __name__ == "__main__":
    main()
