"""Which int8 calibration keeps a student's accuracy? A grid chosen on validation images, then the test split once.

    python benchmarks/int8_calibration.py RUN_FOLDER [--data digits] [--max-train N] [--max-test N]

RUN_FOLDER holds a trained model. Its deployable fp32 ONNX graph (uint8 images in, probabilities out) is quantised
with every combination of calibration size (100, 500, 2000 training images), calibration method (minmax,
percentile, entropy), per-channel or per-tensor weights, and fp32 first and last layers or none. Each int8 graph is
scored on the validation split by its fidelity to fp32 (mean KL divergence of its probabilities from fp32's, which
does not saturate the way accuracy does on easy data) and its accuracy; the most faithful is chosen. Then the test
split is read once for fp32, for the default setting (minmax, 500, per-channel, no fp32 layers) and for the chosen one,
with a paired bootstrap interval of each int8 graph's difference from fp32.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import default_data

from fm2edge.config import DataConfig
from fm2edge.data import balanced_indices, load_data
from fm2edge.device import cpu_features
from fm2edge.export import (
    calibration_batches,
    export_deployable,
    image_batches,
    open_session,
    quantize_int8,
    run_images,
)
from fm2edge.models.io import load_classifier
from fm2edge.report.metrics import accuracy, paired_difference

DEFAULT = (500, "minmax", True, "none")


def probabilities(sess, model, images: torch.Tensor) -> np.ndarray:
    return np.concatenate([run_images(sess, b) for b in image_batches(model, images, 256)])


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean KL(p || q) over images."""
    p, q = np.clip(p, 1e-8, 1), np.clip(q, 1e-8, 1)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--max-train", type=int, default=5000)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_classifier(args.run)
    train, val, test = load_data(DataConfig(source=args.data, max_train=args.max_train, max_test=args.max_test))
    if val is None:
        raise SystemExit("the data has no validation split to choose a calibration on")
    grid = list(itertools.product((100, 500, 2000), ("minmax", "percentile", "entropy"), (True, False),
                                  ("none", "first_last")))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_deployable(model, Path(tmp) / "model.onnx")
        sess = open_session(fp32, args.threads)
        p_val = probabilities(sess, model, val.images)
        val_fp32 = accuracy(p_val, val.labels)
        scores, t0 = {}, time.perf_counter()
        for n, method, per_channel, keep in grid:
            calib = torch.from_numpy(balanced_indices(train.labels.numpy(), min(n, len(train))))
            path = Path(tmp) / f"int8-{n}-{method}-{per_channel}-{keep}.onnx"
            quantize_int8(fp32, path, calibration_batches(model, train.images[calib]), method, per_channel,
                          input_name="images", fp32_layers=keep)
            q_val = probabilities(open_session(path, args.threads), model, val.images)
            scores[(n, method, per_channel, keep)] = (accuracy(q_val, val.labels), path, kl(p_val, q_val))
        minutes = (time.perf_counter() - t0) / 60
        chosen = min(scores, key=lambda k: scores[k][2])  # the most faithful to fp32 on validation images
        print(f"{model.name} from {args.run} on {args.data}: {len(train)} train / {len(val)} validation / {len(test)} "
              f"test images; {len(grid)} int8 graphs in {minutes:.1f} min; CPU {cpu_features()}")
        print(f"validation accuracy: fp32 {100 * val_fp32:.2f}%")
        print(f"  {'calibration':>11} {'method':>10} {'weights':>11} {'fp32 layers':>11} {'KL to fp32':>10} "
              f"{'val acc':>8} {'vs fp32':>8}")
        for key, (acc, _, div) in sorted(scores.items(), key=lambda kv: kv[1][2]):
            mark = "  <- chosen" if key == chosen else ("  (default)" if key == DEFAULT else "")
            print(f"  {key[0]:>11} {key[1]:>10} {'per-channel' if key[2] else 'per-tensor':>11} {key[3]:>11} "
                  f"{div:>10.2e} {100 * acc:>7.2f}% {100 * (acc - val_fp32):>+7.2f}{mark}")
        # the test split, once per graph that matters
        test_fp32 = probabilities(sess, model, test.images)
        labels = test.labels.numpy()
        right_fp32 = test_fp32.argmax(1) == labels
        print(f"test accuracy (read once): fp32 {100 * right_fp32.mean():.2f}%")
        for name, key in (("default", DEFAULT), ("chosen on validation", chosen)):
            q = probabilities(open_session(scores[key][1], args.threads), model, test.images)
            print("  " + paired_difference(q.argmax(1) == labels, right_fp32).line(
                f"int8 {name} ({key[0]} images, {key[1]}, {'per-channel' if key[2] else 'per-tensor'}, fp32 layers "
                f"{key[3]}) vs fp32: {100 * (q.argmax(1) == labels).mean():.2f}%"))


if __name__ == "__main__":
    main()
