"""Each model's own input preparation, applied to uint8 batches on the model's device.

The seed converts and normalises every image on the CPU, one PIL image at a time; here a whole uint8 batch is
resized, cropped and normalised with tensor ops where the model runs. Teacher and student each keep their own
``Preprocess`` so a student never silently inherits the teacher's resolution or statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shortest edge to ``size / crop_pct``, centre-crop ``size`` x ``size``, scale to [0, 1], normalise."""

    size: int = 224
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def with_overrides(self, size: int | None = None, crop_pct: float | None = None,
                       mean: list[float] | None = None, std: list[float] | None = None) -> Preprocess:
        changes = {k: v for k, v in {"size": size, "crop_pct": crop_pct}.items() if v is not None}
        if mean is not None:
            changes["mean"] = tuple(float(m) for m in mean)
        if std is not None:
            changes["std"] = tuple(float(s) for s in std)
        return replace(self, **changes)

    def resize_size(self) -> int:
        return int(math.floor(self.size / self.crop_pct))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 3, size, size), normalised, from the pixels :meth:`resize` gives: rounded
        to uint8 as the deployed graphs take them (and the augmented views, and the hub's image processors), so a
        figure measured here is the exported graph's. Kept in float, a fine-tuned Lite0 scored 96.30% on 135
        upscaled 8 x 8 digits where its graph, fed the rounded pixels, scored 94.07%."""
        return self.normalise(self.resize(images))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size): the resize and crop alone, rounded to pixels; what a
        deployed graph that takes uint8 images of the model's size expects."""
        return self.scale(images).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 in [0, 1], resized (shortest edge to size / crop_pct) and centre-cropped."""
        if images.dtype != torch.uint8:
            raise TypeError(f"Preprocess expects uint8 images, got {images.dtype}")
        x = images.float().div_(255.0)
        h, w = x.shape[-2:]
        short = self.resize_size()
        if min(h, w) != short or (h != w and (h, w) != (self.size, self.size)):
            scale = short / min(h, w)
            nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
            # antialias=True also when upsampling: it selects the PIL-compatible kernels (bicubic a=-0.5) that
            # PIL and the Hugging Face image processors use; without it torch's bicubic uses a=-0.75.
            x = F.interpolate(x, size=(nh, nw), mode=mode, align_corners=False if mode != "nearest" else None,
                              antialias=mode != "nearest")
            if mode == "bicubic":
                x = x.clamp_(0.0, 1.0)
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            top, left = (h - self.size) // 2, (w - self.size) // 2
            x = x[..., top:top + self.size, left:left + self.size]
        return x

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """float [0, 1] -> normalised with this model's mean and std."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """An augmented view already rendered at ``size`` (uint8) -> normalised float, without resizing or
        cropping it again."""
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            raise ValueError(f"a view for this model must be {self.size} px, got {tuple(images.shape[-2:])}")
        return self.standardise(images.float().div_(255.0))
