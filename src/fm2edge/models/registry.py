"""One registry for every model, selected by name with its source prefix.

Exact names (``student:small_cnn``, ``pypi:efficientnet_lite0``) and open prefixes (``hf:<id or path>``,
``timm:<name>``, ``torchvision:<name>``) live in the same table; a name resolves to an exact entry first, then to its
prefix. Every builder returns a :class:`~fm2edge.models.classifier.Classifier`. Builders register themselves when
their module is imported; ``fm2edge.models`` imports them all (as timm's ``models/__init__.py`` does).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError

# a builder returns a Classifier (models.classifier, which imports this table to rebuild saved models)
Builder = Callable[[str, ModelConfig, int], nn.Module]
log = logging.getLogger(__name__)


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
    """Every registered model name (exact names and prefixes), by kind then name: what `fm2edge list` prints."""
    return sorted(_REGISTRY.values(), key=lambda e: (e.kind, e.name))


def resolve(name: str) -> tuple[Entry, str]:
    """(entry, the part of the name after its prefix) for ``name``, or a clear error."""
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


def create_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the model named by ``cfg.name`` with a fresh ``num_classes`` head and the config's preprocessing."""
    if num_classes < 1:
        raise Fm2EdgeError(f"a classifier needs at least one class, got {num_classes}")
    entry, rest = resolve(cfg.name)
    model = entry.build(rest, cfg, num_classes)
    model.preprocess = model.preprocess.with_overrides(cfg.image_size, cfg.crop_pct, cfg.mean, cfg.std)
    model.name = cfg.name
    if cfg.weights or cfg.init:
        from pathlib import Path

        from fm2edge.models.weights import load_weights

        if cfg.weights:
            log.info("model weights: %s", load_weights(model, cfg.weights))
        if cfg.init:
            saved = Path(cfg.init) / "model.safetensors"
            if not saved.exists():
                raise Fm2EdgeError(f"--model.init '{cfg.init}' is not a run folder with a trained model "
                                   f"(model.safetensors missing)")
            log.info("starting from %s", load_weights(model, saved, skip_head=None))
    return model
