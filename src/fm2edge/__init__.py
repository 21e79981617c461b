"""fm2edge: from a vision foundation model to a tiny edge model, with numbers for what was gained and lost.

The lifecycle is the package layout: ``data`` -> ``models`` -> ``features`` -> ``probe`` / ``adapt`` -> ``distill``
-> ``bench`` / ``export`` -> ``report``. ``train`` holds the one training loop every stage shares.
"""

__version__ = "0.1.0"
__all__ = ["load", "from_pretrained", "auto", "run_stage"]


def load(model, backend: str = "auto", threads: int | None = None):
    """A trained model ready to classify images: ``fm2edge.load("runs/x").predict(["a.jpg", "b.png"])`` returns
    labels and probabilities. ``model`` is a run folder (PyTorch; the graph it ships where `fm2edge auto` put one,
    as in best/) or an .onnx file from `fm2edge export`."""
    from fm2edge.predict import load as load_predictor

    return load_predictor(model, backend, threads)


def from_pretrained(name_or_path, revision: str | None = None):
    """The trained PyTorch classifier of a run folder or of a Hub repository written by ``fm2edge push`` (the same
    as ``fm2edge.models.Classifier.from_pretrained``, with a clear error where the hub cannot be reached)."""
    from fm2edge.models.io import from_pretrained as load_pretrained

    return load_pretrained(name_or_path, revision)


def auto(config: dict | None = None, **sections):
    """`fm2edge auto` from Python: ``fm2edge.auto(data={"source": "photos/"}, auto={"latency_ms": 2, "minutes":
    30})`` chooses, trains, exports and proves the most accurate model within the budget and returns what
    RUN/auto.json holds (the choice, its test accuracy beside the teacher's, the leaderboard)."""
    from fm2edge.automate import AutoJob, auto_job
    from fm2edge.parsing import job_from_class

    return auto_job(job_from_class(AutoJob, "auto", {**(config or {}), **sections}))


def run_stage(command: str, config: dict | None = None):
    """Run a stage (``"train"``, ``"distill"``, ``"export"``, ...) from the nested dict its YAML takes and return
    its result: ``fm2edge.run_stage("train", {"data": {"source": "digits"}, "train": {"epochs": 3}})``."""
    from fm2edge.stages import run_stage as run

    return run(command, config)
