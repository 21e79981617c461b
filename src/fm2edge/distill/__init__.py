"""Distillation: one small loss module per method (losses.py); teachers and tasks build on them."""

from fm2edge.distill.losses import DIST, DKD, RKD, FeatureDistillation, KDLoss, MaskedCrossEntropy

__all__ = ["DIST", "DKD", "RKD", "FeatureDistillation", "KDLoss", "MaskedCrossEntropy"]
