"""`fm2edge run RECIPE.yaml`: the lifecycle as a list of stages, each an ordinary command, cached by its inputs.

A recipe names its stages in order; each stage is one command (embed, probe, finetune, train, distill, bench, export,
report, ...) with the same sections its flags take. ``${stage}`` in any string is replaced by that earlier stage's
folder, so a distillation names its teacher as ``${probe}``. Every stage writes into ROOT/NAME/<stage>.

Caching: a stage's key hashes its command, its resolved settings and the key of the stage before it, so a change
reruns that stage and every stage after it, and nothing before. A finished stage records its key and result in
ROOT/NAME/.stages/<stage>.json (atomically, after it succeeds); an unchanged stage is skipped; a stage that was
interrupted has no record and runs again, continuing from its own checkpoints.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fm2edge.config import check
from fm2edge.errors import Fm2EdgeError
from fm2edge.stagecache import run_cached
from fm2edge.stages import STAGES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunJob:
    """`fm2edge run RECIPE.yaml`: every stage of a recipe in order, skipping those whose inputs are unchanged.

    Args:
        recipe: The recipe YAML: {name, root, stages: [{name, command, args}]}.
        root: Folder for the recipe's run folder; empty uses the recipe's own root (default runs).
        force: Rerun every stage even when its inputs are unchanged.
        only: Run only the stages up to and including this one.
    """

    recipe: str = ""
    root: str | None = None
    force: bool = False
    only: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.recipe), "give a recipe, e.g. fm2edge run configs/demo.yaml")


# ---------------------------------------------------------------- pure pieces


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise Fm2EdgeError(f"recipe '{path}' does not exist; see configs/ for examples")
    try:  # safe_load: YAML tags that would build Python objects are refused, so a recipe never runs code
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise Fm2EdgeError(f"recipe '{path}' is not valid YAML{where}: {problem}; a recipe holds plain values "
                           f"only") from None
    return check_recipe(recipe, str(path))


def check_recipe(recipe: dict, where: str = "recipe") -> dict:
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise Fm2EdgeError(f"{where} needs a list 'stages' of {{name, command, args}}")
    unknown = set(recipe) - {"name", "root", "stages", "description"}
    if unknown:
        raise Fm2EdgeError(f"{where}: unknown keys {sorted(unknown)}; a recipe has name, root, description, stages")
    for key in ("name", "root", "description"):
        if key in recipe and not isinstance(recipe[key], str):
            raise Fm2EdgeError(f"{where}: '{key}' is {recipe[key]!r}; it must be text")
    if "name" in recipe and not NAME.match(recipe["name"]):
        raise Fm2EdgeError(f"{where}: name {recipe['name']!r} must be a plain folder name (letters, digits, . _ -)")
    seen: set[str] = set()
    for i, stage in enumerate(recipe["stages"]):
        if not isinstance(stage, dict):
            raise Fm2EdgeError(f"{where}: stage {i + 1} is {stage!r}; each stage is a mapping {{name, command, args}}")
        name, command = stage.get("name"), stage.get("command")
        if not isinstance(name, str) or not NAME.match(name) or name in seen:
            raise Fm2EdgeError(f"{where}: stage {i + 1} needs a unique plain name, got {name!r}")
        if command not in STAGES:
            allowed = sorted(STAGES)
            raise Fm2EdgeError(f"{where}: stage '{name}' has command {command!r}; use one of {allowed}")
        extra = set(stage) - {"name", "command", "args"}
        if extra:
            raise Fm2EdgeError(f"{where}: stage '{name}' has unknown keys {sorted(extra)} (name, command, args)")
        if not isinstance(stage.get("args", {}), (dict, type(None))):
            raise Fm2EdgeError(f"{where}: stage '{name}' has args {stage['args']!r}; args is a mapping of the "
                               f"command's sections, like its YAML config")
        for ref in re.findall(r"\$\{([^}]+)\}", json.dumps(stage.get("args", {}))):
            if ref not in seen:
                raise Fm2EdgeError(f"{where}: stage '{name}' refers to ${{{ref}}}, which is not an earlier stage")
        seen.add(name)
    return recipe


def substitute(value: Any, folders: dict[str, str]) -> Any:
    """``${stage}`` -> that stage's folder, anywhere in nested args."""
    if isinstance(value, str):
        return re.sub(r"\$\{([^}]+)\}", lambda m: folders[m.group(1)], value)
    if isinstance(value, list):
        return [substitute(v, folders) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, folders) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- running


def run_recipe(recipe: dict, root: Path, force: bool = False, only: str | None = None) -> dict[str, Any]:
    """Run the recipe's stages in order into ``root``; returns {stage: result}."""
    folders = {s["name"]: str(root / s["name"]) for s in recipe["stages"]}
    if only is not None and only not in folders:
        raise Fm2EdgeError(f"--only names no stage of this recipe; stages: {list(folders)}")
    previous, results = "", {}
    for stage in recipe["stages"]:
        name, command = stage["name"], stage["command"]
        results[name], previous = run_cached(root, name, command, STAGES[command].job, STAGES[command].run,
                                             substitute(stage.get("args", {}) or {}, folders), previous, force)
        if name == only:
            break
    return results


def run_job(job: RunJob) -> dict:
    recipe = load_recipe(job.recipe)
    root = Path(job.root or recipe.get("root", "runs")) / recipe.get("name", Path(job.recipe).stem)
    return run_recipe(recipe, root, job.force, job.only)
