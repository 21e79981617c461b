"""Reading run folders into :class:`Run` records: metrics, resolved config, test predictions and plots.

Nothing here compares or renders; :mod:`fm2edge.report.compare` groups and compares the records and
:mod:`fm2edge.report.job` turns them into the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from fm2edge.errors import Fm2EdgeError
from fm2edge.runs import METRICS_FILE, is_run_folder, read_metrics, read_predictions, run_stage


@dataclass
class Run:
    path: Path
    label: str
    kind: str
    metrics: dict
    config: str = ""
    preds: dict | None = None
    teacher_preds: dict | None = None
    plots: list[Path] = field(default_factory=list)

    @cached_property
    def settings(self) -> dict:
        """The run's resolved config (config.yaml) as a dict, parsed once."""
        import yaml

        return (yaml.safe_load(self.config) or {}) if self.config else {}

    @property
    def seed(self) -> int | None:
        return self.settings.get("train", {}).get("seed")

    @property
    def name(self) -> str:
        """The label, with the seed where the folder name does not already say it."""
        seed = self.seed
        return self.label if seed is None or f"seed-{seed}" in self.label else f"{self.label} (seed {seed})"


def _visible(path: Path, root: Path) -> bool:
    """Not inside checkpoints or a hidden folder (a recipe's .stages records, partial writes)."""
    parts = path.relative_to(root).parts
    return "checkpoints" not in parts and not any(p.startswith(".") for p in parts)


def collect(paths: list[str]) -> tuple[list[Run], list[Path]]:
    """Every run folder (a folder with metrics.json not nested inside another run) under ``paths``, in path order;
    and every other folder of interest (bench.json, export/, comparison.json, label_efficiency.json holders)."""
    from fm2edge.models.io import is_model_folder, model_meta

    runs: list[Run] = []
    extras: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise Fm2EdgeError(f"run folder '{root}' does not exist")
        found = sorted({p.parent for name in (METRICS_FILE, "embed.json") for p in root.rglob(name)
                        if _visible(p, root)}) if root.is_dir() else []
        # labels keep the given folder's own name when it is a run or a seed group, or when several folders are given,
        # so that rows from `report runs/a runs/b` read a/seed-0, b/seed-0 rather than seed-0 twice
        named = len(paths) > 1 or root in found or (root / "seeds.json").exists()
        base = root.parent if named else root
        for folder in found:
            if any(is_run_folder(a) for a in folder.parents if a != folder and base in a.parents):
                continue  # a run's internal sub-runs (a probe's label-efficiency trainings)
            embed = not is_run_folder(folder)
            metrics = json.loads((folder / "embed.json").read_text()) if embed else read_metrics(folder)
            if "parameters" not in metrics and is_model_folder(folder):
                metrics["parameters"] = model_meta(folder).get("parameters")
            config = (folder / "config.yaml").read_text() if (folder / "config.yaml").exists() else ""
            kind = "embed" if embed else run_stage(metrics)
            runs.append(Run(folder, str(folder.relative_to(base)), kind, metrics, config,
                            read_predictions(folder), read_predictions(folder, "teacher_predictions.npz"),
                            sorted((folder / "plots").glob("*.png")) if (folder / "plots").exists() else []))
        for name in ("bench.json", "comparison.json", "export/export.json", "label_efficiency.json", "auto.json"):
            extras += sorted(p for p in root.rglob(name) if _visible(p, root))
    if not runs:
        raise Fm2EdgeError(f"no run folders (with metrics.json) under {', '.join(paths)}; give folders written by "
                           f"fm2edge train, distill, probe, finetune or demo")
    return runs, extras
