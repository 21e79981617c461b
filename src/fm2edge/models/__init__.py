"""Backbones, students and heads behind one registry (see :mod:`fm2edge.models.registry`)."""

from fm2edge.models.preprocess import Preprocess
from fm2edge.models.registry import Classifier, create_model, entries, register, resolve

__all__ = ["Classifier", "Preprocess", "create_model", "entries", "register", "resolve"]
