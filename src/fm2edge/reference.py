"""Reference text generated from the code, for the docs site: each command's options, read from the same parser
(hence the same config dataclasses and ``Args:`` docstrings) that ``fm2edge CMD --help`` prints, so the two cannot
disagree."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass

from fm2edge.cli import COMMANDS, POSITIONAL
from fm2edge.parsing import command_parser


@dataclass(frozen=True)
class Option:
    flag: str
    type: str
    default: str
    help: str


def type_name(hint) -> str:
    """``int | None`` -> "int, optional"; ``Literal["a", "b"]`` -> "a | b"; ``list[int]`` -> "list[int]"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " | ".join(type_name(a) for a in args)
        return f"{text}, optional" if len(args) < len(typing.get_args(hint)) else text
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(hint))
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def field_types(cls, prefix: str = "") -> dict[str, str]:
    """``{"train.epochs": "int", ...}`` for a job class and its nested sections."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):  # an optional section, one flag (YAML or JSON)
            out[f"{prefix}{f.name}"] = f"{inner[0].__name__} (a mapping), optional"
            continue
        if dataclasses.is_dataclass(hint):
            out.update(field_types(hint, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = type_name(hint)
    return out


def default_text(value) -> str:
    if value is None or value == "==SUPPRESS==":
        return ""
    if dataclasses.is_dataclass(value):
        return ""
    return f"`{value}`" if not isinstance(value, str) else f'`"{value}"`'


def options(command: str) -> list[Option]:
    """Every option of ``fm2edge COMMAND`` in the order ``--help`` lists them (sections' config-file flags left out)."""
    job = COMMANDS[command].job
    types_ = field_types(job)
    rows = []
    for action in command_parser(job)._actions:  # argparse keeps its actions here; no public accessor exists
        dest = action.dest
        if dest not in types_:
            continue
        rows.append(Option(f"--{dest}", types_[dest], "required" if action.required else default_text(action.default),
                           " ".join((action.help or "").split())))
    return rows


def options_markdown(command: str) -> str:
    """The options of ``fm2edge COMMAND`` as Markdown tables, one per section (``--data.*``, ``--train.*``, ...)."""
    groups: dict[str, list[Option]] = {}
    for opt in options(command):
        section = opt.flag[2:].split(".")[0] if "." in opt.flag else ""
        groups.setdefault(section, []).append(opt)
    out = []
    positional = POSITIONAL.get(command)
    if positional:
        out.append("Positional arguments stand for: " + ", ".join(f"`--{name}`" for name, _ in positional) + ".\n")
    for section, rows in groups.items():
        if section:
            out.append(f"### `--{section}.*`\n")
        out.append("| option | type | default | meaning |\n|---|---|---|---|")
        for r in rows:
            cells = [f"`{r.flag}`", r.type, r.default, r.help]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def commands() -> dict[str, str]:
    """``{command: one-line help}`` for every command, in ``fm2edge --help`` order."""
    return {name: stage.help for name, stage in COMMANDS.items()}
