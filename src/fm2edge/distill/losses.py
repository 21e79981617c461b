"""Distillation losses, one ``nn.Module`` per method, each taking explicit tensors.

Logit methods take (student_logits, teacher_logits[, labels]); feature and relation methods take feature tensors.
Every module returns a scalar loss; the task that combines them (with weights from config) logs the parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UNLABELLED = -1  # the label of an image distilled on without a label (soft targets only)


def as_targets(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(label distributions (N, C), which rows have one) from class indices (``UNLABELLED`` rows have none) or
    from distributions already (a mixed view's, whose all-zero rows have none)."""
    if labels.dim() == 2:
        probs = labels.float()
        return probs, probs.sum(1) > 0
    known = labels != UNLABELLED
    return F.one_hot(labels.clamp_min(0), num_classes).float() * known.float()[:, None], known


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(teacher_T || student_T) x T^2."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1) * temperature**2


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T), batch mean, scaled by T^2 so gradients keep their size as T changes."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


class KDLoss(nn.Module):
    """Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", in its usual form:

    ``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.
    Rows labelled ``UNLABELLED`` (and every row when ``labels`` is None) get the soft term alone, with weight 1;
    on a fully labelled batch this is the formula above exactly. ``labels`` may also be label distributions (a
    mixed image's), and then the hard term is the cross-entropy with that distribution.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"KD needs temperature > 0 and alpha in [0, 1], got T={temperature}, alpha={alpha}")
        self.temperature, self.alpha = temperature, alpha

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        soft = _kl_rows(teacher_logits, student_logits, self.temperature)
        if labels is None:
            return soft.mean()
        targets, known = as_targets(labels, student_logits.shape[1])
        hard = F.cross_entropy(student_logits.float(), targets, reduction="none")
        return torch.where(known, self.alpha * hard + (1 - self.alpha) * soft, soft).mean()


class MaskedCrossEntropy(nn.Module):
    """Cross-entropy over the labelled rows (zero, with a gradient path, when the batch has none): the labels'
    own loss beside a distillation loss. ``labels`` may be class indices or label distributions."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets, known = as_targets(labels, logits.shape[1])
        if not bool(known.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[known].float(), targets[known])


class DKD(nn.Module):
    """Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR): KD split into target-class (TCKD) and
    non-target-class (NCKD) terms, weighted ``alpha * TCKD + beta * NCKD``; both scaled by T^2. An unlabelled row
    takes the teacher's top class as its target, a mixed image its larger label share. As in the paper's code, the
    loss is ramped up linearly over the first ``warmup_steps`` training calls (one per batch, counted in a buffer
    so a resumed run continues the ramp; with gradient accumulation several calls make one optimiser step, and the
    ramp given in epochs spans those epochs' batches)."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_steps: int = 0) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature, self.warmup_steps = alpha, beta, temperature, warmup_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        s, te = student_logits.float(), teacher_logits.float()
        targets, known = as_targets(labels, s.shape[1])
        labels = torch.where(known, targets.argmax(1), te.argmax(1))
        gt = F.one_hot(labels, s.shape[1]).bool()
        p_s, p_t = F.softmax(s / t, dim=1), F.softmax(te / t, dim=1)
        # binary distributions (target, all non-targets)
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-12)
        tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * t**2
        # distributions over the non-target classes only (the target masked out before the softmax)
        mask = gt.float() * 1000.0
        nckd = F.kl_div(F.log_softmax(s / t - mask, dim=1), F.softmax(te / t - mask, dim=1),
                        reduction="batchmean") * t**2
        ramp = 1.0
        if self.warmup_steps:
            ramp = (self.step.float() + 1).clamp(max=self.warmup_steps) / self.warmup_steps
            if self.training:
                self.step += 1
        return ramp * (self.alpha * tckd + self.beta * nckd)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(nn.Module):
    """Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (NeurIPS): match the *relations* of
    predictions rather than their values: ``T^2 * (beta * (1 - inter) + gamma * (1 - intra))`` where inter is the
    mean Pearson correlation of each image's class distribution and intra that of each class across the batch."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        y_s = F.softmax(student_logits.float() / t, dim=1)
        y_t = F.softmax(teacher_logits.float() / t, dim=1)
        inter = 1 - _pearson_rows(y_s, y_t).mean()
        intra = 1 - _pearson_rows(y_s.T, y_t.T).mean()
        return t**2 * (self.beta * inter + self.gamma * intra)


class RKD(nn.Module):
    """Park et al. 2019, "Relational Knowledge Distillation" (CVPR): the student keeps the teacher's pairwise
    distances (normalised by their mean) and triplet angles, each compared with the Huber loss; the paper's weights
    are 25 (distance) and 50 (angle). Features may differ in width: only relations are compared."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    @staticmethod
    def _distances(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        mean = d[d > 0].mean() if (d > 0).any() else d.new_tensor(1.0)
        return d / mean

    @staticmethod
    def _angles(x: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # diff[i, j] = unit(x_j - x_i)
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)  # cos of angle j-i-k for every triplet

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        s = student_features.float().flatten(1)
        t = teacher_features.float().flatten(1)
        with torch.no_grad():
            t_d, t_a = self._distances(t), self._angles(t)
        loss = self.distance_weight * F.smooth_l1_loss(self._distances(s), t_d)
        return loss + self.angle_weight * F.smooth_l1_loss(self._angles(s), t_a)


class FeatureDistillation(nn.Module):
    """Feature-based distillation (FitNets, Romero et al. 2015): project the student's features
    onto the teacher's with a learned projector, ``L = mean || F_teacher - proj(F_student) ||^2``.

    Pooled vectors (N, D) use a linear projector; feature maps (N, C, H, W) a 1x1 convolution, with the student's
    map resized to the teacher's spatial size. The projector belongs to the distillation task and is not part of
    the exported student.
    """

    def __init__(self, student_dim: int, teacher_dim: int, maps: bool = False) -> None:
        super().__init__()
        self.maps = maps
        self.projector = (nn.Conv2d(student_dim, teacher_dim, 1, bias=False) if maps
                          else nn.Linear(student_dim, teacher_dim, bias=False))

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        s = student_features
        if self.maps and s.shape[-2:] != teacher_features.shape[-2:]:
            s = F.interpolate(s, size=teacher_features.shape[-2:], mode="bilinear", align_corners=False)
        return F.mse_loss(self.projector(s).float(), teacher_features.float())


# ---------------------------------------------------------------- label-free feature matching (`fm2edge pretrain`)


def embedding_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Batch mean of ``1 - cos(s, t)`` ("cosine") or of ``|| s/|s| - t/|t| ||^2`` ("l2", BYOL's normalised L2,
    which is 2 - 2 cos) over the last dimension; any leading dimensions are averaged too."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    if kind == "cosine":
        return (1 - cos).mean()
    if kind == "l2":
        s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
        return (s - t).pow(2).sum(-1).mean()
    raise ValueError(f"unknown embedding distance '{kind}'; use cosine or l2")


def to_grid(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """A feature map (N, C, h, w) on a ``grid`` x ``grid`` grid: averaged down when larger, bilinear up when
    smaller."""
    if fmap.shape[-2:] == (grid, grid):
        return fmap
    if fmap.shape[-2] >= grid and fmap.shape[-1] >= grid:
        return F.adaptive_avg_pool2d(fmap, grid)
    return F.interpolate(fmap, size=(grid, grid), mode="bilinear", align_corners=False)


class EmbeddingMatch(nn.Module):
    """The student's pooled features, through a projector (Linear-BN-GELU-Linear, as in LightlyTrain's and
    DINO's heads), matched to the teacher's pooled embedding by :func:`embedding_distance`."""

    def __init__(self, student_dim: int, teacher_dim: int, kind: str = "cosine", hidden: int = 1024) -> None:
        super().__init__()
        self.kind = kind
        self.projector = nn.Sequential(nn.Linear(student_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                       nn.Linear(hidden, teacher_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return embedding_distance(self.projector(student), teacher, self.kind)


class DenseMatch(nn.Module):
    """The student's last feature map through a 1x1 convolution onto the teacher's channels, both on one
    ``grid`` x ``grid`` grid (:func:`to_grid`), matched position by position by :func:`embedding_distance` over
    channels."""

    def __init__(self, student_channels: int, teacher_channels: int, grid: int, kind: str = "cosine") -> None:
        super().__init__()
        self.grid, self.kind = grid, kind
        self.projector = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        s = self.projector(to_grid(student_map, self.grid))  # a 1x1 conv commutes with the resize: resize first
        t = to_grid(teacher_map, self.grid)
        return embedding_distance(s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2), self.kind)
