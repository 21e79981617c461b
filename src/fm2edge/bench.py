"""`fm2edge bench`: latency, throughput, size and compute of models, teacher vs student.

The seed times 100 runs with no warm-up discipline; here every figure comes after warm-up runs, with the device
synchronised around each timed call, under ``inference_mode``, as mean / p50 / p90 / p99 over the runs, and is
tagged with the device, torch version, thread count, dtype, batch size and backend it was measured with.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fm2edge.config import BenchConfig, BenchJob
from fm2edge.errors import Fm2EdgeError
from fm2edge.timing import peak_rss_during, summarise, time_calls

__all__ = ["BenchConfig", "BenchJob", "bench_job", "count_macs", "summarise", "time_calls"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    from fm2edge.models.io import is_model_folder, load_classifier

    if is_model_folder(name):
        return load_classifier(name)
    return create_model(ModelConfig(name=name), num_classes).eval()


def skip_reason(backend: str, dtype: str, device: torch.device) -> str | None:
    """Why a (backend, dtype, device) combination is not timed here, or None when it is."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if dtype == "fp16" and device.type != "cuda":
        return "fp16 is timed on CUDA only"
    if backend.startswith("onnx"):
        if dtype != "fp32":
            return "ONNX Runtime is timed from fp32 weights"
        if device.type == "cuda" and backend == "onnx_int8":
            return "int8 ONNX is timed on the CPU (its kernels are CPU kernels)"
        if device.type == "cuda" and "CUDAExecutionProvider" not in onnx_providers():
            return "this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu)"
    if backend == "compile" and device.type == "cpu" and shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile on the CPU needs a C++ compiler"
    return None


def onnx_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def _caller(backend: str, model: torch.nn.Module, dt: torch.dtype, x1: torch.Tensor, cfg: BenchConfig, tmp: Path,
            device: torch.device):
    """``call(batch)`` returns a zero-argument function that runs one forward pass on the chosen backend."""
    if backend.startswith("onnx"):
        from fm2edge.export import export_onnx, open_session, quantize_int8, run_session

        path = export_onnx(model, x1.cpu(), tmp / "model.onnx")
        if backend == "onnx_int8":
            calib = (torch.randn(8, *x1.shape[1:]).numpy() for _ in range(4))
            path = quantize_int8(path, tmp / "model.int8.onnx", calib)
        sess = open_session(path, cfg.threads, cuda=device.type == "cuda")
        return lambda b: (lambda: run_session(sess, b.cpu()))
    fwd = torch.compile(model) if backend == "compile" else model

    def call(b):
        def run():
            with torch.inference_mode():
                fwd(b.to(dt))
        return run
    return call


def time_backend(net: torch.nn.Module, backend: str, dtype_name: str, size: int, cfg: BenchConfig,
                 device: torch.device) -> dict:
    """Latency at batch 1, throughput at ``cfg.throughput_batch`` and peak memory of one (backend, dtype)."""
    from fm2edge.device import elapsed, peak_memory, reset_peak_memory, synchronize
    from fm2edge.timing import wall_clock

    dt = TORCH_DTYPES[dtype_name]
    model = net.to(dt)
    x1 = torch.randn(1, 3, size, size, device=device)
    xb = torch.randn(cfg.throughput_batch, 3, size, size, device=device)
    # ONNX Runtime returns host arrays, so its calls are timed by the wall clock; PyTorch's by the device's clock
    clock = wall_clock if backend.startswith("onnx") else (lambda fn: elapsed(fn, device))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            call = _caller(backend, model, dt, x1, cfg, Path(tmp), device)
            t0 = time.perf_counter()
            call(x1)()  # first call: compilation / session warm-up, reported separately
            synchronize(device)
            first_s = time.perf_counter() - t0
            latency = summarise(time_calls(call(x1), cfg.runs, cfg.warmup, clock))
            tput = time_calls(call(xb), cfg.throughput_runs, max(1, cfg.warmup // 5), clock)
            if device.type == "cuda":
                reset_peak_memory(device)
                call(xb)()
                synchronize(device)
                peak, peak_kind = peak_memory(device)
            else:
                peak, peak_kind = peak_rss_during(call(xb)), "process RSS rise"
    finally:
        net.float()
    return {"first_call_s": first_s, **latency, "throughput_batch": cfg.throughput_batch,
            "throughput_img_s": float(cfg.throughput_batch / np.median(tput)), "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind}


def device_label(device: torch.device) -> str:
    from fm2edge.device import cpu_features

    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_features()})" if device.type == "cpu" else "cuda (absent)"


def graph_dtype(path: Path) -> str:
    """"int8" for a statically quantised graph (it holds QuantizeLinear nodes), else "fp32"."""
    import onnx

    return "int8" if any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node) else "fp32"


def bench_graph(path: Path, name: str, cfg: BenchConfig) -> dict:
    """The row of a deployable graph timed as shipped (uint8 NHWC images of its input size in, probabilities out)
    with ONNX Runtime on the CPU: batch-1 latency, throughput and its file size (its parameters and MACs are the
    run folder's: a quantised graph's tensors are not one per parameter)."""
    from fm2edge.device import cpu_features
    from fm2edge.export import graph_metadata, open_session, run_images
    from fm2edge.timing import wall_clock

    sess = open_session(path, cfg.threads)
    meta = graph_metadata(sess)
    if "preprocess" not in meta:
        raise Fm2EdgeError(f"'{path}' was not written by `fm2edge export` (no fm2edge metadata); bench its run "
                           f"folder instead")
    size = meta["preprocess"]["size"]
    row = {"model": name, "params": None, "size_bytes": path.stat().st_size, "image_size": size,
           "torch": torch.__version__, "threads": cfg.threads or torch.get_num_threads(), "macs": None, "batch": 1,
           "device": f"cpu ({cpu_features()})", "device_type": "cpu", "backend": "graph", "dtype": graph_dtype(path),
           "graph": str(path)}
    x1, xb = (np.zeros((n, size, size, 3), np.uint8) for n in (1, cfg.throughput_batch))
    t0 = time.perf_counter()
    run_images(sess, x1)
    first_s = time.perf_counter() - t0
    latency = summarise(time_calls(lambda: run_images(sess, x1), cfg.runs, cfg.warmup, wall_clock))
    tput = time_calls(lambda: run_images(sess, xb), cfg.throughput_runs, max(1, cfg.warmup // 5), wall_clock)
    return {**row, "first_call_s": first_s, **latency, "throughput_batch": cfg.throughput_batch,
            "throughput_img_s": float(cfg.throughput_batch / np.median(tput)),
            "peak_memory_bytes": peak_rss_during(lambda: run_images(sess, xb)),
            "peak_memory_kind": "process RSS rise", "skipped": None}


def bench_model(name: str, cfg: BenchConfig, devices: list[torch.device]) -> list[dict]:
    """Every (device, backend, dtype) row for one model: its figures, or why it was skipped; a graph's one row."""
    from fm2edge.models.io import shipped_graph

    if name.endswith(".onnx"):
        return [bench_graph(Path(name), name, cfg)]
    clf = load_for_bench(name, cfg.num_classes)
    size = cfg.image_size or clf.preprocess.size
    net = clf.eval()  # the classifier on normalised float input: what is timed and exported
    base = {"model": name, "params": sum(p.numel() for p in clf.parameters()), "size_bytes": size_on_disk(clf),
            "image_size": size, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "macs": count_macs(net, torch.randn(1, 3, size, size)), "batch": 1}
    import itertools

    from tqdm.auto import tqdm

    rows = []
    combos = list(itertools.product(devices, cfg.backends, cfg.dtypes))
    bar = tqdm(combos, desc=f"bench {Path(name).name}", unit="setting", leave=False)
    for device, backend, dtype_name in bar:
        bar.set_postfix_str(f"{device.type} {backend} {dtype_name}")
        row = {**base, "device": device_label(device), "device_type": device.type, "backend": backend,
               "dtype": dtype_name}
        reason = skip_reason(backend, dtype_name, device)
        if reason is None:
            row.update(time_backend(net.to(device), backend, dtype_name, size, cfg, device), skipped=None)
        else:
            row["skipped"] = reason
        rows.append(row)
    net.to("cpu")
    graph = shipped_graph(name) if Path(name).is_dir() else None
    return rows + ([bench_graph(graph, f"{name}/{graph.name}", cfg)] if graph is not None else [])


def bench_job(job: BenchJob) -> dict:
    from fm2edge.config import to_dict
    from fm2edge.device import resolve_device
    from fm2edge.runs import atomic_write_json, log_summary

    cfg = job.bench
    devices = list(dict.fromkeys(resolve_device(d) for d in cfg.devices))  # "auto" may repeat "cpu"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows, reference_rows = [], []
    for name in job.models:
        rows += bench_model(name, cfg, devices)
        reference_rows = reference_rows or list(rows)  # the first model's rows (with the graph its folder ships)
    ref = {(r["device_type"], r["backend"], r["dtype"]): r for r in reference_rows if not r["skipped"]}
    for r in rows:
        first = ref.get((r["device_type"], r["backend"], r["dtype"]))
        r["speedup_vs_first"] = first["p50_ms"] / r["p50_ms"] if first and not r["skipped"] else None
    print_table(rows, cfg)
    result = {"rows": rows, "config": {"models": job.models, **cfg.__dict__}}
    out = Path(job.output or "bench.json")
    atomic_write_json(out, result)
    print(f"results in {out}")
    numbers = ("p50_ms", "p90_ms", "p99_ms", "throughput_img_s", "params", "macs", "size_bytes", "speedup_vs_first")
    log_summary(cfg.log_with, out.parent, to_dict(job), name="bench", summary={
        f"{Path(r['model']).name}/{r['device_type']}/{r['backend']}/{r['dtype']}": {k: r.get(k) for k in numbers}
        for r in rows if not r["skipped"]})
    return result


def print_table(rows: list[dict], cfg: BenchConfig) -> None:
    print(f"{'model':<28} {'device':<6} {'backend':<9} {'dtype':<5} {'params':>10} {'MMACs':>8} {'p50 ms':>8} "
          f"{'p90 ms':>8} {'p99 ms':>8} {'img/s':>8} {'speed-up':>8}")
    for r in rows:
        macs = "" if r["macs"] is None else f"{r['macs'] / 1e6:.0f}"  # a graph's are not counted
        params = "" if r["params"] is None else f"{r['params']:,}"
        model = r["model"] if len(r["model"]) <= 28 else "..." + r["model"][-25:]  # a path's end says the most
        head = f"{model:<28} {r['device_type']:<6} {r['backend']:<9} {r['dtype']:<5} {params:>10} {macs:>8}"
        if r["skipped"]:
            print(f"{head}  skipped: {r['skipped']}")
            continue
        speedup = "" if r["speedup_vs_first"] is None else f"{r['speedup_vs_first']:.2f}x"
        print(f"{head} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['throughput_img_s']:>8.1f} "
              f"{speedup:>8}")
    for device in dict.fromkeys(r["device"] for r in rows):
        print(f"{device}: torch {rows[0]['torch']}")
    print(f"latency at batch 1 over {cfg.runs} runs after {cfg.warmup} warm-up runs; throughput at batch "
          f"{cfg.throughput_batch}; speed-up against the first model on the same device, backend and dtype")
    if any(r["backend"] == "graph" for r in rows):
        print("graph: an exported .onnx timed as shipped (uint8 images in, ONNX Runtime on the CPU)")
