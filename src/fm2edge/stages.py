"""The lifecycle's stages as one table: {command: Stage(function, config class, help)}.

`fm2edge CMD` (the command line) and `fm2edge run RECIPE.yaml` (recipes) both read this table; the command line adds
its own commands (run, demo, list) on top. A stage's job is built from flags or from the same nested dict its YAML
takes, validated the same way either way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from fm2edge.errors import Fm2EdgeError
from fm2edge.parsing import job_from_class


@dataclass(frozen=True)
class Stage:
    """A command: the function that runs it, its job class (every flag and YAML key) and its help line. The function
    and the class may be named as ``"module:name"``, imported when first used: the command line then imports the
    module of the one command it runs (most import torch, 3 s of a 4 s start) and `fm2edge --help` none of them."""

    function: Callable | str
    config: type | str
    help: str

    @property
    def run(self) -> Callable:
        return named(self.function)

    @property
    def job(self) -> type:
        return named(self.config)


def named(thing):
    """``thing`` itself, or the object a ``"module:name"`` string names."""
    if not isinstance(thing, str):
        return thing
    module, _, name = thing.partition(":")
    return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {
    "data": Stage("fm2edge.data.summary:data_job", "fm2edge.config:DataJob",
                  "show what a data source resolves to (splits, classes, counts, sizes, what is skipped), without "
                  "training"),
    "train": Stage("fm2edge.train:train_job", "fm2edge.config:TrainJob",
                   "train a model on labelled images, no teacher"),
    "embed": Stage("fm2edge.features:embed_job", "fm2edge.config:EmbedJob",
                   "foundation-model features of a dataset, cached on disk, with t-SNE"),
    "probe": Stage("fm2edge.probe:probe_job", "fm2edge.config:ProbeJob",
                   "linear / k-NN probes on cached features, label efficiency, pooling"),
    "zeroshot": Stage("fm2edge.zeroshot:zeroshot_job", "fm2edge.config:ZeroShotJob",
                      "CLIP-style zero-shot classification from prompts, no training"),
    "finetune": Stage("fm2edge.finetune:finetune_job", "fm2edge.config:FinetuneJob",
                      "adapt a pretrained backbone: LoRA, full or linear fine-tuning, compared"),
    "soup": Stage("fm2edge.soup:soup_job", "fm2edge.config:SoupJob",
                  "one model from the averaged weights of fine-tuned runs (greedy on validation or uniform)"),
    "bench": Stage("fm2edge.bench:bench_job", "fm2edge.config:BenchJob",
                   "latency, throughput, parameters, MACs and size of models"),
    "distill": Stage("fm2edge.distill.task:distill_job", "fm2edge.config:DistillJob",
                     "train a student with a teacher's guidance: KD, DKD, DIST, RKD, features"),
    "pretrain": Stage("fm2edge.pretrain:pretrain_job", "fm2edge.config:PretrainJob",
                      "distil a foundation model's features into a small network on images without labels (a starting"
                      " point for --model.init)"),
    "export": Stage("fm2edge.export:export_job", "fm2edge.config:ExportJob",
                    "ONNX and int8 ONNX of a trained model, with parity, accuracy and latency checks"),
    "predict": Stage("fm2edge.predict:predict_job", "fm2edge.config:PredictJob",
                     "classify image files with a run folder or an exported .onnx: CSV, JSON Lines, pseudo-labels"),
    "report": Stage("fm2edge.report.job:report_job", "fm2edge.report.job:ReportJob",
                    "one self-contained HTML report (and Markdown) from run folders"),
    "auto": Stage("fm2edge.automate.job:auto_job", "fm2edge.automate.config:AutoJob",
                  "a folder of labelled photos and a latency budget in, the most accurate verified model out "
                  "(teacher, student, size and precision chosen on validation)"),
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
