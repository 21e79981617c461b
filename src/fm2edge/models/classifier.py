"""The one model type every stage shares: a backbone that yields pooled features, a linear head, and the model's own
preprocessing."""

from __future__ import annotations

import torch
from torch import nn

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
        # test-time flip: features (hence logits, the head being linear) averaged over each image and its mirror;
        # set at run time (a teacher's option), never saved with the weights
        self.flip_average = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
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
        return self.head(self.features(x))

    def describe(self) -> dict:
        """What is needed to rebuild this model around a saved state dict."""
        p = self.preprocess
        return {"name": self.name, "num_classes": self.num_classes, "feature_dim": self.feature_dim,
                "preprocess": {"size": p.size, "crop_pct": p.crop_pct, "mean": list(p.mean), "std": list(p.std),
                               "interpolation": p.interpolation},
                "backbone_options": dict(getattr(self.backbone, "options", {})),
                "parameters": sum(t.numel() for t in self.parameters())}
