"""int8 ONNX vs eager fp32 PyTorch at batch 1 on the CPU, with the accuracy each gives, in one run.

    python benchmarks/export_int8.py RUN_FOLDER [--data ../shared/data/cifar10] [--threads 2] [--max-test 1000]

RUN_FOLDER holds a trained student (`fm2edge distill` or `fm2edge train`). The script runs `fm2edge export` on it
(fp32 ONNX with parity check, static int8 with calibration images of the training split) and prints batch-1 p50
latency of eager fp32 PyTorch (the seed's way of running the model), ONNX fp32 and ONNX int8, the speed-up of int8
over eager, and the test-accuracy change. Targets: int8 at least 2x faster, at most 1 point less accurate.
"""

from __future__ import annotations

import argparse
import tempfile

from common import default_data

from fm2edge.config import DataConfig, ExportConfig, ExportJob
from fm2edge.device import cpu_features
from fm2edge.export import export_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=5000)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = export_job(ExportJob(model=args.run, output=tmp,
                                 data=DataConfig(source=args.data, max_train=args.max_train, max_test=args.max_test),
                                 export=ExportConfig(threads=args.threads, latency_runs=args.runs)))
    lat, acc = r["latency_batch1"], r["test_acc"]
    speedup = lat["pytorch_fp32"]["p50_ms"] / lat["onnx_int8"]["p50_ms"]
    loss = 100 * (acc["pytorch_fp32"] - acc["onnx_int8"])
    print(f"\nint8 ONNX vs eager fp32 PyTorch, batch 1, cpu ({cpu_features()}): {speedup:.2f}x faster "
          f"(target >= 2x: {'met' if speedup >= 2 else 'NOT met'}); test accuracy {100 * acc['pytorch_fp32']:.2f}% -> "
          f"{100 * acc['onnx_int8']:.2f}% ({-loss:+.2f} points; target >= -1: {'met' if loss <= 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
