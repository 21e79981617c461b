"""Measuring primitives shared by `fm2edge bench` and `fm2edge export`: synchronised timing and peak memory."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def summarise(seconds: np.ndarray) -> dict[str, float]:
    """Milliseconds: mean, p50, p90, p99, min, max of per-call times."""
    ms = 1e3 * np.asarray(seconds, dtype=np.float64)
    return {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "runs": int(len(ms))}


# Repeated medians further apart than this, or a p90 this far above the p50, mean other work shared the machine.
BUSY_SPREAD, BUSY_TAIL = 1.2, 2.0


def latency_with_noise(fn: Callable[[], object], runs: int, warmup: int, blocks: int = 5) -> dict[str, float]:
    """Batch latency that knows its noise (as pyperf does): ``runs`` timed calls in ``blocks`` blocks, the usual
    percentiles over all of them, each block's median, ``quiet_p50_ms`` (the lowest block median: the model's
    latency when nothing else runs), ``spread`` (highest over lowest block median) and ``busy`` (the machine was
    shared while it was measured: a spread above BUSY_SPREAD or a p90 above BUSY_TAIL x the p50)."""
    blocks = max(1, min(blocks, runs))
    per = [time_calls(fn, max(1, runs // blocks), warmup if b == 0 else 0) for b in range(blocks)]
    out = summarise(np.concatenate(per))
    medians = [1e3 * float(np.median(p)) for p in per]
    spread = max(medians) / min(medians)
    out.update(block_medians_ms=medians, quiet_p50_ms=min(medians), spread=spread,
               busy=bool(spread > BUSY_SPREAD or out["p90_ms"] > BUSY_TAIL * out["p50_ms"]))
    return out


def timings_text(timings_ms: list[float] | None, spread: float = 1.05) -> str:
    """``" (the quietest of 4 timings, 1.49-2.10 ms)"``: where one graph was timed more than once and its slowest
    timing is over ``spread`` times its quietest, the range its quiet figure was taken from; else nothing."""
    if not timings_ms or len(timings_ms) < 2 or max(timings_ms) <= spread * min(timings_ms):
        return ""
    return f" (the quietest of {len(timings_ms)} timings, {min(timings_ms):.2f}-{max(timings_ms):.2f} ms)"


def reference_ms(threads: int | None = None) -> float:
    """How fast this machine runs right now: the quiet median of a fixed 3x3 convolution (about 30 M
    multiply-accumulates, a millisecond or two on a laptop core). On shared or throttled machines the same model's
    latency moves by 2x from one minute to the next while each measurement looks steady; comparing this figure
    with the one taken beside a cached latency tells whether the machine is in the state it was measured in."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(1, 32, 56, 56, generator=gen), torch.randn(32, 32, 3, 3, generator=gen)
        with torch.inference_mode():
            return latency_with_noise(lambda: torch.nn.functional.conv2d(x, w, padding=1), 40, 5)["quiet_p50_ms"]
    finally:
        torch.set_num_threads(previous)


def same_state(then_ms: float | None, now_ms: float, tolerance: float = 1.15) -> bool:
    """The machine runs at the speed it ran at when ``then_ms`` was taken (both from :func:`reference_ms`)."""
    return then_ms is not None and 1 / tolerance <= now_ms / then_ms <= tolerance


def wall_clock(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(fn: Callable[[], object], runs: int, warmup: int,
               clock: Callable[[Callable[[], object]], float] = wall_clock) -> np.ndarray:
    """Seconds per call of ``fn`` over ``runs`` timed calls after ``warmup`` untimed ones, each measured by
    ``clock`` (the wall clock; on a GPU, ``fm2edge.device.elapsed``'s CUDA events)."""
    for _ in range(warmup):
        fn()
    return np.array([clock(fn) for _ in range(runs)])


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_rss_during(fn: Callable[[], object]) -> int | None:
    """Bytes the process's peak resident memory rose above its resident memory before ``fn``, or None off Linux.

    Linux resets the high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs, so the peak of one call
    is measured exactly, without a sampling thread; what the call allocated and freed again is included. Garbage
    left by earlier work is collected first: released while ``fn`` runs (Python's collector may run at any
    allocation), it would hide as much of ``fn``'s own memory (64 MiB allocated showed as 16 MiB after a long test
    session).
    """
    gc.collect()
    try:
        before = _status_kib("VmRSS")
    except OSError:
        return None
    if before is None or not reset_peak_rss():
        fn()
        return None
    fn()
    peak = peak_rss()
    return None if peak is None else max(0, peak - before * 1024)


def reset_peak_rss() -> bool:
    """Start a new peak-resident-memory window (Linux); False where the kernel offers none."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """Bytes of the process's peak resident memory since the last :func:`reset_peak_rss` (or since start)."""
    try:
        kib = _status_kib("VmHWM")
    except OSError:
        return None
    return None if kib is None else kib * 1024
