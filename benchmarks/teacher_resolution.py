"""At which input size should a fine-tuned teacher be run? Chosen on validation images, the test split read once.

    python benchmarks/teacher_resolution.py RUN [--sizes 160 192 224 256]

A network fine-tuned on random-resized crops sees objects larger in training than in a whole test image of the same
size, so it often does better when tested at a somewhat larger input (Touvron et al., "Fixing the train-test
resolution discrepancy", NeurIPS 2019). Each size is scored on the run's own validation split (its config.yaml's
data); the size with the best validation accuracy (the smaller on a tie) is the one whose test accuracy is read,
once. Pass the chosen size to a distillation with --distill.teacher_image_size.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from fm2edge.data import load_data
from fm2edge.device import cpu_features
from fm2edge.export import run_data
from fm2edge.models.io import load_classifier
from fm2edge.report.metrics import accuracy
from fm2edge.train import predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run folder of a trained classifier (e.g. `fm2edge finetune`'s full/)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 192, 224, 256])
    ap.add_argument("--batch_size", type=int, default=128)
    args = ap.parse_args()
    model = load_classifier(args.run)
    trained_at = model.preprocess.size
    _, val, test = load_data(run_data(Path(args.run)))
    if val is None:
        raise SystemExit("the run's data has no validation split: a size cannot be chosen honestly")
    device = torch.device("cpu")
    scores = {}
    for size in args.sizes:
        model.preprocess = dataclasses.replace(model.preprocess, size=size)
        t0 = time.perf_counter()
        scores[size] = accuracy(predict(model, val, args.batch_size, device, channels_last=True), val.labels)
        print(f"  {size:>4} px: validation {100 * scores[size]:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    chosen = max(args.sizes, key=lambda s: (scores[s], -s))
    model.preprocess = dataclasses.replace(model.preprocess, size=chosen)
    test_acc = accuracy(predict(model, test, args.batch_size, device, channels_last=True), test.labels)
    print(f"{model.name} trained at {trained_at} px; chosen on {len(val)} validation images: {chosen} px; "
          f"test accuracy at {chosen} px: {100 * test_acc:.2f}% ({len(test)} test images, read once); "
          f"CPU {cpu_features()}")


if __name__ == "__main__":
    main()
