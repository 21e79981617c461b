"""Does keeping freed memory speed up CPU training? `fm2edge train` with glibc's default allocator and with the
setting fm2edge applies while it trains on a CPU (``fm2edge.device.freed_memory_kept``), per model.

    python benchmarks/cpu_allocator.py [--steps 16] [--repeats 2] [--models pypi:efficientnet_lite0@160@64 ...]

By default glibc returns a freed block over 32 MiB (a large activation) to the kernel at once, so every training step
page-faults its activations in again, and the kernel clears each fresh page: system time that does no training.
Each model (NAME@SIZE@BATCH) trains two epochs of ``--steps`` batches in a fresh `fm2edge train` process, once with
``FM2EDGE_MALLOC=system`` (glibc's default) and once without (memory kept); ``--repeats`` alternates the two. The
figures are the second epoch's training images/s (the first pays one-off start-up), each process's share of CPU time
spent in the kernel and its minor page faults (with the peak resident memory of the largest process); the ratio is
kept / system.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import cifar_source, model_spec, save_results

from fm2edge.device import cpu_features

MODELS = ["pypi:efficientnet_lite0@160@64", "student:small_cnn@32@256"]


def one_run(name: str, size: int, batch: int, steps: int, allocator: str, root: Path) -> dict:
    """Train two epochs in a fresh process; its second epoch's images/s, its kernel share and its page faults."""
    n = steps * batch
    run = f"{name.replace(':', '-')}-{allocator}"
    cmd = [sys.executable, "-m", "fm2edge", "train", "--model.name", name, "--model.image_size", str(size),
           "--model.pretrained", str(name.startswith("pypi:")).lower(), "--data.source", str(cifar_source(n)),
           "--data.max_train", str(n), "--data.max_test", "64", "--data.val_fraction", "0",
           "--train.epochs", "2", "--train.batch_size", str(batch), "--train.optimizer", "adamw",
           "--train.lr", "1e-3", "--train.select", "last", "--train.keep_checkpoints", "1",
           "--train.augment.crop", "resized", "--train.augment.flip", "true",
           "--run.root", str(root), "--run.name", run, "--run.overwrite", "true"]
    env = {**os.environ, "FM2EDGE_MALLOC": "system" if allocator == "system" else ""}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, kernel = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    history = json.loads((root / run / "metrics.json").read_text())["history"]
    return {"images_per_s": float(history[-1]["images_per_s"]), "kernel_share": kernel / (user + kernel),
            "faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help="NAME@INPUT_SIZE@BATCH_SIZE")
    ap.add_argument("--steps", type=int, default=16, help="batches per epoch")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each allocator per model")
    ap.add_argument("--json", help="file for the raw figures (default docs/results/cpu_allocator-DATE.json)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, size, batch = model_spec(spec)
            runs: dict[str, list[dict]] = {"system": [], "kept": []}
            for _ in range(args.repeats):
                for allocator in runs:
                    runs[allocator].append(one_run(name, size, batch, args.steps, allocator, Path(tmp)))
            rows.append((name, size, batch, runs))
    print(f"\n`fm2edge train` images/s, second of two {args.steps}-batch epochs, {args.repeats} alternating runs each; "
          f"CPU {cpu_features()}, torch {torch.__version__}")
    print(f"{'model':<32}{'px':>5}{'batch':>7}{'system img/s':>14}{'kept img/s':>12}{'kept/system':>13}"
          f"{'kernel share':>16}{'page faults (M)':>18}")
    for name, size, batch, runs in rows:
        mean = {a: sum(r["images_per_s"] for r in rs) / len(rs) for a, rs in runs.items()}
        share = "/".join(f"{100 * sum(r['kernel_share'] for r in rs) / len(rs):.0f}%" for rs in runs.values())
        faults = "/".join(f"{sum(r['faults'] for r in rs) / len(rs) / 1e6:.1f}" for rs in runs.values())
        print(f"{name:<32}{size:>5}{batch:>7}{mean['system']:>14.1f}{mean['kept']:>12.1f}"
              f"{mean['kept'] / mean['system']:>12.2f}x{share:>16}{faults:>18}")
    print("(kernel share and page faults: system / kept; peak RSS of the largest child: "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.1f} GiB)")
    save_results("cpu_allocator", args, [{"model": n, "input": s, "batch": b, "runs": r} for n, s, b, r in rows],
                 args.json)


if __name__ == "__main__":
    main()
