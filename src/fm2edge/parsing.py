"""A job (a command's typed config) from flags or from the nested dict its YAML takes, validated the same way
either way; and jsonargparse's errors as one line that names the flag."""

from __future__ import annotations

from fm2edge.errors import Fm2EdgeError


def command_parser(cls):
    """The jsonargparse parser of a job class: one flag per field of its config sections, and --config YAML."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    # allow_abbrev=False: a misspelt flag such as --train.epoch must be an error, not a prefix of --train.epochs
    p = ArgumentParser(description=(cls.__doc__ or "").split("\n")[0], exit_on_error=False, allow_abbrev=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with the same sections as the flags")
    p.add_class_arguments(cls, as_group=False, fail_untyped=True)
    return p


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
