"""Run folders and atomic writes: a result or checkpoint is either complete on disk or absent."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from fm2edge.errors import Fm2EdgeError

METRICS_FILE = "metrics.json"  # a run's results: its presence makes a folder a run folder


def is_run_folder(folder: str | Path) -> bool:
    """A folder a stage finished (or is writing): it holds metrics.json."""
    return (Path(folder) / METRICS_FILE).is_file()


def read_metrics(folder: str | Path) -> dict:
    """A run folder's results (``{}`` when it has none)."""
    path = Path(folder) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_predictions(folder: str | Path, name: str = "predictions.npz") -> dict | None:
    """A run folder's test-split predictions as `RunDir.write_predictions` wrote them (logits, labels, preds,
    class_names), or ``None`` when it has none."""
    import numpy as np

    path = Path(folder) / name
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run_stage(metrics: dict) -> str:
    """The stage that wrote these results: written by every stage (``"stage"``); guessed from the keys of folders
    written before it was ("other" when nothing fits)."""
    if metrics.get("stage"):
        return metrics["stage"]
    guesses = (("teacher", "distill"), ("mode", "finetune"), ("ingredients", "soup"), ("probes", "probe"),
               ("prompts", "zeroshot"), ("templates", "zeroshot"), ("history", "train"))
    return next((stage for key, stage in guesses if key in metrics), "other")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then act as they would have: an interrupt that lands between
    creating a temporary file and renaming it would otherwise leave the file behind.

    Python handlers are swapped for ones that note the signal, rather than the signal masked: a mask holds back only
    the calling thread, and the OS hands a process's signal to any thread that does not block it (torch's and
    tqdm's threads), whose handler then raises KeyboardInterrupt in the main thread all the same."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only: nothing raises here
        return
    caught: list[int] = []
    held = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler not set from Python, which cannot be put back
            held[signum] = signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path`` (interrupts held
    back meanwhile, so none leaves the temporary file behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_held():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results should be readable like any file
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


@contextlib.contextmanager
def exclusive(lock_path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (a folder, or a file created if missing) for the block,
    waiting, and saying so, while another process holds it. A lock file stays: unlinking a lock that another process
    may be waiting on would let two in."""
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    target = lock_path / ".lock" if lock_path.is_dir() else lock_path  # a folder is locked through a file in it
    lock = FileLock(target)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"waiting for another fm2edge process that is writing {what}", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield  # a read-only place (a shared cache mounted read-only): nobody writes there, so nothing to serialise
        return
    try:
        yield
    finally:
        lock.release()


def clean_stale(final: str | Path) -> None:
    """Remove what a killed :func:`atomic_dir` for ``final`` left beside it. Only safe while holding its lock."""
    final = Path(final)
    for p in [*final.parent.glob(f".{final.name}.*.tmp"), final.with_name(f".{final.name}.old")]:
        _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path, lock: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final`` (replacing an old one).

    ``lock`` is for folders that several processes may write (shared caches, exports): it locks the parent folder
    for the rename, so writers take turns, and first removes what a killed writer left behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if lock:
        with exclusive(final.parent, str(final)):
            clean_stale(final)
            with atomic_dir(final) as tmp:
                yield tmp
        return
    tmp = None
    try:
        with interrupts_held():  # an interrupt here comes once ``tmp`` is known, so the handler below removes it
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
            os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = final.with_name(f".{final.name}.old")
        with interrupts_held():  # not between the two renames, which would leave only the ".old" folder
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)  # one an interrupt leaves here goes with the next locked write
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial(folder: Path) -> None:
    """Remove temporary files that an interrupted atomic write left behind."""
    for p in folder.rglob(".*.tmp"):
        _remove(p)


def resolve_tracker(log_with: str) -> str:
    """The tracker ``--run.log_with`` means here ("auto": TensorBoard when installed, else "none"); one that is not
    installed is an error naming what to install."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    if log_with == "auto":
        return "tensorboard" if is_tensorboard_available() else "none"
    if log_with == "none":
        return log_with
    available, package = {"tensorboard": (is_tensorboard_available, "tensorboardX"),
                          "wandb": (is_wandb_available, "wandb"), "mlflow": (is_mlflow_available, "mlflow")}[log_with]
    if not available():
        raise Fm2EdgeError(f"--run.log_with {log_with} needs {package}: pip install {package} (or --run.log_with "
                           f"none)")
    return log_with


TRACKER_PROJECT = "fm2edge"  # the W&B project; MLflow's experiment is the folder that holds the run folders


def make_tracker(log_with: str, path: Path, config: dict | None = None, name: str | None = None):
    """An Accelerate tracker for the run at ``path`` that has been given the run's whole config (flattened to
    ``section.field`` keys), or None. TensorBoard writes RUN/logs; W&B keeps its files in RUN/wandb (``WANDB_MODE``
    and the rest of W&B's settings apply); MLflow logs to ``MLFLOW_TRACKING_URI``, else to a file store beside the
    run folders (ROOT/mlruns). ``name``: the run's name there (default: the folder's)."""
    import os

    from accelerate import tracking

    log_with = resolve_tracker(log_with)
    if log_with == "none":
        return None
    try:
        if log_with == "tensorboard":
            tracker = tracking.TensorBoardTracker(".", path / "logs")
        elif log_with == "wandb":
            (path / "wandb").mkdir(parents=True, exist_ok=True)
            tracker = tracking.WandBTracker(TRACKER_PROJECT, name=name or path.name, dir=str(path))
        else:
            import mlflow

            if not os.environ.get("MLFLOW_TRACKING_URI"):
                # no server named: MLflow's local file store beside the run folders (still supported, though MLflow
                # now asks to be told so)
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri((path.parent / "mlruns").resolve().as_uri())
            tracker = tracking.MLflowTracker(experiment_name=path.parent.resolve().name or TRACKER_PROJECT,
                                             run_name=name or path.name)
        if hasattr(tracker, "start"):  # Accelerate >= 1.8 opens a tracker's writer lazily; older ones in __init__
            tracker.start()
        if config:
            tracker.store_init_configuration(flat_values(config, numbers_only=False))
    except Exception as exc:  # a tracker's own error (server, login, settings): one line, the fix named
        raise Fm2EdgeError(f"the {log_with} tracker could not start: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}; fix its settings or pass --run.log_with none") from exc
    return tracker


def flat_values(values: dict, prefix: str = "", numbers_only: bool = True) -> dict:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``: what trackers take. Numbers (and booleans, as 0/1)
    only, or every leaf with lists and None as text when ``numbers_only`` is false (a config)."""
    out: dict = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_values(value, f"{name}.", numbers_only))
        elif isinstance(value, bool):
            out[name] = int(value) if numbers_only else value
        elif isinstance(value, int | float):
            out[name] = value
        elif not numbers_only and value is not None:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def log_summary(log_with: str, path: Path, config: dict, summary: dict, name: str | None = None) -> None:
    """A finished stage's config and summary numbers to a tracker of their own (stages without a run folder's
    epochs: bench, export), logging under ``path``."""
    tracker = make_tracker(log_with, path, config, name)
    if tracker is not None:
        tracker.log({f"summary/{k}": v for k, v in flat_values(summary).items()}, step=0)
        tracker.finish()


class RunDir:
    """A run folder: ``config.yaml``, ``metrics.json``, ``checkpoints/``, ``predictions.npz``, ``plots/``.

    Holding it takes an exclusive lock, so two processes cannot write one run folder at once.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False, lock: bool = True) -> None:
        self.path = Path(path)
        self._lock = None
        self.log_with = "none"  # which experiment tracker epochs go to (set by the stage that opens the run)
        self.tracker = None  # made at the first logged epoch, so a run that fails earlier leaves no logs
        self.config: dict | None = None  # the run's config, given to the tracker when it starts
        self.step = 0  # the last step logged (the summary is logged at it)
        if not lock:  # a secondary process of a distributed run attaches to the folder its main process set up
            self.path.mkdir(parents=True, exist_ok=True)
            return
        has_content = self.path.exists() and any(p.name != ".lock" for p in self.path.iterdir())
        if has_content and not (resume or overwrite):
            raise Fm2EdgeError(f"run folder '{self.path}' already exists; pass --run.resume true to continue it, "
                               f"--run.overwrite true to replace it, or choose another --run.name")
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock, Timeout

        self._lock = FileLock(self.path / ".lock")  # held for the life of the run
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            self._lock = None
            raise Fm2EdgeError(f"run folder '{self.path}' is in use by another fm2edge process; wait for it "
                               f"or choose another --run.name") from None
        clean_partial(self.path)

    def log_epoch(self, values: dict, step: int) -> None:
        """One epoch's numbers to the experiment tracker (made on first use, with the run's config)."""
        if self.log_with == "none":
            return
        if self.tracker is None:
            self.tracker = make_tracker(self.log_with, self.path, self.config)
            if self.tracker is None:
                self.log_with = "none"
                return
        self.step = step
        self.tracker.log(values, step=step)

    def log_summary(self, metrics: dict) -> None:
        """The stage's summary numbers (``summary/...``: test accuracy, throughput, probe accuracies...) to the
        tracker, at the last step logged."""
        numbers = {f"summary/{k}": v for k, v in flat_values(metrics).items()}
        if numbers:
            self.log_epoch(numbers, self.step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_config(self, config: dict[str, Any]) -> None:
        """``config.yaml``, and the config the tracker will be given."""
        self.config = config
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.file(name), obj)

    def write_metrics(self, stage: str | None, metrics: dict) -> dict:
        """The run's results, with the stage that wrote them (``None`` while the stage is still running)."""
        metrics = {"stage": stage, **metrics} if stage else dict(metrics)
        self.write_json(METRICS_FILE, metrics)
        return metrics

    def write_predictions(self, logits: Any, labels: Any, class_names: list[str],
                          name: str = "predictions.npz") -> None:
        """Test-split logits, labels, argmax predictions and class names, as one .npz written atomically."""
        import io

        import numpy as np

        logits = np.asarray(logits)
        buf = io.BytesIO()
        np.savez(buf, logits=logits, labels=np.asarray(labels), preds=logits.argmax(-1),
                 class_names=np.array(class_names))
        atomic_write_bytes(self.file(name), buf.getvalue())

    def read_json(self, name: str, default: Any = None) -> Any:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else default
