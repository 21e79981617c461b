"""Augmentation speed: fm2edge's batched views vs a per-image torchvision v2 loop, same images, one run.

    python benchmarks/augment_speed.py [--batch 128] [--sizes 224 32] [--repeats 5] [--device cpu]

The distillation recipe's augmentation (random-resized crop, flip, TrivialAugment, colour jitter) on uint8 images
stored at 256 px (rendered at 224) and at 32 px (rendered at 32): fm2edge draws every image's view as one row of
numbers and renders the batch (one roi_align for the crops, operations grouped by kind), while the baseline is what a
per-image pipeline does, torchvision's own transforms.v2 (RandomResizedCrop, RandomHorizontalFlip,
TrivialAugmentWide, ColorJitter) called image by image. Prints images/s of both, the ratio, device and CPU, and writes
the raw figures to docs/results/augment_speed-DATE.json.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from common import save_results

from fm2edge.augment import draw_views, render
from fm2edge.config import AugmentConfig
from fm2edge.device import cpu_features

RECIPE = AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True, auto="trivial", jitter=0.4)


def per_image_pipeline(size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, scale=RECIPE.scale, antialias=True), v2.RandomHorizontalFlip(),
                       v2.TrivialAugmentWide(), v2.ColorJitter(RECIPE.jitter, RECIPE.jitter, RECIPE.jitter)])


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batched(images: torch.Tensor, generator: torch.Generator, size: int, stored: int) -> torch.Tensor:
    """fm2edge: every image's view drawn as numbers, the batch rendered at once."""
    out = render(images, draw_views(len(images), RECIPE, generator, len(images), stored), size)
    synchronise(images.device)
    return out


def per_image(images: torch.Tensor, pipeline) -> torch.Tensor:
    """The baseline: torchvision's v2 pipeline called image by image."""
    out = torch.stack([pipeline(img) for img in images])
    synchronise(images.device)
    return out


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 32], help="rendered sizes (stored: 256 px or 32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="file for the raw figures (default docs/results/augment_speed-DATE.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        stored = 256 if size > 32 else 32
        images = torch.randint(0, 256, (args.batch, 3, stored, stored), dtype=torch.uint8, device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        pipeline = per_image_pipeline(size)

        fast = best_of(partial(batched, images, generator, size, stored), args.repeats)
        slow = best_of(partial(per_image, images, pipeline), args.repeats)
        rows.append({"size": size, "stored": stored, "batch": args.batch, "batched_img_s": args.batch / fast,
                     "per_image_img_s": args.batch / slow, "ratio": slow / fast})
    where = cpu_features() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"augmentation (crop, flip, TrivialAugment, jitter) at batch {args.batch}, best of {args.repeats}; "
          f"{device.type}: {where}, torch {torch.__version__}")
    print(f"{'size':>6}{'stored':>8}{'batched img/s':>15}{'per-image img/s':>17}{'ratio':>8}")
    for r in rows:
        print(f"{r['size']:>6}{r['stored']:>8}{r['batched_img_s']:>15.0f}{r['per_image_img_s']:>17.0f}"
              f"{r['ratio']:>7.1f}x")
    save_results("augment_speed", args, rows, args.json)


if __name__ == "__main__":
    main()
