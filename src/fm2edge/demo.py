"""`fm2edge demo`: the lifecycle in small, offline, on scikit-learn's digits, on a CPU in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path

from fm2edge.config import DataConfig, DemoJob, ModelConfig, RunConfig, TrainConfig, TrainJob


def demo_jobs(job: DemoJob) -> dict[str, TrainJob]:
    """The stages the demo runs, as ordinary jobs (so every stage is the same code a user runs)."""
    root = str(Path(job.run.root) / (job.run.name or "demo"))
    data = DataConfig(source="digits")
    return {
        "scratch": TrainJob(
            data=data,
            model=ModelConfig(name="student:small_cnn"),
            train=TrainConfig(epochs=job.epochs, batch_size=64, lr=2e-3, optimizer="adamw", schedule="onecycle",
                              weight_decay=5e-4, device="cpu"),
            run=RunConfig(root=root, name="scratch", resume=job.run.resume, overwrite=job.run.overwrite),
        ),
    }


def demo_job(job: DemoJob) -> dict:
    from fm2edge.train import train_job

    t0 = time.perf_counter()
    results = {}
    for stage, stage_job in demo_jobs(job).items():
        print(f"\n== {stage}: {stage_job.model.name} on {stage_job.data.source}")
        results[stage] = train_job(stage_job)
    root = Path(job.run.root) / (job.run.name or "demo")
    print(f"\nfm2edge demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"{'stage':<10} {'model':<22} {'test acc':>9} {'params':>10}")
    for stage, m in results.items():
        print(f"{stage:<10} {demo_jobs(job)[stage].model.name:<22} {100 * m['test_acc']:>8.2f}% {m['parameters']:>10,}")
    print(f"results: {root.resolve()}")
    return results
