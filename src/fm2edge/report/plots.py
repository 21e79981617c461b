"""Plots as pure functions: data in, ``matplotlib.figure.Figure`` out. Only :mod:`fm2edge.report.write` saves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curves(history: Sequence[dict], title: str) -> Figure:
    """Training loss and train/test accuracy per epoch."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", color="tab:red")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], marker="o", label="train (running)")
    ax_acc.plot(epochs, [100 * h["test_acc"] for h in history], marker="s", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return fig


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """A row-normalised confusion matrix with class names and per-cell percentages."""
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig = Figure(figsize=(size, size * 0.85), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(100 * matrix, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = 100 * matrix[i, j]
                if v >= 0.5:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if v > 50 else "black")
    fig.colorbar(im, ax=ax, label="share of true class (%)")
    return fig
