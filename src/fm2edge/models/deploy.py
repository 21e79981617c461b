"""A classifier as it is shipped: uint8 RGB images in, class probabilities out, its normalisation inside.

An app on a device then only has to decode an image and resize it to the model's input size; the mean, the standard
deviation, the channel order and the softmax travel inside the graph instead of being re-implemented by hand.
"""

from __future__ import annotations

import torch
from torch import nn

from fm2edge.models.classifier import Classifier


class ImageClassifier(nn.Module):
    """``softmax(model(normalise(images)))`` for uint8 images laid out (N, H, W, 3), RGB, at the model's input
    size (resize and crop with :meth:`~fm2edge.models.preprocess.Preprocess.resize` first)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model.eval()
        p = model.preprocess
        self.size = p.size
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std): one subtraction and one division on the uint8 values
        self.register_buffer("mean", 255.0 * torch.tensor(p.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", 255.0 * torch.tensor(p.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) / self.std).float().softmax(-1)

    def describe_input(self) -> dict:
        """What the graph takes, for export.json and the printed summary."""
        p = self.model.preprocess
        return {"name": "images", "dtype": "uint8", "shape": ["batch", self.size, self.size, 3],
                "layout": "NHWC, RGB, values 0-255",
                "resize": f"shortest edge to {p.resize_size()} px ({p.interpolation}, antialiased), centre crop "
                          f"{self.size} x {self.size}: done before the graph (`Preprocess.resize`)",
                "inside": f"normalise with mean {list(p.mean)} and std {list(p.std)} (on a 0-1 scale), the model, "
                          f"softmax",
                "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", self.model.num_classes]}}
