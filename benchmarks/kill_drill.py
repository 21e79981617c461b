"""Kill fm2edge at random moments, resume, and count what survived: the interruption drill behind the reliability
figures.

    python benchmarks/kill_drill.py [--trials 5] [--seed 0] [--root /tmp/kill-drill] [--only train embed ...]

For each command (train, distill, distill on stored augmented views, LoRA finetune, embed, export, auto) one
uninterrupted reference run is made and timed.
Then, per trial, the same command starts in a fresh folder and gets SIGKILL or SIGINT (alternating) at a uniformly
random moment within the reference's duration; the command is run again (resuming) and its result compared with the
reference: test accuracy and last training loss for train, distill and finetune, the feature matrix for embed, the
accuracies and parity of export. Afterwards every folder is searched for partial files (``*.tmp``, ``.partial``).
It prints one row per command: kills sent, kills that landed before the command finished, resumes that reached the
reference result, and anything lost or left half-written (the target is zero).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off"}
DIGITS = ["--data.source", "digits"]
TRAIN = ["--train.epochs", "4", "--train.batch_size", "64", "--train.lr", "0.002", "--train.device", "cpu"]


def fm2edge(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fm2edge", *args], capture_output=True, text=True, env=env)


def timed(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    res = fm2edge(args, env)
    if res.returncode:
        raise SystemExit(f"reference run failed: {' '.join(args)}\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def interrupt(args: list[str], env: dict, after_s: float, sig: signal.Signals) -> bool:
    """Run ``args`` and send ``sig`` after ``after_s`` seconds; True when the signal landed before it finished."""
    # SIGINT back to its default in the child: a drill started in the background would otherwise pass it ignored
    proc = subprocess.Popen([sys.executable, "-m", "fm2edge", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.wait(timeout=after_s)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        proc.wait()
        return True


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".partial")) or p.name.endswith(".old")]


# ---------------------------------------------------------------- one command's setup, run and comparison

def _run(folder: Path, resume: bool) -> list[str]:
    return ["--run.root", str(folder.parent), "--run.name", folder.name, "--run.resume", str(resume).lower()]


def _train_result(folder: Path):
    m = json.loads((folder / "metrics.json").read_text())
    return m["test_acc"], m["history"][-1]["train_loss"]


def _pretrain_result(folder: Path):
    from safetensors.numpy import load_file

    m = json.loads((folder / "metrics.json").read_text())
    return m["history"][-1]["train_loss"], load_file(folder / "model.safetensors")


def _same_pretraining(a, b) -> bool:
    return abs(a[0] - b[0]) <= 1e-4 * abs(a[0]) and all(np.allclose(a[1][k], b[1][k], atol=1e-5) for k in a[1])


def _same_training(a, b) -> bool:
    return abs(a[0] - b[0]) < 1e-6 and abs(a[1] - b[1]) <= 1e-4 * abs(a[1])


def _features(folder: Path) -> dict:
    meta = json.loads((folder / "embed.json").read_text())
    return {s: np.load(Path(v["cache"]) / "features.npy") for s, v in meta.items()}


def _same_features(a, b) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def _export_result(folder: Path):
    r = json.loads((folder / "export.json").read_text())
    return r["test_acc"], r["parity_max_abs_diff"] < r["parity_tolerance"]


def _auto_result(folder: Path):
    r = json.loads((folder / "auto.json").read_text())
    return (r["chosen"]["candidate"], r["chosen"]["precision"],
            [(row["candidate"], row["epochs"], row["val_acc"]) for row in r["leaderboard"]])


def cases(teacher: Path) -> dict:
    """Per command: its arguments for a folder (resuming or not), how to read its result, how to compare two."""
    return {
        "train": (lambda f, r: ["train", *DIGITS, *TRAIN, *_run(f, r)], _train_result, _same_training),
        "distill": (lambda f, r: ["distill", *DIGITS, *TRAIN, "--distill.teacher", str(teacher), *_run(f, r)],
                    _train_result, _same_training),
        # augmented, consistently taught on stored views: the kill may land while the teacher's outputs are cached
        "distill_views": (lambda f, r: ["distill", *DIGITS, *TRAIN, "--distill.teacher", str(teacher),
                                        "--train.augment.crop", "resized", "--train.augment.flip", "true",
                                        "--train.augment.mixup", "0.2", "--distill.views", "4",
                                        "--data.cache_dir", str(f.parent / f"{f.name}-cache"), *_run(f, r)],
                          _train_result, _same_training),
        # label-free: the student learns the teacher's pooled features and map on stored views
        "pretrain": (lambda f, r: ["pretrain", *DIGITS, *TRAIN, "--pretrain.teacher", str(teacher),
                                   "--train.augment.crop", "resized", "--train.augment.flip", "true",
                                   "--pretrain.views", "2", "--data.cache_dir", str(f.parent / f"{f.name}-cache"),
                                   *_run(f, r)], _pretrain_result, _same_pretraining),
        "embed": (lambda f, r: ["embed", *DIGITS, "--model.name", "timm:resnet18", "--model.pretrained", "false",
                                "--model.image_size", "96",
                                "--embed.device", "cpu", "--embed.chunk_size", "100", "--tsne_samples", "0",
                                *_run(f, r)], _features, _same_features),
        "finetune": (lambda f, r: ["finetune", *DIGITS, *TRAIN, "--model.name", "timm:vit_tiny_patch16_224",
                                   "--model.pretrained", "false", "--model.image_size", "64",
                                   "--finetune.modes", "[lora]", *_run(f, r)],
                     lambda f: _train_result(f / "lora"), _same_training),
        "export": (lambda f, r: ["export", str(teacher), *DIGITS, "--export.latency_runs", "20", "--output", str(f)],
                   _export_result, lambda a, b: a == b),
        # the whole auto path; every student gets max_epochs (the budget is ample), so the plan does not depend on
        # how fast this machine happened to be when each trial measured it
        "auto": (lambda f, r: ["auto", *DIGITS, "--auto.teachers", f"[{teacher}]", "--auto.students",
                               "[student:small_cnn@16, student:small_cnn@32]", "--auto.views", "2", "--auto.minutes",
                               "10", "--auto.max_epochs", "3", "--auto.min_epochs", "1", "--auto.latency_ms", "50",
                               "--auto.device", "cpu", "--run.root", str(f.parent), "--run.name", f.name],
                 _auto_result, lambda a, b: a == b),
    }


COMMANDS = ["train", "distill", "distill_views", "pretrain", "finetune", "embed", "export", "auto"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="/tmp/kill-drill")
    ap.add_argument("--only", nargs="*", choices=COMMANDS, default=COMMANDS)
    a = ap.parse_args()
    root = Path(a.root)
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(a.seed)
    base_env = {**ENV, "FM2EDGE_CACHE": str(root / "cache-ref")}
    teacher = root / "teacher"
    timed(["train", *DIGITS, *TRAIN, "--run.root", str(root), "--run.name", "teacher"], base_env)
    rows = []
    for name in a.only:
        args, result, same = cases(teacher)[name]
        ref_dir = root / name / "reference"
        duration = timed(args(ref_dir, False), base_env)
        reference = result(ref_dir)
        landed = survived = lost = 0
        for t in range(a.trials):
            sig = (signal.SIGKILL, signal.SIGINT)[t % 2]
            folder = root / name / f"trial-{t}"
            env = {**ENV, "FM2EDGE_CACHE": str(root / f"cache-{name}-{t}")}  # a cold cache: the kill hits real work
            landed += interrupt(args(folder, False), env, rng.uniform(0.5, duration), sig)
            res = fm2edge(args(folder, True), env)
            ok = res.returncode == 0 and same(result(folder), reference)
            survived += ok
            left = partial_files(root / name) + partial_files(Path(env["FM2EDGE_CACHE"]))
            lost += (not ok) + len(left)
            if not ok or left:
                print(f"{name} trial {t}: rc {res.returncode}, same result {ok}, partial files {left}\n"
                      f"{res.stderr[-1500:]}")
        rows.append((name, duration, a.trials, landed, survived, lost))
        print(f"{name}: {landed}/{a.trials} interruptions landed, {survived} resumed to the reference, {lost} lost",
              flush=True)
    print(f"\n{'command':<9} {'ref s':>6} {'kills':>6} {'landed':>7} {'same result':>12} {'lost/partial':>13}")
    for name, duration, trials, landed, survived, lost in rows:
        print(f"{name:<9} {duration:>6.1f} {trials:>6} {landed:>7} {survived:>12} {lost:>13}")
    print(f"total: {sum(r[2] for r in rows)} interruptions, {sum(r[3] for r in rows)} landed, "
          f"{sum(r[4] for r in rows)} resumed to the reference result, {sum(r[5] for r in rows)} lost or partial "
          f"(target 0)")


if __name__ == "__main__":
    main()
