"""Backbones, students and heads behind one registry (see :mod:`fm2edge.models.registry`).

Importing the builder modules here registers every model, as timm's ``models/__init__.py`` does.
"""

from fm2edge.models import files, sources, students  # noqa: F401  (registration)
from fm2edge.models.classifier import Classifier
from fm2edge.models.preprocess import Preprocess
from fm2edge.models.registry import create_model, entries, register, resolve

__all__ = ["Classifier", "Preprocess", "create_model", "entries", "register", "resolve"]
