"""Model folders in and out: saving and loading classifiers (the format itself is
:class:`~fm2edge.models.classifier.Classifier`'s), loading from the Hugging Face Hub, a timm copy of timm students,
and uploading a run's model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fm2edge.errors import Fm2EdgeError
from fm2edge.models.classifier import MODEL_FILES, Classifier, read_meta
from fm2edge.runs import atomic_write_bytes, read_predictions

TIMM_FILE = "timm_model.safetensors"
# the graph a folder ships at its top, first found first: `fm2edge auto` puts its chosen graph (and the export.json
# that measured it) into best/ under the name export gave it
SHIPPED_GRAPHS = ("model.int8.onnx", "model.onnx")
# what `push_to_hub` uploads from a run folder: the model folder, its predictions, what `fm2edge export` wrote and a
# shipped graph
HUB_FILES = [*MODEL_FILES, "predictions.npz", "export/*", *SHIPPED_GRAPHS, "export.json"]


def shipped_graph(folder: str | Path) -> Path | None:
    """The ONNX graph a run folder ships at its top (`fm2edge auto`'s best/), or ``None`` (an ordinary run folder,
    whose exports sit in export/)."""
    return next((Path(folder) / name for name in SHIPPED_GRAPHS if (Path(folder) / name).is_file()), None)


def save_classifier(model: Classifier, folder: str | Path) -> None:
    """Write ``model.safetensors``, ``model.json`` and ``config.json`` into ``folder`` (each atomically)."""
    model.save(folder)


def load_classifier(folder: str | Path, device: str = "cpu") -> Classifier:
    """Rebuild a classifier saved by :func:`save_classifier` (weights loaded without executing code)."""
    return Classifier.load(folder, device)


def is_model_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a saved fm2edge model."""
    return read_meta(folder) is not None


def model_meta(folder: str | Path) -> dict:
    """What a model folder says of its model (architecture, classes, preprocessing, parameters)."""
    meta = read_meta(folder)
    if meta is None:
        raise Fm2EdgeError(f"'{folder}' holds no fm2edge model (model.json missing); give a run folder of "
                           f"`fm2edge train` or `fm2edge distill`")
    return meta


def class_names_of_run(path: str | Path) -> list[str]:
    """A run's class names: saved with its model, else from its test predictions (older runs)."""
    path = Path(path)
    meta = model_meta(path)
    if meta.get("class_names"):
        return [str(c) for c in meta["class_names"]]
    preds = read_predictions(path)
    if preds is not None and "class_names" in preds:
        return [str(c) for c in preds["class_names"]]
    return [str(i) for i in range(meta["num_classes"])]


def from_pretrained(name_or_path: str | Path, revision: str | None = None, token: str | None = None) -> Classifier:
    """A classifier from a run folder, or from a Hugging Face Hub repository that holds one (what ``fm2edge push``
    uploads); the same as ``Classifier.from_pretrained``, with a clear error where the hub is out of reach."""
    from fm2edge.errors import HubUnreachableError, is_offline_error

    if Path(name_or_path).is_dir():
        return Classifier.load(name_or_path)
    try:
        return Classifier.from_pretrained(str(name_or_path), revision=revision, token=token)
    except Fm2EdgeError:
        raise
    except Exception as exc:
        if is_offline_error(exc):
            raise HubUnreachableError("model", str(name_or_path), "give a local run folder") from exc
        raise Fm2EdgeError(f"cannot load '{name_or_path}': not a run folder, and the hub says "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from exc


def timm_architecture(model: Classifier) -> str | None:
    """The timm architecture of a model whose backbone is a timm network with the classifier removed, else None."""
    cfg = getattr(model.backbone, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or model.flip_average or getattr(model.backbone, "options", None):
        return None
    import timm

    arch = cfg.get("architecture")
    return arch if arch and timm.is_model(arch) and isinstance(model.head, nn.Linear) else None


def write_timm_weights(model: Classifier, folder: Path) -> dict | None:
    """For a timm student, ``folder/timm_model.safetensors`` in timm's own layout (its classifier in place of the
    head) and the ``timm.create_model`` arguments that load it; None for other models."""
    from safetensors.torch import save as to_bytes

    arch = timm_architecture(model)
    if arch is None:
        return None
    head_name = model.backbone.pretrained_cfg.get("classifier", "classifier")
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    state.update({f"{head_name}.weight": model.head.weight.detach().cpu().contiguous(),
                  f"{head_name}.bias": model.head.bias.detach().cpu().contiguous()})
    atomic_write_bytes(folder / TIMM_FILE, to_bytes(state))
    p = model.preprocess
    overlay = {"file": TIMM_FILE, "num_classes": model.num_classes, "input_size": [3, p.size, p.size],
               "mean": list(p.mean), "std": list(p.std), "crop_pct": p.crop_pct, "interpolation": p.interpolation}
    return {"architecture": arch, "num_classes": model.num_classes, "pretrained_cfg_overlay": overlay}


def push_to_hub(run: str | Path, repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Upload a run's model (weights, ``model.json``, ``config.json``, model card, predictions and whatever `fm2edge
    export` wrote: ONNX, int8 ONNX, the timm copy) to a Hub repository; returns its URL. ``api``: an ``HfApi``."""
    from huggingface_hub import HfApi

    run = Path(run)
    model_meta(run)
    if not (run / "config.json").exists():  # a run folder saved before config.json was written
        load_classifier(run).save(run)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(run), repo_id=repo_id, allow_patterns=HUB_FILES,
                      commit_message="Upload an fm2edge model")
    return f"https://huggingface.co/{repo_id}"
