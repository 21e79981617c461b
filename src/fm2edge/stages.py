"""The lifecycle's stages as one table: {command: Stage(function, config class, help)}.

`fm2edge CMD` (the command line) and `fm2edge run RECIPE.yaml` (recipes) both read this table; the command line adds
its own commands (run, demo, list) on top. A stage's job is built from flags or from the same nested dict its YAML
takes, validated the same way either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fm2edge.bench import BenchJob, bench_job
from fm2edge.config import TrainJob
from fm2edge.data.summary import DataJob, data_job
from fm2edge.distill.task import DistillJob, distill_job
from fm2edge.errors import Fm2EdgeError
from fm2edge.export import ExportJob, export_job
from fm2edge.features import EmbedJob, embed_job
from fm2edge.finetune import FinetuneJob, finetune_job
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
}


def run_stage(command: str, config: dict | None = None):
    """Run one stage from the nested dict its YAML takes and return its result (metrics, tables, predictions):
    ``run_stage("distill", {"data": {"source": "digits"}, "distill": {"teacher": "runs/t"}})``."""
    if command not in STAGES:
        raise Fm2EdgeError(f"unknown stage '{command}'; choose from {', '.join(STAGES)}")
    return STAGES[command].run(job_from_dict(command, config or {}))


def command_parser(cls):
    from jsonargparse import ActionConfigFile, ArgumentParser

    # allow_abbrev=False: a misspelt flag such as --train.epoch must be an error, not a prefix of --train.epochs
    p = ArgumentParser(description=(cls.__doc__ or "").split("\n")[0], exit_on_error=False, allow_abbrev=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with the same sections as the flags")
    p.add_class_arguments(cls, as_group=False, fail_untyped=True)
    return p


def job_from_dict(command: str, values: dict):
    """A command's job from the same nested dict its YAML takes (how recipe stages are built), validated the same
    way as flags: unknown keys, wrong types and bad values are errors."""
    if command not in STAGES:
        raise Fm2EdgeError(f"unknown stage '{command}'; choose from {', '.join(STAGES)}")
    return job_from_class(STAGES[command].job, command, values)


def job_from_class(cls: type, command: str, values: dict):
    """A job of class ``cls`` from a nested dict, validated as flags are (see :func:`job_from_dict`)."""
    from jsonargparse import ArgumentError

    parser = command_parser(cls)
    try:
        cfg = parser.parse_object(values)
        job = parser.instantiate_classes(cfg)
        return cls(**{k: v for k, v in vars(job).items() if k != "config"})
    except (ArgumentError, ValueError, TypeError) as exc:
        raise Fm2EdgeError(f"{command} settings: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """jsonargparse's message as one line that names the flag: 'Parser key "train.epochs": Expected a <class
    'int'>. Got value: three' -> '--train.epochs: expected int, got 'three''."""
    import re

    text = str(exc).strip()
    key = re.search(r'Parser key "([^"]+)"', text)
    last = text.splitlines()[-1].strip()
    wanted = re.match(r"Expected a (.+?)\. Got value: (.*)$", last)
    if key and wanted:
        kind = re.sub(r"<class '(\w+)'>", r"\1", wanted.group(1)).replace("typing.", "")
        return f"--{key.group(1)}: expected {kind}, got {wanted.group(2)!r}"
    if text.startswith("Problems parsing config:"):  # a YAML error: keep the problem and where it is
        line = re.search(r"line (\d+)", last)
        problem = text.splitlines()[0].removeprefix("Problems parsing config:").strip()
        return f"the config file is not valid YAML{f' at line {line.group(1)}' if line else ''}: {problem}; " \
               f"configs hold plain values only"
    return f"--{key.group(1)}: {last}" if key else last
