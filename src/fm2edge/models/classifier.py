"""The one model type every stage shares: a backbone that yields pooled features, a linear head, and the model's own
preprocessing; and the one place that knows its saved form (a model folder the Hugging Face Hub understands)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.models.preprocess import Preprocess
from fm2edge.models.registry import create_model
from fm2edge.runs import atomic_write_json

DOCS_URL = "https://github.com/fm2edge/fm2edge"
# What a model folder holds that `from_pretrained` reads (the rest of a run folder stays home).
MODEL_FILES = ["model.safetensors", "model.json", "config.json", "README.md"]


class Classifier(nn.Module, PyTorchModelHubMixin, library_name="fm2edge", tags=["fm2edge", "image-classification"],
                 docs_url=DOCS_URL):
    """``head(backbone(x))`` with the model's own preprocessing.

    ``backbone`` maps a normalised float batch to pooled features (N, feature_dim); ``head`` is a linear layer to the
    classes. Keeping the two apart lets probing, LoRA, feature distillation and export address them by name.

    Saved, it is a folder (``model.safetensors``, ``model.json``, and a ``config.json`` that rebuilds it: architecture,
    classes, preprocessing) that ``huggingface_hub``'s ``PyTorchModelHubMixin`` reads and writes:
    ``model.save_pretrained(folder)``, ``Classifier.from_pretrained("user/repo" or folder)``.
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
        # test-time flip: features (hence logits, the head being linear) averaged over each image and its mirror;
        # set at run time (a teacher's option), never saved with the weights
        self.flip_average = False
        self.class_names: list[str] | None = None  # set from the data before a model is saved

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, feature_dim) of a normalised float batch (averaged with the mirror image when
        ``flip_average`` is set)."""
        if self.flip_average:
            return (self.backbone(x) + self.backbone(x.flip(-1))) / 2
        return self.backbone(x)

    def set_pooling(self, pooling: str, last_n: int = 1) -> None:
        """Change how a token backbone pools (HF transformers); the head is rebuilt when the width changes."""
        if not hasattr(self.backbone, "set_pooling"):
            raise Fm2EdgeError(f"{self.name} has no token pooling to choose")
        self.backbone.set_pooling(pooling, last_n)
        dim = self.backbone.out_dim
        if dim != self.feature_dim:
            self.feature_dim = dim
            self.head = nn.Linear(dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of a normalised float batch (``self.preprocess`` makes one from uint8 images)."""
        return self.head(self.features(x))

    def describe(self) -> dict:
        """What is needed to rebuild this model around a saved state dict."""
        p = self.preprocess
        return {"name": self.name, "num_classes": self.num_classes, "feature_dim": self.feature_dim,
                "preprocess": {"size": p.size, "crop_pct": p.crop_pct, "mean": list(p.mean), "std": list(p.std),
                               "interpolation": p.interpolation},
                "backbone_options": dict(getattr(self.backbone, "options", {})),
                "build_options": dict(getattr(self.backbone, "build_options", {})),
                "parameters": sum(t.numel() for t in self.parameters())}

    def hub_config(self) -> dict:
        """``config.json``: what rebuilds this model around its weights, in the Hugging Face style (the model
        name under ``architecture``, ``id2label`` for the classes) plus :meth:`describe`."""
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {"library_name": "fm2edge", "architecture": self.name, **self.describe(), "class_names": names,
                "id2label": {str(i): n for i, n in enumerate(names)}}

    def save(self, folder: str | Path) -> None:
        """Write ``model.safetensors``, ``model.json`` and ``config.json`` into ``folder`` (each atomically)."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".model.safetensors.tmp"
        save_model(self, str(tmp))
        tmp.replace(folder / "model.safetensors")
        atomic_write_json(folder / "model.json", {**self.describe(), "class_names": self.class_names})
        atomic_write_json(folder / "config.json", self.hub_config())

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Classifier:
        """Rebuild a model saved by :meth:`save` (weights loaded without executing code)."""
        from safetensors.torch import load_model

        folder = Path(folder)
        meta = read_meta(folder)
        if meta is None:
            raise Fm2EdgeError(f"'{folder}' holds no fm2edge model (model.json missing); give a run folder of "
                               f"`fm2edge train` or `fm2edge distill`")
        # the input size goes to the constructor too: a ViT trained at 64 px has 17 position embeddings, not 197;
        # and a student's stem as saved (folders from before students had a sized stem say nothing: stride 1)
        stride = meta.get("build_options", {}).get("stem_stride", 1) if meta["name"].startswith("student:") else None
        model = create_model(ModelConfig(name=meta["name"], image_size=meta["preprocess"]["size"],
                                         stem_stride=stride), meta["num_classes"])
        if meta.get("backbone_options"):
            model.set_pooling(**meta["backbone_options"])
        model.preprocess = Preprocess(**{**meta["preprocess"], "mean": tuple(meta["preprocess"]["mean"]),
                                         "std": tuple(meta["preprocess"]["std"])})
        model.class_names = meta.get("class_names")
        try:
            load_model(model, str(folder / "model.safetensors"), device=device)
        except RuntimeError as exc:
            raise Fm2EdgeError(f"the weights in '{folder}' do not fit {meta['name']}: "
                               f"{str(exc).splitlines()[0][:200]}") from exc
        return model.eval()

    # ---- huggingface_hub.PyTorchModelHubMixin: save_pretrained / from_pretrained / push_to_hub go through these

    def _save_pretrained(self, save_directory: Path) -> None:
        self.save(save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None,
                         force_download: bool = False, local_files_only: bool = False, token=None,
                         map_location: str = "cpu", **config) -> Classifier:
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                            force_download=force_download, local_files_only=local_files_only,
                                            allow_patterns=MODEL_FILES))
        return cls.load(folder, device=map_location)


def read_meta(folder: str | Path) -> dict | None:
    """What a model folder says of its model (``model.json``), or None where it holds none."""
    path = Path(folder) / "model.json"
    return json.loads(path.read_text()) if path.is_file() else None
