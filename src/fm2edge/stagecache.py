"""One place that knows a finished stage's record, ROOT/.stages/NAME.json (its key, command, settings, seconds and
result): a stage runs into ROOT/NAME unless its record says it finished with the same settings after the same
stages before it. How `fm2edge run` skips unchanged stages, and how `fm2edge auto` resumes."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE = ".stages"


ROOT_MARK = "<ROOT>"


def stage_key(command: str, args: dict, previous: str, root: Path | None = None) -> str:
    """What a stage's record must match: its command, its settings and the key of the stage before it; paths under
    ``root`` count from it, so a run folder moved or copied elsewhere still matches its records."""
    text = json.dumps([command, args, previous], sort_keys=True, default=str)
    if root is not None:
        text = text.replace(json.dumps(str(root))[1:-1], ROOT_MARK)
    return hashlib.sha1(text.encode()).hexdigest()


def moved(obj: Any, old: str, new: str) -> Any:
    """``obj`` (JSON-like) with every string path under ``old`` moved under ``new``: a run folder's own records read
    after the folder was moved or copied."""
    if isinstance(obj, dict):
        return {k: moved(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [moved(v, old, new) for v in obj]
    if isinstance(obj, str) and (obj == old or obj.startswith(old.rstrip("/") + "/")):
        return new + obj[len(old):]
    return obj


def place(command: str, job_cls: type, args: dict, folder: Path, root: Path) -> dict:
    """Point the stage's outputs at its folder (run.root/run.name, or output)."""
    fields = {f.name for f in dataclasses.fields(job_cls)}
    args = copy.deepcopy(args)
    if "run" in fields:
        args["run"] = {**args.get("run", {}), "root": str(folder.parent), "name": folder.name}
    elif command == "bench":
        args["output"] = str(folder / "bench.json")
    elif "output" in fields:
        args["output"] = str(folder)
    if command == "report":
        args.setdefault("runs", [str(root)])
    return args


def run_cached(root: Path, name: str, command: str, job_cls: type, run: Callable[[Any], Any], args: dict,
               previous: str = "", force: bool = False) -> tuple[Any, str]:
    """(result, key) of stage ``name`` (``command``'s job of class ``job_cls`` from ``args``, run by ``run``) into
    ROOT/name: read back from its record when it finished with the same key (and not ``force``), else run (an
    interrupted one resumes, a changed one starts its folder afresh) and recorded."""
    from fm2edge.parsing import job_from_class
    from fm2edge.runs import atomic_write_json

    args = place(command, job_cls, args, Path(root) / name, Path(root))
    key = stage_key(command, args, previous, Path(root))
    record_path = Path(root) / STATE / f"{name}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    # records written before keys counted paths from the root match on the full paths (and pass their own key on,
    # so the recipe's next stage matches its record too)
    if record is not None and record["key"] in (key, stage_key(command, args, previous)) and not force:
        print(f"== {name} ({command}): unchanged, skipped")
        written_at = record.get("root", str(root))
        return moved(record["result"], written_at, str(root)), record["key"]
    if "run" in args:  # changed: start the folder afresh; interrupted or new: continue what is there
        args["run"].update(overwrite=record is not None, resume=record is None)
    print(f"\n== {name} ({command})" + (": settings changed, rerunning" if record else ""))
    t0 = time.perf_counter()
    result = run(job_from_class(job_cls, command, args))
    seconds = time.perf_counter() - t0
    atomic_write_json(record_path, {"key": key, "command": command, "args": args, "seconds": seconds,
                                    "result": result, "root": str(root)})
    print(f"   ({seconds:.0f} s)")
    return json.loads(record_path.read_text())["result"], key


def stage_seconds(root: Path) -> dict[str, float]:
    """``{stage: seconds}`` for the finished stages run at ``root`` (how long each took when it ran)."""
    return {p.stem: float(json.loads(p.read_text()).get("seconds", 0.0))
            for p in sorted((Path(root) / STATE).glob("*.json"))}
