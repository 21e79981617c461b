"""Embeddings from any registered backbone, batched on the device and cached on disk.

The seed runs the image processor and the model once per image in a Python loop. Here uint8 batches go to the
device, the model's own :class:`Preprocess` runs there, and features are saved chunk by chunk (an interrupted
extraction resumes from its last chunk), then stitched into a memory-mapped ``.npy`` file, so memory stays flat
however large the dataset. The cache key covers everything that changes the numbers: model name
and revision, dataset fingerprint, split, preprocessing, pooling, layers and dtype. Under ``torchrun`` the processes
share the chunks and the main process stitches them together.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fm2edge.config import EmbedConfig, EmbedJob, ModelConfig
from fm2edge.data import ImageData
from fm2edge.device import autocast_dtype, inference_batch, move
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import Classifier
from fm2edge.runs import atomic_dir

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Cached features of one split, memory-mapped."""

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,)
    class_names: list[str]
    meta: dict
    path: Path


def configure_pooling(model: Classifier, pooling: str, last_n: int) -> None:
    """Point the backbone's pooling at ``pooling`` / ``last_n`` where the architecture has tokens."""
    backbone = model.backbone
    if hasattr(backbone, "set_pooling"):
        model.set_pooling(pooling, last_n)
        return
    if pooling != "cls" or last_n != 1:
        if hasattr(backbone, "global_pool") and hasattr(backbone, "forward_features") and last_n == 1 \
                and pooling in ("cls", "mean") and getattr(backbone, "cls_token", None) is not None:
            backbone.global_pool = "token" if pooling == "cls" else "avg"  # timm ViTs
            return
        raise Fm2EdgeError(f"{model.name} does not support pooling '{pooling}' with last_n={last_n}; "
                           f"use --embed.pooling cls --embed.last_n 1 (its own global pool)")


def cache_key(model: Classifier, data: ImageData, split: str, cfg: EmbedConfig, dtype: str) -> str:
    revision = getattr(getattr(getattr(model.backbone, "model", None), "config", None), "_commit_hash", None)
    weights = weights_digest(model)
    parts = {"model": model.name, "revision": revision, "weights": weights, "data": data.fingerprint, "split": split,
             "preprocess": asdict(model.preprocess), "pooling": cfg.pooling, "last_n": cfg.last_n, "dtype": dtype,
             "v": 2}  # 2: pixels rounded to uint8 after resizing, as the deployed graphs take them
    if cfg.backend != "torch":
        parts["backend"] = cfg.backend
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def weights_digest(model: Classifier) -> str:
    """A cheap fingerprint of the backbone weights (a strided sample of every tensor), so random-weight and
    pretrained variants of one architecture never share a cache entry."""
    h = hashlib.sha1()
    source = getattr(model.backbone, "path", None)  # a frozen model file (onnx:PATH): its bytes are its weights
    if source is not None:
        h.update(Path(source).read_bytes())
    for name, t in model.backbone.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_root(cfg: EmbedConfig) -> Path:
    root = cfg.cache_dir or (Path(os.environ["FM2EDGE_CACHE"]) / "features" if os.environ.get("FM2EDGE_CACHE")
                             else Path.home() / ".cache" / "fm2edge" / "features")
    return Path(root)


@torch.inference_mode()
def embed_batches(model: Classifier, images: torch.Tensor, batch_size: int, device: torch.device,
                  dtype: torch.dtype | None, out: np.ndarray | None = None, progress: str | None = None,
                  bar=None, runner: Callable[[torch.Tensor], np.ndarray] | None = None) -> np.ndarray:
    """Features of uint8 ``images`` (N, 3, H, W), computed batch by batch into ``out`` (allocated if None).

    ``runner`` replaces the PyTorch backbone (an ONNX Runtime session, for instance); preprocessing stays here.
    Progress goes to ``bar`` (a tqdm the caller owns) or, with ``progress`` set, to a bar of its own.
    """
    from tqdm.auto import tqdm

    model.eval().to(device)
    batch_size = inference_batch(batch_size, model.preprocess.size, device)
    n = len(images)
    own = bar is None
    if own:
        bar = tqdm(total=n, desc=progress or "embed", unit="img", disable=progress is None, leave=False)
    for start in range(0, n, batch_size):
        x = move(images[start:start + batch_size], device)
        if runner is not None:
            f = runner(model.preprocess(x).float())
        else:
            # channels_last: convolutions (CNN backbones, a ViT's patch embedding) run ~1.8x faster on CPU this way
            x = model.preprocess(x).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                f = model.features(x).float().cpu().numpy()
        if out is None:
            out = np.zeros((n, f.shape[1]), dtype=np.float32)
        out[start:start + len(f)] = f
        bar.update(len(f))
    if own:
        bar.close()
    return out if out is not None else np.zeros((0, model.feature_dim), dtype=np.float32)


def plan_chunks(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """Image ranges that are extracted and saved one at a time, so an interrupted extraction loses at most one."""
    return [(lo, min(n, lo + chunk_size)) for lo in range(0, n, chunk_size)]


def _chunk_file(partial: Path, lo: int, hi: int) -> Path:
    return partial / f"{lo:09d}-{hi:09d}.npz"


def graph_helps(model: Classifier, device: torch.device) -> bool:
    """Whether ONNX Runtime runs ``model``'s forward pass faster than PyTorch here, by what was measured: on a CPU,
    for a convolutional network, most of whose weights are convolutions' (EfficientNet-Lite0 at 224 px, batch 32,
    2-core AMX Xeon: 218 images/s against 53 for PyTorch channels-last), and not for a ViT, whose one convolution
    embeds the patches (DINOv2-small's architecture: 17.6 against 17.3; ``benchmarks/teacher_speed.py``); where
    onnxruntime is installed and the weights are PyTorch's (not a frozen model file)."""
    import importlib.util

    if device.type != "cpu" or importlib.util.find_spec("onnxruntime") is None \
            or getattr(model.backbone, "path", None) is not None:
        return False
    conv = sum(p.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters())
    return conv > sum(p.numel() for p in model.backbone.parameters()) / 2


def resolve_backend(model: Classifier, cfg: EmbedConfig, device: torch.device) -> str:
    """The backend ``cfg.backend`` names here. "auto" is "onnx" where :func:`graph_helps` and fp32 is asked for,
    its graph exported now (once: later calls reuse it); a backbone the exporter cannot trace is embedded in
    PyTorch instead, with a warning. Otherwise "torch"."""
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.precision == "bf16" or not graph_helps(model, device):
        return "torch"
    try:
        onnx_runner(model, replace(cfg, backend="onnx"))
    except Fm2EdgeError as exc:
        log.warning("%s; embedding in PyTorch instead", exc)
        return "torch"
    return "onnx"


def graph_runner(module: torch.nn.Module, size: int, folder: Path, int8: bool = False, name: str = "the model",
                 way_out: str = "") -> Callable[[torch.Tensor], np.ndarray]:
    """``module`` (normalised float NCHW at ``size`` px in, one array out) as an ONNX Runtime session, fp32 or
    with int8 matrix multiplies, exported once into ``folder`` (the caller keys it by weights and size) and reused
    by every later call and process."""
    from fm2edge.export import export_onnx, open_session, quantize_dynamic_int8, run_session
    from fm2edge.runs import clean_stale, exclusive

    graph = "backbone.int8.onnx" if int8 else "backbone.onnx"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(folder.parent, str(folder)):  # several processes of one run: the first exports, the rest wait
        if not (folder / graph).exists():
            clean_stale(folder)
            with atomic_dir(folder) as tmp:
                try:
                    export_onnx(module, torch.zeros(2, 3, size, size), tmp / "backbone.onnx")
                except Fm2EdgeError:
                    raise
                except Exception as exc:  # the exporter's own errors are long; one line and the way out
                    raise Fm2EdgeError(f"{name} could not be exported to ONNX ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0][:160]}){way_out}") from exc
                if int8:
                    quantize_dynamic_int8(tmp / "backbone.onnx", tmp / "backbone.int8.onnx")
    sess = open_session(folder / graph, torch.get_num_threads())
    return lambda x: run_session(sess, x)


def onnx_runner(model: Classifier, cfg: EmbedConfig) -> Callable[[torch.Tensor], np.ndarray]:
    """The backbone as an ONNX Runtime session (fp32, or with int8 matrix multiplies), exported once per weights,
    pooling and input size and kept beside the feature cache."""
    if cfg.backend == "onnx_int8" and not any(isinstance(m, torch.nn.Linear) for m in model.backbone.modules()):
        log.warning("%s has no matrix multiplies for onnx_int8 to quantise (a CNN); --embed.backend onnx is as "
                    "accurate and faster", model.name)
    size = model.preprocess.size
    key = hashlib.sha1(json.dumps([model.name, weights_digest(model), cfg.pooling, cfg.last_n, size]).encode())
    return graph_runner(model.backbone, size, feature_root(cfg) / ".onnx" / key.hexdigest()[:24],
                        cfg.backend == "onnx_int8", model.name, "; use --embed.backend torch")


def _extract_chunks(model: Classifier, data: ImageData, split: str, cfg: EmbedConfig, partial: Path,
                    device: torch.device, dtype: torch.dtype | None, rank: int, world: int) -> None:
    """Extract this process's chunks (every ``world``-th) that ``partial`` does not hold yet, saving each atomically."""
    from tqdm.auto import tqdm

    from fm2edge.runs import atomic_write_bytes

    chunks = plan_chunks(len(data), cfg.chunk_size)
    saved = {c for c in chunks if _chunk_file(partial, *c).exists()}
    mine = chunks[rank::world]
    todo = [c for c in mine if c not in saved]
    total = sum(hi - lo for lo, hi in mine)
    done = total - sum(hi - lo for lo, hi in todo)
    if saved and rank == 0:
        print(f"embed {split}: resuming extraction, {sum(hi - lo for lo, hi in saved):,} of {len(data):,} images "
              f"already done", flush=True)
    runner = onnx_runner(model, cfg) if cfg.backend != "torch" and todo else None
    bar = tqdm(total=total, initial=done, desc=f"embed {split}", unit="img", disable=rank != 0, leave=False)
    for lo, hi in todo:
        t0 = time.perf_counter()
        part = embed_batches(model, data.images[lo:hi], cfg.batch_size, device, dtype, bar=bar, runner=runner)
        buf = io.BytesIO()
        np.savez(buf, features=part, seconds=time.perf_counter() - t0)
        atomic_write_bytes(_chunk_file(partial, lo, hi), buf.getvalue())
    bar.close()


def _stitch(folder: Path, partial: Path, model: Classifier, data: ImageData, split: str, cfg: EmbedConfig,
            dtype: torch.dtype | None, device: torch.device, world: int) -> None:
    """Gather the saved chunks into the cache folder (atomically), then drop them."""
    chunks = plan_chunks(len(data), cfg.chunk_size)
    seconds = 0.0
    with atomic_dir(folder) as tmp:
        feats = None
        for lo, hi in chunks:
            with np.load(_chunk_file(partial, lo, hi)) as z:
                part, seconds = z["features"], seconds + float(z["seconds"])
            if feats is None:
                feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                                  shape=(len(data), part.shape[1]))
            feats[lo:hi] = part
        dim = model.feature_dim if feats is None else feats.shape[1]
        if feats is None:
            np.save(tmp / "features.npy", np.zeros((0, dim), dtype=np.float32))
        else:
            feats.flush()
            del feats
        np.save(tmp / "labels.npy", data.labels.numpy())
        world_seconds = seconds / max(1, min(len(chunks), world))  # chunk times add up over the processes
        meta = {"model": model.name, "split": split, "n": len(data), "dim": int(dim), "pooling": cfg.pooling,
                "last_n": cfg.last_n, "backend": cfg.backend,
                "dtype": "int8 matmuls" if cfg.backend == "onnx_int8" else str(dtype or torch.float32),
                "device": str(device),
                "seconds": seconds, "images_per_s": len(data) / world_seconds if world_seconds else None,
                "class_names": data.class_names, "data": data.fingerprint}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(partial, ignore_errors=True)


def _prepare_partial(folder: Path, partial: Path, chunks: list[tuple[int, int]]) -> None:
    """Clear what a killed extraction left half-written; keep its finished chunks that match this plan."""
    from fm2edge.runs import clean_partial, clean_stale

    clean_stale(folder)
    partial.mkdir(parents=True, exist_ok=True)
    clean_partial(partial)
    expected = {_chunk_file(partial, lo, hi).name for lo, hi in chunks}
    for p in partial.iterdir():
        if p.name not in expected:  # chunks of another chunk size
            p.unlink()


def embed_split(model: Classifier, data: ImageData, split: str, cfg: EmbedConfig, accelerator=None) -> Features:
    """Features of ``data`` from the cache, or computed and cached.

    Work is saved chunk by chunk (``embed.chunk_size`` images), so an interrupted extraction resumes from its last
    saved chunk. Under ``torchrun`` the processes take every ``world``-th chunk and the main process stitches them.
    One lock per cache entry keeps two fm2edge processes from extracting the same features at once.
    """
    from contextlib import nullcontext

    from fm2edge.runs import exclusive

    device = accelerator.device if accelerator is not None else torch.device("cpu")
    cfg = replace(cfg, backend=resolve_backend(model, cfg, device))
    if cfg.backend != "torch" and device.type != "cpu":
        raise Fm2EdgeError(f"--embed.backend {cfg.backend} runs on the CPU; on {device.type} use --embed.backend "
                           f"torch (bf16 autocast), or add --embed.device cpu")
    dtype = autocast_dtype(cfg.precision, device) if cfg.backend == "torch" else None
    key = cache_key(model, data, split, cfg, str(dtype))
    folder = feature_root(cfg) / key
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    partial = folder.with_name(f".{key}.partial")
    # ranks must agree on every barrier, so under torchrun even a cache hit goes through the lock
    if world > 1 or not (folder / "meta.json").exists():
        with exclusive(folder.with_name(f".{key}.lock"), f"features {key}") if rank == 0 else nullcontext():
            barrier()  # the main process holds the lock: nobody else writes this entry now
            if not (folder / "meta.json").exists():  # another process may have finished it while we waited
                if rank == 0:
                    _prepare_partial(folder, partial, plan_chunks(len(data), cfg.chunk_size))
                barrier()
                _extract_chunks(model, data, split, cfg, partial, device, dtype, rank, world)
                barrier()
                if rank == 0:
                    _stitch(folder, partial, model, data, split, cfg, dtype, device, world)
            barrier()
    meta = json.loads((folder / "meta.json").read_text())
    return Features(np.load(folder / "features.npy", mmap_mode="r"), np.load(folder / "labels.npy"),
                    meta["class_names"], meta, folder)


# ---------------------------------------------------------------- the `fm2edge embed` stage


def load_backbone(cfg: ModelConfig, embed: EmbedConfig, num_classes: int) -> Classifier:
    from fm2edge.models import create_model

    with torch.random.fork_rng():  # random weights are seeded: a random baseline is reproducible and hits the cache
        torch.manual_seed(0)
        model = create_model(cfg, num_classes)
    configure_pooling(model, embed.pooling, embed.last_n)
    return model


def embed_data(job: EmbedJob, train: ImageData, test: ImageData, accelerator=None,
               val: ImageData | None = None) -> dict[str, Features]:
    """Features of each split ``job.embed.splits`` names (cached: see :func:`embed_split`)."""
    if "val" in job.embed.splits and val is None:
        raise Fm2EdgeError("--embed.splits names val, and this data has no validation split; give one (val/ beside "
                           "train/, or --data.val_fraction) or leave val out")
    model = load_backbone(job.model, job.embed, train.num_classes)
    sets = {"train": train, "val": val, "test": test}
    return {s: embed_split(model, sets[s], s, job.embed, accelerator) for s in job.embed.splits}


def embed_job(job: EmbedJob) -> dict:
    from fm2edge.config import to_dict
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure
    from fm2edge.results import slug, start_stage

    session = start_stage(job.data, job.embed.device, "fp32")
    with session.open(job.run, slug(f"embed-{job.model.name}")) as run:
        feats = embed_data(job, session.train, session.test, session.accelerator, session.val)
        summary = {}
        if session.is_main:
            run.write_config(to_dict(job))
            for split, f in feats.items():
                summary[split] = {"cache": str(f.path), **{k: f.meta[k] for k in ("n", "dim", "pooling", "last_n",
                                                                               "dtype", "device", "images_per_s")}}
                print(f"{split}: {f.meta['n']} x {f.meta['dim']} features ({f.meta['pooling']}, {f.meta['dtype']}) "
                      f"at {f.meta['images_per_s'] or 0:.1f} img/s -> {f.path}")
                if job.tsne_samples:
                    xy, labels = tsne(f.features, f.labels, job.tsne_samples)
                    fig = plots.tsne(xy, labels, f.class_names, f"t-SNE of {job.model.name} features ({split})")
                    save_figure(fig, run.file("plots", f"tsne_{split}.png"))
            run.write_json("embed.json", summary)
            run.log_summary(summary)
            print(f"results in {run.path}")
    return summary


def tsne(features: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of at most ``n`` class-balanced samples (PCA to 50 dimensions first, as is standard)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from fm2edge.data import balanced_indices

    idx = balanced_indices(labels, n)
    x = np.asarray(features[idx], dtype=np.float32)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    if len(x) < 4:
        raise Fm2EdgeError(f"t-SNE needs at least 4 images, got {len(x)}")
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), labels[idx]
