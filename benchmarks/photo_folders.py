"""Labelled image folders the project trains on nowhere else, built from Debian packages (the package archive is
reachable where no dataset hub is), to judge `fm2edge auto` on data it was not developed on.

    python benchmarks/photo_folders.py --out /tmp/photo-folders
    python benchmarks/auto_study.py --source /tmp/photo-folders/gcompris-categories --teacher_factor 3 --minutes 30
    python benchmarks/auto_study.py --source /tmp/photo-folders/fashion300 --teacher_factor 3 --minutes 30
    python benchmarks/photo_folders.py --out /tmp/photo-folders --only catsdogs --catsdogs ../shared/data/catsdogs128

Three folders, each ``<name>/{train,test}/<class>/<image>``:

- ``gcompris-categories``: the 123 photos (about 320 x 220 px, WebP) of the categorisation game in
  ``gcompris-qt-data``: tools, fishes, monuments, renewable energy; every other photo of a class (by file name)
  goes to test, so 63 train and 60 test.
- ``fashion300``: Fashion-MNIST (``dataset-fashion-mnist``, Zalando's product photos, 28 x 28 grey): the first 30
  training images of each of the 10 classes (300) and the first 200 test images of each (2,000). With
  ``--unlabeled N``, ``fashion-unlabeled/`` holds the next N training images without labels.

- ``tuxpaint-stamps``: the PNG stamps of Tux Paint (``tuxpaint-stamps-default``) in five of its categories:
  animals, food, plants, town and vehicles (146, 67, 39, 79 and 38: up to 3.8 to 1), most of them photos or
  paintings cut out on a transparent background, of every size; every other stamp of a category (by path) goes to
  test, so 186 train and 183 test.
- ``tuxpaint-fine``: the same package's sub-categories with ``--fine_min`` (10) stamps or more, each a class
  named ``<category>-<sub-category>`` (``animals-birds``, ``food-fruit``, ``town-roadsigns``, ...), all in one
  ``tuxpaint-fine/<class>/`` folder that ``auto`` splits itself: many classes of 10 to 158 images.

With ``--catsdogs DIR`` (a cats-and-dogs folder in the hub's parquet schema, ``train.parquet`` and
``test.parquet``), two more folders of its photos in file order:

- ``imbal``: the first 240 cats and 30 dogs of its training split and the first 300 cats and 40 dogs of its test
  split (8 to 1 and 7.5 to 1), ``imbal/{train,test}/<class>/``;
- ``photos16``: the first 8 cats and 8 dogs of its training split in one ``photos16/<class>/`` folder, which
  ``auto`` splits itself.

With ``--cifar10 DIR`` too (CIFAR-10 in the same schema), ``messy``: a folder as people keep photos, one
``messy/<class>/`` folder that ``auto`` splits itself: the first 80 cats of the cats-and-dogs training split as
JPEGs of 400 x 300 and 300 x 400 px in two dated sub-folders (``2019``, ``2020 trip``), a fifth stored on their
side with an EXIF orientation tag, as phones save them; the first 80 dogs as PNGs named with spaces and an umlaut,
a quarter with a transparent strip, a quarter grey; the first 40 airplanes of CIFAR-10 (32 px PNGs); and a
``.DS_Store``, a ``Thumbs.db``, a ``notes.txt``, a truncated JPEG among the dogs and an empty class folder
(``fm2edge auto`` stops on the truncated file and names ``--data.on_bad_image skip``).
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
from datasets import Dataset, Image
from PIL import Image as PILImage

CATEGORIES = ("tools", "fishes", "monuments", "renewable")
CATEGORY_RCC = "usr/share/gcompris-qt/rcc/categorization.rcc"
FASHION = "usr/share/datasets/fashion-mnist"
STAMPS = "usr/share/tuxpaint/stamps"
STAMP_CATEGORIES = ("animals", "food", "plants", "town", "vehicles")
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


def tuxpaint_stamps(package_root: Path, out: Path) -> dict[str, int]:
    """Every other PNG stamp of each of STAMP_CATEGORIES (by path, sub-folders included) to train, the rest to test,
    the files as shipped (transparency kept: reading them is the tool's job)."""
    counts: dict[str, int] = {}
    for cls in STAMP_CATEGORIES:
        for k, src in enumerate(sorted((package_root / STAMPS / cls).rglob("*.png"))):
            split = "train" if k % 2 == 0 else "test"
            dst = out / split / cls / "-".join(src.relative_to(package_root / STAMPS / cls).parts)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            counts[split] = counts.get(split, 0) + 1
    return counts


def tuxpaint_fine(package_root: Path, out: Path, min_images: int) -> dict[str, int]:
    """Every ``<category>/<sub-category>`` of stamps with ``min_images`` PNGs or more (deeper folders included) as
    one class of a flat ``out/<class>/`` folder, unsplit; returns the images per class."""
    counts: dict[str, int] = {}
    for sub in sorted(d for d in (package_root / STAMPS).glob("*/*") if d.is_dir()):
        pngs = sorted(sub.rglob("*.png"))
        if len(pngs) < min_images:
            continue
        cls = f"{sub.parent.name}-{sub.name}"
        for src in pngs:
            dst = out / cls / "-".join(src.relative_to(sub).parts)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
        counts[cls] = len(pngs)
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
            PILImage.fromarray(images[i]).save(dst)
        counts[split] = len(keep)
        if split == "train":
            used, pool = keep, images
    if unlabeled:
        rest = np.setdiff1d(np.arange(len(pool)), used)[:unlabeled]
        (out / "fashion-unlabeled").mkdir(parents=True, exist_ok=True)
        for i in rest:
            PILImage.fromarray(pool[i]).save(out / "fashion-unlabeled" / f"train-{i:05d}.png")
        counts["unlabeled"] = len(rest)
    return counts


def parquet_photos(path: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``(class name, encoded photo)`` rows of a parquet split in the hub's image schema, in file order."""
    split = Dataset.from_parquet(str(path)).cast_column("image", Image(decode=False))
    names = split.features["label"].names
    rows = [(names[row["label"]], row["image"]["bytes"]) for row in split]
    return rows, names


def first_of_each(rows: list[tuple[str, bytes]], counts: dict[str, int]) -> list[tuple[str, bytes]]:
    """The first ``counts[c]`` rows of each class ``c``, in file order."""
    seen = dict.fromkeys(counts, 0)
    kept = []
    for name, data in rows:
        if seen[name] < counts[name]:
            seen[name] += 1
            kept.append((name, data))
    return kept


def write_photos(rows: list[tuple[str, bytes]], into: Path) -> None:
    for i, (name, data) in enumerate(rows):
        (into / name).mkdir(parents=True, exist_ok=True)
        (into / name / f"{name}-{i:04d}.jpg").write_bytes(data)


def catsdogs(source: Path, out: Path) -> dict[str, int]:
    """``imbal`` (8 cats to 1 dog, split as given) and ``photos16`` (8 of each, one folder) under ``out``."""
    train, (cat, dog) = parquet_photos(source / "train.parquet")
    test, _ = parquet_photos(source / "test.parquet")
    parts = {"imbal/train": first_of_each(train, {cat: 240, dog: 30}),
             "imbal/test": first_of_each(test, {cat: 300, dog: 40}),
             "photos16": first_of_each(train, {cat: 8, dog: 8})}
    for name, rows in parts.items():
        write_photos(rows, out / name)
    return {name: len(rows) for name, rows in parts.items()}


def messy(catsdogs_dir: Path, cifar_dir: Path, out: Path) -> dict[str, int]:
    """The ``messy`` folder (see the module's docstring) under ``out``: images per class folder."""
    import io

    train, (cat, dog) = parquet_photos(catsdogs_dir / "train.parquet")
    root = out / "messy"

    def rgb(data: bytes) -> PILImage.Image:
        return PILImage.open(io.BytesIO(data)).convert("RGB")

    for i, (_, data) in enumerate(first_of_each(train, {cat: 80, dog: 0})):
        folder = root / "cat" / ("2019" if i % 2 else "2020 trip")
        folder.mkdir(parents=True, exist_ok=True)
        img = rgb(data).resize((400, 300) if i % 3 else (300, 400), PILImage.Resampling.BICUBIC)
        if i % 5 == 0:  # the pixels on their side and an EXIF tag that turns them upright
            exif = PILImage.Exif()
            exif[0x0112] = 6
            img.transpose(PILImage.Transpose.ROTATE_90).save(folder / f"IMG_{i:04d}.JPG", exif=exif, quality=90)
        else:
            img.save(folder / f"IMG_{i:04d}.jpg", quality=88)
    (root / "dog").mkdir(parents=True)
    for i, (_, data) in enumerate(first_of_each(train, {cat: 0, dog: 80})):
        img = rgb(data)
        if i % 4 == 0:
            img = img.convert("RGBA")
            img.paste((0, 0, 0, 0), (0, 0, 10, img.height))
        elif i % 4 == 1:
            img = img.convert("L")
        img.save(root / "dog" / f"Hund Foto \u00fc {i}.png")
    cifar = Dataset.from_parquet(str(cifar_dir / "train.parquet")).cast_column("img", Image(decode=False))
    planes = [row["img"]["bytes"] for row in cifar.select(range(min(2000, len(cifar)))) if row["label"] == 0][:40]
    (root / "airplane").mkdir()
    for i, data in enumerate(planes):
        PILImage.open(io.BytesIO(data)).save(root / "airplane" / f"plane{i}.png")
    counts = {c: sum(1 for f in (root / c).rglob("*") if f.is_file()) for c in ("cat", "dog", "airplane")}
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "notes.txt").write_text("photos from the shelter\n")
    (root / "dog" / "broken.jpg").write_bytes((root / "cat" / "2019" / "IMG_0001.jpg").read_bytes()[:900])
    (root / "empty_class").mkdir()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train_per_class", type=int, default=30)
    ap.add_argument("--test_per_class", type=int, default=200)
    ap.add_argument("--unlabeled", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="Fashion-MNIST: each class's images from this one on")
    ap.add_argument("--fine_min", type=int, default=10, help="tuxpaint-fine: the fewest stamps a class may have")
    ap.add_argument("--catsdogs", type=Path, help="a cats-and-dogs parquet folder: also build imbal and photos16")
    ap.add_argument("--cifar10", type=Path, help="CIFAR-10 as parquet: with --catsdogs, also build messy")
    ap.add_argument("--only", nargs="+", choices=("gcompris", "fashion", "tuxpaint", "catsdogs"),
                    default=("gcompris", "fashion", "tuxpaint", "catsdogs"), help="build these folders only")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "gcompris" in a.only:
            gc = unpack_deb("gcompris-qt-data", Path(tmp))
            print("gcompris-categories", gcompris_categories(gc, a.out / "gcompris-categories"))
        if "fashion" in a.only:
            fm = unpack_deb("dataset-fashion-mnist", Path(tmp))
            print("fashion", fashion(fm, a.out, a.train_per_class, a.test_per_class, a.unlabeled, a.start))
        if "tuxpaint" in a.only:
            tp = unpack_deb("tuxpaint-stamps-default", Path(tmp))
            print("tuxpaint-stamps", tuxpaint_stamps(tp, a.out / "tuxpaint-stamps"))
            print("tuxpaint-fine", tuxpaint_fine(tp, a.out / "tuxpaint-fine", a.fine_min))
    if "catsdogs" in a.only and a.catsdogs:
        print("catsdogs", catsdogs(a.catsdogs, a.out))
        if a.cifar10:
            print("messy", messy(a.catsdogs, a.cifar10, a.out))


if __name__ == "__main__":
    main()
