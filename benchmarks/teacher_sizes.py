"""What a teacher's fine-tuning buys at each input size and number of epochs, on validation, with its minutes here:
the trade `fm2edge auto` makes when it fine-tunes the best probed foundation model in 30% of its budget.

    python benchmarks/teacher_sizes.py --source ../shared/data/cifar10 --per_class 500 \\
        --runs 96:10 128:10 128:5 --root /tmp/teacher-sizes

Each SIZE:EPOCHS is one `fm2edge finetune` (full mode) with the package's teacher recipe
(`fm2edge.distill.selection.teacher_recipe`, the one auto uses) on the same split, the test split unread; finished
runs are reused. Prints one row per run: validation accuracy of the kept epoch, which epoch, training images/s and
training minutes (from the run's metrics.json), with the machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fm2edge.config import DataConfig, ModelConfig
from fm2edge.device import cpu_features
from fm2edge.distill.selection import finetune_teacher, teacher_recipe
from fm2edge.runs import read_metrics


def parse_run(spec: str) -> tuple[int, int]:
    size, _, epochs = spec.partition(":")
    return int(size), int(epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--per_class", type=int)
    ap.add_argument("--model", default="pypi:efficientnet_lite0")
    ap.add_argument("--runs", nargs="+", default=["96:10", "128:10", "128:5"], help="SIZE:EPOCHS of each fine-tune")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--root", default="/tmp/teacher-sizes")
    a = ap.parse_args()
    data = DataConfig(source=a.source, **({"per_class": a.per_class} if a.per_class else {}))
    rows = []
    for size, epochs in map(parse_run, a.runs):
        run = finetune_teacher(Path(a.root), f"{size}px-{epochs}ep", data,
                               ModelConfig(name=a.model, pretrained=True, image_size=size),
                               teacher_recipe(epochs, device=a.device, score_test=False))
        metrics = read_metrics(run)
        speeds = [h["images_per_s"] for h in metrics["history"]]
        rows.append({"size": size, "epochs": epochs, "val_acc": metrics["val_acc"],
                     "best_epoch": metrics["selected"]["epoch"], "images_per_s": sum(speeds) / len(speeds),
                     "minutes": metrics["train_seconds"] / 60})
    print(f"machine: {cpu_features()}; model {a.model}; data {a.source} (per_class {a.per_class})")
    print("| size | epochs | validation (kept epoch) | train img/s | training minutes |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['epochs']} | {r['val_acc']:.2%} ({r['best_epoch']}) | {r['images_per_s']:.0f} | "
              f"{r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
