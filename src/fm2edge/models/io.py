"""Saving and loading fm2edge classifiers: weights as safetensors, architecture and preprocessing as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.models.classifier import Classifier
from fm2edge.models.preprocess import Preprocess
from fm2edge.models.registry import create_model
from fm2edge.runs import atomic_write_text


def save_classifier(model: Classifier, folder: str | Path) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (each atomically)."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_model(model, str(tmp))
    tmp.replace(folder / "model.safetensors")
    atomic_write_text(folder / "model.json", json.dumps(model.describe(), indent=2))


def load_classifier(folder: str | Path, device: str = "cpu") -> Classifier:
    """Rebuild a classifier saved by :func:`save_classifier` (weights loaded without executing code)."""
    from safetensors.torch import load_model

    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.exists():
        raise Fm2EdgeError(f"'{folder}' holds no fm2edge model (model.json missing); give a run folder of "
                           f"`fm2edge train` or `fm2edge distill`")
    meta = json.loads(meta_path.read_text())
    # the input size goes to the constructor too: a ViT trained at 64 px has 17 position embeddings, not 197
    model = create_model(ModelConfig(name=meta["name"], image_size=meta["preprocess"]["size"]), meta["num_classes"])
    if meta.get("backbone_options"):
        model.set_pooling(**meta["backbone_options"])
    model.preprocess = Preprocess(**{**meta["preprocess"], "mean": tuple(meta["preprocess"]["mean"]),
                                     "std": tuple(meta["preprocess"]["std"])})
    try:
        load_model(model, str(folder / "model.safetensors"), device=device)
    except RuntimeError as exc:
        raise Fm2EdgeError(f"the weights in '{folder}' do not fit {meta['name']}: {str(exc).splitlines()[0][:200]}") \
            from exc
    return model.eval()


def class_names_of_run(path: str | Path) -> list[str]:
    """A run's class names, from its saved test predictions."""
    import numpy as np

    path = Path(path)
    preds = path / "predictions.npz"
    if preds.exists():
        with np.load(preds, allow_pickle=False) as f:
            if "class_names" in f:
                return [str(c) for c in f["class_names"]]
    meta = json.loads((path / "model.json").read_text())
    return [str(i) for i in range(meta["num_classes"])]
