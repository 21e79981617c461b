"""Metrics as pure functions of predictions; nothing here touches disk."""

from __future__ import annotations

import numpy as np


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else float("nan")


def confusion(preds: np.ndarray, labels: np.ndarray, num_classes: int, normalize: bool = False) -> np.ndarray:
    """Rows are true classes, columns predicted; ``normalize`` divides each row by its count."""
    m = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    return m


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    m = confusion(preds, labels, num_classes)
    return np.diag(m) / np.maximum(m.sum(axis=1), 1)
