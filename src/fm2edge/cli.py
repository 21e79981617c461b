"""Command line: a {command: (function, config class)} table; jsonargparse builds every flag from the classes."""

from __future__ import annotations

import json
import logging
import os
import sys

from fm2edge.bench import BenchJob, bench_job
from fm2edge.catalog import ListJob, list_job
from fm2edge.config import DemoJob, TrainJob
from fm2edge.demo import demo_job
from fm2edge.distill.task import DistillJob, distill_job
from fm2edge.errors import Fm2EdgeError
from fm2edge.export import ExportJob, export_job
from fm2edge.features import EmbedJob, embed_job
from fm2edge.finetune import FinetuneJob, finetune_job
from fm2edge.probe import ProbeJob, probe_job
from fm2edge.recipe import RunJob, run_job
from fm2edge.report.job import ReportJob, report_job
from fm2edge.train import train_job
from fm2edge.zeroshot import ZeroShotJob, zeroshot_job

COMMANDS = {
    "run": (run_job, RunJob, "run a recipe YAML (embed -> probe -> ... -> report), skipping unchanged stages"),
    "demo": (demo_job, DemoJob, "run the whole lifecycle offline on scikit-learn's digits (no arguments needed)"),
    "train": (train_job, TrainJob, "train a model on labelled images, no teacher (the lab's task 5)"),
    "embed": (embed_job, EmbedJob, "foundation-model features of a dataset, cached on disk, with t-SNE (lab task 1)"),
    "probe": (probe_job, ProbeJob, "linear / k-NN probes on cached features, label efficiency, pooling (lab task 2)"),
    "zeroshot": (zeroshot_job, ZeroShotJob, "CLIP-style zero-shot classification from prompts, no training"),
    "finetune": (finetune_job, FinetuneJob, "adapt a pretrained backbone: LoRA, full or linear fine-tuning, "
                 "compared (lab task 3)"),
    "bench": (bench_job, BenchJob, "latency, throughput, parameters, MACs and size of models (lab task 4)"),
    "distill": (distill_job, DistillJob, "train a student with a teacher's guidance: KD, DKD, DIST, RKD, features "
                "(lab tasks 6-7)"),
    "export": (export_job, ExportJob, "ONNX and int8 ONNX of a trained model, with parity, accuracy and latency "
               "checks"),
    "report": (report_job, ReportJob, "one self-contained HTML report (and Markdown) from run folders"),
    "list": (list_job, ListJob, "list registered models and accepted data sources"),
}


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
    from jsonargparse import ArgumentError

    cls = COMMANDS[command][1]
    parser = command_parser(cls)
    try:
        cfg = parser.parse_object(values)
        job = parser.instantiate_classes(cfg)
        return cls(**{k: v for k, v in vars(job).items() if k != "config"})
    except (ArgumentError, ValueError, TypeError) as exc:
        raise Fm2EdgeError(f"{command} settings: {_one_line(exc)}") from exc


def build_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="fm2edge", description="From a vision foundation model to a tiny edge model, "
                            "with numbers for what was gained and lost.", exit_on_error=False,
                            allow_abbrev=False)
    sub = parser.add_subcommands(dest="command", required=True)
    for name, (_, cls, help_text) in COMMANDS.items():
        sub.add_subcommand(name, command_parser(cls), help=help_text)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "transformers", "accelerate", "timm", "filelock", "urllib3", "httpx", "huggingface_hub",
                  "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


# command -> (field, takes several): models and run folders read best as positionals
POSITIONAL = {"bench": ("models", True), "export": ("model", False), "report": ("runs", True),
              "run": ("recipe", False)}


def _positional_models(argv: list[str]) -> list[str]:
    """`fm2edge bench A B --flags` -> `fm2edge bench --models [A, B] --flags`; `fm2edge export R` -> `--model R`
    (models read best as positionals)."""
    if not argv or argv[0] not in POSITIONAL:
        return argv
    name, several = POSITIONAL[argv[0]]
    rest, models = list(argv[1:]), []
    while rest and not rest[0].startswith("-") and (several or not models):
        models.append(rest.pop(0))
    if not models:
        return argv
    return [argv[0], f"--{name}", json.dumps(models) if several else models[0], *rest]


def _one_line(exc: BaseException) -> str:
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


def _spaced_lists(argv: list[str]) -> list[str]:
    """`--seeds 0 1 2` -> `--seeds [0,1,2]` (jsonargparse reads a list from one token)."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--seeds":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            if j - i > 2 or (j - i == 2 and not argv[i + 1].startswith("[")):
                out.append(json.dumps([int(v) if v.lstrip("-").isdigit() else v for v in argv[i + 1:j]]))
                i = j
                continue
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ArgumentError

    argv = _spaced_lists(_positional_models(sys.argv[1:] if argv is None else list(argv)))
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
        fn, cls, _ = COMMANDS[cfg.command]
        job = parser.instantiate(cfg)[cfg.command]
        # jsonargparse leaves the top-level class as a namespace; build it (its __post_init__ validates).
        job = cls(**{k: v for k, v in vars(job).items() if k != "config"})
    except (ArgumentError, ValueError, TypeError) as exc:
        print(f"fm2edge: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    _quiet_libraries()
    try:
        fn(job)
    except Fm2EdgeError as exc:
        print(f"fm2edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fm2edge: interrupted; finished epochs and feature chunks are kept: rerun the same command with "
              "--run.resume true to continue",
              file=sys.stderr)
        return 130
    return 0
