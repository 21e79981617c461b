"""Which runs can be compared, and what the comparison says: seed groups, matched pairs, verdicts.

Two groups are compared only when they share the student, the data, the augmentation and the budget (everything in
their model, data and train settings but the seed); a difference comes with a 95% interval, and reads as a gain or
a loss only when that interval excludes 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fm2edge.report import metrics as M
from fm2edge.report.read import Run, collect


@dataclass
class Group:
    """Runs that differ only in their seed: one variant (method and its settings) on one matched setting."""

    label: str
    kind: str
    runs: list[Run]
    match: str | None  # what two groups must share to be compared (student, data, augmentation, budget)

    @property
    def accs(self) -> list[float]:
        return [r.metrics["test_acc"] for r in self.runs]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]


# train settings that change neither what is learnt nor from what: they do not break a match
NOT_BUDGET = ("seed", "device", "eval_batch_size", "compile", "channels_last", "keep_checkpoints", "checkpoint_every",
              "precision")


def match_key(run: Run) -> str | None:
    """What two runs must share to be compared: the student, the data, the augmentation and the training budget
    (everything in the model, data and train settings but the seed and how the hardware is used)."""
    cfg = run.settings
    if not all(isinstance(cfg.get(k), dict) for k in ("model", "data", "train")):
        return None
    data = {k: v for k, v in cfg["data"].items() if k != "cache_dir"}
    train = {k: v for k, v in cfg["train"].items() if k not in NOT_BUDGET}
    return json.dumps([cfg["model"], data, train], sort_keys=True, default=str)


def variant_key(run: Run) -> str:
    """The method and its own settings (the teacher and losses of a distillation, a fine-tuning mode)."""
    cfg = {k: v for k, v in run.settings.items() if k not in ("model", "data", "train", "run", "seeds")}
    return json.dumps([run.kind, run.metrics.get("mode"), cfg], sort_keys=True, default=str)


def group_label(members: list[Run]) -> str:
    """The folder the seeds share (``kd`` for ``kd/seed-0``, ``kd/seed-1``), else the runs' names."""
    if len(members) == 1:
        return members[0].label
    common = os.path.commonprefix([Path(r.label).parts for r in members])
    return str(Path(*common)) if common else ", ".join(r.label for r in members)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with a test accuracy, grouped by setting and method: each group's members differ only in their seed."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.metrics.get("test_acc") is None:
            continue
        match = match_key(r)
        key = (match, variant_key(r)) if match is not None else (None, str(r.path))
        groups.setdefault(key, []).append(r)
    return [Group(group_label(members), members[0].kind, members, key[0]) for key, members in groups.items()]


def group_difference(a: Group, b: Group) -> M.Difference:
    """``a - b`` in test accuracy: over seeds (Welch) when both have several; for single runs on the same test
    images, a paired bootstrap over the images."""
    if len(a.runs) == 1 and len(b.runs) == 1:
        pa, pb = a.runs[0].preds, b.runs[0].preds
        if pa is not None and pb is not None and np.array_equal(pa["labels"], pb["labels"]):
            return M.paired_difference(pa["preds"] == pa["labels"], pb["preds"] == pb["labels"])
    return M.seed_difference(a.accs, b.accs)


def comparisons(groups: list[Group]) -> list[dict]:
    """Every method against the from-scratch run of the same setting (or, without one, the first group of it)."""
    by_match: dict[str, list[Group]] = {}
    for g in groups:
        if g.match is not None:
            by_match.setdefault(g.match, []).append(g)
    rows = []
    for members in by_match.values():
        base = next((g for g in members if g.kind == "train"), members[0])
        rows += [{"a": g, "b": base, "difference": group_difference(g, base)} for g in members if g is not base]
    return rows


def verdict_lines(runs: list[Run], compared: list[dict], exports: list[tuple[str, dict]]) -> list[str]:
    """Each comparison in one line with its sign, size and noise: matched training runs, pretrained against random
    backbones, probes against from-scratch students at each label count, int8 against fp32."""
    lines = [c["difference"].line(f"{c['a'].label} vs {c['b'].label}") for c in compared]
    probes = [r for r in runs if r.kind == "probe" and r.preds is not None]
    for a in probes:
        for b in probes:
            same = a.metrics.get("model") == b.metrics.get("model") and a.metrics.get("data") == b.metrics.get("data")
            if same and a.metrics.get("pretrained") and not b.metrics.get("pretrained") and \
                    np.array_equal(a.preds["labels"], b.preds["labels"]):
                d = M.paired_difference(a.preds["preds"] == a.preds["labels"], b.preds["preds"] == b.preds["labels"])
                lines.append(d.line(f"pretrained vs random-weight backbone ({a.label} vs {b.label})"))
    for r in probes:
        curves, n = r.metrics.get("label_efficiency", {}), r.metrics.get("n_test")
        for count, acc in curves.get("probe", {}).items():
            if count in curves.get("scratch", {}) and n:
                d = M.proportion_difference(acc, curves["scratch"][count], n, n)
                lines.append(d.line(f"probe vs from scratch at {count} labels/class ({r.label})"))
    for name, e in exports:
        if e.get("int8_vs_fp32"):
            lines.append(M.Difference(**e["int8_vs_fp32"]).line(f"int8 vs fp32 ONNX ({name})"))
    return lines


def caution_lines(runs: list[Run]) -> list[str]:
    """What a reader should know before trusting a run's numbers: a validation split too small to rank the epochs
    it chose between (recorded by the training loop)."""
    lines = []
    for r in runs:
        noise = (r.metrics.get("selected") or {}).get("noise") or {}
        if noise.get("noisy"):
            lines.append(f"{r.label}: {noise['warning']}")
    return lines


@dataclass
class Findings:
    """What a set of run folders shows: the runs, the extra results beside them, seed groups, matched comparisons
    and the verdicts."""

    runs: list[Run]
    extras: dict[str, list]
    groups: list[Group]
    compared: list[dict]
    verdicts: list[str]
    cautions: list[str]


def findings(paths: list[str]) -> Findings:
    """Read run folders and compare what can be compared (the report's content before rendering; the demo prints its
    verdicts)."""
    runs, extra_files = collect(paths)
    extras: dict[str, list] = {"bench": [], "export": [], "comparison": [], "label_efficiency": [], "auto": []}
    for p in extra_files:
        if p.name == "bench.json":
            extras["bench"].append((str(p.parent), json.loads(p.read_text())["rows"]))
        elif p.name == "export.json":
            extras["export"].append((str(p.parent), json.loads(p.read_text())))
        elif p.name == "auto.json":  # `fm2edge auto`: the choice, its leaderboard, and the search's path
            extras["auto"].append((str(p.parent), json.loads(p.read_text())))
        elif p.name == "comparison.json":
            extras["comparison"].append((str(p.parent), json.loads(p.read_text())["rows"]))
        elif p.name == "label_efficiency.json":  # a study's curves: {"title", "budget", "curves": {label: {n: %}}}
            study = json.loads(p.read_text())
            study["curves"] = {label: {int(n): acc for n, acc in curve.items()}  # JSON keys are strings
                               for label, curve in study["curves"].items()}
            extras["label_efficiency"].append((str(p.parent), study))
    groups = group_runs(runs)
    compared = comparisons(groups)
    return Findings(runs, extras, groups, compared, verdict_lines(runs, compared, extras["export"]),
                    caution_lines(runs))
