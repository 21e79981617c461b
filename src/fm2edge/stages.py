"""The lifecycle's stages as one table: {command: Stage(function, config class, help)}.

`fm2edge CMD` (the command line) and `fm2edge run RECIPE.yaml` (recipes) both read this table; the command line adds
its own commands (run, demo, list) on top. A stage's job is built from flags or from the same nested dict its YAML
takes, validated the same way either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fm2edge.automate import AutoJob, auto_job
from fm2edge.bench import BenchJob, bench_job
from fm2edge.config import TrainJob
from fm2edge.data.summary import DataJob, data_job
from fm2edge.distill.task import DistillJob, distill_job
from fm2edge.errors import Fm2EdgeError
from fm2edge.export import ExportJob, export_job
from fm2edge.features import EmbedJob, embed_job
from fm2edge.finetune import FinetuneJob, finetune_job
from fm2edge.parsing import job_from_class
from fm2edge.predict import PredictJob, predict_job
from fm2edge.pretrain import PretrainJob, pretrain_job
from fm2edge.probe import ProbeJob, probe_job
from fm2edge.report.job import ReportJob, report_job
from fm2edge.soup import SoupJob, soup_job
from fm2edge.train import train_job
from fm2edge.zeroshot import ZeroShotJob, zeroshot_job


@dataclass(frozen=True)
class Stage:
    run: Callable
    job: type
    help: str


STAGES: dict[str, Stage] = {
    "data": Stage(data_job, DataJob, "show what a data source resolves to (splits, classes, counts, sizes, what is "
                  "skipped), without training"),
    "train": Stage(train_job, TrainJob, "train a model on labelled images, no teacher"),
    "embed": Stage(embed_job, EmbedJob, "foundation-model features of a dataset, cached on disk, with t-SNE"),
    "probe": Stage(probe_job, ProbeJob, "linear / k-NN probes on cached features, label efficiency, pooling"),
    "zeroshot": Stage(zeroshot_job, ZeroShotJob, "CLIP-style zero-shot classification from prompts, no training"),
    "finetune": Stage(finetune_job, FinetuneJob, "adapt a pretrained backbone: LoRA, full or linear fine-tuning, "
                      "compared"),
    "soup": Stage(soup_job, SoupJob, "one model from the averaged weights of fine-tuned runs (greedy on validation "
                  "or uniform)"),
    "bench": Stage(bench_job, BenchJob, "latency, throughput, parameters, MACs and size of models"),
    "distill": Stage(distill_job, DistillJob, "train a student with a teacher's guidance: KD, DKD, DIST, RKD, "
                     "features"),
    "pretrain": Stage(pretrain_job, PretrainJob, "distil a foundation model's features into a small network on "
                      "images without labels (a starting point for --model.init)"),
    "export": Stage(export_job, ExportJob, "ONNX and int8 ONNX of a trained model, with parity, accuracy and "
                    "latency checks"),
    "predict": Stage(predict_job, PredictJob, "classify image files with a run folder or an exported .onnx: CSV, "
                     "JSON Lines, pseudo-labels"),
    "report": Stage(report_job, ReportJob, "one self-contained HTML report (and Markdown) from run folders"),
    "auto": Stage(auto_job, AutoJob, "a folder of labelled photos and a latency budget in, the most accurate "
                  "verified model out (teacher, student, size and precision chosen on validation)"),
}


def run_stage(command: str, config: dict | None = None):
    """Run one stage from the nested dict its YAML takes and return its result (metrics, tables, predictions):
    ``run_stage("distill", {"data": {"source": "digits"}, "distill": {"teacher": "runs/t"}})``."""
    if command not in STAGES:
        raise Fm2EdgeError(f"unknown stage '{command}'; choose from {', '.join(STAGES)}")
    return STAGES[command].run(job_from_dict(command, config or {}))


def job_from_dict(command: str, values: dict):
    """A command's job from the same nested dict its YAML takes (how recipe stages are built), validated the same
    way as flags: unknown keys, wrong types and bad values are errors."""
    if command not in STAGES:
        raise Fm2EdgeError(f"unknown stage '{command}'; choose from {', '.join(STAGES)}")
    return job_from_class(STAGES[command].job, command, values)
