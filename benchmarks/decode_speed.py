"""Decoding phone-sized photos to the stored 256 px: fm2edge's reduced-scale JPEG decode vs a full decode, one run.

    python benchmarks/decode_speed.py [--count 24] [--width 4032] [--height 3024] [--size 256]

Writes ``--count`` JPEGs the size of a 12-megapixel phone photo (a textured gradient with noise, quality 90: decode
time follows the pixel count and the coded detail, not what the photo shows), then decodes each to ``--size`` px
both ways, one core, best of three passes: fm2edge's ``decode`` (libjpeg asked for 1/2, 1/4 or 1/8 scale that still
covers the size, then a bicubic resize) and the full decode followed by the same resize (what decoding did before,
and what a plain ``PIL.Image.open(...).convert("RGB")`` pipeline does). Prints images/s of each, the ratio, the mean
absolute pixel difference between the two results, and the CPU; writes the raw figures to
docs/results/decode_speed-DATE.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import save_results
from PIL import Image

from fm2edge.data.images import decode, resize_center_crop, to_rgb
from fm2edge.device import cpu_features


def write_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / 16 % 256, yy / 12 % 256, (xx + yy) / 28 % 256], -1)
    paths = []
    for i in range(count):
        noisy = np.clip(base + rng.normal(0, 12, base.shape) + i, 0, 255).astype(np.uint8)
        path = folder / f"photo-{i:03d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


def full_decode(path: Path, size: int) -> np.ndarray:
    """The baseline: every pixel decoded, then resized."""
    img = Image.open(path)
    img.load()
    return np.asarray(resize_center_crop(to_rgb(img), size))


def best_pass(fn, paths: list[Path], size: int, passes: int = 3) -> tuple[float, list[np.ndarray]]:
    best, out = float("inf"), []
    for _ in range(passes):
        start = time.perf_counter()
        out = [fn(p, size) for p in paths]
        best = min(best, time.perf_counter() - start)
    return len(paths) / best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--width", type=int, default=4032)
    ap.add_argument("--height", type=int, default=3024)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", help="file for the raw figures (default docs/results/decode_speed-DATE.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), args.count, args.width, args.height)
        fast, ours = best_pass(lambda p, s: decode(str(p), (s, s)), paths, args.size)
        slow, theirs = best_pass(full_decode, paths, args.size)
    diff = float(np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(ours, theirs, strict=True)]))
    print(f"{args.count} JPEGs of {args.width} x {args.height} to {args.size} px, one core, best of 3; "
          f"cpu: {cpu_features()}")
    print(f"fm2edge (reduced-scale decode) {fast:.1f} img/s, full decode {slow:.1f} img/s: {fast / slow:.1f}x; "
          f"mean absolute difference {diff:.2f} levels of 255")
    save_results("decode_speed", args, [{"width": args.width, "height": args.height, "size": args.size,
                                         "reduced_img_s": fast, "full_img_s": slow, "ratio": fast / slow,
                                         "mean_abs_diff": diff}], args.json)


if __name__ == "__main__":
    main()
