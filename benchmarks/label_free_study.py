"""Label-free distillation: pretrain a small student on a foundation model's features without labels, then
fine-tune it with few labels. Which needs more labels: scratch, a probe on the foundation model, or the pretrained
student?

    python benchmarks/label_free_study.py [--root runs/label-free] [--counts 1 5 10 50 500] [--seeds 0 1 2]
        [--pretrain_epochs 8] [--views 2] [--steps 300] [--student student:small_cnn] [--teacher_size 128]
        [--student_size 64] [--grid 4] [--recipe LP-FT] [--select_count 50] [--kd_counts 1 5 10 50 500]
        [--kd_precision bf16]

On ../shared/data/cifar10: `fm2edge pretrain` of the student (32 px unless --student_size) from ImageNet-pretrained
EfficientNet-Lite0 (no labels, no head) on the 45,000 training images outside the validation hold-out; then, at
each count of labels per class, with the same images for every variant:

- scratch: the student trained on the labels alone;
- pretrained + fine-tune: the same training started from the pretrained student (--model.init), by the recipe of
  RECIPES that validation prefers at --select_count labels per class (plain fine-tuning, or LP-FT: the head first
  fitted as a linear probe, the backbone optionally at a tenth of the learning rate);
- pretrained + linear probe: logistic regression on the pretrained student's frozen features;
- teacher probe: logistic regression on Lite0's own features (the upper bound a 0.3 M student chases);
- logit KD with the unlabelled images (at --kd_counts, default every count): that teacher probe, trained on the
  same labels, teaches the student from scratch on the labelled images plus every other training image without
  its label, with consistent teaching on 2 stored views per image (random-resized crop, flip), bf16 autocast.

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
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import SHARED_CIFAR10

from fm2edge.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    PretrainJob,
    RunConfig,
    TrainConfig,
    TrainJob,
)
from fm2edge.device import cpu_features
from fm2edge.pretrain import pretrain_job
from fm2edge.report.metrics import seed_difference
from fm2edge.results import slug
from fm2edge.runs import atomic_write_json
from fm2edge.train import train_job

TEACHER = "pypi:efficientnet_lite0"


def pretrain(root: Path, source: str, student: ModelConfig, epochs: int, views: int, teacher_size: int,
             grid: int = 0) -> tuple[Path, dict]:
    """The pretrained student (resumes an interrupted pretraining; reuses a finished one)."""
    run = root / "pretrain"
    if not (run / "metrics.json").exists():
        pretrain_job(PretrainJob(
            data=DataConfig(source=source, max_test=1000), model=student,
            train=TrainConfig(epochs=epochs, batch_size=256, lr=2e-3, optimizer="adamw", weight_decay=0.05,
                              schedule="cosine", warmup_epochs=0.5, channels_last=True,
                              augment=AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True)),
            pretrain=PretrainConfig(teacher=TEACHER, teacher_image_size=teacher_size, views=views,
                                    teacher_precision="bf16", grid=grid),
            run=RunConfig(root=str(root), name="pretrain", resume=(run / "config.yaml").exists())))
    return run, json.loads((run / "metrics.json").read_text())


# how the pretrained student is fine-tuned: (head_init, backbone_lr); chosen on validation (see choose_recipe)
RECIPES = {"fine-tune": ("random", 1.0), "LP-FT": ("probe", 1.0), "LP-FT, backbone lr x0.1": ("probe", 0.1)}


def finetune(root: Path, source: str, name: str, student: ModelConfig, init: str | None, n: int, seeds: list[int],
             steps: int, recipe: str = "fine-tune") -> dict:
    """The student on ``n`` labels per class (3 seeds), from scratch or from ``init``: the same steps at any n."""
    size = 10 * n
    batch = min(128, size)
    epochs = int(min(300, max(1, math.ceil(steps * batch / size))))
    head_init, backbone_lr = RECIPES[recipe]
    run = RunConfig(root=str(root / name), name=f"per-class-{n}", resume=(root / name / f"per-class-{n}").exists())
    return train_job(TrainJob(
        data=DataConfig(source=source, per_class=n, max_test=1000),
        model=replace(student, init=init),
        train=TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, optimizer="adamw", weight_decay=5e-4,
                          schedule="onecycle", channels_last=True, keep_checkpoints=1,
                          head_init=head_init, backbone_lr=backbone_lr,
                          augment=AugmentConfig(crop="pad", pad=4, flip=True),
                          eval_every=max(1, epochs // 10), checkpoint_every=max(1, epochs // 4)),
        run=run, seeds=seeds))


def choose_recipe(root: Path, source: str, student: ModelConfig, init: str, n: int, seeds: list[int],
                  steps: int) -> str:
    """The fine-tuning recipe of the pretrained student with the best mean validation accuracy at ``n`` labels per
    class (each run's kept epoch, on its own 10% hold-out): chosen once, used at every count. The test split is
    read by these runs too (every run reports it) but never looked at here."""
    scores = {}
    for i, recipe in enumerate(RECIPES):
        result = finetune(root / "recipes", source, f"recipe-{i}", student, init, n, seeds, steps, recipe)
        scores[recipe] = float(np.mean(result["val_acc"]))
        print(f"  recipe '{recipe}' at {n} labels/class: validation {100 * scores[recipe]:.2f}% "
              f"(mean of seeds {seeds})", flush=True)
    best = max(scores, key=scores.get)
    print(f"fine-tuning recipe chosen on validation: {best}", flush=True)
    return best


def kd_unlabelled(root: Path, source: str, student: ModelConfig, n: int, seeds: list[int], epochs: int,
                  teacher_size: int, precision: str = "bf16") -> dict:
    """Logit KD from the Lite0 probe trained on ``n`` labels per class, with every other training image unlabelled.
    ``precision``: the student's training arithmetic (bf16 autocast trains this student 2.4x faster on a CPU with
    AMX)."""
    from fm2edge.config import DistillConfig, DistillJob, ProbeConfig, ProbeJob
    from fm2edge.distill.task import distill_job
    from fm2edge.probe import probe_job

    data = DataConfig(source=source, per_class=n, max_test=1000)
    teacher = root / "kd-teachers" / f"per-class-{n}"
    if not (teacher / "model.json").exists():
        probe_job(ProbeJob(data=data, model=ModelConfig(name=TEACHER, pretrained=True, image_size=teacher_size),
                           probe=ProbeConfig(methods=["logreg"]),
                           run=RunConfig(root=str(teacher.parent), name=teacher.name, overwrite=True)))
    name = f"per-class-{n}"
    folder = root / ("kd-unlabelled" if precision == "fp32" else f"kd-unlabelled-{precision}")
    return distill_job(DistillJob(
        data=data, model=student,
        train=TrainConfig(epochs=epochs, batch_size=256, lr=4e-3, optimizer="adamw", weight_decay=5e-4,
                          schedule="onecycle", channels_last=True, keep_checkpoints=1, precision=precision,
                          augment=AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True)),
        distill=DistillConfig(teacher=str(teacher), losses={"kd": 1.0}, unlabeled=-1, views=2,
                              teacher_precision="bf16", force=True),
        run=RunConfig(root=str(folder), name=name, resume=(folder / name).exists()), seeds=seeds))


def probe_curve(root: Path, source: str, name: str, model: ModelConfig, counts: list[int]) -> dict[int, float]:
    """Logistic-regression test accuracy at each count, on frozen features (`fm2edge probe`'s label efficiency)."""
    from fm2edge.config import ProbeConfig, ProbeJob
    from fm2edge.probe import probe_job

    out = root / name / "metrics.json"
    done = json.loads(out.read_text())["label_efficiency"]["probe"] if out.exists() else {}
    if any(str(n) not in done for n in counts):  # a new count (or a first call): fit again, from a pool for all
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
    ap.add_argument("--student_size", type=int, help="the student's input size (default: its own; 32 px for "
                    "student: networks on CIFAR-10)")
    ap.add_argument("--grid", type=int, default=0, help="the dense loss's grid (default: the smaller map's)")
    ap.add_argument("--pretrain_epochs", type=int, default=8)
    ap.add_argument("--views", type=int, default=2, help="stored views per image for pretraining")
    ap.add_argument("--teacher_size", type=int, default=128, help="the teacher's input size during pretraining")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps of every fine-tune")
    ap.add_argument("--recipe", choices=list(RECIPES),
                    help="how to fine-tune the pretrained student (default: chosen on validation at --select_count)")
    ap.add_argument("--select_count", type=int, default=50,
                    help="labels per class of the runs that choose the fine-tuning recipe on validation")
    ap.add_argument("--kd_counts", type=int, nargs="*",
                    help="label counts at which to run logit KD with the unlabelled images (default: every count; "
                         "about 20 min a count on 2 CPU cores: every image; give none to skip)")
    ap.add_argument("--kd_seeds", type=int, nargs="+", help="seeds of the KD runs (default: --seeds)")
    ap.add_argument("--kd_epochs", type=int, default=8)
    ap.add_argument("--kd_precision", choices=["fp32", "bf16"], default="bf16",
                    help="the KD students' training arithmetic (bf16 autocast; fp32 where the CPU lacks bf16)")
    ap.add_argument("--source", default=str(SHARED_CIFAR10), help="the dataset (default: the shared CIFAR-10 copy)")
    args = ap.parse_args()
    root = Path(args.root)
    t0 = time.perf_counter()
    student = ModelConfig(name=args.student, image_size=args.student_size)
    run, pre = pretrain(root, args.source, student, args.pretrain_epochs, args.views, args.teacher_size, args.grid)
    recipe = args.recipe or choose_recipe(root, args.source, student, str(run), args.select_count, args.seeds,
                                          args.steps)
    ft = f"pretrained + {recipe}"  # the row of the pretrained student fine-tuned by the chosen recipe
    rows: dict[str, dict[int, list[float]]] = {"scratch": {}, ft: {}}
    kept: dict[int, list[int]] = {}  # the pretrained fine-tunes' kept epochs (0: the probe head, before training)
    for n in args.counts:
        for label, init in (("scratch", None), (ft, str(run))):
            name = "scratch" if init is None else f"finetune-{slug(recipe)}"
            result = finetune(root, args.source, name, student, init, n, args.seeds, args.steps,
                              "fine-tune" if init is None else recipe)
            rows[label][n] = result["test_acc"]
            if init is not None:
                kept[n] = kept_epochs(root / name / f"per-class-{n}", args.seeds)
        print(f"{n:>4} labels/class: scratch {100 * np.mean(rows['scratch'][n]):.2f}%, {ft} "
              f"{100 * np.mean(rows[ft][n]):.2f}%", flush=True)
    kd_counts = args.counts if args.kd_counts is None else args.kd_counts
    kd = {n: kd_unlabelled(root, args.source, student, n, args.kd_seeds or args.seeds, args.kd_epochs,
                           args.teacher_size, args.kd_precision)["test_acc"] for n in kd_counts}
    teacher = ModelConfig(name=TEACHER, pretrained=True, image_size=args.teacher_size)
    probes = {"pretrained + linear probe": probe_curve(root, args.source, "probe-student",
                                                       replace(student, init=str(run)), args.counts),
              f"teacher probe (Lite0, {args.teacher_size} px)": probe_curve(root, args.source, "probe-teacher",
                                                                           teacher, args.counts)}
    size = json.loads((run / "model.json").read_text())["preprocess"]["size"]
    print(f"\n{Path(args.source).name} label efficiency; student {args.student} at {size} px; test accuracy (%) on up "
          f"to 1,000 images; "
          f"fine-tunes {args.steps} steps, mean +- sd over seeds {args.seeds}; the pretrained student's recipe: "
          f"{recipe}; CPU {cpu_features()}")
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
        print(f"  (KD: {args.kd_epochs} epochs over every training image, {args.kd_precision}; teacher: the Lite0 "
              f"probe on the same labels)")
    print(f"{'  its kept epochs (0: the probe head)':<36}" + "".join(
        f"{','.join(map(str, kept[n])):>14}" for n in args.counts))
    gains = [100 * (np.mean(rows[ft][n]) - np.mean(rows["scratch"][n])) for n in args.counts]
    print(f"{ft + ' - scratch':<36}" + "".join(f"{g:>+14.2f}" for g in gains))
    for n in args.counts:
        diff = seed_difference(rows[ft][n], rows["scratch"][n])
        print("  " + diff.line(f"{n} labels/class: {ft} vs scratch"))
    kd_curve = {"logit KD + unlabelled images": {n: 100 * float(np.mean(v)) for n, v in kd.items()}} if kd else {}
    plot(root, args, rows, {**probes, **kd_curve}, pre)
    print(f"wall time of this call: {(time.perf_counter() - t0) / 60:.1f} min")


def kept_epochs(folder: Path, seeds: list[int]) -> list[int]:
    """Which epoch each seed's run kept (its metrics.json)."""
    return [json.loads((folder / f"seed-{s}" / "metrics.json").read_text())["selected"]["epoch"] for s in seeds]


def plot(root: Path, args, rows: dict, probes: dict, pre: dict) -> None:
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure

    curves = {label: {n: 100 * float(np.mean(v)) for n, v in by_n.items()} for label, by_n in rows.items()}
    curves.update(probes)
    size = json.loads((Path(root) / "pretrain" / "model.json").read_text())["preprocess"]["size"]
    title = (f"Label efficiency on {Path(args.source).name} ({args.student}, {size} px)\npretraining: "
             f"{pre['images']:,} unlabelled images, "
             f"{pre['epochs']} epochs, {pre['train_seconds'] / 60:.0f} min CPU")
    save_figure(plots.label_efficiency(curves, title), root / "label_efficiency.png")
    budget = (f"Test accuracy (%) on up to 1,000 images; fine-tunes {args.steps} steps, mean over seeds {args.seeds}; "
              f"probes: logistic regression, C by cross-validation. Pretraining: {pre['images']:,} images without "
              f"labels, {pre['epochs']} epochs, {args.views} stored views per image, teacher {TEACHER} at "
              f"{args.teacher_size} px, {pre['train_seconds'] / 60:.1f} min of training on "
              f"{pre['env']['device']}.")
    if "logit KD + unlabelled images" in probes:
        budget += (f" Logit KD: the teacher's probe on the same labels teaches the student from scratch on every "
                   f"training image ({args.kd_epochs} epochs, 2 stored views per image, {args.kd_precision}).")
    # `fm2edge report ROOT` draws these curves and tabulates them beside the runs
    atomic_write_json(root / "label_efficiency.json", {"title": title, "budget": budget, "curves": curves})
    print(f"plot: {root / 'label_efficiency.png'}; curves for the report: {root / 'label_efficiency.json'}")


if __name__ == "__main__":
    main()
