"""Does distillation help? Scratch vs KD vs feature KD vs KD with unlabelled images, same student, same budget.

    python benchmarks/distill_study.py [--teacher RUN] [--seeds 0 1 2] [--epochs 15] [--unlabeled 5000]

On ../shared/data/cifar10 (5,000 labelled training images, 1,000 test images, the lab's sizes). The teacher is the
offline ImageNet-pretrained EfficientNet-Lite0 with a logistic-regression head (`fm2edge probe`), built first when
--teacher is not given. The student is `student:small_cnn` at native 32 px. Every variant runs once per seed through
the same commands a user runs (`fm2edge train`, `fm2edge distill --seeds ...`); the table shows the teacher's
accuracy and each variant's mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import SHARED_CIFAR10

from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.distill.task import DistillConfig, DistillJob, distill_job
from fm2edge.report.metrics import seed_difference
from fm2edge.train import train_job


def teacher(root: Path, data: DataConfig) -> Path:
    from fm2edge.features import EmbedConfig
    from fm2edge.probe import ProbeConfig, ProbeJob, probe_job

    run = root / "teacher"
    if not (run / "model.json").exists():
        probe_job(ProbeJob(data=data, model=ModelConfig(name="pypi:efficientnet_lite0", pretrained=True),
                           embed=EmbedConfig(), probe=ProbeConfig(methods=["logreg"]),
                           run=RunConfig(root=str(root), name="teacher", overwrite=True)))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", help="run folder of a trained teacher; empty builds the Lite0 probe")
    ap.add_argument("--root", default="runs/distill-study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--unlabeled", type=int, default=5000)
    ap.add_argument("--variants", nargs="+", default=["scratch", "kd", "feature", "kd+unlabeled"])
    args = ap.parse_args()
    root = Path(args.root)
    data = DataConfig(source=str(SHARED_CIFAR10), max_train=5000, max_test=1000)
    t = Path(args.teacher) if args.teacher else teacher(root, data)
    train = TrainConfig(epochs=args.epochs, batch_size=128, lr=4e-3, optimizer="adamw", weight_decay=5e-4,
                        schedule="onecycle")
    student = ModelConfig(name="student:small_cnn")
    losses = {"kd": {"kd": 1.0}, "feature": {"ce": 1.0, "feature": 1.0}, "kd+unlabeled": {"kd": 1.0}}
    results = {}
    for variant in args.variants:
        run = RunConfig(root=str(root), name=variant.replace("+", "-"), resume=True)
        if variant == "scratch":
            results[variant] = train_job(TrainJob(data=data, model=student, train=train, run=run, seeds=args.seeds))
        else:
            cfg = DistillConfig(teacher=str(t), losses=losses[variant], temperature=4.0, alpha=0.5,
                                unlabeled=args.unlabeled if variant == "kd+unlabeled" else 0)
            results[variant] = distill_job(DistillJob(data=data, model=student, train=train, distill=cfg, run=run,
                                                      seeds=args.seeds))
    t_acc = json.loads((t / "metrics.json").read_text()).get("test_acc")
    print(f"\nCIFAR-10, 5,000 labels (4,500 train + 500 validation) / 1,000 test images, student:small_cnn at 32 px, "
          f"{args.epochs} epochs, best validation epoch kept, seeds {args.seeds}, {minutes(root):.0f} min of training")
    if t_acc is not None:
        print(f"  {'teacher (Lite0 probe, 224 px)':<32} {100 * t_acc:6.2f}%")
    for variant, r in results.items():
        print(f"  {variant:<32} {100 * r['mean']:6.2f}% +- {100 * r['std']:.2f}  "
              f"({', '.join(f'{100 * a:.2f}' for a in r['test_acc'])})")
    scratch = results.get("scratch")
    if scratch:
        for variant, r in results.items():
            if variant != "scratch":
                print("  " + seed_difference(r["test_acc"], scratch["test_acc"]).line(f"{variant} vs scratch"))


def minutes(root: Path) -> float:
    """Training minutes of every run under ``root``, from their metrics."""
    return sum(json.loads(p.read_text()).get("train_seconds", 0) for p in root.rglob("metrics.json")) / 60


if __name__ == "__main__":
    main()
