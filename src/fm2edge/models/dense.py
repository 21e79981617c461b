"""A backbone's pooled features and its last feature map from one forward pass, for dense feature matching.

- transformers models: their own last hidden state (a convolutional map, or patch tokens laid on their grid);
- timm models: ``forward_features`` (a map, or tokens after the prefix tokens) and ``forward_head(pre_logits=True)``;
- any other convolutional network (fm2edge students, torchvision): the last 4-D output with more than one position
  that a submodule computes before the pooled features, caught with forward hooks, so no architecture needs code of
  its own here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fm2edge.errors import Fm2EdgeError
from fm2edge.models.classifier import Classifier


def tokens_to_map(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """(N, prefix + h*w, C) tokens -> (N, C, h, w), dropping the class / register tokens."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise Fm2EdgeError(f"{patches.shape[1]} patch tokens do not form a square grid; dense matching needs one")
    return patches.transpose(1, 2).reshape(len(tokens), -1, side, side)


def last_map_by_hooks(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled features, the last (N, C, h, w) output with h * w > 1 of any submodule), by forward hooks."""
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            seen.append(output)

    handles = [m.register_forward_hook(keep) for m in backbone.modules() if m is not backbone]
    try:
        pooled = backbone(x)
    finally:
        for h in handles:
            h.remove()
    return pooled, seen[-1] if seen else None


def pooled_and_map(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s pooled features (N, D) and last feature map (N, C, h, w) on normalised inputs ``x``."""
    backbone = model.backbone
    if hasattr(backbone, "forward_with_map"):  # transformers models (HFBackbone)
        return backbone.forward_with_map(x)
    if hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head"):  # timm
        feats = backbone.forward_features(x)
        pooled = backbone.forward_head(feats, pre_logits=True)
        if feats.ndim == 3:
            feats = tokens_to_map(feats, int(getattr(backbone, "num_prefix_tokens", 0)))
        return pooled, feats
    pooled, fmap = last_map_by_hooks(backbone, x)
    if fmap is None:
        raise Fm2EdgeError(f"{model.name} shows no feature map (a frozen file or a network without spatial "
                           f"layers); match pooled features only with --pretrain.dense 0")
    return pooled, fmap
