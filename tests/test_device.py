"""The device layer: every CUDA-only branch (event timing, peak memory, asynchronous copies) behind small functions
that the CPU drives here; `gpu`-marked tests check what only CUDA can show."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from fm2edge.device import (
    autocast_dtype,
    cpu_features,
    elapsed,
    int8_saturates,
    move,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    synchronize,
)

CPU = torch.device("cpu")
gpu = pytest.mark.gpu


def test_the_cpu_paths_of_the_device_layer():
    assert elapsed(lambda: time.sleep(0.02), CPU) >= 0.02
    x = torch.ones(3)
    assert move(x, CPU) is x
    synchronize(CPU)  # nothing queued on a CPU: returns at once
    reset_peak_memory(CPU)
    peak, kind = peak_memory(CPU)
    assert kind == "process peak RSS"
    # on Linux (resource.getrusage) the peak is at least what this process holds now: tens of megabytes of torch
    assert peak is not None and peak > 50 * 2**20 if sys.platform == "linux" else peak is None or peak > 0
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16 and autocast_dtype("auto", CPU) is None


def test_inference_batches_on_a_cpu_hold_about_two_million_pixels_and_are_left_alone_on_a_gpu():
    from fm2edge.device import inference_batch

    assert inference_batch(512, 224, CPU) == 41  # 2**21 // 224**2
    assert inference_batch(512, 128, CPU) == 128
    assert inference_batch(512, 32, CPU) == 512  # the asked size when it is below the cap
    assert inference_batch(512, 4096, CPU) == 1  # never zero
    assert inference_batch(512, 224, torch.device("cuda")) == 512


def test_cpu_features_name_the_instruction_sets():
    text = cpu_features()
    assert text.split(",")[0] in ("x86_64", "aarch64", "arm64", "AMD64")
    assert text.endswith(f", {torch.get_num_threads()} threads")
    try:  # every instruction set the kernel reports is named, and none it does not
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    named = text.split(", ")[1:-1]
    expected = [label for flag, label in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"),
                                          ("amx_bf16", "AMX"), ("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI"))
                if flag in flags]
    assert named == (expected or [str(torch.backends.cpu.get_cpu_capability())])


def test_int8_saturation_is_told_from_the_cpus_flags(monkeypatch):
    import fm2edge.device as device

    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    for flags, saturates in (({"avx2"}, True), ({"avx2", "avx512f"}, True), ({"avx2", "avx_vnni"}, False),
                             ({"avx512f", "avx512_vnni"}, False), ({"amx_int8", "avx512f"}, False), (set(), False)):
        monkeypatch.setattr(device, "cpu_flags", lambda f=flags: f)
        assert int8_saturates() is saturates, flags
    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(device, "cpu_flags", lambda: {"asimd"})
    assert int8_saturates() is False  # ARM's 8-bit dot products accumulate in 32 bits


@gpu
def test_cuda_events_time_the_kernels_and_peak_memory_counts_allocations():
    dev = torch.device("cuda")
    a = move(torch.randn(4096, 4096), dev)
    synchronize(dev)
    seconds = elapsed(lambda: a @ a, dev)
    assert 0 < seconds < 1
    reset_peak_memory(dev)
    b = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    peak, kind = peak_memory(dev)
    assert kind == "cuda allocated" and peak >= b.numel()


@gpu
def test_training_on_cuda_runs_in_bf16(tmp_path):
    from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
    from fm2edge.train import train_job

    metrics = train_job(TrainJob(data=DataConfig(source="digits"), model=ModelConfig(name="student:small_cnn"),
                                 train=TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda", compile=True),
                                 run=RunConfig(root=str(tmp_path), name="cuda")))
    assert metrics["env"]["mixed_precision"] == "bf16" and metrics["test_acc"] > 0.8


@gpu
def test_bench_times_eager_and_compiled_on_cuda(tmp_path):
    from fm2edge.bench import bench_job
    from fm2edge.config import BenchConfig, BenchJob

    rows = bench_job(BenchJob(models=["torchvision:resnet18"], output=str(tmp_path / "b.json"),
                              bench=BenchConfig(devices=["cuda"], backends=["eager", "compile"],
                                                dtypes=["fp32", "bf16"], runs=20, warmup=5)))["rows"]
    assert all(r["skipped"] is None and r["peak_memory_kind"] == "cuda allocated" for r in rows)


def test_freed_memory_is_kept_inside_training_only_on_glibc_and_not_when_the_system_allocator_is_asked_for(
        monkeypatch):
    """CPU training keeps freed memory (glibc mallopt) inside its block only: afterwards a large temporary
    allocation shows in the peak resident memory again. FM2EDGE_MALLOC=system leaves malloc alone; elsewhere
    nothing is changed."""
    import platform

    import numpy as np

    from fm2edge.device import freed_memory_kept
    from fm2edge.timing import peak_rss_during

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    with freed_memory_kept() as kept, freed_memory_kept() as nested:
        np.ones(64 * 2**20 // 8).sum()
        assert kept is glibc and nested is glibc
    peak = peak_rss_during(lambda: np.ones(64 * 2**20 // 8).sum())  # 64 MiB touched, then freed
    assert peak is None or peak >= 48 * 2**20
    monkeypatch.setenv("FM2EDGE_MALLOC", "system")
    with freed_memory_kept() as kept:
        assert kept is False
    monkeypatch.delenv("FM2EDGE_MALLOC")
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    with freed_memory_kept() as kept:
        assert kept is False


def test_a_stage_leaves_the_process_group_it_joined(tmp_path, monkeypatch):
    """Under torchrun a finished stage leaves its process group: one left to the interpreter's shutdown can abort a
    process whose work is done (gloo: "terminate called without an active exception")."""
    import torch.distributed as dist

    from fm2edge import cli
    from fm2edge.device import close_process_group

    close_process_group()  # none joined: nothing to leave
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    joined = []
    monkeypatch.setitem(cli.COMMANDS, "list", cli.Stage(lambda job: joined.append(dist.is_initialized()),
                                                         cli.COMMANDS["list"].job, ""))
    assert cli.main(["list", "models"]) == 0
    assert joined == [True] and not dist.is_initialized()
