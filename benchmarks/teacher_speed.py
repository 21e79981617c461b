"""How fast each of `fm2edge auto`'s default teachers runs on this machine: the cost of its outputs on every stored
view, which the plan times on the real teacher and counts against the budget.

    python benchmarks/teacher_speed.py [--batch 32] [--size 224] [--threads 2]

Each default teacher is built through fm2edge's own registry and timed forward (inference mode, its own
preprocessing, uint8 images in) at one batch, best of three after a warm-up. Without the hub, DINOv2-small is timed
as its architecture with random weights (hidden 384, 12 layers, 6 heads, patch 14, saved like a hub copy): the
speed is the architecture's, not the weights'. Prints images/s per teacher and the ratio to the first.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from fm2edge.automate.config import DEFAULT_TEACHERS
from fm2edge.config import ModelConfig
from fm2edge.device import cpu_features
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


def images_per_s(name: str, batch: int, size: int) -> float:
    model = create_model(ModelConfig(name=name, pretrained=True), 10).eval()
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        model(model.preprocess(x))  # warm-up: oneDNN kernel choice, allocator
        best = min(_seconds(lambda: model(model.preprocess(x))) for _ in range(3))
    return batch / best


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in DEFAULT_TEACHERS:
            built, note = name, "pretrained weights"
            if hub_unavailable(name):
                built, note = dinov2_small_shape(tmp), "its architecture with random weights: no hub here"
            rows.append((name, note, images_per_s(built, a.batch, a.size)))
    print(f"teachers forward at batch {a.batch}, {a.size} px on {cpu_features()}:")
    for name, note, speed in rows:
        print(f"  {name:<28} {speed:7.1f} img/s  {rows[0][2] / speed:4.1f}x the first's time  ({note})")


if __name__ == "__main__":
    main()
