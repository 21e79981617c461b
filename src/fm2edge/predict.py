"""`fm2edge predict` and :func:`load`: classify image files (or PIL images, or uint8 arrays) with a trained run folder
through PyTorch, or with an exported .onnx through ONNX Runtime.

Both backends take the same uint8 images at the model's input size (each image is decoded, resized on its shortest
edge and centre-cropped by the model's own :class:`~fm2edge.models.preprocess.Preprocess`, then rounded to pixels)
and run the same graph, :class:`~fm2edge.models.deploy.ImageClassifier`, so their probabilities agree to float
rounding.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fm2edge.config import PredictJob
from fm2edge.data.images import find_images
from fm2edge.errors import Fm2EdgeError, UnreadableImageError
from fm2edge.models.preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Per image: the top class, its probability, and every class's probability (rows in input order)."""

    class_names: list[str]
    probabilities: np.ndarray  # (N, C)

    @property
    def indices(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(1)

    def top(self, k: int) -> list[list[tuple[str, float]]]:
        """The k most likely classes of each image with their probabilities."""
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for idx, row in zip(order, self.probabilities,
                                                                                          strict=True)]


ImageInput = str | Path | np.ndarray | torch.Tensor | Any  # a path, an HWC uint8 array, a CHW uint8 tensor, PIL


def to_uint8_chw(image: ImageInput) -> torch.Tensor:
    """One image as a uint8 (3, H, W) RGB tensor, decoded at its own size."""
    from PIL import Image

    from fm2edge.data.images import decode

    if isinstance(image, torch.Tensor):
        t = image
    elif isinstance(image, np.ndarray):
        t = torch.from_numpy(np.array(image))  # a writable copy
        if t.dim() == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)
    elif isinstance(image, (str, Path, Image.Image)):
        try:
            array = decode(str(image) if isinstance(image, Path) else image, None)
            return torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a writable copy
        except (OSError, ValueError) as exc:
            raise UnreadableImageError(f"cannot read image '{image}': {exc}") from exc
    else:
        raise Fm2EdgeError(f"cannot classify a {type(image).__name__}: give file paths, PIL images or uint8 arrays")
    if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[0] not in (1, 3, 4):
        raise Fm2EdgeError(f"an image array must be uint8 H x W x 3 (or 3 x H x W), got {t.dtype} "
                           f"{tuple(t.shape)}")
    return t[:3] if t.shape[0] != 1 else t.expand(3, -1, -1)


class Predictor:
    """A trained model ready to classify images; build it with :func:`load`."""

    def __init__(self, class_names: list[str], preprocess: Preprocess, run_batch, backend: str, source: str,
                 resize_inside: bool = False) -> None:
        self.class_names = class_names
        self.preprocess = preprocess
        self.run_batch = run_batch  # uint8 (N, size, size, 3) numpy -> probabilities (N, C)
        self.backend = backend
        self.source = source
        self.resize_inside = resize_inside  # the graph takes images of any size (one size a batch)

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def prepare(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Decode, resize and crop each image: uint8 (N, size, size, 3), what both backends take."""
        out = [self.preprocess.resize(to_uint8_chw(img).unsqueeze(0))[0] for img in images]
        return torch.stack(out).permute(0, 2, 3, 1).contiguous().numpy()

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64,
                progress: bool = False) -> Predictions:
        """Probabilities for one image or a list of them (paths, PIL images, uint8 arrays)."""
        from tqdm.auto import tqdm

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if self.resize_inside:  # each image at its own size, through the graph's own resize
            probs = [self.run_batch(to_uint8_chw(img).permute(1, 2, 0)[None].contiguous().numpy())
                     for img in tqdm(items, desc="predict", unit="image", leave=False, disable=not progress)]
            return Predictions(self.class_names, np.concatenate(probs) if probs else
                               np.zeros((0, len(self.class_names))))
        probs = [self.run_batch(self.prepare(items[s:s + batch_size]))
                 for s in tqdm(range(0, len(items), batch_size), desc="predict", unit="batch", leave=False,
                               disable=not progress)]
        return Predictions(self.class_names, np.concatenate(probs) if probs else np.zeros((0, len(self.class_names))))


def load(model: str | Path, backend: str = "auto", threads: int | None = None) -> Predictor:
    """A :class:`Predictor` for a run folder (PyTorch, or its exported ONNX with ``backend="onnx"``), a folder that
    ships a graph (`fm2edge auto`'s best/: that graph, the one its test accuracy was measured through) or an .onnx
    file written by `fm2edge export` (its class names and preprocessing are in the file's metadata)."""
    from fm2edge.models.io import shipped_graph

    path = Path(model)
    shipped = None if path.suffix == ".onnx" else shipped_graph(path)
    if backend == "auto" and shipped is not None and importlib.util.find_spec("onnxruntime") is None:
        log.warning("%s ships %s, which needs ONNX Runtime (pip install onnxruntime); predicting with its PyTorch "
                    "weights instead", path, shipped.name)
        shipped = None
    if backend == "auto":
        backend = "onnx" if path.suffix == ".onnx" or shipped is not None else "torch"
    if backend == "onnx":
        onnx_path = path if path.suffix == ".onnx" else shipped or path / "export" / "model.onnx"
        if not onnx_path.exists():
            raise Fm2EdgeError(f"no ONNX model at '{onnx_path}'; export one with `fm2edge export {path}` or use "
                               f"--predict.backend torch")
        return onnx_predictor(onnx_path, threads)
    if path.suffix == ".onnx":
        raise Fm2EdgeError(f"'{path}' is an ONNX file: it runs with --predict.backend onnx (or auto)")
    from fm2edge.models.deploy import ImageClassifier
    from fm2edge.models.io import class_names_of_run, load_classifier

    if threads:
        torch.set_num_threads(threads)
    classifier = load_classifier(path)
    names = class_names_of_run(path)
    wrapped = ImageClassifier(classifier).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return wrapped(torch.from_numpy(batch)).numpy()

    return Predictor(names, classifier.preprocess, run, "torch", str(path))


def onnx_predictor(path: Path, threads: int | None = None) -> Predictor:
    from fm2edge.export import graph_metadata, open_session, run_images

    sess = open_session(path, threads)
    meta = graph_metadata(sess)
    if "preprocess" not in meta or [i.name for i in sess.get_inputs()] != ["images"]:
        raise Fm2EdgeError(f"'{path}' was not written by `fm2edge export` (no uint8 'images' input with fm2edge "
                           f"metadata); export the run folder again")
    pre = meta["preprocess"]
    preprocess = Preprocess(size=pre["size"], crop_pct=pre["crop_pct"], mean=tuple(pre["mean"]),
                            std=tuple(pre["std"]), interpolation=pre["interpolation"])
    return Predictor(meta["class_names"], preprocess, lambda batch: run_images(sess, batch), "onnx", str(path),
                     resize_inside=bool(meta.get("resize_inside")))


def predict_readable(predictor: Predictor, files: list[Path], batch_size: int) -> tuple[list[Path], Predictions,
                                                                                       list[str]]:
    """(the files that decode, their predictions, why each other one was skipped): one broken photo in a folder of
    thousands does not stop the rest. A batch holding an unreadable file is classified again image by image."""
    from tqdm.auto import tqdm

    kept: list[Path] = []
    probs: list[np.ndarray] = []
    skipped: list[str] = []
    # delay: no bar for work that ends (or fails) within a second
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch", leave=False, delay=1.0):
        batch = files[start:start + batch_size]
        try:
            probs.append(predictor.predict(list(batch), batch_size).probabilities)
            kept += batch
            continue
        except UnreadableImageError:
            pass
        for f in batch:
            try:
                probs.append(predictor.predict([f]).probabilities)
                kept.append(f)
            except UnreadableImageError as exc:
                skipped.append(str(exc))
    if not kept:
        raise Fm2EdgeError(f"no image could be read ({len(skipped)} tried): {skipped[0]}")
    return kept, Predictions(predictor.class_names, np.concatenate(probs)), skipped


def write_predictions(path: Path, files: list[Path], preds: Predictions, k: int, min_confidence: float) -> None:
    """CSV (path, class_1, probability_1, ..., sure) or JSON Lines, written atomically."""
    from fm2edge.runs import atomic_write_text

    tops = preds.top(k)
    sure = preds.confidence >= min_confidence
    if path.suffix == ".jsonl":
        lines = [json.dumps({"path": str(f), "top": [{"class": c, "probability": round(p, 6)} for c, p in top],
                             "sure": bool(s)}) for f, top, s in zip(files, tops, sure, strict=True)]
        atomic_write_text(path, "\n".join(lines) + "\n")
        return
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", *[h for i in range(1, k + 1) for h in (f"class_{i}", f"probability_{i}")], "sure"])
    for f, top, s in zip(files, tops, sure, strict=True):
        w.writerow([str(f), *[v for c, p in top for v in (c, f"{p:.6f}")], int(s)])
    atomic_write_text(path, buf.getvalue())


def write_pseudo_labels(folder: Path, files: list[Path], preds: Predictions, min_confidence: float) -> int:
    """The images at or above ``min_confidence`` with their predicted labels as ``folder/train.parquet`` in the
    hub's schema (Image, ClassLabel, and the confidence), written atomically. Returns how many were kept."""
    from datasets import ClassLabel, Dataset, Features, Image, Value

    from fm2edge.runs import atomic_dir

    keep = np.flatnonzero(preds.confidence >= min_confidence)
    if len(keep) == 0:
        raise Fm2EdgeError(f"no image reaches --predict.min_confidence {min_confidence}; lower it to write "
                           f"pseudo-labels")
    features = Features({"image": Image(), "label": ClassLabel(names=preds.class_names),
                         "confidence": Value("float32")})
    # the image bytes go into the file, so the dataset does not depend on the images staying where they are
    images = [{"bytes": files[i].read_bytes(), "path": files[i].name} for i in keep]
    ds = Dataset.from_dict({"image": images, "label": preds.indices[keep].tolist(),
                            "confidence": preds.confidence[keep].astype(np.float32).tolist()}, features=features)
    with atomic_dir(folder) as tmp:
        ds.to_parquet(str(tmp / "train.parquet"))
    return len(keep)


def images_text(n: int) -> str:
    """"1 image", "21 images"."""
    return f"{n:,} image{'' if n == 1 else 's'}"


def predict_job(job: PredictJob) -> dict:
    """`fm2edge predict`: find the images, classify them in batches, write or print the answers."""
    cfg = job.predict
    files = find_images(job.inputs)
    predictor = load(job.model, cfg.backend, cfg.threads)
    print(f"classifying {images_text(len(files))} with {predictor.source} ({predictor.backend}, input "
          f"{predictor.input_size} px, {len(predictor.class_names)} classes)")
    files, preds, skipped = predict_readable(predictor, files, cfg.batch_size)
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {shown}")
    sure = preds.confidence >= cfg.min_confidence
    result = {"images": len(files), "backend": predictor.backend, "sure": int(sure.sum()),
              "counts": {c: int((preds.indices == i).sum()) for i, c in enumerate(preds.class_names)},
              "files": [str(f) for f in files], "probabilities": preds.probabilities, "skipped": skipped}
    if cfg.output:
        write_predictions(Path(cfg.output), files, preds, cfg.top_k, cfg.min_confidence)
        print(f"predictions in {cfg.output}")
    else:
        for f, top, s in zip(files, preds.top(cfg.top_k), sure, strict=True):
            answer = ", ".join(f"{c} {100 * p:.1f}%" for c, p in top)
            print(f"{f}: {answer}{'' if s else '  (unsure)'}")
    if cfg.pseudo_labels:
        n = write_pseudo_labels(Path(cfg.pseudo_labels), files, preds, cfg.min_confidence)
        print(f"pseudo-labels: {n} of {len(files)} images (confidence >= {cfg.min_confidence}) with their predicted "
              f"labels in {cfg.pseudo_labels}/train.parquet; train on them with --data.source {cfg.pseudo_labels}")
    counts = ", ".join(f"{c}: {n}" for c, n in result["counts"].items() if n)
    sure_text = f"; {result['sure']} at or above confidence {cfg.min_confidence}" if cfg.min_confidence > 0 else ""
    print(f"{images_text(len(files))}, per class {counts}{sure_text}")
    return result
