"""What computing the convolutions' per-channel weight scales in one pass buys int8 quantisation, in one run.

    python benchmarks/int8_quantize_speed.py [--models pypi:efficientnet_lite0@96 ...] [--repeats 3] [--json OUT]

Every int8 graph `fm2edge export` writes, and each candidate `fm2edge auto` measures (two int8 layouts each), goes
through ONNX Runtime's static quantiser, which computes a convolution's weight scales one output channel at a time in
Python. `fm2edge.export.conv_weight_scales` computes them for a whole weight at once and hands them over as
``TensorQuantOverrides``. For each model (random weights; ``NAME@SIZE``) and int8 layout this prints the median
seconds of `fm2edge.export.quantize_int8` both ways (calibration, pre-processing and writing included; the two
alternate, ``--repeats`` times each), the ratio, and whether the two graphs are identical (every node and
initializer). The CPU is printed beside the table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from fm2edge import export
from fm2edge.config import ModelConfig
from fm2edge.device import cpu_features
from fm2edge.models import create_model

LAYOUTS = {"fully int8": "none", "first and last fp32": "first_last"}


def same_graph(a: Path, b: Path) -> bool:
    """Every node and every initializer of the two ONNX graphs identical."""
    ga, gb = onnx.load(str(a)).graph, onnx.load(str(b)).graph
    if [n.SerializeToString() for n in ga.node] != [n.SerializeToString() for n in gb.node]:
        return False
    mine = {t.name: numpy_helper.to_array(t) for t in gb.initializer}
    return len(mine) == len(ga.initializer) and all(
        t.name in mine and np.array_equal(numpy_helper.to_array(t), mine[t.name]) for t in ga.initializer)


def timed_quantisation(fp32: Path, out: Path, size: int, layout: str, scales: str) -> float:
    rng = np.random.default_rng(0)
    batches = (rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8) for _ in range(2))
    t0 = time.perf_counter()
    export.quantize_int8(fp32, out, batches, input_name="images", fp32_layers=layout, weight_scales=scales)
    return time.perf_counter() - t0


def model_rows(spec: str, repeats: int) -> list[dict]:
    name, _, size = spec.rpartition("@")
    size = int(size)
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, image_size=size, pretrained=False), 10).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export.export_deployable(model, Path(tmp) / "model.onnx")
        for label, layout in LAYOUTS.items():
            seconds: dict[str, list[float]] = {"onnxruntime": [], "vectorised": []}
            for _ in range(repeats):  # alternating, so a machine that slows down weighs on both
                for scales in seconds:
                    seconds[scales].append(timed_quantisation(fp32, Path(tmp) / f"{scales}.onnx", size, layout,
                                                              scales))
            ort, ours = (float(np.median(seconds[s])) for s in ("onnxruntime", "vectorised"))
            same = same_graph(Path(tmp) / "onnxruntime.onnx", Path(tmp) / "vectorised.onnx")
            print(f"| {spec} | {label} | {ort:.2f} | {ours:.2f} | {ort / ours:.2f}x | {'yes' if same else 'NO'} |",
                  flush=True)
            rows.append({"model": spec, "layout": layout, "onnxruntime_s": ort, "vectorised_s": ours,
                         "speedup": ort / ours, "identical": same, "seconds": seconds})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["pypi:efficientnet_lite0@96", "pypi:efficientnet_lite0@224",
                                                    "student:small_cnn@64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    print(f"int8 quantisation, median seconds of {a.repeats} ({cpu_features()})")
    print("| model | layout | onnxruntime's scales | vectorised | speed-up | identical graph |")
    print("|---|---|---|---|---|---|")
    rows = [r for spec in a.models for r in model_rows(spec, a.repeats)]
    if a.json:
        from fm2edge.runs import atomic_write_json

        atomic_write_json(Path(a.json), {"machine": cpu_features(), "repeats": a.repeats, "rows": rows})


if __name__ == "__main__":
    main()
