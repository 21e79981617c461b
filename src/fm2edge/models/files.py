"""Frozen models from files: an ONNX graph (``onnx:PATH``, run by ONNX Runtime), a TorchScript program
(``torchscript:PATH``) or a ``torch.export`` program (``export:PATH``, a ``.pt2`` file), usable wherever a teacher
or a backbone is (the distillation gate and cache, consistent views, ``embed``, ``probe``).

Such a file holds no preprocessing, so it comes from a side-car JSON beside it (``PATH.json``: ``size``,
``mean``, ``std``, ``interpolation``, ``crop_pct``, and ``outputs``: "logits" or "features") or from
``--model.image_size`` / ``--model.mean`` / ``--model.std``. A file whose output has one value per class gives
logits (its head is the identity); otherwise its output is a feature vector and the head is new.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.models.classifier import Classifier
from fm2edge.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fm2edge.models.registry import register


class OnnxBackbone(nn.Module):
    """An ONNX graph on normalised float NCHW inputs, run by ONNX Runtime on the CPU (frozen: no gradients)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = path
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(out).to(x.device).flatten(1)


def sidecar(path: Path) -> dict:
    """The preprocessing written beside a model file (``PATH.json``), or nothing."""
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text()) if side.exists() else {}


def file_classifier(path: Path, net: nn.Module, cfg: ModelConfig, num_classes: int, name: str) -> Classifier:
    meta = sidecar(path)
    size = cfg.image_size or meta.get("size")
    if not size:
        raise Fm2EdgeError(f"'{path}' holds no preprocessing: give --model.image_size (and --model.mean/std if not "
                           f"ImageNet's), or write {path.name}.json beside it with size, mean and std")
    pre = Preprocess(size=int(size), crop_pct=float(meta.get("crop_pct", 1.0)),
                     mean=tuple(meta.get("mean", IMAGENET_MEAN)), std=tuple(meta.get("std", IMAGENET_STD)),
                     interpolation=meta.get("interpolation", "bilinear"))
    with torch.no_grad():
        dim = int(net(torch.zeros(1, 3, pre.size, pre.size)).flatten(1).shape[1])
    logits = meta.get("outputs", "logits" if dim == num_classes else "features") == "logits"
    if logits and dim != num_classes:
        raise Fm2EdgeError(f"'{path}' gives {dim} logits but the dataset has {num_classes} classes")
    clf = Classifier(net, dim, num_classes, pre, name)
    if logits:  # the file already ends in the classes: no new head
        clf.head = nn.Identity()
    return clf.requires_grad_(False)


def existing(rest: str, kind: str) -> Path:
    path = Path(rest).expanduser()
    if not path.is_file():
        raise Fm2EdgeError(f"{kind}:{rest}: no such file")
    return path


@register("onnx:", "a frozen ONNX graph, e.g. onnx:teacher.onnx (preprocessing from teacher.onnx.json or flags)",
          "source")
def onnx_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    path = existing(rest, "onnx")
    return file_classifier(path, OnnxBackbone(path), cfg, num_classes, f"onnx:{rest}")


@register("torchscript:", "a frozen TorchScript file, e.g. torchscript:teacher.pt (preprocessing from "
          "teacher.pt.json or flags); it runs code as a pickle does: load only files you trust", "source")
def torchscript_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    path = existing(rest, "torchscript")
    try:
        net = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as exc:
        raise Fm2EdgeError(f"'{path}' is not a TorchScript file ({str(exc).splitlines()[0][:120]})") from exc
    return file_classifier(path, net, cfg, num_classes, f"torchscript:{rest}")


class ExportedProgram(nn.Module):
    """A ``torch.export`` program's module, held outside the module tree: such a module refuses ``train()`` and
    ``eval()`` (which a teacher or a frozen backbone receives) and is always in the mode it was exported in."""

    def __init__(self, program, path: Path) -> None:
        super().__init__()
        self.__dict__["program"] = program.module()
        self.path = path  # its weights are outside the tree: caches key on the file's bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x.contiguous())


@register("export:", "a frozen torch.export program, e.g. export:teacher.pt2 (saved by torch.export.save with a "
          "dynamic batch dimension; preprocessing from teacher.pt2.json or flags); it runs code as a pickle does: load "
          "only files you trust", "source")
def exported_program_model(rest: str, cfg: ModelConfig, num_classes: int) -> Classifier:
    path = existing(rest, "export")
    import zipfile

    try:
        net = ExportedProgram(torch.export.load(str(path)), path)
    except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise Fm2EdgeError(f"'{path}' is not a torch.export program ({str(exc).splitlines()[0][:120]}); save one "
                           f"with torch.export.save") from exc
    size = cfg.image_size or sidecar(path).get("size") or 32
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, int(size), int(size)))
            net(torch.zeros(2, 3, int(size), int(size)))
    except (AssertionError, RuntimeError) as exc:
        if "size()[0]" not in str(exc):
            raise
        raise Fm2EdgeError(f"'{path}' was exported for one batch size only; export it with a dynamic batch "
                           f"dimension: torch.export.export(model, (x,), dynamic_shapes=({{0: "
                           f"torch.export.Dim('batch')}},))") from exc
    return file_classifier(path, net, cfg, num_classes, f"export:{rest}")

