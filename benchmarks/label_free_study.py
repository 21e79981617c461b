"""Label-free distillation: pretrain a small student on a foundation model's features without labels, then
fine-tune it with few labels. Which needs more labels: scratch, a probe on the foundation model, or the pretrained
student?

    python benchmarks/label_free_study.py [--root runs/label-free] [--counts 1 5 10 50 500] [--seeds 0 1 2]
        [--pretrain_epochs 8] [--views 2] [--steps 300] [--student student:small_cnn] [--teacher_size 128]

On ../shared/data/cifar10: `fm2edge pretrain` of the student (32 px) from ImageNet-pretrained EfficientNet-Lite0
(no labels, no head) on the 45,000 training images outside the validation hold-out; then, at each count of labels
per class, with the same images for every variant:

- scratch: the student trained on the labels alone;
- pretrained + fine-tune: the same training started from the pretrained student (--model.init);
- pretrained + linear probe: logistic regression on the pretrained student's frozen features;
- teacher probe: logistic regression on Lite0's own features (the upper bound a 0.3 M student chases);
- logit KD with the unlabelled images (at --kd_counts): that teacher probe, trained on the same labels, teaches
  the student from scratch on the labelled images plus every other training image without its label, with
  consistent teaching on 2 stored views per image (random-resized crop, flip).

Fine-tunes take the same optimiser steps at every count (epochs scale with the labelled set), AdamW one-cycle,
flip + pad-crop; a run keeps its best validation epoch where its labels allow a validation hold-out (10% of them),
else its last epoch; the test split (1,000 images) is read once per run. Probes choose C by cross-validation on
the labelled images. Seeds vary the fine-tunes' initialisation and order; a probe is one convex fit per count.
Prints one table with the pretraining cost beside it, and writes the label-efficiency plot.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from common import SHARED_CIFAR10

from fm2edge.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.device import cpu_features
from fm2edge.pretrain import PretrainConfig, PretrainJob, pretrain_job
from fm2edge.train import train_job

TEACHER = "pypi:efficientnet_lite0"


def pretrain(root: Path, source: str, student: str, epochs: int, views: int, teacher_size: int) -> tuple[Path, dict]:
    """The pretrained student (resumes an interrupted pretraining; reuses a finished one)."""
    run = root / "pretrain"
    if not (run / "metrics.json").exists():
        pretrain_job(PretrainJob(
            data=DataConfig(source=source, max_test=1000), model=ModelConfig(name=student),
            train=TrainConfig(epochs=epochs, batch_size=256, lr=2e-3, optimizer="adamw", weight_decay=0.05,
                              schedule="cosine", warmup_epochs=0.5, channels_last=True,
                              augment=AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True)),
            pretrain=PretrainConfig(teacher=TEACHER, teacher_image_size=teacher_size, views=views,
                                    teacher_precision="bf16"),
            run=RunConfig(root=str(root), name="pretrain", resume=(run / "config.yaml").exists())))
    return run, json.loads((run / "metrics.json").read_text())


def finetune(root: Path, source: str, name: str, student: str, init: str | None, n: int, seeds: list[int],
             steps: int) -> dict:
    """The student on ``n`` labels per class (3 seeds), from scratch or from ``init``: the same steps at any n."""
    size = 10 * n
    batch = min(128, size)
    epochs = int(min(300, max(1, math.ceil(steps * batch / size))))
    run = RunConfig(root=str(root / name), name=f"per-class-{n}", resume=(root / name / f"per-class-{n}").exists())
    return train_job(TrainJob(
        data=DataConfig(source=source, per_class=n, max_test=1000),
        model=ModelConfig(name=student, init=init),
        train=TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, optimizer="adamw", weight_decay=5e-4,
                          schedule="onecycle", channels_last=True, keep_checkpoints=1,
                          augment=AugmentConfig(crop="pad", pad=4, flip=True),
                          eval_every=max(1, epochs // 10), checkpoint_every=max(1, epochs // 4)),
        run=run, seeds=seeds))


def kd_unlabelled(root: Path, source: str, student: str, n: int, seeds: list[int], epochs: int,
                  teacher_size: int) -> dict:
    """Logit KD from the Lite0 probe trained on ``n`` labels per class, with every other training image unlabelled."""
    from fm2edge.distill.task import DistillConfig, DistillJob, distill_job
    from fm2edge.probe import ProbeConfig, ProbeJob, probe_job

    data = DataConfig(source=source, per_class=n, max_test=1000)
    teacher = root / "kd-teachers" / f"per-class-{n}"
    if not (teacher / "model.json").exists():
        probe_job(ProbeJob(data=data, model=ModelConfig(name=TEACHER, pretrained=True, image_size=teacher_size),
                           probe=ProbeConfig(methods=["logreg"]),
                           run=RunConfig(root=str(teacher.parent), name=teacher.name, overwrite=True)))
    name = f"per-class-{n}"
    return distill_job(DistillJob(
        data=data, model=ModelConfig(name=student),
        train=TrainConfig(epochs=epochs, batch_size=256, lr=4e-3, optimizer="adamw", weight_decay=5e-4,
                          schedule="onecycle", channels_last=True, keep_checkpoints=1,
                          augment=AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True)),
        distill=DistillConfig(teacher=str(teacher), losses={"kd": 1.0}, unlabeled=-1, views=2,
                              teacher_precision="bf16", force=True),
        run=RunConfig(root=str(root / "kd-unlabelled"), name=name,
                      resume=(root / "kd-unlabelled" / name).exists()), seeds=seeds))


def probe_curve(root: Path, source: str, name: str, model: ModelConfig, counts: list[int]) -> dict[int, float]:
    """Logistic-regression test accuracy at each count, on frozen features (`fm2edge probe`'s label efficiency)."""
    from fm2edge.probe import ProbeConfig, ProbeJob, probe_job

    out = root / name / "metrics.json"
    if not out.exists():
        probe_job(ProbeJob(data=DataConfig(source=source, max_train=10 * max(counts) + 1000,
                                           max_test=1000),
                           model=model, probe=ProbeConfig(methods=["logreg"], label_counts=counts, scratch_model=None),
                           run=RunConfig(root=str(root), name=name, overwrite=True)))
    curve = json.loads(out.read_text())["label_efficiency"]["probe"]
    return {int(k): 100 * float(v) for k, v in curve.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="runs/label-free")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 5, 10, 50, 500])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--student", default="student:small_cnn")
    ap.add_argument("--pretrain_epochs", type=int, default=8)
    ap.add_argument("--views", type=int, default=2, help="stored views per image for pretraining")
    ap.add_argument("--teacher_size", type=int, default=128, help="the teacher's input size during pretraining")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps of every fine-tune")
    ap.add_argument("--kd_counts", type=int, nargs="*", default=[10],
                    help="label counts at which to run logit KD with the unlabelled images (costly: every image)")
    ap.add_argument("--kd_seeds", type=int, nargs="+", help="seeds of the KD runs (default: --seeds)")
    ap.add_argument("--kd_epochs", type=int, default=8)
    ap.add_argument("--source", default=str(SHARED_CIFAR10), help="the dataset (default: the shared CIFAR-10 copy)")
    args = ap.parse_args()
    root = Path(args.root)
    t0 = time.perf_counter()
    run, pre = pretrain(root, args.source, args.student, args.pretrain_epochs, args.views, args.teacher_size)
    rows: dict[str, dict[int, list[float]]] = {"scratch": {}, "pretrained + fine-tune": {}}
    for n in args.counts:
        for label, init in (("scratch", None), ("pretrained + fine-tune", str(run))):
            name = "scratch" if init is None else "finetune"
            result = finetune(root, args.source, name, args.student, init, n, args.seeds, args.steps)
            rows[label][n] = result["test_acc"]
        print(f"{n:>4} labels/class: scratch {100 * np.mean(rows['scratch'][n]):.2f}%, pretrained + fine-tune "
              f"{100 * np.mean(rows['pretrained + fine-tune'][n]):.2f}%", flush=True)
    kd = {n: kd_unlabelled(root, args.source, args.student, n, args.kd_seeds or args.seeds, args.kd_epochs,
                           args.teacher_size)["test_acc"] for n in args.kd_counts}
    student = ModelConfig(name=args.student, init=str(run))
    teacher = ModelConfig(name=TEACHER, pretrained=True, image_size=args.teacher_size)
    probes = {"pretrained + linear probe": probe_curve(root, args.source, "probe-student", student, args.counts),
              f"teacher probe (Lite0, {args.teacher_size} px)": probe_curve(root, args.source, "probe-teacher",
                                                                           teacher, args.counts)}
    print(f"\n{Path(args.source).name} label efficiency; student {args.student} at 32 px; test accuracy (%) on up "
          f"to 1,000 images; "
          f"fine-tunes {args.steps} steps, mean +- sd over seeds {args.seeds}; CPU {cpu_features()}")
    print(f"pretraining: {pre['images']:,} images without labels, {pre['epochs']} epochs, {args.views} stored views "
          f"per image, teacher {TEACHER} at {args.teacher_size} px (bf16), {pre['train_seconds'] / 60:.1f} min of "
          f"training + the teacher cache, this machine")
    header = f"{'labels/class':<36}" + "".join(f"{n:>14}" for n in args.counts)
    print(header)
    for label, by_n in rows.items():
        print(f"{label:<36}" + "".join(f"{100 * np.mean(v):>8.2f} +-{100 * np.std(v, ddof=1):4.1f}"
                                       for v in by_n.values()))
    for label, curve in probes.items():
        print(f"{label:<36}" + "".join(f"{curve[n]:>14.2f}" for n in args.counts))
    if kd:
        print(f"{'logit KD + unlabelled images':<36}" + "".join(
            f"{100 * np.mean(kd[n]):>7.2f} (n={len(kd[n])})" if n in kd else f"{'-':>14}" for n in args.counts))
        print(f"  (KD: {args.kd_epochs} epochs over every training image; teacher: the Lite0 probe on the same "
              f"labels)")
    gains = [100 * (np.mean(rows["pretrained + fine-tune"][n]) - np.mean(rows["scratch"][n])) for n in args.counts]
    print(f"{'pretrained + fine-tune - scratch':<36}" + "".join(f"{g:>+14.2f}" for g in gains))
    kd_curve = {"logit KD + unlabelled images": {n: 100 * float(np.mean(v)) for n, v in kd.items()}} if kd else {}
    plot(root, args, rows, {**probes, **kd_curve}, pre)
    print(f"wall time of this call: {(time.perf_counter() - t0) / 60:.1f} min")


def plot(root: Path, args, rows: dict, probes: dict, pre: dict) -> None:
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure

    curves = {label: {n: 100 * float(np.mean(v)) for n, v in by_n.items()} for label, by_n in rows.items()}
    curves.update(probes)
    title = (f"Label efficiency on {Path(args.source).name} ({args.student}, 32 px)\npretraining: "
             f"{pre['images']:,} unlabelled images, "
             f"{pre['epochs']} epochs, {pre['train_seconds'] / 60:.0f} min CPU")
    save_figure(plots.label_efficiency(curves, title), root / "label_efficiency.png")
    print(f"plot: {root / 'label_efficiency.png'}")


if __name__ == "__main__":
    main()
