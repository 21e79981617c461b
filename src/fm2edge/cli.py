"""Command line: the stage table plus the commands that drive stages (`auto`, `run`, `demo`) and `list`;
jsonargparse builds every flag from the config classes."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys

from fm2edge.errors import Fm2EdgeError
from fm2edge.parsing import command_parser, one_line
from fm2edge.stages import STAGES, Stage

# each command's module is imported when it runs (see Stage): `fm2edge --help` and a mistyped flag answer in a second
COMMANDS: dict[str, Stage] = {
    "auto": STAGES["auto"],  # the main job first in --help
    "run": Stage("fm2edge.recipe:run_job", "fm2edge.recipe:RunJob",
                 "run a recipe YAML (embed -> probe -> ... -> report), skipping unchanged stages"),
    "demo": Stage("fm2edge.demo:demo_job", "fm2edge.config:DemoJob",
                  "run the whole lifecycle offline on scikit-learn's digits (no arguments needed)"),
    **{name: stage for name, stage in STAGES.items() if name != "auto"},
    "push": Stage("fm2edge.push:push_job", "fm2edge.push:PushJob",
                  "upload a run's model (weights, config.json, card, ONNX) to the Hugging Face Hub"),
    "list": Stage("fm2edge.catalog:list_job", "fm2edge.catalog:ListJob",
                  "list registered models and accepted data sources"),
}


def build_parser(command: str | None = None, listing: bool = False):
    """The command line's parser: every command's, or only ``command``'s where one is named (the parsers of all
    eighteen took 0.6 s to build, on every call, for the one that runs). With ``listing`` the commands carry their
    help line and no flags: what `fm2edge --help` shows, without importing any command's module."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="fm2edge", description="From a vision foundation model to a tiny edge model, "
                            "with numbers for what was gained and lost.", exit_on_error=False,
                            allow_abbrev=False)
    from importlib.metadata import version

    parser.add_argument("--version", action="version", version=f"fm2edge {version('fm2edge')}")
    sub = parser.add_subcommands(dest="command", required=True)
    for name, stage in COMMANDS.items():
        if command in (None, name):
            sub.add_subcommand(name, ArgumentParser() if listing else command_parser(stage.job), help=stage.help)
    return parser


class SaidOnce(logging.Filter):
    """Passes each message of fm2edge's data loggers once per command: every stage of `auto` or of a recipe reads the
    same folder again and would repeat what it says of it (logging has no "once" action, as warnings has)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("fm2edge.data"):
            return True
        key = (record.name, record.levelno, record.getMessage())
        fresh = key not in self.seen
        self.seen.add(key)
        return fresh


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # a fresh memory for each command run in this process
        for old in [f for f in handler.filters if isinstance(f, SaidOnce)]:
            handler.removeFilter(old)
        handler.addFilter(SaidOnce())
    for noisy in ("datasets", "transformers", "accelerate", "timm", "filelock", "urllib3", "httpx", "huggingface_hub",
                  "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


# command -> its positionals in order, each (field, takes several): models, run folders and files read best so
POSITIONAL = {"auto": [("data.source", False)], "data": [("data.source", False)], "bench": [("models", True)],
              "export": [("model", False)], "report": [("runs", True)], "run": [("recipe", False)],
              "list": [("what", False)],
              "predict": [("model", False), ("inputs", True)],
              "push": [("run", False), ("repo", False)]}


def _positional_models(argv: list[str]) -> list[str]:
    """`fm2edge bench A B --flags` -> `fm2edge bench --models [A, B] --flags`; `fm2edge export R` -> `--model R`;
    `fm2edge auto photos/` and `fm2edge data photos/` -> `--data.source photos/`;
    `fm2edge predict R a.png b.png` -> `--model R --inputs [a.png, b.png]` (models and files read best as
    positionals). Positionals may also follow the flags: `fm2edge bench --bench.runs 10 A` (a bare word after a
    flag's one value, where the flag takes one)."""
    if not argv or argv[0] not in POSITIONAL:
        return argv
    kinds = flag_kinds(COMMANDS[argv[0]].job)
    bare, flags, i = [], [], 1
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            flags.append(token)
            i += 1
            if "=" in token:
                continue
            several = kinds.get(token) == "list"
            while i < len(argv) and not argv[i].startswith("--"):
                flags.append(argv[i])
                i += 1
                if not several:
                    break
            continue
        bare.append(token)
        i += 1
    out = [argv[0]]
    for name, several in POSITIONAL[argv[0]]:
        values = []
        while bare and (several or not values):
            values.append(bare.pop(0))
        if values:
            out += [f"--{name}", json.dumps(values) if several else values[0]]
    return out + bare + flags


def flag_kinds(cls, prefix: str = "--") -> dict[str, str]:
    """``{"--seeds": "list", "--distill.losses": "dict", ...}``: the flags of a job class that take several
    values, found from its dataclass fields (nested sections included)."""
    import dataclasses
    import types
    import typing

    kinds: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kinds.update(flag_kinds(hint, f"{prefix}{f.name}."))
            continue
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        origins = {typing.get_origin(o) or o for o in options}
        if origins & {list, tuple}:
            kinds[f"{prefix}{f.name}"] = "list"
        elif dict in origins:
            kinds[f"{prefix}{f.name}"] = "dict"
    return kinds


def _spaced_lists(argv: list[str]) -> list[str]:
    """Friendlier values for flags that take several: `--seeds 0 1 2` and `--bench.backends onnx` become JSON lists
    (jsonargparse reads a list from one token), and `--distill.losses {kd:1,feature:0.5}` gets the spaces YAML
    wants after ':' and ','."""
    import re

    if not argv or argv[0] not in COMMANDS:
        return argv
    kinds = flag_kinds(COMMANDS[argv[0]].job)
    out, i = [argv[0]], 1
    while i < len(argv):
        flag = argv[i]
        out.append(flag)
        kind = kinds.get(flag)
        if kind == "list":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            values = argv[i + 1:j]
            if values and not (len(values) == 1 and values[0].lstrip().startswith(("[", "null"))):
                out.append(json.dumps([int(v) if re.fullmatch(r"-?\d+", v) else float(v)
                                       if re.fullmatch(r"-?\d*\.\d+(e-?\d+)?", v) else v for v in values]))
                i = j
                continue
        elif kind == "dict" and i + 1 < len(argv) and argv[i + 1].lstrip().startswith("{"):
            out.append(re.sub(r"([:,])(?=\S)", r"\1 ", argv[i + 1]))
            i += 2
            continue
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ArgumentError

    argv = _spaced_lists(_positional_models(sys.argv[1:] if argv is None else list(argv)))
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command, listing=command is None)  # no command named: --help, --version or a mistake
    try:
        cfg = parser.parse_args(argv)
        stage = COMMANDS[cfg.command]
        job = parser.instantiate(cfg)[cfg.command]
        # jsonargparse leaves the top-level class as a namespace; build it (its __post_init__ validates).
        job = stage.job(**{k: v for k, v in vars(job).items() if k != "config"})
    except (ArgumentError, ValueError, TypeError) as exc:
        print(f"fm2edge: error: {one_line(exc)}", file=sys.stderr)
        return 2
    _quiet_libraries()
    try:
        _run_in_process_group(stage, job)
    except Fm2EdgeError as exc:
        print(f"fm2edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C can land inside a library's constructor (a tqdm bar between two of its attributes); that half-built
        # object's __del__ then fails as the traceback holding it goes at the end of this block, printing a stray
        # "Exception ignored" after our last word. Such failures are muted until it has been collected.
        hook, sys.unraisablehook = sys.unraisablehook, _ignore
    else:
        return 0
    gc.collect()
    sys.unraisablehook = hook
    print("fm2edge: interrupted; finished epochs and feature chunks are kept: rerun the same command with "
          "--run.resume true to continue", file=sys.stderr)
    return 130


def _run_in_process_group(stage: Stage, job) -> None:
    """``stage`` on ``job``; under torchrun, the process group is left once it returns or fails."""
    try:
        stage.run(job)
    finally:
        if "torch" in sys.modules:  # a stage that never imported torch joined no process group
            from fm2edge.device import close_process_group

            close_process_group()


def _ignore(_unraisable) -> None:
    """An ``sys.unraisablehook`` that drops the failure (see ``main``)."""
