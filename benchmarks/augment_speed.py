"""Augmentation speed: fm2edge's rendering of views vs a per-image torchvision v2 loop, same images, one run.

    python benchmarks/augment_speed.py [--batch 128] [--sizes 224 32] [--repeats 5] [--device cpu]

The distillation recipe's augmentation (random-resized crop, flip, TrivialAugment, colour jitter) on uint8 images
stored at 256 px (rendered at 224) and at 32 px (rendered at 32). fm2edge draws every image's view as one row of
numbers and renders the batch: the colour jitter as one colour matrix per image and the operations grouped by
kind, over the whole batch; the crop, on a CPU, through torch's uint8 resize image by image (on a GPU, and for
boxes past the border, one separable resample of the batch). The baseline is what a per-image pipeline does,
torchvision's own transforms.v2 (RandomResizedCrop, RandomHorizontalFlip, TrivialAugmentWide, ColorJitter) called
image by image. Both run with freed memory kept, as fm2edge's training loop runs them on a CPU (``--malloc system``
for glibc's defaults). Also timed: the crop alone, as rendering takes it and as the batched resample. Prints
images/s of each, the ratio, device and CPU, and writes the raw figures to docs/results/augment_speed-DATE.json.
"""

from __future__ import annotations

import argparse
import contextlib
from functools import partial

import torch
from common import save_results

from fm2edge.augment import crop_resize, draw_views, render, resample
from fm2edge.config import AugmentConfig
from fm2edge.device import cpu_features, freed_memory_kept
from fm2edge.timing import time_calls

RECIPE = AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True, auto="trivial", jitter=0.4)


def per_image_pipeline(size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, scale=RECIPE.scale, antialias=True), v2.RandomHorizontalFlip(),
                       v2.TrivialAugmentWide(), v2.ColorJitter(RECIPE.jitter, RECIPE.jitter, RECIPE.jitter)])


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synchronised(fn, images: torch.Tensor, *args) -> torch.Tensor:
    out = fn(images, *args)
    synchronise(images.device)
    return out


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
    return float(time_calls(fn, repeats, warmup=1).min())


def measure(size: int, batch: int, repeats: int, device: torch.device) -> dict:
    """One row: both pipelines, and the crop alone, at ``size`` px."""
    stored = 256 if size > 32 else 32
    images = torch.randint(0, 256, (batch, 3, stored, stored), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    views = draw_views(batch, RECIPE, generator, batch, stored)
    fast = best_of(partial(batched, images, generator, size, stored), repeats)
    slow = best_of(partial(per_image, images, per_image_pipeline(size)), repeats)
    crop = best_of(partial(synchronised, crop_resize, images, views, size), repeats)
    whole = best_of(partial(synchronised, resample, images, views, size), repeats)
    return {"size": size, "stored": stored, "batch": batch, "batched_img_s": batch / fast,
            "per_image_img_s": batch / slow, "ratio": slow / fast, "crop_img_s": batch / crop,
            "resample_img_s": batch / whole}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 32], help="rendered sizes (stored: 256 px or 32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", choices=["kept", "system"], default="kept",
                    help="freed memory kept (as fm2edge trains on a CPU) or glibc's defaults")
    ap.add_argument("--json", help="file for the raw figures (default docs/results/augment_speed-DATE.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    kept = freed_memory_kept() if args.malloc == "kept" else contextlib.nullcontext()
    rows = []
    with kept:
        for size in args.sizes:
            rows.append(measure(size, args.batch, args.repeats, device))
    where = cpu_features() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"augmentation (crop, flip, TrivialAugment, jitter) at batch {args.batch}, best of {args.repeats}, "
          f"malloc {args.malloc}; {device.type}: {where}, torch {torch.__version__}")
    print(f"{'size':>6}{'stored':>8}{'fm2edge img/s':>15}{'per-image img/s':>17}{'ratio':>8}"
          f"{'crop img/s':>12}{'resample img/s':>16}")
    for r in rows:
        print(f"{r['size']:>6}{r['stored']:>8}{r['batched_img_s']:>15.0f}{r['per_image_img_s']:>17.0f}"
              f"{r['ratio']:>7.1f}x{r['crop_img_s']:>12.0f}{r['resample_img_s']:>16.0f}")
    save_results("augment_speed", args, rows, args.json)


if __name__ == "__main__":
    main()
