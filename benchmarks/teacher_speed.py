"""How fast each of `fm2edge auto`'s default teachers runs on this machine, in each way fm2edge can run it: the
cost of its outputs on every stored view, which the plan times on the real teacher and counts against the budget.

    python benchmarks/teacher_speed.py [--teachers NAME ...] [--batch 32] [--size 224] [--threads 2] [--json F]

Each teacher is built through fm2edge's own registry and timed forward (its own preprocessing, uint8 images in) at
one batch, best of three after a warm-up: PyTorch as loaded (NCHW), PyTorch channels-last (as a distillation's
teacher runs), and ONNX Runtime fp32 on its exported pooled-features graph (as `--distill.teacher_backend onnx` and
`--embed.backend onnx` run it), with the largest difference of its logits from PyTorch's. The last column is what
"auto" picks here (:func:`fm2edge.features.graph_helps`). Without the hub, DINOv2-small is timed as its
architecture with random weights (hidden 384, 12 layers, 6 heads, patch 14, saved like a hub copy): the speed is
the architecture's, not the weights'.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fm2edge.automate.config import DEFAULT_TEACHERS
from fm2edge.config import ModelConfig
from fm2edge.device import cpu_features
from fm2edge.distill.teacher import PooledFeatures
from fm2edge.features import graph_helps, graph_runner
from fm2edge.models import create_model
from fm2edge.models.sources import hub_unavailable


def dinov2_small_shape(folder: str) -> str:
    """A DINOv2-small-shaped model with random weights and DINOv2's processor settings, saved in ``folder``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                             image_size=518, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                      do_center_crop=True).save_pretrained(folder)
    return f"hf:{folder}"


def speeds(name: str, batch: int, size: int, graphs: Path) -> dict:
    """Images/s of one teacher run each way, the largest logit difference of the graph, and the way "auto" picks."""
    model = create_model(ModelConfig(name=name, pretrained=True), 10).eval()
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    model.preprocess = model.preprocess.with_overrides(size)
    graph = graph_runner(PooledFeatures(model), size, graphs / name.replace("/", "_").replace(":", "_"))
    with torch.no_grad():
        pixels = model.preprocess(x)
        ways = {"torch": lambda: model(pixels),
                "onnxruntime": lambda: model.head(torch.from_numpy(graph(pixels)))}
        out = {"torch": best(ways["torch"]), "onnxruntime": best(ways["onnxruntime"])}
        difference = float((ways["torch"]() - ways["onnxruntime"]()).abs().max())
        model.to(memory_format=torch.channels_last)
        last = pixels.contiguous(memory_format=torch.channels_last)
        out["channels_last"] = best(lambda: model(last))
    return {"teacher": name, **{k: batch / v for k, v in out.items()}, "max_logit_difference": difference,
            "auto": "onnxruntime" if graph_helps(model, torch.device("cpu")) else "torch"}


def best(fn) -> float:
    fn()  # warm-up: oneDNN kernel choice, allocator, ONNX Runtime's first run
    return min(_seconds(fn) for _ in range(3))


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teachers", nargs="+", default=list(DEFAULT_TEACHERS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.teachers:
            built, note = name, "pretrained weights"
            if hub_unavailable(name):
                built, note = dinov2_small_shape(tmp), "its architecture with random weights: no hub here"
            rows.append({**speeds(built, a.batch, a.size, Path(tmp) / "graphs"), "teacher": name, "note": note})
    print(f"teachers forward at batch {a.batch}, {a.size} px on {cpu_features()} (images/s):")
    print("| teacher | PyTorch | PyTorch channels-last | ONNX Runtime | ONNX Runtime / channels-last | max logit "
          "difference | auto picks | weights |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print(f"| {r['teacher']} | {r['torch']:.1f} | {r['channels_last']:.1f} | {r['onnxruntime']:.1f} | "
              f"{r['onnxruntime'] / r['channels_last']:.2f}x | {r['max_logit_difference']:.1e} | {r['auto']} | "
              f"{r['note']} |")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_features(), "threads": a.threads, "batch": a.batch, "size": a.size,
                                      "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
