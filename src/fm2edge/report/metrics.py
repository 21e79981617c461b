"""Metrics as pure functions of predictions; nothing here touches disk."""

from __future__ import annotations

import numpy as np


def accuracy(preds, labels) -> float:
    """Share of correct predictions: the one definition every stage, the report and the benchmarks use.

    ``preds`` is either class indices (N,) or class scores / logits (N, C), whose argmax is taken; NumPy arrays
    and CPU tensors both work. NaN for an empty set."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.ndim == 2:
        preds = preds.argmax(1)
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


# ---------------------------------------------------------------- "smarter mistakes"

CIFAR10_SUPERCLASSES = {"vehicle": ["airplane", "automobile", "ship", "truck"],
                        "animal": ["bird", "cat", "deer", "dog", "frog", "horse"]}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def group_of(class_names: list[str], groups: dict[str, list[str]]) -> np.ndarray:
    """Index of each class's group (-1 where a class belongs to none)."""
    index = {c: g for g, (_, members) in enumerate(groups.items()) for c in members}
    return np.array([index.get(c, -1) for c in class_names])


def superclass_error_share(preds: np.ndarray, labels: np.ndarray, class_group: np.ndarray) -> float:
    """Of the wrong predictions, the share that stays inside the true class's group (a cat taken for a dog, not
    for a truck). NaN when there are no errors."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    wrong = preds != labels
    if not wrong.any():
        return float("nan")
    g_true, g_pred = class_group[labels[wrong]], class_group[preds[wrong]]
    return float(((g_true == g_pred) & (g_true >= 0)).mean())


def error_agreement(preds: np.ndarray, teacher_preds: np.ndarray, labels: np.ndarray) -> float:
    """Where both student and teacher are wrong, how often they make the same wrong prediction; NaN when they are
    never wrong together."""
    preds, teacher_preds, labels = map(np.asarray, (preds, teacher_preds, labels))
    both = (preds != labels) & (teacher_preds != labels)
    return float((preds[both] == teacher_preds[both]).mean()) if both.any() else float("nan")


def kl_to_teacher(logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Mean KL(teacher || student) over images, in nats, at temperature 1."""
    p, q = softmax(teacher_logits), softmax(logits)
    return float((p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(axis=1).mean())


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidence vs accuracy gap, averaged over equal-width confidence bins weighted by the
    share of images in each bin."""
    probs = softmax(logits)
    conf, preds = probs.max(axis=1), probs.argmax(axis=1)
    correct = preds == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def groups_from_confusion(matrix: np.ndarray, class_names: list[str], n_groups: int = 2) -> dict[str, list[str]]:
    """Class groups for datasets without a given hierarchy: spectral clustering (scikit-learn) of the classes on
    how often a (teacher's) confusion matrix mixes them up; spectral cuts keep groups balanced where linkage
    clustering tends to split off one class."""
    from sklearn.cluster import SpectralClustering

    m = np.asarray(matrix, dtype=np.float64)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    similarity = (m + m.T) / 2
    np.fill_diagonal(similarity, 0)
    affinity = similarity / max(similarity.max(), 1e-12) + 1e-3  # connected even where classes are never confused
    np.fill_diagonal(affinity, 1.0)
    labels = SpectralClustering(n_clusters=n_groups, affinity="precomputed", random_state=0).fit_predict(affinity)
    return {f"group {g + 1}": [c for c, lab in zip(class_names, labels, strict=True) if lab == g]
            for g in range(n_groups)}
