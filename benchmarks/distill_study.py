"""Does distillation win? Matched students (same student, data, augmentation, epochs) over several seeds, with
95% confidence intervals of each variant's difference from the student trained alone.

    python benchmarks/distill_study.py [--teacher RUN] [--more_epochs 8] [--teacher_ema 0.999]
        [--teacher_epochs 10] [--teacher_size 160] [--teacher_batch 64] [--teacher_mix]
        [--candidates RUN ...] [--soup] [--refine_size 224] [--seeds 0 1 2] [--data DIR]
        [--epochs 30] [--unlabeled 0]
        [--variants scratch kd dkd dist feature kd-fixed kd-online] [--views 10] [--root runs/distill-study]
        [--teacher_precision bf16] [--precision bf16] [--channels_last]

On ../shared/data/cifar10 (5,000 labelled training images: 4,500 to train, 500 to validate; 1,000 test images).
The teacher is EfficientNet-Lite0 (the offline ImageNet-pretrained package) fine-tuned on those labels with
`fm2edge finetune --finetune.modes [full]`, validation-selected, built first when --teacher is not given;
--more_epochs (more epochs of its recipe, with a weight average when --teacher_ema is set) and --refine_size
(FixRes) make further candidates, --candidates names teachers trained before, --soup averages the candidates'
weights into one more (a greedy model soup, `fm2edge soup`), and validation chooses among them. The student is
`student:small_cnn` at 32 px. Every variant is an ordinary `fm2edge train` / `fm2edge distill`
job, with the same augmentation (random-resized crop, flip, CutMix on half the images) and the same epochs:

- scratch: the student alone, on the labels.
- kd, dkd, dist, feature: consistent teaching on ``--views`` stored views per image (FKD-style cache).
- kd-fixed: the teacher sees the plain image while the student sees the augmented one.
- kd-online: consistent teaching with the teacher run on every batch (fresh views every epoch).
- any variant + ``--unlabeled N``: N further training images without labels (-1 takes all 45,000).

``--write_subset DIR`` writes just the rows the study reads (2 MB instead of 55 MB), to carry to another machine:
``--data DIR`` there selects, splits and tests on the same images.

The table gives each variant's test accuracy (mean +- standard deviation over seeds), its difference from scratch
with a Welch 95% interval, the wall time of its runs, and the machine; `fm2edge report` writes the HTML report.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from common import SHARED_CIFAR10

from fm2edge.config import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    DistillJob,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainJob,
)
from fm2edge.device import cpu_features
from fm2edge.distill.selection import (
    choose_teacher,
    continue_teacher,
    finetune_teacher,
    refine_teacher,
    soup_teacher,
    teacher_recipe,
)
from fm2edge.distill.task import distill_job
from fm2edge.report.metrics import seed_difference
from fm2edge.train import train_job

# the same augmentation for every variant: strong enough for consistent teaching to matter, mild enough for a
# 0.3 M-parameter student to learn from 4,500 images in a short budget
AUGMENT = AugmentConfig(crop="resized", scale=(0.5, 1.0), flip=True, cutmix=1.0, mix_prob=0.5)
LOSSES = {"kd": {"kd": 1.0}, "dkd": {"ce": 1.0, "dkd": 1.0}, "dist": {"ce": 1.0, "dist": 1.0},
          "feature": {"ce": 1.0, "feature": 1.0}, "kd-fixed": {"kd": 1.0}, "kd-online": {"kd": 1.0}}


def teacher(root: Path, data: DataConfig, epochs: int, ema: float = 0.0, size: int = 160, batch: int = 64,
            mix: bool = False) -> Path:
    """Lite0 fine-tuned on the labels with the package's teacher recipe (full fine-tuning, 160 px unless ``size``,
    validation-selected). ``batch`` scales the learning rate linearly from 5e-4 at 64; ``mix`` adds MixUp / CutMix
    on half the images (the 20-epoch teacher's training accuracy outran its validation accuracy after epoch 12)."""
    name = "teacher" + (f"-{size}px" if size != 160 else "") + (f"-b{batch}" if batch != 64 else "") + \
        ("-mix" if mix else "") + (f"-ema{ema:g}" if ema else "")
    return finetune_teacher(root, name, data,
                            ModelConfig(name="pypi:efficientnet_lite0", pretrained=True, image_size=size),
                            teacher_recipe(epochs, batch, ema, mix))


def write_subset(source: Path, dest: Path, max_train: int, max_test: int) -> None:
    """The rows of ``source`` that the study reads (its class-balanced first ``max_train`` training and
    ``max_test`` test images), written to ``dest`` in the same schema and order: a copy small enough to carry to
    another machine that selects, splits and validates on exactly the same images."""
    import pyarrow.parquet as pq

    from fm2edge.data.dataset import balanced_indices

    dest.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", max_train), ("test", max_test)):
        table = pq.read_table(source / f"{split}.parquet")
        rows = balanced_indices(table.column("label").to_numpy(), n)
        pq.write_table(table.take(rows), dest / f"{split}.parquet")
        print(f"{dest / split}.parquet: {len(rows)} rows of {table.num_rows}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", help="run folder of a trained teacher; empty fine-tunes Lite0 first")
    ap.add_argument("--teacher_epochs", type=int, default=10)
    ap.add_argument("--teacher_size", type=int, default=160, help="the teacher's input size when it is fine-tuned")
    ap.add_argument("--teacher_batch", type=int, default=64,
                    help="the teacher's batch size (its learning rate scales with it from 5e-4 at 64)")
    ap.add_argument("--teacher_mix", action="store_true", help="MixUp / CutMix on half the teacher's images")
    ap.add_argument("--teacher_ema", type=float, default=0.0,
                    help="the teacher's fine-tune and continuation keep a weight average with this decay (0.999)")
    ap.add_argument("--candidates", nargs="*", default=[],
                    help="run folders of teachers trained before, chosen among with the others on validation")
    ap.add_argument("--refine_size", type=int, help="then fine-tune the teacher a little at this input size (FixRes)")
    ap.add_argument("--refine_epochs", type=int, default=3)
    ap.add_argument("--soup", action="store_true",
                    help="also average the candidates' weights (a greedy model soup) into one more candidate")
    ap.add_argument("--more_epochs", type=int, default=0,
                    help="also train the teacher this many epochs more with its own recipe (patience)")
    ap.add_argument("--root", default="runs/distill-study")
    ap.add_argument("--data", default=str(SHARED_CIFAR10),
                    help="CIFAR-10 in the hub's schema (a copy holding the rows the study selects gives the same "
                         "training, validation and test images)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--views", type=int, default=10, help="stored views per image for the cached variants")
    ap.add_argument("--unlabeled", type=int, default=0, help="further unlabelled images for the distilled variants")
    ap.add_argument("--teacher_precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="bf16 halves a CPU teacher's time where the CPU has native bf16 (AMX, AVX-512 BF16)")
    ap.add_argument("--channels_last", action="store_true", help="channels-last tensors (faster convs on a CPU)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="the students' training arithmetic (bf16 autocast trains the small CNN 2.4x faster on "
                         "a CPU with AMX; give every variant of one study the same)")
    ap.add_argument("--variants", nargs="*", default=["scratch", "kd", "dkd", "dist", "feature", "kd-fixed"],
                    choices=["scratch", *LOSSES])
    ap.add_argument("--write_subset", metavar="DIR", help="write the rows the study reads to DIR and stop")
    args = ap.parse_args()
    if args.write_subset:
        return write_subset(Path(args.data), Path(args.write_subset), 5000, 1000)
    root = Path(args.root)
    data = DataConfig(source=args.data, max_train=5000, max_test=1000)
    t = Path(args.teacher) if args.teacher else teacher(root, data, args.teacher_epochs, args.teacher_ema,
                                                        args.teacher_size, args.teacher_batch, args.teacher_mix)
    candidates = [t, *(Path(c) for c in args.candidates if Path(c) != t)]
    if args.more_epochs:
        candidates.append(continue_teacher(root, data, t, args.more_epochs, args.teacher_ema))
    if args.refine_size:
        candidates.append(refine_teacher(root, data, t, args.refine_size, args.refine_epochs))
    if args.soup and len(candidates) > 1:
        candidates.append(soup_teacher(root, data, candidates))
    t = choose_teacher(candidates) if len(candidates) > 1 else t
    train = TrainConfig(epochs=args.epochs, batch_size=128, lr=4e-3, optimizer="adamw", weight_decay=5e-4,
                        schedule="onecycle", augment=AUGMENT, precision=args.precision,
                        channels_last=args.channels_last)
    student = ModelConfig(name="student:small_cnn")
    results, seconds = {}, {}
    for variant in args.variants:
        t0 = time.perf_counter()
        run = RunConfig(root=str(root), name=variant, resume=True)
        if variant == "scratch":
            results[variant] = train_job(TrainJob(data=data, model=student, train=train, run=run, seeds=args.seeds))
        else:
            cfg = DistillConfig(teacher=str(t), losses=LOSSES[variant], temperature=4.0, alpha=0.5,
                                unlabeled=args.unlabeled, teacher_precision=args.teacher_precision,
                                teaching="fixed" if variant == "kd-fixed" else "consistent",
                                views=0 if variant in ("kd-online", "kd-fixed") else args.views)
            run = replace(run, name=variant + (f"+{args.unlabeled}u" if args.unlabeled else ""))
            results[variant] = distill_job(DistillJob(data=data, model=student, train=train, distill=cfg, run=run,
                                                      seeds=args.seeds))
        seconds[variant] = time.perf_counter() - t0
    t_acc = json.loads((t / "metrics.json").read_text()).get("test_acc") if (t / "metrics.json").exists() else None
    print(f"\nCIFAR-10, 5,000 labels (4,500 train + 500 validation) / 1,000 test images"
          f"{unlabelled_text(args.unlabeled)}; student:small_cnn at 32 px, "
          f"{args.epochs} epochs, batch 128, AdamW one-cycle; augmentation {describe(AUGMENT)}; best validation "
          f"epoch kept; seeds {args.seeds}; student precision {args.precision}, teacher precision "
          f"{args.teacher_precision}; CPU {cpu_features()}")
    if t_acc is not None:
        size = json.loads((t / "model.json").read_text())["preprocess"]["size"]
        print(f"  {f'teacher (Lite0 fine-tuned, {size} px)':<36} {100 * t_acc:6.2f}%  ({t})")
    for variant, r in results.items():
        print(f"  {variant:<36} {100 * r['mean']:6.2f}% +- {100 * r['std']:.2f}  "
              f"({', '.join(f'{100 * a:.2f}' for a in r['test_acc'])})  {seconds[variant] / 60:5.1f} min this call")
    scratch = results.get("scratch")
    if scratch:
        for variant, r in results.items():
            if variant != "scratch":
                print("  " + seed_difference(r["test_acc"], scratch["test_acc"]).line(f"{variant} vs scratch"))
    print(f"training minutes of every run under {root}: {minutes(root):.0f}")


def unlabelled_text(n: int) -> str:
    return "" if n == 0 else " + every other training image without its label" if n < 0 else f" + {n} unlabelled"


def describe(a: AugmentConfig) -> str:
    auto = f", {a.auto}" if a.auto != "none" else ""
    return f"random-resized crop {a.scale[0]:g}-{a.scale[1]:g}, flip{auto}, cutmix {a.cutmix:g} (p {a.mix_prob:g})"


def minutes(root: Path) -> float:
    """Training minutes of every run under ``root``, from their metrics."""
    return sum(json.loads(p.read_text()).get("train_seconds", 0) for p in root.rglob("metrics.json")) / 60


if __name__ == "__main__":
    main()
