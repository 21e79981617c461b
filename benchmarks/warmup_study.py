"""How a pretrained student's first optimiser steps treat what its probe head starts from: students distilled as
`fm2edge auto` distils them (a probe teacher, LP-FT from pretrained weights, KD on 4 cached views per image), for a
short schedule such as a search's first rung and a longer one, under learning-rate schedules given as extra
`fm2edge distill` flags, each scored on the labelled training-split images that --per_class leaves out (never the
validation or the test split).

    python benchmarks/warmup_study.py --source ../shared/data/catsdogs128 --per_class 100 --root /tmp/warmup-study

`--command train` fine-tunes the same students on the labels alone (`fm2edge train`), without a teacher; `--epochs 0`
gives the schedule `fm2edge train` and `fm2edge distill` choose for the training set (30 epochs up to 10,000 images).

Prints a table (held-out accuracy per schedule, epochs and seed, their mean) with the CPU beside it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import model_labels

from fm2edge.config import DataConfig, scaled_epochs
from fm2edge.data import load_data, load_left_out
from fm2edge.device import cpu_features

# Each given in full, so that a study means the same whatever the recipe's defaults: one-cycle is linear warm-up over
# the first quarter of the steps, then linear decay; 5e-4 was the recipe's rate for pretrained weights until 2e-4.
SCHEDULES = {
    "onecycle": "--train.schedule onecycle --train.lr 5e-4",
    "cosine-half": "--train.schedule cosine --train.lr 5e-4 --train.warmup_epochs {half}",  # warm-up over half the run
    "onecycle-lr2e-4": "--train.schedule onecycle --train.lr 2e-4",
}


def fm2edge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fm2edge", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--per_class", type=int, default=100)
    ap.add_argument("--root", default="/tmp/warmup-study")
    ap.add_argument("--teacher", default="pypi:efficientnet_lite0", help="probed as `auto` probes its teacher")
    ap.add_argument("--student", default="pypi:efficientnet_lite0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=64, help="auto's for a pretrained student at up to 128 px")
    ap.add_argument("--epochs", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--command", default="distill", choices=["distill", "train"])
    ap.add_argument("--held_out", type=int, help="score on the first N left-out images (all by default)")
    a = ap.parse_args()
    data = ["--data.source", a.source, "--data.per_class", str(a.per_class), "--run.root", a.root]
    teacher = Path(a.root) / "teacher"
    if a.command == "distill":
        fm2edge("probe", *data, "--run.name", "teacher", "--model.name", a.teacher, "--probe.methods", "[logreg]",
                "--probe.score_test", "false")  # as `auto` probes: the test split unread
    cfg = DataConfig(source=a.source, per_class=a.per_class)
    # --epochs 0: the epochs `fm2edge train` and `distill` give this training set, for a warm-up over half of them
    recipe = scaled_epochs(len(load_data(cfg)[0])) if 0 in a.epochs else None
    held = load_left_out(cfg, a.held_out)
    labels = held.labels.numpy()
    print(f"fm2edge {a.command}, {a.source}, {a.per_class} per class; {len(held)} left-out images; batch "
          f"{a.batch_size}; CPU {cpu_features()}")
    rows = []
    for epochs in a.epochs:
        for name in a.schedules:
            for seed in a.seeds:
                run = f"{a.command}-{name}-e{epochs}-s{seed}"
                extra = shlex.split(SCHEDULES[name].format(half=(epochs or recipe) / 2))
                if epochs:
                    extra += ["--train.epochs", str(epochs)]
                if a.command == "distill":
                    extra += ["--distill.teacher", str(teacher), "--distill.view_seed", str(seed)]
                start = time.perf_counter()
                fm2edge(a.command, *data, "--run.name", run, "--model.name", a.student, "--model.pretrained", "true",
                        "--model.image_size", str(a.size), "--train.batch_size", str(a.batch_size), "--train.seed",
                        str(seed), "--train.select", "last", "--train.score_test", "false", *extra)
                got = model_labels(Path(a.root) / run, held)
                rows.append((epochs, name, seed, float((got == labels).mean())))
                print(f"  {run:<28} held-out {100 * rows[-1][3]:6.2f}%  ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    print(f"\n{'epochs':>6}  {'schedule':<18} mean held-out accuracy over seeds {a.seeds}")
    for epochs in a.epochs:
        for name in a.schedules:
            accs = [r[3] for r in rows if r[0] == epochs and r[1] == name]
            print(f"{epochs or 'recipe':>6}  {name:<18} {100 * sum(accs) / len(accs):6.2f}%  "
                  f"({', '.join(f'{100 * x:.2f}' for x in accs)})")


if __name__ == "__main__":
    main()
