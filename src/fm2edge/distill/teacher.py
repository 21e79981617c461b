"""The teacher, shared by every stage that learns from one (`distill`, `pretrain`, `auto`): loading it, refusing one
near chance, and its outputs on the training images (or on their stored views) computed once into the fm2edge cache,
memory-mapped back, chunk by chunk resumable; and the unlabelled images it teaches on."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fm2edge.augment import RENDER_VERSION, Views
from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import Classifier
from fm2edge.report.metrics import accuracy

log = logging.getLogger(__name__)


def load_teacher(spec: str, num_classes: int, pretrained: bool = True, image_size: int | None = None,
                 flip: bool = False) -> Classifier:
    """The teacher named by ``spec``: a run folder's classifier, or a registered model (``pretrained`` weights, a
    new head); seen at ``image_size`` when given, its predictions averaged with the mirrored image's when
    ``flip``."""
    from fm2edge.models import create_model
    from fm2edge.models.io import is_model_folder, load_classifier

    if is_model_folder(spec):
        teacher = load_classifier(spec)
    elif Path(spec).exists() or spec.startswith((".", "/", "~")):
        raise Fm2EdgeError(f"the teacher '{spec}' holds no fm2edge model (model.json missing); give the "
                           f"run folder of `fm2edge probe`, `train` or `zeroshot`")
    else:
        teacher = create_model(ModelConfig(name=spec, pretrained=pretrained), num_classes)
    if image_size:
        teacher.preprocess = teacher.preprocess.with_overrides(image_size)
    teacher.flip_average = flip
    if teacher.num_classes != num_classes:
        raise Fm2EdgeError(f"the teacher predicts {teacher.num_classes} classes but the dataset has {num_classes}; "
                           f"give a teacher trained on this dataset's classes")
    return teacher.eval()


def cache_dir_for(data, spec: str, registered: str, teacher: Classifier, train, what, views: dict | None,
                  dtype: torch.dtype | None = None) -> Path:
    """The cache folder of a teacher's outputs: keyed by the teacher's weights file (a run folder's
    model.safetensors, or an onnx:/torchscript:/export: file), else by ``registered`` (a registered name's
    description), its preprocessing, the images, ``what`` is stored, the ``views``, the arithmetic and the
    test-time flip."""
    import hashlib

    from fm2edge.data.dataset import cache_root

    weights = Path(spec) / "model.safetensors"
    model_file = Path(spec.split(":", 1)[-1])  # onnx:PATH, torchscript:PATH, export:PATH
    if not weights.exists() and ":" in spec and model_file.is_file():
        weights = model_file
    if weights.exists():
        h = hashlib.sha1()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        source = h.hexdigest()
    else:
        source = registered
    parts = [source, teacher.describe()["preprocess"], train.fingerprint, len(train), what, views, "v2"]
    if views is not None:  # outputs on rendered views belong to the rendering that made them
        parts.append(f"render-{RENDER_VERSION}")
    else:  # on plain images, to the preprocessing that rounds resized pixels to uint8 (as deployed graphs take them)
        parts.append("rounded")
    if dtype is not None:  # a bf16 teacher's outputs are others than its fp32 ones (fp32 keys kept as they were)
        parts.append(str(dtype))
    if teacher.flip_average:  # so are a flip-averaged teacher's
        parts.append("flip")
    key = json.dumps(parts, sort_keys=True)
    return cache_root(data).parent / "teacher" / hashlib.sha1(key.encode()).hexdigest()[:24]


def graph_folder(data) -> Path:
    """Where teachers' ONNX graphs (:func:`teacher_graph`) are kept: beside their cached outputs."""
    from fm2edge.data.dataset import cache_root

    return cache_root(data).parent / "teacher" / ".graphs"


class PooledFeatures(torch.nn.Module):
    """A classifier's pooled features (its ``features``: the flip average included) as a module of its own, to
    export."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class PooledAndMap(torch.nn.Module):
    """A backbone's pooled features (N, D) and its last feature map (N, C, h, w), flattened side by side into one
    (N, D + C*h*w) array: the one output a graph session gives (:func:`split_pooled_and_map` parts them)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from fm2edge.models.dense import pooled_and_map

        pooled, fmap = pooled_and_map(self.model, x)
        return torch.cat([pooled.flatten(1), fmap.flatten(1)], dim=1)


def split_pooled_and_map(out: torch.Tensor, width: int, map_shape: tuple[int, ...]) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """:class:`PooledAndMap`'s output parted again: the pooled features (``width`` wide) and the map
    (``map_shape``: C, h, w)."""
    return out[:, :width], out[:, width:].reshape(len(out), *map_shape)


def teacher_graph(teacher: Classifier, backend: str, device: torch.device, dtype: torch.dtype | None,
                  folder: Path, with_map: bool = False,
                  stage: str = "distill") -> Callable[[torch.Tensor], np.ndarray] | None:
    """The teacher's pooled features (and its last feature map where ``with_map``: :class:`PooledAndMap`) as an
    ONNX Runtime session (exported once per weights, input size, flip and outputs, under ``folder``) where
    ``backend`` asks for one ("onnx") or it runs faster than PyTorch here ("auto":
    :func:`fm2edge.features.graph_helps`, in fp32); None where PyTorch runs the teacher. ``stage`` names the
    command whose options the messages give (``--distill.teacher_backend``, ``--pretrain.teacher_backend``)."""
    import hashlib

    from fm2edge.features import graph_helps, graph_runner, weights_digest

    if backend == "torch" or (backend == "auto" and (dtype is not None or not graph_helps(teacher, device))):
        return None
    option = f"--{stage}.teacher_backend"
    if device.type != "cpu" or dtype is not None:
        raise Fm2EdgeError(f"{option} onnx runs the teacher in fp32 on a CPU, not "
                           f"{'in ' + str(dtype).removeprefix('torch.') if dtype else 'on ' + device.type}; use "
                           f"{option} torch, or --{stage}.teacher_precision fp32 --train.device cpu")
    size = teacher.preprocess.size
    parts = [teacher.name, weights_digest(teacher), size, teacher.flip_average, *(["map"] if with_map else [])]
    key = hashlib.sha1(json.dumps(parts).encode())
    try:
        return graph_runner(PooledAndMap(teacher) if with_map else PooledFeatures(teacher), size,
                            folder / key.hexdigest()[:24], name=teacher.name, way_out=f"; use {option} torch")
    except Fm2EdgeError as exc:
        if backend == "onnx":
            raise
        log.warning("%s; the teacher runs in PyTorch instead", exc)  # "auto" asked for speed, not for the graph
        return None


def graph_logits(model: Classifier, graph: Callable[[torch.Tensor], np.ndarray], data, batch_size: int,
                 device: torch.device) -> torch.Tensor:
    """``model``'s logits on ``data``'s plain images, its pooled features computed by ``graph``
    (:func:`teacher_graph`) and its head applied in PyTorch."""
    from fm2edge.device import inference_batch, move

    batch = inference_batch(batch_size, model.preprocess.size, device)
    with torch.no_grad():
        return torch.cat([model.head(torch.from_numpy(graph(model.preprocess(move(data.images[i:i + batch], device)))))
                          for i in range(0, len(data), batch)])


def teacher_logits(model: Classifier, data, device: torch.device,
                   graph: Callable[[torch.Tensor], np.ndarray] | None = None, batch_size: int = 64, accelerator=None,
                   progress: bool = False) -> torch.Tensor:
    """``model``'s logits on ``data``'s plain images as its cached outputs are made: through ``graph`` (its
    :func:`teacher_graph`) where it has one and one process runs, else with :func:`fm2edge.train.predict`,
    channels-last (EfficientNet-Lite0 at 224 px on 2,000 photos, 2-core AMX Xeon: 12 s through its graph, 36 s
    channels-last, 54 s in PyTorch's default layout), sharded over ``accelerator``'s processes where several run."""
    from fm2edge.train import predict

    if graph is not None and (accelerator is None or accelerator.num_processes == 1):
        return graph_logits(model, graph, data, batch_size, device)
    return predict(model.to(memory_format=torch.channels_last), data, batch_size, device, channels_last=True,
                   accelerator=accelerator, progress=progress)


CHUNK = 2048  # images per saved piece of a teacher cache: an interrupted build loses at most one


def build_teacher_cache(task, images: torch.Tensor, views: torch.Tensor | None, folder: Path,
                        batch_size: int, device: torch.device) -> None:
    """What ``task.teacher_arrays`` gives (a distillation teacher's logits and features, a pretraining teacher's
    embeddings and maps) for every training image, on its plain image or on each of its K stored ``views``
    (N, K, columns), saved chunk by chunk (a killed build resumes from its last chunk) and then stitched,
    atomically, into ``folder``: NAME.npy (N, K, ...) for each array, and views.npy."""
    from tqdm.auto import tqdm

    from fm2edge.device import inference_batch
    from fm2edge.features import plan_chunks
    from fm2edge.runs import atomic_dir, atomic_write_bytes, clean_partial

    if (folder / "meta.json").exists():
        return
    per_image = 1 if views is None else int(views.shape[1])
    partial = folder.parent / f".{folder.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    clean_partial(partial)
    task.teacher.to(device)
    batch_size = inference_batch(batch_size, task.teacher.preprocess.size, device)
    chunks = plan_chunks(len(images), CHUNK)
    bar = tqdm(total=len(images) * per_image, desc="teacher outputs", unit="view", leave=False)
    for lo, hi in chunks:
        piece = partial / f"{lo:09d}-{hi:09d}.npz"
        if piece.exists():
            bar.update((hi - lo) * per_image)
            continue
        parts: dict[str, list[torch.Tensor]] = {}
        for k in range(per_image):
            for start in range(lo, hi, batch_size):
                idx = torch.arange(start, min(hi, start + batch_size))
                batch_views = partners = None
                if views is not None:
                    batch_views = Views(views[idx, k])
                    if batch_views.mixes:
                        partners = images[batch_views.col("partner").long().clamp_min(0)].to(device)
                for name, value in task.teacher_arrays(images[idx].to(device), batch_views, partners).items():
                    parts.setdefault(name, []).append(value.cpu())
                bar.update(len(idx))
        n = hi - lo
        arrays = {name: torch.cat(v).view(per_image, n, *v[0].shape[1:]).transpose(0, 1).numpy()
                  for name, v in parts.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(piece, buf.getvalue())
    bar.close()
    with atomic_dir(folder, lock=True) as tmp:
        pieces = [np.load(partial / f"{lo:09d}-{hi:09d}.npz") for lo, hi in chunks]
        for name in pieces[0].files:
            np.save(tmp / f"{name}.npy", np.concatenate([p[name] for p in pieces]))
        if views is not None:
            np.save(tmp / "views.npy", views.numpy())
        (tmp / "meta.json").write_text(json.dumps({"n": len(images), "views_per_image": per_image,
                                                   "arrays": list(pieces[0].files),
                                                   "features": "features" in pieces[0]}))
    shutil.rmtree(partial, ignore_errors=True)


def load_teacher_cache(folder: Path, n: int, features: bool | tuple[str, ...],
                       device: torch.device) -> dict[str, torch.Tensor]:
    """A built teacher cache, memory-mapped (copied to the GPU when training there): every stored array by name,
    and the views. ``features``: the arrays this run needs besides the logits (True: "features"), or the names of
    all the arrays it needs."""
    out = {p.stem: torch.from_numpy(np.load(p, mmap_mode="c")) for p in sorted(folder.glob("*.npy"))}
    needed = features if isinstance(features, tuple) else ("logits", *(("features",) if features else ()))
    if any(name not in out or len(out[name]) != n for name in needed):
        raise Fm2EdgeError(f"the teacher cache in '{folder}' does not match this run; delete it and rerun")
    return {k: v.to(device) if device.type == "cuda" and k != "views" else v for k, v in out.items()}


def share_teacher_cache(task, images: torch.Tensor, views: torch.Tensor | None, folder: Path, batch_size: int,
                        accelerator, features: bool | tuple[str, ...]) -> None:
    """The teacher's cache in ``folder``, built once by the main process (:func:`build_teacher_cache`) and read by
    every process into ``task.cache`` (:func:`load_teacher_cache`); the teacher's graph is closed, as training reads
    its outputs from the cache (the session's memory goes)."""
    if accelerator.is_main_process:
        build_teacher_cache(task, images, views, folder, batch_size, accelerator.device)
    accelerator.wait_for_everyone()
    task.cache = load_teacher_cache(folder, len(images), features, accelerator.device)
    task.teacher_graph = None


def views_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """How often the teacher's stored outputs (N, K, C) name the label on the views it was shown, over the labelled
    images (None without any): far below its accuracy on validation, the students are taught from views the
    teacher does not recognise (views resized otherwise than it was trained on cost a probe on 8 x 8 digits 68
    points of this; crops of tiny images cost some too)."""
    labels = labels.cpu()
    known = labels >= 0
    if not bool(known.any()):
        return None
    picked = logits.cpu()[known].argmax(-1)  # (labelled, K): one prediction per view
    return accuracy(picked.flatten(), labels[known].repeat_interleave(picked.shape[1]))


def draw_order(count: int) -> np.ndarray:
    """The order in which `limited` draws from ``count`` unlabelled images: a seeded permutation, the same in every
    run, so a smaller limit draws a subset of what a larger one draws."""
    return np.random.default_rng(0).permutation(count)


def limited(extra, limit: int | None):
    """At most ``limit`` of the unlabelled images: a seeded random sample in source order (the same in every run)."""
    if limit is None or limit >= len(extra):
        return extra
    return extra.subset(np.sort(draw_order(len(extra))[:limit]))


def held_back(extra, n: int):
    """The ``n`` unlabelled images `limited` draws last: none of them is among what it draws with a limit of at most
    ``len(extra) - n``, so they can judge students trained on such a sample."""
    return extra.subset(np.sort(draw_order(len(extra))[len(extra) - n:]))


def with_unlabeled(train, extra):
    """The labelled training images followed by unlabelled ones (label -1), as one dataset for the loop."""
    from fm2edge.data import ImageData

    return ImageData(torch.cat([train.images, extra.images]), torch.cat([train.labels, extra.labels]),
                     train.class_names, f"{train.fingerprint}+{extra.fingerprint}", train.skipped + extra.skipped)
