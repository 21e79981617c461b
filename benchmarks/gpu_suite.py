"""Every GPU figure from one prepared command: one JSON and one Markdown table with the device, versions and targets.

    python benchmarks/gpu_suite.py [--out DIR]      # on a CUDA machine: about 6 minutes on one H100
    python benchmarks/gpu_suite.py --profile        # each part at a tenth of its size under torch.profiler
    python benchmarks/gpu_suite.py --smoke          # every part at toy size on the CPU (CI runs this)
    python benchmarks/gpu_suite.py --smoke --profile  # the profiler pass rehearsed on the CPU

GPU time is rare and short, so this script is known to work before a GPU is at hand: ``--smoke`` runs each part
through the same code at toy size on the CPU, and CI runs it. Each part is measured against the lab's own recipe in
the same run where the lab has one, and a part that fails is recorded with its error while the others still run
(the exit status is then 1). The parts:

1. DINOv2-base embeddings (random weights; speed does not depend on them): the lab's per-image processor loop vs
   fm2edge's batched path. Target at least 10,000 img/s and 60x.
2. One KD epoch, 10,000 images at 224 px, ResNet-50 -> ResNet-18: the lab's PIL + DataLoader recipe vs `fm2edge
   distill` with the teacher online and cached. Target 10x.
3. One cached KD epoch over 50,000 images at 32 px (a CIFAR ResNet-18 student). Target under 0.8 s.
4. LoRA training img/s (ViT-S/16, r=16): the lab's Trainer recipe vs `fm2edge finetune` at batch 32 and at the
   best of larger batches. Targets 4x and 15x.
5. Batch-1 latency of teacher (ResNet-50) and student (ResNet-18) on the CPU and on the GPU (`fm2edge bench`).
6. A short end-to-end recipe on the device (bf16, torch.compile): train, distill, export. It must finish.

``--profile`` explains where the time goes before anything is optimised: each part runs at a reduced size (the same
models, a tenth of the images) under ``torch.profiler`` and leaves ``profile/PART.trace.json.gz`` (open it in
Perfetto or chrome://tracing) and ``profile/PART.md``: the top 20 operators by self time on the device (on the CPU
without one), kernel launches in all and per optimiser step, how much of the profiled span the device sat idle,
and the host's operator time. Its figures are slowed by the profiler and are not the suite's measurements.

Without ../shared (the GPU machine does not carry it) the images are random, in CIFAR-10's schema.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch
from common import SHARED_CIFAR10, cifar_source

from fm2edge.device import cpu_features

SHARED_BENCH = SHARED_CIFAR10.parents[1] / "bench"
# (figure, target) per part; the table prints them beside the measured figures
TARGETS = {
    "embed": "DINOv2-base >= 10,000 img/s and >= 60x the lab's loop",
    "kd_epoch": ">= 10x the lab's epoch",
    "kd_cached_50k": "< 0.8 s per epoch",
    "lora": ">= 4x the lab's Trainer at batch 32, >= 15x at the best batch",
    "latency": "(reference only)",
    "recipe": "finishes",
}


SIZES = ("smoke", "profile", "full")  # toy models on the CPU; the real models on a tenth of the images; the real run


def pick(size: str, smoke, profile, full):
    """The setting for ``size`` (one of SIZES)."""
    return {"smoke": smoke, "profile": profile, "full": full}[size]


def part_embed(size: str) -> dict:
    import embed_speed

    if size == "smoke":
        tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        r = embed_speed.measure("tiny", n=16, n_seed=4, batch=8, onnx=False, config=tiny)
    else:
        n, n_seed = pick(size, None, (1024, 32), (8192, 256))
        r = embed_speed.measure("base", n=n, n_seed=n_seed, batch=512, onnx=False)
    best = max(r["runs"], key=lambda x: x["img_s"])
    return {"figures": {"seed loop img/s": r["seed_loop_img_s"], "fm2edge img/s": best["img_s"],
                        "ratio": best["ratio_vs_seed"]},
            "notes": f"{r['model']}, {best['variant']}, batch {best['batch']}, cosine to the seed loop "
                     f"{r['cosine_fm2edge_vs_seed']:.4f}", "raw": r}


def part_kd_epoch(size_name: str, tmp: Path) -> dict:
    import distill_speed

    n, size, batch = pick(size_name, (64, 32, 32), (1024, 224, 128), (10_000, 224, 128))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = cifar_source(n)
    seed = distill_speed.seed_epoch(n, size, batch, device, source)
    online = distill_speed.fm2edge_epochs(n, size, batch, "auto", "never", tmp / "kd", source)
    t0 = time.perf_counter()
    cached = distill_speed.fm2edge_epochs(n, size, batch, "auto", "auto", tmp / "kd", source)
    return {"figures": {"lab epoch s": seed, "online epoch s": online["epoch_s"], "cached epoch s": cached["epoch_s"],
                        "ratio online": seed / online["epoch_s"], "ratio cached": seed / cached["epoch_s"],
                        "cached run s (cache + 2 epochs)": time.perf_counter() - t0},
            "notes": f"{n} images at {size} px, batch {batch}, ResNet-50 -> ResNet-18, precision auto"}


def part_kd_cached_50k(size: str, tmp: Path) -> dict:
    import distill_speed

    n, batch = pick(size, (128, 64), (5000, 512), (50_000, 512))
    r = distill_speed.fm2edge_epochs(n, 32, batch, "auto", "auto", tmp / "kd50k", cifar_source(n),
                                     teacher_model="torchvision:resnet18", student_model="student:cifar_resnet18")
    return {"figures": {"cached epoch s": r["epoch_s"], "first epoch s": r["first_epoch_s"]},
            "notes": f"{n} images at 32 px, batch {batch}, CIFAR ResNet-18 student, teacher logits cached"}


def part_lora(size: str) -> dict:
    import lora_speed

    arch, n, batches = pick(size, ("vit_tiny_patch16_224", 16, [8, 16]), ("vit_small_patch16_224", 512, [32, 256]),
                            ("vit_small_patch16_224", 5000, [32, 128, 256]))
    r = lora_speed.measure(arch, n, batches, "auto", cifar_source(n))
    best = max(batches, key=lambda b: r[f"fm2edge_bs{b}_img_s"])
    return {"figures": {"lab Trainer img/s (batch 32)": r["lab_trainer_fp32_bs32_img_s"],
                        f"fm2edge img/s (batch {batches[0]})": r[f"fm2edge_bs{batches[0]}_img_s"],
                        f"ratio (batch {batches[0]})": r[f"ratio_bs{batches[0]}"],
                        f"fm2edge img/s (best, batch {best})": r[f"fm2edge_bs{best}_img_s"],
                        "ratio (best batch)": r[f"ratio_bs{best}"]},
            "notes": f"{arch}, {n} images, LoRA r=16 on qkv, precision auto", "raw": r}


def part_latency(size: str, tmp: Path) -> dict:
    from fm2edge.bench import bench_job
    from fm2edge.config import BenchConfig, BenchJob

    smoke = size == "smoke"
    models = ["student:small_cnn", "student:cifar_resnet18"] if smoke else ["torchvision:resnet50",
                                                                           "torchvision:resnet18"]
    runs = pick(size, (5, 1), (20, 5), (100, 10))
    r = bench_job(BenchJob(models=models, output=str(tmp / "bench.json"),
                           bench=BenchConfig(devices=["cpu", "cuda"], runs=runs[0], warmup=runs[1],
                                             throughput_batch=4 if smoke else 64, throughput_runs=2)))
    figures = {f"{row['model'].split(':')[-1]} {row['device_type']} p50 ms": row["p50_ms"]
               for row in r["rows"] if not row["skipped"]}
    skipped = sorted({f"{row['device_type']}: {row['skipped']}" for row in r["rows"] if row["skipped"]})
    return {"figures": figures, "notes": "batch 1, eager fp32" + (f"; skipped {skipped}" if skipped else "")}


def part_recipe(size: str, tmp: Path) -> dict:
    """train (compiled, bf16 autocast on CUDA) -> distill (compiled) -> export, on the device."""
    from fm2edge.config import (
        AugmentConfig,
        DataConfig,
        DistillConfig,
        DistillJob,
        ExportConfig,
        ExportJob,
        ModelConfig,
        RunConfig,
        TrainConfig,
        TrainJob,
    )
    from fm2edge.distill.task import distill_job
    from fm2edge.export import export_job
    from fm2edge.train import train_job

    smoke = size == "smoke"
    n = pick(size, 256, 1000, 5000)
    data = DataConfig(source=str(cifar_source(n)), max_train=n, max_test=200)
    cfg = TrainConfig(epochs=1 if smoke else 3, batch_size=64 if smoke else 256, lr=3e-3, optimizer="adamw",
                      schedule="onecycle", weight_decay=0.0, augment=AugmentConfig(crop="none", flip=False),
                      compile=True, precision="auto", device="auto")
    t0 = time.perf_counter()
    teacher = train_job(TrainJob(data=data, model=ModelConfig(name="student:cifar_resnet18"), train=cfg,
                                 run=RunConfig(root=str(tmp), name="teacher")))
    student = distill_job(DistillJob(data=data, model=ModelConfig(name="student:small_cnn"), train=cfg,
                                     distill=DistillConfig(teacher=str(tmp / "teacher"), views=0, force=True),
                                     run=RunConfig(root=str(tmp), name="student")))
    exported = export_job(ExportJob(model=str(tmp / "student"), data=data,
                                    export=ExportConfig(latency_runs=20, calibration_images=64)))
    return {"figures": {"seconds": time.perf_counter() - t0, "teacher test acc": teacher["test_acc"],
                        "student test acc": student["test_acc"], "int8 test acc": exported["test_acc"]["onnx_int8"]},
            "notes": f"{n} images, {cfg.epochs} epoch(s), compile, precision auto "
                     f"({teacher['env']['mixed_precision']})"}


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")
TOP = 20


def busy_microseconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time some kernel ran on the device."""
    busy, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def profile_summary(events, averages, steps: int, on_device: bool) -> dict:
    """Where a profiled part spent its time: the top operators by self time (device time where there is a
    device), kernel launches (in all and per optimiser step), the device's idle share of the profiled span and the
    host's operator time. ``events``/``averages``: ``prof.events()`` and ``prof.key_averages()``."""
    device = [e for e in events if e.device_type.name != "CPU"]
    spans = [(e.time_range.start, e.time_range.end) for e in events]
    span = (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0.0
    launches = sum(1 for e in events if e.name in LAUNCHES)
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    top = sorted(averages, key=lambda a: getattr(a, key), reverse=True)[:TOP]
    return {"span_ms": span / 1e3, "optimizer_steps": steps, "kernel_launches": launches,
            "launches_per_step": launches / steps if steps else None,
            "device_idle_share": 1 - busy_microseconds([(e.time_range.start, e.time_range.end) for e in device])
            / span if device and span else None,
            "host_op_ms": sum(e.self_cpu_time_total for e in averages) / 1e3,
            "top": [{"op": a.key, "calls": a.count, "self_cpu_ms": a.self_cpu_time_total / 1e3,
                     "self_device_ms": a.self_device_time_total / 1e3} for a in top]}


def profile_table(name: str, summary: dict) -> str:
    def share(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    per = summary["launches_per_step"]
    lines = [f"## {name} under torch.profiler", "",
             f"profiled span {summary['span_ms']:,.0f} ms; {summary['optimizer_steps']} optimiser steps; "
             f"{summary['kernel_launches']:,} kernel launches" + (f" ({per:,.0f} per step)" if per else "") +
             f"; device idle {share(summary['device_idle_share'])} of the span; host operator time "
             f"{summary['host_op_ms']:,.0f} ms", "",
             "| operator | calls | self CPU ms | self device ms |", "|---|---|---|---|"]
    lines += [f"| `{t['op'][:80]}` | {t['calls']:,} | {t['self_cpu_ms']:.1f} | {t['self_device_ms']:.1f} |"
              for t in summary["top"]]
    return "\n".join(lines) + "\n"


def profiled(run, folder: Path, name: str) -> tuple[dict, dict]:
    """``run()`` under torch.profiler (CPU, and CUDA where there is a device), counting optimiser steps; leaves the
    gzipped Chrome trace and the top-operator table in ``folder``."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile

    on_device = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    steps = [0]
    hook = register_optimizer_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        with profile(activities=activities) as prof:
            result = run()
    finally:
        hook.remove()
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / f"{name}.trace.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    summary = profile_summary(prof.events(), prof.key_averages(), steps[0], on_device)
    (folder / f"{name}.md").write_text(profile_table(name, summary))
    return result, summary


def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_features()}
    if torch.cuda.is_available():
        env.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    else:
        env["device"] = "cpu (no CUDA device)"
    try:
        import onnxruntime

        env["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    except ImportError:
        pass
    return env


def references() -> dict:
    """The H100 figures measured earlier with the seed-recipe scripts, where ../shared/bench has them."""
    out = {}
    for path in sorted(SHARED_BENCH.glob("*.h100.json")) if SHARED_BENCH.exists() else []:
        out[path.stem] = json.loads(path.read_text())
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    kind = {"smoke": " (smoke: toy sizes)", "profile": " (under the profiler: reduced sizes, slowed figures)",
            "full": ""}[result["size"]]
    lines = [f"# fm2edge GPU suite{kind}", "",
             f"{env['device']}; torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "") +
             f"; ONNX Runtime {env.get('onnxruntime', '-')}; CPU {env['cpu']}", "",
             "| part | figure | value | target | notes |", "|---|---|---|---|---|"]
    for name, part in result["parts"].items():
        if "error" in part:
            lines.append(f"| {name} | **failed** | {part['error']} | {TARGETS[name]} | |")
            continue
        for i, (figure, value) in enumerate(part["figures"].items()):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {name if i == 0 else ''} | {figure} | {shown} | {TARGETS[name] if i == 0 else ''} | "
                         f"{part['notes'] if i == 0 else ''} |")
    if result["references"]:
        lines += ["", "Reference figures measured earlier on one H100 (../shared/bench):", ""]
        for name, ref in result["references"].items():
            figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ref.items()
                                if k not in ("device", "torch"))
            lines.append(f"- {name} ({ref.get('device')}, torch {ref.get('torch')}): {figures}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every part at toy size on the CPU (what CI runs)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-suite", help="folder for the JSON and table")
    ap.add_argument("--profile", action="store_true",
                    help="each part at a tenth of its size under torch.profiler: traces and top-20 tables in "
                         "OUT/profile (with --smoke: toy sizes on the CPU)")
    ap.add_argument("--parts", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    args = ap.parse_args()
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU rehearsal, wherever it runs
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --smoke for the CPU rehearsal")
    size = "smoke" if args.smoke else "profile" if args.profile else "full"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"smoke": args.smoke, "size": size, "profile": args.profile, "environment": environment(),
              "references": references(), "parts": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"embed": lambda: part_embed(size),
                "kd_epoch": lambda: part_kd_epoch(size, Path(tmp)),
                "kd_cached_50k": lambda: part_kd_cached_50k(size, Path(tmp)),
                "lora": lambda: part_lora(size),
                "latency": lambda: part_latency(size, Path(tmp)),
                "recipe": lambda: part_recipe(size, Path(tmp) / "recipe")}
        for name in args.parts:
            t0 = time.perf_counter()
            print(f"\n=== {name} ({TARGETS[name]})", flush=True)
            try:
                if args.profile:
                    part, summary = profiled(runs[name], out / "profile", name)
                    part = {**part, "profile": {k: v for k, v in summary.items() if k != "top"}}
                else:
                    part = runs[name]()
                result["parts"][name] = {**part, "seconds": time.perf_counter() - t0}
            except Exception as exc:  # noqa: BLE001 - one failing part must not cost the others' figures
                traceback.print_exc()
                result["parts"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                                         "seconds": time.perf_counter() - t0}
            (out / "gpu_suite.json").write_text(json.dumps(result, indent=1, default=str))
    result["seconds"] = time.perf_counter() - started
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1, default=str))
    table = markdown(result) + "".join("\n" + (out / "profile" / f"{name}.md").read_text() for name in args.parts
                                       if args.profile and (out / "profile" / f"{name}.md").exists())
    (out / "gpu_suite.md").write_text(table)
    print("\n" + table + f"\n{result['seconds']:.0f} s in all; results in {out}")
    if any("error" in p for p in result["parts"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
