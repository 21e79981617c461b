"""Plots as pure functions: data in, ``matplotlib.figure.Figure`` out. Only :mod:`fm2edge.report.write` saves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curves(history: Sequence[dict], title: str, selected_epoch: int | None = None) -> Figure:
    """Training loss (with each of its parts, ``loss_<name>``, when there are several), and running train accuracy
    and validation accuracy per epoch; a dashed line marks the epoch whose weights were kept. Training without
    labels (pretraining) has the loss panel alone."""
    scored = any(h.get("val_acc") is not None or h.get("train_acc") == h.get("train_acc") for h in history)
    fig = Figure(figsize=(10, 4) if scored else (6, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2) if scored else (fig.subplots(), None)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", color="tab:red", label="total (weighted)")
    parts = [k for k in (history[0] if history else {}) if k.startswith("loss_")]
    for name in parts:
        ax_loss.plot(epochs, [h.get(name) for h in history], marker=".", linewidth=1, label=name[len("loss_"):])
    if parts:
        ax_loss.legend(fontsize=8)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    if ax_acc is None:
        ax_loss.grid(alpha=0.3)
        ax_loss.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(title)
        return fig
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], marker="o", label="train (running)")
    checked = [h for h in history if h.get("val_acc") is not None]
    averaged = any("val_acc_raw" in h for h in checked)  # --train.ema: the average is scored, the live weights too
    ax_acc.plot([h["epoch"] for h in checked], [100 * h["val_acc"] for h in checked], marker="s",
                label="validation (weight average)" if averaged else "validation")
    if averaged:
        ax_acc.plot([h["epoch"] for h in checked], [100 * h["val_acc_raw"] for h in checked], marker=".",
                    linewidth=1, linestyle=":", label="validation (live weights)")
    if selected_epoch is not None:
        for ax in (ax_loss, ax_acc):
            ax.axvline(selected_epoch, color="0.4", linestyle="--", linewidth=1)
        ax_acc.plot([], [], color="0.4", linestyle="--", label=f"kept: epoch {selected_epoch}")
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


def tsne(xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """A 2-D embedding scatter, one colour per class, class names in the legend."""
    fig = Figure(figsize=(9, 7.5), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for c, name in enumerate(class_names):
        m = labels == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, color=cmap(c % cmap.N), label=f"{name} ({m.sum()})")
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title=title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2.5, frameon=False, title="class (n)")
    return fig


def label_efficiency(curves: dict[str, dict[int, float]], title: str) -> Figure:
    """Test accuracy (%) against labelled images per class (log scale), one line per method."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for (name, points), marker in zip(curves.items(), "os^Dv", strict=False):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker=marker, label=name)
    ax.set_xscale("log")
    ticks = sorted({x for points in curves.values() for x in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlabel="labelled images per class (log scale)", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def bars(values: dict[str, float], xlabel: str, ylabel: str, title: str) -> Figure:
    """One bar per entry, its value printed on top."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    names = list(values)
    rects = ax.bar(names, [values[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(rects, fmt="%.1f")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_ylim(0, max(100.0, max(values.values()) * 1.1) if values else 100)
    return fig


def soup_steps(steps: Sequence[dict], title: str, uniform: bool = False) -> Figure:
    """A model soup, run by run in the order tried: each run's validation accuracy alone (bars), the soup's with it
    (dots: filled where the run was kept, hollow where it was left out) and the soup so far (a step line). A
    ``uniform`` soup is not built step by step: one line gives the soup of all its runs (a step line would put the
    whole soup's accuracy at the first run, as if that run alone had scored it)."""
    fig = Figure(figsize=(max(6, 1.1 * len(steps) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(steps))
    alone = [100 * s["alone"] for s in steps]
    trial = np.array([100 * s["soup"] for s in steps])
    kept = np.array([s["kept"] for s in steps])
    ax.bar(x, alone, color="lightgray", label="the run alone")
    if uniform:
        ax.axhline(trial[0], color="tab:blue", linewidth=1.5, label=f"the soup of all {len(steps)} runs")
    else:
        so_far = np.maximum.accumulate(np.where(kept, trial, -np.inf))
        ax.step(x, so_far, where="post", color="tab:blue", linewidth=1.5, label="the soup so far")
        ax.scatter(x[kept], trial[kept], color="tab:blue", zorder=3, label="soup with it (kept)")
        if not kept.all():
            ax.scatter(x[~kept], trial[~kept], facecolor="white", edgecolor="tab:blue", zorder=3,
                       label="soup with it (left out)")
    ax.set_xticks(x, unique_tails([s["run"] for s in steps]), rotation=30, ha="right", fontsize=8)
    low = min(alone + trial.tolist())
    ax.set_ylim(max(0.0, low - 5), min(101.0, max(alone + trial.tolist()) + 2))  # room for a dot at 100%
    ax.set(ylabel="validation accuracy (%)", title=title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def unique_tails(paths: Sequence[str]) -> list[str]:
    """Each path's shortest tail (at least two parts) that no other path shares: ``t20/teacher/full`` beside
    ``study/teacher/full``."""
    parts = [[p for p in str(path).replace("\\", "/").split("/") if p] for path in paths]
    out = []
    for mine in parts:
        k = min(2, len(mine))
        while k < len(mine) and sum(other[-k:] == mine[-k:] for other in parts) > 1:
            k += 1
        out.append("/".join(mine[-k:]))
    return out


def finetune_comparison(rows: Sequence[dict], title: str) -> Figure:
    """Linear vs LoRA vs full: test accuracy after training (validation accuracy before, where measured),
    trainable parameters, training time."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    names = [r["mode"] for r in rows]
    colours = [f"C{i}" for i in range(len(rows))]
    after = [100 * r["test_acc"] for r in rows]
    rects = axes[0].bar(names, after, color=colours)
    axes[0].bar_label(rects, fmt="%.1f")
    before = [(i, 100 * r["val_acc_before"]) for i, r in enumerate(rows) if r.get("val_acc_before") is not None]
    if before:
        axes[0].scatter([i for i, _ in before], [b for _, b in before], marker="_", s=600, color="k", zorder=3,
                        label="before training (validation)")
        axes[0].legend(loc="upper left", fontsize=8)
    axes[0].set(ylabel="test accuracy (%)", ylim=(0, 115), title="accuracy after training")
    rects = axes[1].bar(names, [r["trainable"] for r in rows], color=colours)
    axes[1].bar_label(rects, labels=[f"{r['trainable']:,}\n{100 * r['trainable'] / r['total']:.2f}%" for r in rows],
                      fontsize=8)
    axes[1].set(yscale="log", ylabel="trainable parameters (log)", title="trainable parameters")
    axes[1].set_ylim(top=max(r["total"] for r in rows) * 20)
    rects = axes[2].bar(names, [r["train_seconds"] for r in rows], color=colours)
    axes[2].bar_label(rects, fmt="%.0f s")
    axes[2].set(ylabel="seconds", title="training time")
    fig.suptitle(title)
    return fig


def confusion_pair(a: np.ndarray, b: np.ndarray, class_names: Sequence[str], names: tuple[str, str],
                   title: str) -> Figure:
    """Two row-normalised confusion matrices side by side and their difference (b - a), in percentage points."""
    n = len(class_names)
    fig = Figure(figsize=(max(13.0, 1.5 * n + 4), max(4.5, 0.45 * n + 1.5)), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, m, name in ((axes[0], a, names[0]), (axes[1], b, names[1])):
        im = ax.imshow(100 * m, cmap="Blues", vmin=0, vmax=100)
        ax.set_title(name)
    fig.colorbar(im, ax=axes[:2], label="share of true class (%)", shrink=0.8)
    diff = 100 * (b - a)
    lim = max(1.0, float(np.abs(diff).max()))
    im_d = axes[2].imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim)
    axes[2].set_title(f"{names[1]} minus {names[0]}")
    fig.colorbar(im_d, ax=axes[2], label="percentage points", shrink=0.8)
    for ax in axes:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        ax.set(xlabel="predicted class", ylabel="true class")
    fig.suptitle(title)
    return fig


def pareto(points: Sequence[dict], x_key: str, xlabel: str, title: str) -> Figure:
    """Test accuracy against a cost (latency, parameters) on a log axis, one labelled point per model, with the
    Pareto front (no other model both cheaper and more accurate) drawn as a line."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    pts = sorted(points, key=lambda p: (p[x_key], -p["test_acc"]))  # among equal costs, only the best is on the front
    labels: dict[tuple, list[str]] = {}  # models at one spot (same size and accuracy) share one label
    for i, p in enumerate(pts):
        ax.scatter(p[x_key], 100 * p["test_acc"], s=50, color=p.get("colour", f"C{i}"), zorder=3)
        labels.setdefault((p[x_key], round(100 * p["test_acc"], 2)), []).append(p["label"])
    right = max(p[x_key] for p in pts) if pts else 0
    for (x, y), names in labels.items():  # labels of the costliest points go to their left, inside the axes
        left = x == right and len(labels) > 1
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(-6 if left else 6, 4), fontsize=8,
                    ha="right" if left else "left")
    front, best = [], -1.0
    for p in pts:
        if p["test_acc"] > best:
            front.append(p)
            best = p["test_acc"]
    ax.plot([p[x_key] for p in front], [100 * p["test_acc"] for p in front], "--", color="grey", alpha=0.6,
            label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.3g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.3, y=0.2)
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    return fig


def accuracy_vs_latency(points: Sequence[dict], budget_ms: float | None, chosen: dict | None = None,
                        teacher_acc: float | None = None, score: str = "val_acc",
                        score_label: str = "validation accuracy (%)") -> Figure:
    """Validation accuracy (or the ``score`` the choice was made on, e.g. agreement with the teacher on held-out
    images) against measured batch-1 latency of each (model, precision, int8 recipe) of `fm2edge auto`: a colour per
    candidate, a marker per precision and recipe (no labels to overlap where graphs tie), the latency budget as a
    vertical line, the teacher's validation accuracy as a horizontal one, the choice ringed."""
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.subplots()
    candidates = list(dict.fromkeys(p["candidate"] for p in points))
    colours = {c: f"C{i % 10}" for i, c in enumerate(candidates)}
    kinds = sorted({(p["precision"], p.get("int8_recipe") or "") for p in points}, key=lambda k: (k[0] != "fp32", k))
    markers = {k: "osD^vP*X"[i % 8] for i, k in enumerate(kinds)}
    for p in points:
        kind = (p["precision"], p.get("int8_recipe") or "")
        ax.scatter([p["p50_ms"]], [100 * p[score]], marker=markers[kind], s=45, color=colours[p["candidate"]],
                   alpha=0.85, zorder=3)
    def name(c: str) -> str:  # the model and size, and "teacher" where the teacher is a candidate
        return ("teacher " if c.startswith("teacher ") else "") + c.split(":")[-1]

    handles = [Line2D([], [], linestyle="", marker="o", color=colours[c], label=name(c)) for c in candidates]
    handles += [Line2D([], [], linestyle="", marker=markers[k], color="0.3",
                       label=k[0] + (f" ({k[1]})" if k[1] else "")) for k in kinds]
    if chosen is not None:
        handles.append(ax.scatter([chosen["p50_ms"]], [100 * chosen[score]], s=240, facecolors="none",
                                  edgecolors="tab:red", linewidths=1.5, label="chosen", zorder=4))
    if budget_ms is not None:
        handles.append(ax.axvline(budget_ms, color="tab:red", linestyle="--", linewidth=1,
                                  label=f"budget {budget_ms:.2f} ms"))
    if teacher_acc is not None:
        handles.append(ax.axhline(100 * teacher_acc, color="0.4", linestyle=":", linewidth=1,
                                  label="teacher (validation)"))
    ax.set(xlabel="batch-1 latency, p50 (ms, ONNX Runtime on this CPU)", ylabel=score_label,
           title=f"{score_label.split(' (')[0]} vs measured latency")
    ax.set_ylim(top=min(ax.get_ylim()[1], 101.0))  # no axis past 100% when graphs tie at the top
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


PER_CLASS_MOST = 40  # classes one per-class plot shows


def per_class_pair(rows: Sequence[dict], names: tuple[str, str], title: str) -> Figure:
    """Each class's test accuracy for two models (rows of ``{"class", "images", <a>_acc, <b>_acc}``, keys from
    ``names``), side by side as horizontal bars, the class's image count in its label: where the points went. Past
    ``PER_CLASS_MOST`` classes, those where the two differ most (in their listed order)."""
    a, b = names
    if len(rows) > PER_CLASS_MOST:
        differ = sorted(range(len(rows)), key=lambda i: -abs(rows[i][f"{a}_acc"] - rows[i][f"{b}_acc"]))
        keep = sorted(differ[:PER_CLASS_MOST])
        title = f"{title}; the {PER_CLASS_MOST} of {len(rows)} classes where they differ most"
        rows = [rows[i] for i in keep]
    n = len(rows)
    fig = Figure(figsize=(7.5, max(2.5, 0.32 * n + 1.4)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)
    for offset, key, colour in ((-0.2, a, "0.6"), (0.2, b, "tab:blue")):
        bars_ = ax.barh(y + offset, [100 * r[f"{key}_acc"] for r in rows], height=0.4, color=colour, label=key)
        ax.bar_label(bars_, fmt="%.1f", padding=2, fontsize=7)
    ax.set_yticks(y, [f"{r['class']} ({r['images']:,})" for r in rows], fontsize=8)
    ax.invert_yaxis()  # the first class on top, as listed
    ax.set_xlim(0, 112)  # room for the figures past a full bar
    ax.set_xticks(range(0, 101, 20))
    ax.set(xlabel="test accuracy (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig
