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


HUB_FILES = ["model.safetensors", "model.json", "README.md", "predictions.npz", "export/*"]


def from_pretrained(name_or_path: str | Path, revision: str | None = None, token: str | None = None) -> Classifier:
    """A classifier from a run folder, or from a Hugging Face Hub repository that holds one (what
    ``--export.push_to_hub`` uploads: model.safetensors, model.json, the model card)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        from fm2edge.errors import HubUnreachableError, is_offline_error

        try:
            folder = Path(snapshot_download(str(name_or_path), revision=revision, token=token,
                                            allow_patterns=HUB_FILES))
        except Exception as exc:
            if is_offline_error(exc):
                raise HubUnreachableError("model", str(name_or_path), "give a local run folder") from exc
            raise Fm2EdgeError(f"cannot load '{name_or_path}': not a run folder, and the hub says "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from exc
    return load_classifier(folder)


def push_to_hub(run: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a run's model (weights, model.json, model card, exported ONNX) to a Hub repository; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(run), repo_id=repo_id, allow_patterns=HUB_FILES,
                      commit_message="Upload an fm2edge model")
    return f"https://huggingface.co/{repo_id}"
