"""Measure the target first: each candidate student's batch-1 latency as fp32 and int8 ONNX on this machine, its
parameters, compute and file sizes, and its training speed here; cached by machine and model, so a rerun (or the next
folder) costs nothing."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fm2edge.runs import atomic_write_json

LATENCY_RUNS, LATENCY_WARMUP = 50, 5
# Share of the measured forward-backward speed (at the recipe's batch, channels-last) the training loop reaches,
# evaluation and checkpoints included: measured 0.66-0.78 for small CNNs (whose augmentation and loss weigh more) on
# 2 AVX2 cores, and 0.95-0.98 for EfficientNet-Lite0 at 96-128 px (CIFAR-10 fine-tuning, 2 AMX cores; 1.1-1.4 before
# the speed was timed under the loop's allocator setting). It sizes the teacher's fine-tuning, the first rung and the
# unlabelled images; the later rungs are re-sized from the loop's own epoch times.
LOOP_EFFICIENCY = 0.8
# Only the first training step runs slower (kernel choice, the optimiser's state): Lite0 at 112 px took 1.94, then
# 1.63-1.67 s a step at batch 64, and at 96 px 1.46, then 1.18-1.20 (2-core AVX2 EPYC, two runs each), so one step
# of warm-up and the median of three give the figure seven steps gave: timing the five candidates a 5 ms budget kept
# on the messy photo folder (Lite0 at 96-128 px, the small CNN at 32 and 64) took 46.6 s with seven steps, of that
# run's 97 s of planning, and 29.3 s with four, each figure within 4% of its seven-step one.
SPEED_WARMUP, SPEED_STEPS = 1, 3
# A pretrained student's training batch holds at most 64 images of 128 px: what a training step keeps grows with
# the batch's pixels, not its speed per image (EfficientNet-Lite0 at 224 px: 23.2 img/s and 7.4 GB of resident memory
# at batch 64, 21.8 img/s and 2.3 GB at 16; 2-core AMX Xeon). Their BatchNorm statistics stay as pretrained, so a
# smaller batch changes only the steps.
PRETRAINED_BATCH = 64
TRAIN_BATCH_PIXELS = PRETRAINED_BATCH * 128 * 128
# Versions of the cached figures: a change to how they are measured makes the old ones stale (speed-v2: the training
# speed is timed under the loop's allocator setting; speed-v3: at the batch sized to the input, see PRETRAINED_BATCH;
# v7: latency and size only, training speed cached apart; v8: "same" padding fixed in the exported graph; v9: int8 the
# fastest of INT8_LAYOUTS; v10: the first-last layout keeps the classifier's pooled input in fp32).
FIGURES, SPEED = "v10", "speed-v3"
# The int8 recipes whose graphs differ in what they run (percentile calibration only moves min-max's scales): with
# the first and last layers in fp32, EfficientNet-Lite0's int8 graph ran 0.99 ms at 128 px against 1.31 fully int8
# (2-core AMX Xeon; the stem's 3-channel int8 convolution is the slow part), so a size the fully int8 graph put over
# a budget can fit it.
INT8_LAYOUTS = {"minmax": {"fp32_layers": "none"}, "first-last-fp32": {"fp32_layers": "first_last"}}


@dataclass(frozen=True)
class Candidate:
    """A student: a registered model at an input resolution."""

    name: str
    size: int

    @classmethod
    def parse(cls, spec: str) -> Candidate:
        name, _, size = spec.rpartition("@")
        return cls(name, int(size))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.size}"

    @property
    def pretrained(self) -> bool:
        """Starts from pretrained weights: every source but the from-scratch ``student:`` CNNs."""
        return not self.name.startswith("student:")

    @property
    def batch_size(self) -> int:
        """The batch the recipe trains it at: 128 from random weights; pretrained, 64 up to 128 px and fewer above
        (the power of two that keeps to TRAIN_BATCH_PIXELS: 32 at 160 px, 16 at 224), at a gentler rate."""
        if not self.pretrained:
            return 128
        fits = max(1, TRAIN_BATCH_PIXELS // self.size ** 2)
        return min(PRETRAINED_BATCH, 1 << (fits.bit_length() - 1))


def latency_cache(data) -> Path:
    """Where measured figures are kept for ``data`` (a DataConfig): beside its image and feature caches."""
    from fm2edge.data.dataset import cache_root

    return cache_root(data).parent / "latency"


def machine_key(threads: int | None) -> str:
    """What latency depends on besides the model: CPU features, thread count, library versions."""
    import onnxruntime

    from fm2edge.device import cpu_features

    threads = threads or torch.get_num_threads()
    return f"{cpu_features()}|{threads} threads|torch {torch.__version__}|onnxruntime {onnxruntime.__version__}"


def measure(candidate: Candidate, num_classes: int, threads: int | None, cache: Path,
            reference: float | None = None) -> dict:
    """The candidate's latency and size on this machine, from the cache when this machine measured them before in
    the state it is in now (``reference``: :func:`fm2edge.timing.reference_ms` taken now); measured again, and the
    cache replaced, when the machine runs faster or slower than it did then. Training speed is
    :func:`measure_training`'s, taken only for the candidates the budget keeps (timing Lite0's training steps at
    224 px held 6.9 GB for a candidate the screen then dropped)."""
    return cached_figures(candidate, num_classes, threads, cache, reference, FIGURES,
                          lambda: latency_and_size(candidate, num_classes, threads))


def measure_training(candidate: Candidate, num_classes: int, threads: int | None, cache: Path,
                     reference: float | None = None) -> dict:
    """The candidate's training speed here (``train_images_per_s``, ``train_device``), cached like :func:`measure`'s
    figures."""
    return cached_figures(candidate, num_classes, threads, cache, reference, SPEED,
                          lambda: training_speed(candidate, num_classes))


def cache_path(candidate: Candidate, num_classes: int, threads: int | None, cache: Path, version: str) -> Path:
    key = json.dumps([asdict(candidate), num_classes, machine_key(threads), version])
    return cache / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"


def cached(path: Path, reference: float) -> dict | None:
    """The cached figures at ``path`` when they were taken with the machine in the state ``reference`` says it is
    in now; None when there are none or the machine runs faster or slower than then."""
    from fm2edge.timing import same_state

    if not path.exists():
        return None
    figures = json.loads(path.read_text())
    return figures if same_state(figures.get("reference_ms"), reference) else None


def cached_figures(candidate: Candidate, num_classes: int, threads: int | None, cache: Path,
                   reference: float | None, version: str, compute) -> dict:
    """``compute()``'s figures for the candidate, cached with the reference timing they were taken beside."""
    from fm2edge.timing import reference_ms

    reference = reference or reference_ms(threads)
    path = cache_path(candidate, num_classes, threads, cache, version)
    if (figures := cached(path, reference)) is not None:
        return figures
    figures = {"candidate": candidate.label, "machine": machine_key(threads), **compute(), "reference_ms": reference}
    atomic_write_json(path, figures)
    return figures


def build(candidate: Candidate, num_classes: int):
    """The candidate's architecture with random weights (latency and speed are the architecture's)."""
    from fm2edge.config import ModelConfig
    from fm2edge.models import create_model

    torch.manual_seed(0)
    return create_model(ModelConfig(name=candidate.name, image_size=candidate.size), num_classes).eval()


def latency_and_size(candidate: Candidate, num_classes: int, threads: int | None) -> dict:
    """Batch-1 median (and p90) latency of the fp32 and int8 ONNX graphs as `fm2edge export` ships them (uint8
    images in, probabilities out) under ONNX Runtime on the CPU, their file sizes, parameters and
    multiply-accumulates; int8 as the fastest of INT8_LAYOUTS (``recipe`` says which)."""
    from fm2edge.export import export_deployable, quantize_int8

    model = build(candidate, num_classes)
    size = candidate.size
    out = architecture(model, size)
    rng = np.random.default_rng(0)
    x1 = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_deployable(model, Path(tmp) / "model.onnx")
        graphs = {"fp32": fp32}
        for recipe, settings in INT8_LAYOUTS.items():
            calibration = (rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8) for _ in range(2))
            graphs[recipe] = quantize_int8(fp32, Path(tmp) / f"{recipe}.int8.onnx", calibration,
                                           input_name="images", progress=False, **settings)
        timed = {name: graph_figures(path, x1, threads) for name, path in graphs.items()}
    out["fp32"] = timed.pop("fp32")
    # int8 is its fastest layout: the finalists' export tries each, and each graph is judged at its own latency
    recipe = min(timed, key=lambda r: timed[r]["p50_ms"])
    out["int8"] = {**timed[recipe], "recipe": recipe, "layouts_ms": {r: t["p50_ms"] for r, t in timed.items()}}
    return out


def architecture(model: torch.nn.Module, size: int) -> dict:
    """A network's parameters and multiply-accumulates at ``size`` px (what it is, whatever the machine)."""
    from fm2edge.bench import count_macs

    return {"params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, torch.randn(1, 3, size, size))}


def graph_figures(path: Path, x1: np.ndarray, threads: int | None) -> dict:
    """An ONNX graph's batch-1 latency on ``x1`` and its file size."""
    from fm2edge.export import open_session, run_images
    from fm2edge.timing import latency_with_noise

    sess = open_session(path, threads)
    timed = latency_with_noise(lambda: run_images(sess, x1), LATENCY_RUNS, LATENCY_WARMUP)
    # the quiet figure (lowest repeated median) is the model's; the spread says how busy the machine was
    return {"p50_ms": timed["quiet_p50_ms"], "median_ms": timed["p50_ms"], "p90_ms": timed["p90_ms"],
            "spread": timed["spread"], "busy": timed["busy"], "mb": path.stat().st_size / 1e6}


def training_speed(candidate: Candidate, num_classes: int) -> dict:
    """Training images per second of a few AdamW steps at the candidate's size and batch on this machine's default
    device, fp32 and channels-last as the training loop runs them (what sizes its first epochs in the budget; the
    loop's own epoch times size the later ones)."""
    from fm2edge.device import resolve_device, training_memory

    device = resolve_device("auto")
    # timed under the allocator setting the training loop runs under: without it a network whose activations are
    # large (Lite0 at 128 px on a CPU) measured 52 img/s where the loop ran 66 (69.6 with it)
    with training_memory(device):
        times = timed_steps(candidate, num_classes, device)
    return {"train_images_per_s": float(candidate.batch_size / np.median(times[SPEED_WARMUP:])),
            "train_device": device.type}


def timed_steps(candidate: Candidate, num_classes: int, device) -> list[float]:
    """Seconds of each of SPEED_WARMUP + SPEED_STEPS AdamW steps of the candidate on ``device`` (random inputs at its
    size and batch)."""
    model = build(candidate, num_classes).train().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = candidate.batch_size
    x = torch.randn(batch, 3, candidate.size, candidate.size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    times = []
    for _ in range(SPEED_WARMUP + SPEED_STEPS):  # the first steps warm up (kernel choice, optimiser state)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times
