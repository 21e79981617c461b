"""Peak memory of int8 calibration and of a training step at a large input: ONNX Runtime's defaults against fm2edge's.

    python benchmarks/memory_peaks.py [--model pypi:efficientnet_lite0] [--size 224] [--images 128]

Each row runs in a fresh process and reports its peak resident memory and seconds, random weights and random images
(memory and time do not depend on what they show):

- calibration, "onnxruntime": ``quantize_static`` as ONNX Runtime runs it by default (the calibration images read in
  one collection, batches of 64, as fm2edge did before); "fm2edge": :func:`fm2edge.export.quantize_int8` (one
  collection per batch, batches sized by :func:`fm2edge.export.batch_for`); for min-max and percentile calibration.
- training: AdamW steps of the model at ``--size`` px at batch 64 against the batch fm2edge trains a pretrained
  student at (:attr:`fm2edge.automate.measure.Candidate.batch_size`), images per second and peak memory.

Prints the table and the ratios, names the CPU, and writes the raw figures to docs/results/memory_peaks-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def calibrate(model_name: str, size: int, images: int, method: str, ours: bool) -> dict:
    import numpy as np

    from fm2edge.config import ModelConfig
    from fm2edge.export import CALIBRATION_BATCH, batch_for, export_deployable, quantize_int8
    from fm2edge.models.registry import create_model
    from fm2edge.timing import peak_rss

    model = create_model(ModelConfig(name=model_name, pretrained=False, image_size=size), 2).eval()
    batch = batch_for(model, CALIBRATION_BATCH) if ours else CALIBRATION_BATCH
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for _ in range(images // batch)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_deployable(model, Path(tmp) / "model.onnx")
        start = time.perf_counter()
        if ours:
            quantize_int8(fp32, Path(tmp) / "model.int8.onnx", iter(batches), method, input_name="images",
                          fp32_layers="none")
        else:
            ort_defaults(fp32, Path(tmp) / "model.int8.onnx", batches, method)
        seconds = time.perf_counter() - start
    return {"part": f"{method} calibration", "how": "fm2edge" if ours else "onnxruntime", "batch": batch,
            "seconds": seconds, "peak_gib": (peak_rss() or 0) / 2**30}


def ort_defaults(fp32: Path, out: Path, batches: list, method: str) -> None:
    """ONNX Runtime's ``quantize_static`` with its defaults for how calibration data is collected (one collection)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"images": b}

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "percentile": CalibrationMethod.Percentile}[method])


def train(model_name: str, size: int, batch: int) -> dict:
    import numpy as np
    import torch

    from fm2edge.automate.measure import SPEED_WARMUP, Candidate, timed_steps
    from fm2edge.device import training_memory
    from fm2edge.timing import peak_rss

    class AtBatch(Candidate):  # the candidate's steps at a batch of our choosing
        @property
        def batch_size(self) -> int:
            return batch

    with training_memory(torch.device("cpu")):
        times = timed_steps(AtBatch(model_name, size), 2, torch.device("cpu"))
    return {"part": "training steps", "how": "fm2edge" if batch == Candidate(model_name, size).batch_size else "64",
            "batch": batch, "img_s": batch / float(np.median(times[SPEED_WARMUP:])),
            "peak_gib": (peak_rss() or 0) / 2**30}


def child(args, *spec: str) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--size", str(args.size), "--images", str(args.images),
           "--one", *spec]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pypi:efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=128, help="calibration images (a multiple of 64)")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # the child process's row
    ap.add_argument("--json", help="file for the raw figures (default docs/results/memory_peaks-DATE.json)")
    args = ap.parse_args()
    if args.one:
        kind, *rest = args.one
        row = (calibrate(args.model, args.size, args.images, rest[0], rest[1] == "fm2edge") if kind == "calibrate"
               else train(args.model, args.size, int(rest[0])))
        print(json.dumps(row))
        return
    import torch
    from common import save_results

    from fm2edge.automate.measure import Candidate
    from fm2edge.device import cpu_features

    rows = [child(args, "calibrate", method, how) for method in ("minmax", "percentile")
            for how in ("onnxruntime", "fm2edge")]
    rows += [child(args, "train", str(b)) for b in (64, Candidate(args.model, args.size).batch_size)]
    print(f"{args.model} at {args.size} px, random weights; cpu: {cpu_features()}, torch {torch.__version__}")
    print(f"{'part':<24}{'how':<13}{'batch':>6}{'seconds':>9}{'img/s':>8}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['part']:<24}{r['how']:<13}{r['batch']:>6}{r.get('seconds', float('nan')):>9.1f}"
              f"{r.get('img_s', float('nan')):>8.1f}{r['peak_gib']:>10.2f}")
    for first in range(0, len(rows), 2):
        base, ours = rows[first], rows[first + 1]
        print(f"{ours['part']}: peak memory {base['peak_gib'] / ours['peak_gib']:.1f}x smaller")
    save_results("memory_peaks", args, rows, args.json)


if __name__ == "__main__":
    main()
