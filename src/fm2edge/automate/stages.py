"""One stage of an `auto` run: a cached run of an ordinary command into a folder of the run."""

from __future__ import annotations

from pathlib import Path

from fm2edge.stages import STAGES


def run_one_stage(root: Path, name: str, command: str, args: dict) -> dict:
    """One stage (a teacher's probe, fine-tune or soup, a student's distillation or an export) into ROOT/name,
    skipped when it already finished with the same settings (as `fm2edge run` skips a recipe's stages)."""
    from fm2edge.stagecache import run_cached

    stage = STAGES[command]  # the same table the command line and recipes read
    return run_cached(root, name, command, stage.job, stage.run, args)[0]
