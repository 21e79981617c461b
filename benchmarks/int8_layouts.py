"""How faithful and how fast is each int8 recipe `fm2edge auto` can export, on images no calibration saw?

    python benchmarks/int8_layouts.py RUN_FOLDER [RUN_FOLDER ...] --data FOLDER --probe OTHER_SOURCE

Each run folder holds a trained model (a student of `fm2edge auto`, say). Its deployable fp32 graph (uint8 images
in, probabilities out) is quantised four ways: min-max or percentile calibration, with every layer in int8 or the
first and last layers kept in fp32, each calibrated as `fm2edge export` calibrates (the first
``--export.calibration_images`` training images, balanced over the classes). Each int8 graph's answers are compared
with the fp32 graph's on the training images, on validation (what `auto` can see: a few dozen images on a small
folder) and on ``--probe``'s test split (images of any kind, unlabelled here: hundreds of answers no calibration
saw, which tell the recipes apart where validation is too small to), and each graph is timed at batch 1 as an
export times it. The test split of ``--data`` is not read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import graph_labels

from fm2edge.config import DataConfig, ExportConfig
from fm2edge.data import balanced_indices, load_data
from fm2edge.device import cpu_features
from fm2edge.export import (
    calibration_batches,
    export_deployable,
    graph_latency,
    quantize_int8,
)
from fm2edge.models.io import load_classifier

RECIPES = (("minmax", "none"), ("minmax", "first_last"), ("percentile", "none"), ("percentile", "first_last"))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", required=True, help="the folder the runs trained on (its training and validation split)")
    ap.add_argument("--probe", required=True, help="a source whose test split probes the graphs (labels unused)")
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, val, _ = load_data(DataConfig(source=args.data))
    probe = load_data(DataConfig(source=args.probe))[2]
    sets = {"train": train.images, "validation": val.images, "probe": probe.images}
    calibration = torch.from_numpy(balanced_indices(train.labels.numpy(),
                                                    min(ExportConfig().calibration_images, len(train))))
    rows = []
    for run in args.runs:
        model = load_classifier(run)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_deployable(model, Path(tmp) / "model.onnx",  # its input size, for the timings
                                     metadata={"preprocess": model.describe()["preprocess"]})
            reference = {k: graph_labels(model, fp32, v) for k, v in sets.items()}
            rows.append({"run": run, "recipe": "fp32", "p50_ms": graph_latency(fp32, args.threads,
                                                                              args.latency_runs)["quiet_p50_ms"]})
            for method, layers in RECIPES:
                path = Path(tmp) / f"{method}-{layers}.onnx"
                started = time.perf_counter()
                quantize_int8(fp32, path, calibration_batches(model, train.images[calibration]), method,
                              input_name="images", fp32_layers=layers, progress=False)
                seconds = time.perf_counter() - started
                row = {"run": run, "recipe": f"{method}, {'first and last fp32' if layers != 'none' else 'all int8'}",
                       "quantise_s": seconds,
                       "p50_ms": graph_latency(path, args.threads, args.latency_runs)["quiet_p50_ms"]}
                row.update({f"agreement_{k}": agreement(graph_labels(model, path, v), reference[k])
                            for k, v in sets.items()})
                rows.append(row)
    print(f"{args.data}: {len(train)} training, {len(val)} validation images; probe: {len(probe)} test images of "
          f"{args.probe}; CPU {cpu_features()}")
    print("| run | graph | agrees with fp32: train | validation | probe | batch-1 p50 ms | quantise s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{100 * r[f'agreement_{k}']:.1f}%" if f"agreement_{k}" in r else "" for k in sets]
        quantised = f"{r['quantise_s']:.0f}" if "quantise_s" in r else ""
        print(f"| {r['run']} | {r['recipe']} | {' | '.join(cells)} | {r['p50_ms']:.2f} | {quantised} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_features(), "data": args.data, "probe": args.probe,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
