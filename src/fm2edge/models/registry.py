"""One registry for every model, selected by name with its source prefix.

Exact names (``student:small_cnn``, ``pypi:efficientnet_lite0``) and open prefixes (``hf:<id or path>``,
``timm:<name>``, ``torchvision:<name>``) live in the same table; a name resolves to an exact entry first, then to its
prefix. Every builder returns a :class:`Classifier`: a backbone that yields pooled features, a linear head, and the
model's own :class:`Preprocess`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.models.preprocess import Preprocess


class Classifier(nn.Module):
    """``head(backbone(x))`` with the model's own preprocessing.

    ``backbone`` maps a normalised float batch to pooled features (N, feature_dim); ``head`` is a linear layer to the
    classes. Keeping the two apart lets probing, LoRA, feature distillation and export address them by name.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, preprocess: Preprocess,
                 name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.preprocess = preprocess
        self.name = name
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def set_pooling(self, pooling: str, last_n: int = 1) -> None:
        """Change how a token backbone pools (HF transformers); the head is rebuilt when the width changes."""
        if not hasattr(self.backbone, "set_pooling"):
            raise Fm2EdgeError(f"{self.name} has no token pooling to choose")
        self.backbone.set_pooling(pooling, last_n)
        from fm2edge.models.sources import _probe_dim

        dim = _probe_dim(self.backbone, self.backbone.model.config)
        if dim != self.feature_dim:
            self.feature_dim = dim
            self.head = nn.Linear(dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def describe(self) -> dict:
        """What is needed to rebuild this model around a saved state dict."""
        p = self.preprocess
        return {"name": self.name, "num_classes": self.num_classes, "feature_dim": self.feature_dim,
                "preprocess": {"size": p.size, "crop_pct": p.crop_pct, "mean": list(p.mean), "std": list(p.std),
                               "interpolation": p.interpolation},
                "backbone_options": dict(getattr(self.backbone, "options", {})),
                "parameters": sum(t.numel() for t in self.parameters())}


Builder = Callable[[str, ModelConfig, int], Classifier]


@dataclass(frozen=True)
class Entry:
    name: str
    build: Builder
    help: str
    kind: str  # "student", "backbone", "source"

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(":")


_REGISTRY: dict[str, Entry] = {}


def register(name: str, help: str, kind: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` (an exact name, or a prefix ending in ':'). Duplicates are an error."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = Entry(name, fn, help, kind)
        return fn

    return deco


def entries() -> list[Entry]:
    _ensure_loaded()
    return sorted(_REGISTRY.values(), key=lambda e: (e.kind, e.name))


def resolve(name: str) -> tuple[Entry, str]:
    """(entry, the part of the name after its prefix) for ``name``, or a clear error."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name], name.split(":", 1)[-1]
    if ":" in name:
        prefix, rest = name.split(":", 1)
        entry = _REGISTRY.get(prefix + ":")
        if entry is not None and rest:
            return entry, rest
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    prefixes = ", ".join(n for n in known if n.endswith(":"))
    exact = ", ".join(n for n in known if not n.endswith(":"))
    raise Fm2EdgeError(f"unknown model '{name}': names start with one of {prefixes} or are one of {exact}.{hint} "
                       f"See `fm2edge list`.")


def create_model(cfg: ModelConfig, num_classes: int) -> Classifier:
    """Build the model named by ``cfg.name`` with a fresh ``num_classes`` head and the config's preprocessing."""
    if num_classes < 1:
        raise Fm2EdgeError(f"a classifier needs at least one class, got {num_classes}")
    entry, rest = resolve(cfg.name)
    model = entry.build(rest, cfg, num_classes)
    model.preprocess = model.preprocess.with_overrides(cfg.image_size, cfg.crop_pct, cfg.mean, cfg.std)
    model.name = cfg.name
    return model


def _ensure_loaded() -> None:
    # Builders register themselves on import; importing here keeps `fm2edge.models.registry` cheap to import.
    from fm2edge.models import sources, students  # noqa: F401
