"""`fm2edge bench`: latency, throughput, size and compute of models, teacher vs student (lab task 4).

The seed times 100 runs with no warm-up discipline; here every figure comes after warm-up runs, with the device
synchronised around each timed call, under ``inference_mode``, as mean / p50 / p90 / p99 over the runs, and is
tagged with the device, torch version, thread count, dtype, batch size and backend it was measured with.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fm2edge.config import check
from fm2edge.errors import Fm2EdgeError
from fm2edge.timing import peak_rss_during, summarise, time_calls

__all__ = ["BenchConfig", "BenchJob", "bench_job", "count_macs", "summarise", "time_calls"]

Backend = Literal["eager", "compile", "onnx", "onnx_int8"]
DType = Literal["fp32", "bf16", "fp16"]
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchConfig:
    """What to measure and how.

    Args:
        device: "cpu", "cuda" or "auto" (CUDA when available).
        threads: CPU threads for PyTorch and ONNX Runtime; empty keeps the default.
        dtypes: Weight/input precisions to time: fp32, bf16, fp16 (fp16 on CUDA only).
        backends: "eager" PyTorch, "compile" (torch.compile), "onnx" (ONNX Runtime fp32) and "onnx_int8" (ONNX
            Runtime, statically quantised; calibrated here on random inputs, which costs the same compute as real
            ones: for accuracy use `fm2edge export`).
        runs: Timed runs per latency figure (at least 100 for stable p99).
        warmup: Untimed runs first.
        throughput_batch: Batch size for the throughput figure.
        throughput_runs: Timed batches for the throughput figure.
        image_size: Input resolution; empty uses each model's own.
        num_classes: Classes of the head built for registered names.
    """

    device: Literal["auto", "cpu", "cuda"] = "cpu"
    threads: int | None = None
    dtypes: list[DType] = field(default_factory=lambda: ["fp32"])
    backends: list[Backend] = field(default_factory=lambda: ["eager"])
    runs: int = 100
    warmup: int = 10
    throughput_batch: int = 64
    throughput_runs: int = 10
    image_size: int | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        check(self.runs >= 1 and self.warmup >= 0, "bench.runs must be >= 1 and bench.warmup >= 0")
        check(self.throughput_batch >= 1 and self.throughput_runs >= 1, "throughput batch and runs must be >= 1")
        check(self.threads is None or self.threads >= 1, f"bench.threads must be >= 1, got {self.threads}")
        check(bool(self.dtypes) and bool(self.backends), "bench.dtypes and bench.backends must not be empty")


@dataclass
class BenchJob:
    """`fm2edge bench MODEL...`: latency, throughput, parameters, MACs and size of each model.

    Args:
        models: Registered model names (e.g. torchvision:resnet50) or fm2edge run folders; the first is the
            reference ("teacher") for speed-up ratios.
        bench: Measurement settings.
        output: JSON file for the results; empty writes bench.json into the current folder.
    """

    models: list[str] = field(default_factory=list)
    bench: BenchConfig = field(default_factory=BenchConfig)
    output: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.models), "give at least one model, e.g. fm2edge bench torchvision:resnet50 "
                                  "torchvision:resnet18")


# ---------------------------------------------------------------- measuring (pure functions of a callable)


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, from PyTorch's own FLOP counter (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops() // 2)


def size_on_disk(model: torch.nn.Module) -> int:
    """Bytes of the model's weights saved as safetensors."""
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as d:
        save_model(model, f"{d}/m.safetensors")
        return Path(f"{d}/m.safetensors").stat().st_size


def load_for_bench(name: str, num_classes: int):
    from fm2edge.config import ModelConfig
    from fm2edge.models import create_model
    from fm2edge.models.io import load_classifier

    if (Path(name) / "model.json").exists():
        return load_classifier(name)
    return create_model(ModelConfig(name=name), num_classes).eval()


def _caller(backend: str, model: torch.nn.Module, dt: torch.dtype, x1: torch.Tensor, cfg: BenchConfig, tmp: Path):
    """``call(batch)`` returns a zero-argument function that runs one forward pass on the chosen backend."""
    if backend.startswith("onnx"):
        from fm2edge.export import export_onnx, open_session, quantize_int8, run_session

        path = export_onnx(model, x1.cpu(), tmp / "model.onnx")
        if backend == "onnx_int8":
            calib = (torch.randn(8, *x1.shape[1:]).numpy() for _ in range(4))
            path = quantize_int8(path, tmp / "model.int8.onnx", calib)
        sess = open_session(path, cfg.threads)
        return lambda b: (lambda: run_session(sess, b))
    fwd = torch.compile(model) if backend == "compile" else model

    def call(b):
        def run():
            with torch.inference_mode():
                fwd(b.to(dt))
        return run
    return call


def bench_model(name: str, cfg: BenchConfig, device: torch.device) -> list[dict]:
    """Every (backend, dtype) figure for one model."""
    clf = load_for_bench(name, cfg.num_classes)
    size = cfg.image_size or clf.preprocess.size
    base = {"model": name, "params": sum(p.numel() for p in clf.parameters()), "size_bytes": size_on_disk(clf),
            "image_size": size, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"cpu ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()})"}
    net = clf.eval().to(device)  # the classifier on normalised float input: what is timed and exported
    x1 = torch.randn(1, 3, size, size, device=device)
    base["macs"] = count_macs(net, x1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for backend in cfg.backends:
        for dtype_name in cfg.dtypes:
            if dtype_name == "fp16" and device.type != "cuda":
                raise Fm2EdgeError("fp16 is only timed on CUDA; use --bench.dtypes [fp32,bf16] on the CPU")
            if backend.startswith("onnx") and (dtype_name != "fp32" or device.type != "cpu"):
                raise Fm2EdgeError(f"the {backend} backend is timed from fp32 weights on the CPU; drop it or use "
                                   f"--bench.dtypes [fp32] --bench.device cpu")
            dt = TORCH_DTYPES[dtype_name]
            model = net.to(dt)
            xb = torch.randn(cfg.throughput_batch, 3, size, size, device=device)
            with tempfile.TemporaryDirectory() as tmp:
                call = _caller(backend, model, dt, x1, cfg, Path(tmp))
                t0 = time.perf_counter()
                call(x1)()  # first call: compilation / session warm-up, reported separately
                first_s = time.perf_counter() - t0
                latency = summarise(time_calls(call(x1), cfg.runs, cfg.warmup, sync))
                tput = time_calls(call(xb), cfg.throughput_runs, max(1, cfg.warmup // 5), sync)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    call(xb)()
                    sync()
                    peak, peak_kind = torch.cuda.max_memory_allocated(device), "cuda allocated"
                else:
                    peak, peak_kind = peak_rss_during(call(xb)), "process RSS rise"
            rows.append({**base, "backend": backend, "dtype": dtype_name, "batch": 1, "first_call_s": first_s,
                         **latency, "throughput_batch": cfg.throughput_batch,
                         "throughput_img_s": float(cfg.throughput_batch / np.median(tput)), "peak_memory_bytes": peak,
                         "peak_memory_kind": peak_kind})
            net.float()
    return rows


def bench_job(job: BenchJob) -> dict:
    from fm2edge.runs import atomic_write_json

    cfg = job.bench
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Fm2EdgeError("bench.device is 'cuda' but no CUDA device is available; use --bench.device cpu")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = []
    for name in job.models:
        rows += bench_model(name, cfg, device)
    ref = {(r["backend"], r["dtype"]): r for r in rows if r["model"] == job.models[0]}
    for r in rows:
        base = ref.get((r["backend"], r["dtype"]))
        r["speedup_vs_first"] = base["p50_ms"] / r["p50_ms"] if base else None
    print(f"{'model':<28} {'backend':<9} {'dtype':<5} {'params':>10} {'MMACs':>8} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'img/s':>8} {'speed-up':>8}")
    for r in rows:
        print(f"{r['model'][:28]:<28} {r['backend']:<9} {r['dtype']:<5} {r['params']:>10,} {r['macs'] / 1e6:>8.0f} "
              f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['throughput_img_s']:>8.1f} "
              f"{r['speedup_vs_first']:>7.2f}x")
    print(f"device {rows[0]['device']}, torch {rows[0]['torch']}, {rows[0]['threads']} threads; "
          f"latency at batch 1 over {cfg.runs} runs after {cfg.warmup} warm-up runs; "
          f"throughput at batch {cfg.throughput_batch}")
    result = {"rows": rows, "config": {"models": job.models, **cfg.__dict__}}
    out = Path(job.output or "bench.json")
    atomic_write_json(out, result)
    print(f"results in {out}")
    return result
