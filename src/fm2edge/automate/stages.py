"""One stage of an `auto` run: a cached run of an ordinary command into a folder of the run."""

from __future__ import annotations

from pathlib import Path

from fm2edge.config import DistillJob, ExportJob, FinetuneJob, ProbeJob, SoupJob


def run_one_stage(root: Path, name: str, command: str, args: dict) -> dict:
    """One stage (a teacher's probe, fine-tune or soup, a student's distillation or an export) into ROOT/name,
    skipped when it already finished with the same settings (as `fm2edge run` skips a recipe's stages)."""
    from fm2edge.distill.task import distill_job
    from fm2edge.export import export_job
    from fm2edge.finetune import finetune_job
    from fm2edge.probe import probe_job
    from fm2edge.soup import soup_job
    from fm2edge.stagecache import run_cached

    job_cls, run = {"probe": (ProbeJob, probe_job), "distill": (DistillJob, distill_job),
                    "export": (ExportJob, export_job), "finetune": (FinetuneJob, finetune_job),
                    "soup": (SoupJob, soup_job)}[command]
    return run_cached(root, name, command, job_cls, run, args)[0]
