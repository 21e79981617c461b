"""At which input size, and with a test-time flip or not, should a fine-tuned teacher be run? Chosen on validation
images, the test split read once.

    python benchmarks/teacher_resolution.py RUN [--sizes 160 192 224 256] [--flip]

A network fine-tuned on random-resized crops sees objects larger in training than in a whole test image of the same
size, so it often does better when tested at a somewhat larger input (Touvron et al., "Fixing the train-test
resolution discrepancy", NeurIPS 2019). With --flip each size is also scored with the logits averaged over each
image and its mirror (test-time flip, for classes that look the same mirrored). Each setting is scored on the run's
own validation split (its config.yaml's data); the one with the best validation accuracy (the smaller size, then no
flip, on a tie) is the one whose test accuracy is read, once. Pass the choice to a distillation with
--distill.teacher_image_size and --distill.teacher_flip.
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
    ap.add_argument("--flip", action="store_true", help="also score each size with a test-time flip")
    ap.add_argument("--batch_size", type=int, default=128)
    args = ap.parse_args()
    model = load_classifier(args.run)
    trained_at = model.preprocess.size
    _, val, test = load_data(run_data(Path(args.run)))
    if val is None:
        raise SystemExit("the run's data has no validation split: a size cannot be chosen honestly")
    device = torch.device("cpu")
    scores = {}
    settings = [(size, flip) for size in args.sizes for flip in ((False, True) if args.flip else (False,))]
    for size, flip in settings:
        model.preprocess, model.flip_average = dataclasses.replace(model.preprocess, size=size), flip
        t0 = time.perf_counter()
        scores[size, flip] = accuracy(predict(model, val, args.batch_size, device, channels_last=True), val.labels)
        print(f"  {size:>4} px{' + flip' if flip else '       '}: validation {100 * scores[size, flip]:.2f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    chosen = max(settings, key=lambda s: (scores[s], -s[0], not s[1]))
    size, flip = chosen
    model.preprocess, model.flip_average = dataclasses.replace(model.preprocess, size=size), flip
    test_acc = accuracy(predict(model, test, args.batch_size, device, channels_last=True), test.labels)
    what = f"{size} px{' with a test-time flip' if flip else ''}"
    print(f"{model.name} trained at {trained_at} px; chosen on {len(val)} validation images: {what}; "
          f"test accuracy: {100 * test_acc:.2f}% ({len(test)} test images, read once); distil from it with "
          f"--distill.teacher_image_size {size}{' --distill.teacher_flip true' if flip else ''}; "
          f"CPU {cpu_features()}")


if __name__ == "__main__":
    main()
