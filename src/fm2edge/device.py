"""Where a stage runs: the Accelerate set-up, precision, and the device facts written next to every figure.

Everything that differs between a CPU and a CUDA device lives here (bf16 support, autocast dtype, peak memory), so
stages ask one question and the CPU path that CI runs is the same code as the GPU path.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from typing import Any

import torch

from fm2edge.errors import Fm2EdgeError

log = logging.getLogger(__name__)


def bf16_supported_on_cpu() -> bool:
    """True when this CPU runs bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_accelerator(device: str = "auto", precision: str = "auto"):
    """An ``accelerate.Accelerator`` for the requested device and precision (fp32 on CPU unless asked)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise Fm2EdgeError("the device is 'cuda' but no CUDA device is available; use --train.device cpu or auto")
    if precision == "auto":
        mixed = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    elif precision == "fp32":
        mixed = "no"
    elif precision == "bf16" and not cuda and not bf16_supported_on_cpu():
        log.warning("this CPU has no native bf16; training in fp32 instead")
        mixed = "no"
    else:
        mixed = precision
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        # Accelerate keeps one precision per process; a later stage of the same Python process (the demo, a
        # notebook, a benchmark beside HF Trainer) may ask for another. The process group itself is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not cuda, mixed_precision=mixed)


def close_process_group() -> None:
    """Leave the process group that torchrun's processes joined, if this one joined any (once its stage has returned
    or failed): one left for the interpreter's shutdown can abort the process after its work is done (gloo's worker
    threads: "terminate called without an active exception", SIGABRT), failing a run that succeeded. Accelerate's
    ``PartialState.destroy_process_group`` does the same, but builds Accelerate's shared state where none was."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


_KEPT = {"depth": 0}  # nested training loops share one setting; the outermost restores glibc's defaults


def training_memory(device: torch.device) -> contextlib.AbstractContextManager:
    """The allocator setting a training loop runs under on ``device``: :func:`freed_memory_kept` on a CPU, nothing
    elsewhere (what the loop and every timing of it share, so a timing sees what the loop will do)."""
    return freed_memory_kept() if device.type == "cpu" else contextlib.nullcontext()


@contextlib.contextmanager
def freed_memory_kept():
    """On Linux with glibc, inside the block ``malloc`` keeps freed memory for the next batch instead of handing
    every large tensor's pages back to the kernel when it is freed (its default for blocks over 32 MiB, and for the
    top of the heap), so a CPU training step stops paying a page fault and a page clearing for every fresh page of
    its activations; ``benchmarks/cpu_allocator.py`` measures what that gives. After the block glibc's defaults
    return and the kept memory is released (malloc_trim), so what runs next (a peak-memory measurement, say) sees
    the process as before. PyTorch keeps no CPU memory cache of its own, and jemalloc or tcmalloc would need
    LD_PRELOAD before start-up; glibc's own knobs (mallopt) can be set from here. Off with FM2EDGE_MALLOC=system.
    Yields True when the setting is on."""
    import ctypes
    import os

    libc = None
    if platform.system() == "Linux" and os.environ.get("FM2EDGE_MALLOC", "").lower() != "system":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.gnu_get_libc_version  # noqa: B018 - glibc only: another libc (musl, ...) keeps its own allocator
        except (OSError, AttributeError):
            libc = None
    if libc is None:
        yield False
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    if _KEPT["depth"] == 0:
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    _KEPT["depth"] += 1
    try:
        yield True
    finally:
        _KEPT["depth"] -= 1
        if _KEPT["depth"] == 0:
            libc.mallopt(m_mmap_max, 65536)  # glibc's defaults (DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
            libc.mallopt(m_trim_threshold, 128 * 1024)
            libc.malloc_trim(0)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` for inference (None means fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16
    if precision == "bf16":
        if bf16_supported_on_cpu():
            return torch.bfloat16
        log.warning("this CPU has no native bf16; running in fp32 instead")
    return None


def environment(accelerator) -> dict[str, Any]:
    """Device, versions and parallelism, written into every metrics file."""
    dev = accelerator.device
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({cpu_features()})",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision, "python": platform.python_version()}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA's allocator statistics on a GPU, the process's peak RSS on a CPU."""
    from fm2edge.timing import reset_peak_rss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def peak_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes, what they measure) since :func:`reset_peak_memory`."""
    from fm2edge.timing import peak_rss

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda allocated"
    return peak_rss(), "process peak RSS"


# A CPU forward pass is fastest with batches whose activations stay near the caches: EfficientNet-Lite0 at 224 px ran
# 94 / 89 / 46 / 34 img/s at batch 32 / 64 / 128 / 512 (that last peaking 12 GiB above its start), at 128 px 278 img/s
# up to batch 128, 213 at 256 and 104 at 512; a 32 px CNN 2,791 at 64 and 2,585 at 512 (a 2-core Xeon with AMX,
# torch 2.14.1, 2026-12-04). So an inference batch on a CPU holds at most about two million input pixels.
CPU_BATCH_PIXELS = 2**21


def inference_batch(batch_size: int, image_size: int, device: torch.device, pixels: int = CPU_BATCH_PIXELS) -> int:
    """``batch_size`` for a forward pass over ``image_size`` px inputs, capped on a CPU at ``pixels`` input pixels
    (never below one image)."""
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, pixels // (image_size * image_size)))


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when a CUDA device is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def move(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; host-to-GPU copies are asynchronous (the caller's next kernel waits for them)."""
    return x.to(device, non_blocking=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device``: CUDA events around it on a GPU (the kernels' own time, not
    the launch), the wall clock on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    from fm2edge.timing import wall_clock

    return wall_clock(fn)


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_saturates() -> bool:
    """True on an x86 CPU without VNNI or AMX: its 8-bit dot products (AVX2/AVX-512 ``vpmaddubsw``) add pairs into
    16 bits, which saturate for uint8 activations times full-range int8 weights, a known accuracy loss of
    efficient CNNs there. Quantising weights to 7 bits (ONNX Runtime's ``reduce_range``) avoids it."""
    flags = cpu_flags()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and bool(flags) and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_features() -> str:
    """The instruction-set features that decide CPU speed for these models (AVX2, AVX-512, AVX-512 BF16, AMX,
    VNNI), written next to every CPU figure: the same script gives different ratios on different CPUs."""
    flags = cpu_flags()
    names = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX"),
             ("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI")]
    found = [label for flag, label in names if flag in flags]
    if not found:  # not Linux, or an ARM CPU: torch's own word for what it dispatches to
        found = [str(torch.backends.cpu.get_cpu_capability())]
    return f"{platform.machine()}, {', '.join(found)}, {torch.get_num_threads()} threads"
