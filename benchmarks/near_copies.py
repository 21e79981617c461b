"""Near-copies between held-out and training images: what the hash-and-similarity rule finds, in one run.

    python benchmarks/near_copies.py [--data PATH] [--folders PATH ...] [--count 300] [--pairs FILE.png]

Two measurements behind ``fm2edge.data.splits.NEAR_COPY_BITS`` and ``NEAR_COPY_SSIM``:

1. on ``--data`` (default: the shared CIFAR-10 copy, else skipped) and each of ``--folders``, how many test (and
   held-out validation) images have a training image within 0, 1, ..., 8 bits of their 64-bit perceptual hash, how
   many of those within NEAR_COPY_BITS the structural similarity confirms (what `fm2edge data` names), the
   similarity of the nearest pairs, and how long hashing, the search and the similarity took; ``--pairs`` draws the
   24 named pairs most alike, then the first 24 candidates the similarity leaves out, side by side (test image
   left, training image right, each with its bits and similarity) to look at;
2. on ``--count`` real photos (default: the shared cat and dog photos' test split, else smooth synthetic images),
   each saved again at 100 px as JPEG quality 70 and stored as a folder holding both stores them (at the originals'
   shorter side, up to 256 px): the bits and similarity between each photo and its copy, and between each photo and
   its nearest other photo.

Prints both tables and the CPU; writes the raw figures to docs/results/near_copies-DATE.json.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from common import default_data, save_results
from PIL import Image

from fm2edge.config import DataConfig
from fm2edge.data import load_data
from fm2edge.data.dataset import DEFAULT_VARIABLE_SIZE
from fm2edge.data.images import resize_center_crop
from fm2edge.data.splits import (
    NEAR_COPY_BITS,
    NEAR_COPY_SSIM,
    near_copies,
    nearest_hashes,
    perceptual_hashes,
    structural_similarity,
)
from fm2edge.data.summary import pair_sheet
from fm2edge.device import cpu_features

SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "catsdogs128" / "test.parquet"


def split_table(source: str, pairs: str | None) -> list[dict]:
    """Per held-out split: images within k bits of a training image, k = 0..8, and the seconds it took."""
    train, val, test = load_data(DataConfig(source=source))
    rows = []
    started = time.perf_counter()
    base = perceptual_hashes(train.images)
    hashed = time.perf_counter() - started
    for name, held in (("test", test), ("validation", val)):
        if held is None:
            continue
        started = time.perf_counter()
        hashes = perceptual_hashes(held.images)
        index, bits = nearest_hashes(hashes, base)
        seconds = time.perf_counter() - started
        similarity = pair_similarity(held, train, index)
        held.perceptual, train.perceptual = hashes, base  # hashed above: near_copies reads them, not timed twice
        held.near = None  # found when the data loaded: searched again, to time the search and the similarity
        started = time.perf_counter()
        confirmed = len(near_copies(held, train)[0])
        rows.append({"data": source, "split": name, "images": len(held), "training_images": len(train),
                     "within": {k: int((bits <= k).sum()) for k in range(9)}, "confirmed": confirmed,
                     "nearest_similarity": quantiles(similarity[bits <= NEAR_COPY_BITS]),
                     "hash_train_s": hashed, "hash_and_search_s": seconds,
                     "near_copies_s": time.perf_counter() - started})
        if pairs and name == "test":
            sheet(held, train, index, bits, similarity, pairs)
    return rows


def pair_similarity(held, train, index: np.ndarray) -> np.ndarray:
    """The structural similarity of each held-out image and its nearest training image by hash."""
    return structural_similarity(held.images, train.images, (np.arange(len(held)), index))


def quantiles(values: np.ndarray) -> dict | None:
    """Min, median and max (None for no values)."""
    if not len(values):
        return None
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def sheet(held, train, index: np.ndarray, bits: np.ndarray, similarity: np.ndarray, path: str,
          per: int = 24) -> None:
    """Up to ``per`` of the pairs `fm2edge data` names (:func:`near_copies`, the most alike first), then up to ``per``
    candidates it does not (their hashes within NEAR_COPY_BITS, their similarity below NEAR_COPY_SSIM), drawn as
    `fm2edge data --pairs` draws them, each labelled with its bits and similarity."""
    at, named, named_bits, named_similarity = near_copies(held, train)
    first = np.argsort(-named_similarity, kind="stable")[:per]
    left = np.flatnonzero((bits <= NEAR_COPY_BITS) & (similarity < NEAR_COPY_SSIM) & ~np.isin(np.arange(len(bits)), at)
                          )[:per]
    pairs = [(held.images[at[i]], train.images[named[i]], f"{named_bits[i]} bits, SSIM {named_similarity[i]:.2f}")
             for i in first]
    pairs += [(held.images[i], train.images[index[i]], f"{bits[i]} bits, SSIM {similarity[i]:.2f}") for i in left]
    pair_sheet(pairs, side=64, cols=6).save(path)


def photos(count: int) -> list[Image.Image]:
    """``count`` real photos where the shared copy exists, else smooth synthetic ones."""
    if SHARED_PHOTOS.exists():
        import pyarrow.parquet as pq

        column = pq.read_table(SHARED_PHOTOS).column("image").to_pylist()[:count]
        return [Image.open(io.BytesIO(r["bytes"])).convert("RGB") for r in column]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((128, 128), Image.BICUBIC)
            for _ in range(count)]


def copies_table(count: int) -> dict:
    """Bits and similarity between each photo and its copy (100 px, JPEG quality 70), and to its nearest other
    photo."""
    originals, copies = [], []
    for img in photos(count):
        side = min(DEFAULT_VARIABLE_SIZE, *img.size)  # a folder of both stores them at the larger shorter side
        buf = io.BytesIO()
        img.resize((100, 100), Image.BILINEAR).save(buf, "JPEG", quality=70)
        originals.append(np.asarray(resize_center_crop(img, side)))
        copies.append(np.asarray(resize_center_crop(Image.open(buf).convert("RGB"), side)))

    def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    a, b = perceptual_hashes(tensor(originals)), perceptual_hashes(tensor(copies))
    to_copy = np.unpackbits(a ^ b, axis=1).sum(1, dtype=np.int64)
    copy_similarity = structural_similarity(tensor(originals), tensor(copies))
    half = len(a) // 2
    other, to_other = nearest_hashes(a[:half], a[half:])
    other_similarity = structural_similarity(tensor(originals[:half]), tensor(originals[half:])[other])
    return {"photos": len(a), "real": SHARED_PHOTOS.exists(),
            "copy_bits": np.bincount(to_copy, minlength=9)[:9].tolist(),
            "copies_within_threshold": int((to_copy <= NEAR_COPY_BITS).sum()),
            "copies_confirmed": int(((to_copy <= NEAR_COPY_BITS) & (copy_similarity >= NEAR_COPY_SSIM)).sum()),
            "copy_similarity": quantiles(copy_similarity),
            "nearest_other_min_bits": int(to_other.min()),
            "others_within_threshold": int((to_other <= NEAR_COPY_BITS).sum()), "others_compared": half,
            "nearest_other_similarity": quantiles(other_similarity)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--folders", nargs="*", default=[], help="more image folders (or datasets) to count on")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--pairs", help="PNG of the pairs found on --data's test split, to look at")
    ap.add_argument("--json", help="file for the raw figures (default docs/results/near_copies-DATE.json)")
    args = ap.parse_args()
    print(f"cpu: {cpu_features()}; threshold: {NEAR_COPY_BITS} of 64 bits, then SSIM >= {NEAR_COPY_SSIM}")
    rows = split_table(args.data, args.pairs) if args.data != "digits" else []
    for folder in args.folders:
        rows += split_table(folder, None)
    for r in rows:
        counts = "  ".join(f"<={k}: {n}" for k, n in r["within"].items())
        ssim = r["nearest_similarity"]
        spread = f"SSIM of those pairs {ssim['min']:.2f}-{ssim['max']:.2f} (median {ssim['median']:.2f})" if ssim \
            else "no pair"
        print(f"{r['data']} {r['split']} ({r['images']:,} images vs {r['training_images']:,} training): {counts} "
              f"| confirmed {r['confirmed']}; {spread} | hashing the training images {r['hash_train_s']:.1f} s, "
              f"hashing and search {r['hash_and_search_s']:.1f} s, the candidates' search and "
              f"similarity {r['near_copies_s']:.2f} s")
    copies = copies_table(args.count)
    print(f"{copies['photos']} {'real' if copies['real'] else 'synthetic'} photos saved again at 100 px (JPEG 70): "
          f"bits to the copy {copies['copy_bits']} (0..8), {copies['copies_within_threshold']} within the threshold; "
          f"nearest other photo {copies['nearest_other_min_bits']} bits at least, "
          f"{copies['others_within_threshold']} of {copies['others_compared']} within the threshold; SSIM to the "
          f"copy {copies['copy_similarity']['min']:.2f}-{copies['copy_similarity']['max']:.2f}, "
          f"{copies['copies_confirmed']} confirmed; to the nearest other photo at most "
          f"{copies['nearest_other_similarity']['max']:.2f}")
    save_results("near_copies", args, [*rows, {"copies": copies}], args.json)


if __name__ == "__main__":
    main()
