"""What every stage does around its own work: start (device, data, run folder) and finish (model, predictions,
metrics, plots), once or once per seed.

A stage reads as ``session = start_stage(...)``, ``run = session.open(...)``, its own steps, then ``write_outputs``;
``over_seeds`` repeats a whole stage per seed and summarises.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fm2edge.config import DataConfig, ModelConfig, RunConfig
from fm2edge.data import ImageData
from fm2edge.models import Classifier
from fm2edge.runs import RunDir, atomic_write_json, atomic_write_text, resolve_tracker


def slug(text: str) -> str:
    """A folder name from a model name: ``distill-student:small_cnn`` -> ``distill-student-small_cnn``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def open_run(path: Path, cfg: RunConfig, accelerator) -> RunDir:
    """The main process checks, creates and locks the run folder; the others attach once it is ready."""
    run = None
    if accelerator.is_main_process:
        run = RunDir(path, resume=cfg.resume, overwrite=cfg.overwrite)
    accelerator.wait_for_everyone()
    return run if run is not None else RunDir(path, lock=False)


@dataclass
class Session:
    """A stage's start: the accelerator and the data (loaded by the main process first, so one process decodes
    and the others read its cache)."""

    accelerator: Any
    train: ImageData
    val: ImageData | None
    test: ImageData

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def splits(self) -> dict:
        """What each split holds, for metrics.json: {"train": {"images", "content"}, "validation": ..., "test": ...};
        ``content`` is a hash of the split's images and labels, so two runs can be checked to have used the same;
        validation and test also count their ``near_copies`` of training images (None: too small to compare)."""
        from fm2edge.data.splits import near_copies

        named = {"train": self.train, "validation": self.val, "test": self.test}
        out = {name: {"images": len(data), "content": data.content_hash} for name, data in named.items()
               if data is not None}
        for name in ("validation", "test"):
            if name in out:
                alike = near_copies(named[name], self.train)
                out[name]["near_copies"] = None if alike is None else len(alike[0])
        return out

    def open(self, run: RunConfig, default_name: str) -> RunDir:
        """The stage's run folder, ``run.root/run.name`` (or the default name), logging to ``run.log_with``."""
        log_with = resolve_tracker(run.log_with) if self.is_main else "none"  # a missing tracker fails here
        folder = open_run(Path(run.root) / (run.name or default_name), run, self.accelerator)
        folder.log_with = log_with
        return folder

    def model(self, cfg: ModelConfig, seed: int) -> Classifier:
        """A fresh model for this data's classes, its random weights drawn from ``seed``. A student without an
        input size follows the data (see :func:`student_size`) rather than its 32 px default."""
        from fm2edge.models import create_model, resolve

        if cfg.image_size is None and resolve(cfg.name)[0].kind == "student":
            cfg = dataclasses.replace(cfg, image_size=student_size(self.train.image_size[0]))
        torch.manual_seed(seed)
        return create_model(cfg, self.train.num_classes)


STUDENT_SIZES = (32, 128)  # a student's default input: the stored size, within these bounds


def student_size(stored: int) -> int:
    """A student's input size for images stored at ``stored`` px: the same (32 px CIFAR stays 32 px) within
    ``STUDENT_SIZES``: 256 px photos train at 128 px (an edge model's budget), not silently at 32; 8 px digits
    are enlarged to 32 px, the smallest input the students are built for."""
    return min(max(stored, STUDENT_SIZES[0]), STUDENT_SIZES[1])


def start_stage(data: DataConfig, device: str = "auto", precision: str = "auto") -> Session:
    """Accelerator for ``device`` / ``precision`` and the data of ``data``: the one start-up of every stage."""
    from fm2edge.data import load_data
    from fm2edge.device import make_accelerator
    from fm2edge.timing import reset_peak_rss

    reset_peak_rss()  # the stage's own peak memory, even when a recipe or `auto` runs several in one process
    accelerator = make_accelerator(device, precision)
    with accelerator.main_process_first():
        train, val, test = load_data(data)
    return Session(accelerator, train, val, test)


def describe_splits(session: Session) -> str:
    """``"1212 train / 135 validation / 450 test images (content 39ea6e.. / b6824f.. / df56cf..)"``: the counts, and
    each split's content hash (equal hashes in two runs: the same images)."""
    val = f"{len(session.val)} validation" if session.val is not None else "no validation"
    hashes = " / ".join(h["content"][:6] for h in session.splits.values())
    return f"{len(session.train)} train / {val} / {len(session.test)} test images (content {hashes})"


def selection_line(selection: dict) -> str:
    """``"kept epoch 7 of 10 (best validation accuracy 93.10%)"`` for the printed summary."""
    if selection["on"] == "validation accuracy":
        return f"kept epoch {selection['epoch']} (best validation accuracy {100 * selection['val_acc']:.2f}%)"
    return f"kept epoch {selection['epoch']} ({selection['on']})"


def write_outputs(run: RunDir, stage: str, model: Classifier, result: Any, test: ImageData, extra: dict) -> dict:
    """Final model, test predictions, metrics and learning curves of a finished training run of ``stage``
    (``result``: the training loop's ``FitResult``)."""
    from fm2edge.models.io import save_classifier
    from fm2edge.report import plots
    from fm2edge.report.metrics import accuracy, balanced_accuracy
    from fm2edge.report.write import save_figure
    from fm2edge.timing import peak_rss

    model.class_names = list(test.class_names)
    save_classifier(model, run.path)
    scored = result.test_logits is not None  # --train.score_test false: a candidate, its test split left unread
    if scored:
        run.write_predictions(result.test_logits.numpy(), test.labels.numpy(), test.class_names)
    metrics = {"history": result.history, "test_acc": accuracy(result.test_logits, test.labels) if scored else None,
               # the mean of the classes' accuracies: what a model favouring the large classes cannot inflate
               "test_balanced_acc": balanced_accuracy(result.test_logits.argmax(1), test.labels) if scored else None,
               "val_acc": result.selection["val_acc"], "selected": result.selection,
               # the kept weights' balanced accuracy on validation (what `auto --auto.metric balanced_accuracy` ranks)
               "val_balanced_acc": result.selection.get("val_balanced_acc"),
               "train_seconds": result.seconds, "resumed_from_epoch": result.resumed_from,
               "parameters": sum(p.numel() for p in model.parameters()),
               "peak_rss_bytes": peak_rss(),  # the process's resident high-water mark since the stage started
               **extra}
    metrics = run.write_metrics(stage, metrics)
    run.log_summary(metrics)
    atomic_write_text(run.file("README.md"), model_card(model, metrics, metrics,
                                                        run.path))
    save_figure(plots.learning_curves(result.history, f"{model.name} on {extra.get('data', 'data')}",
                                      result.selection["epoch"]),
                run.file("plots", "learning_curves.png"))
    return metrics


def card_metadata(name: str, metrics: dict, teacher: str | None) -> str:
    """The card's YAML metadata (the Hub's schema, written by huggingface_hub): library, task, tags, and the test
    accuracy as an evaluation result where it was read."""
    from huggingface_hub import EvalResult, ModelCardData

    data = str(metrics.get("data") or "its data")
    results = [EvalResult(task_type="image-classification", dataset_type=data, dataset_name=data,
                          dataset_split="test", metric_type="accuracy", metric_value=round(metrics["test_acc"], 4))
               ] if metrics.get("test_acc") is not None else None
    card = ModelCardData(library_name="fm2edge", pipeline_tag="image-classification", metrics=["accuracy"],
                         tags=["fm2edge", "image-classification", *(["knowledge-distillation"] if teacher else [])],
                         model_name=name, eval_results=results)
    return card.to_yaml().rstrip("\n")


@dataclass(frozen=True)
class CardOrigin:
    """What a model card says of a model that no one training run made (`fm2edge auto`'s best/): how it was made
    (ends the card's first sentence), the lines under Results in place of the training one, the graph it ships and
    how other tools run it (markdown), and the command that makes it again."""

    made: str
    process: list[str]
    graph: str
    reproduce: str


def model_card(model: Classifier, metrics: dict, saved: dict, path: Path, origin: CardOrigin | None = None) -> str:
    """A Hugging Face model card (README.md) for a run's model: what it is, what it was trained on, how well it
    does, how to load it, how to reproduce it, and what it is for; ``origin`` where no one run made it."""
    import yaml

    p = model.preprocess
    config = (yaml.safe_load((path / "config.yaml").read_text()) or {}) if (path / "config.yaml").exists() else {}
    command = "distill" if "distill" in config else "train"
    teacher = metrics.get("teacher")
    selected = metrics.get("selected") or {}
    epoch = f" (epoch {selected['epoch']})" if selected.get("epoch") is not None else ""
    if origin is not None:
        made, process, reproduce = origin.made, origin.process, origin.reproduce
    else:
        made = f"trained with `fm2edge {command}`" + (f", taught by {teacher}" if teacher else "")
        process = [f"- training: {len(metrics.get('history', []))} epochs, {metrics.get('train_seconds', 0) / 60:.1f} "
                   f"min on {(metrics.get('env') or {}).get('device', 'an unrecorded device')}"]
        reproduce = f"fm2edge {command} --config config.yaml"
    read = (f"through {metrics['test_read_through']}" if metrics.get("test_read_through") else
            f"on the weights kept by {selected.get('on', 'the last epoch')}{epoch}")
    lines = [
        "---", card_metadata(path.name, metrics, teacher), "---", "",
        f"# {path.name}", "",
        f"A {model.name} image classifier ({metrics.get('parameters', 0):,} parameters, {p.size} x {p.size} px "
        f"input) {made}.", "",
        "## Results", "",
        (f"- test accuracy: {100 * metrics['test_acc']:.2f}% on the test split of {metrics.get('data', 'its data')}, "
         f"read once, {read}" if metrics.get("test_acc") is not None else
         "- test accuracy: not read (a candidate chosen between on validation; see the run that chose it)"),
        *([f"- validation accuracy: {100 * metrics['val_acc']:.2f}%"] if metrics.get("val_acc") is not None else []),
        *([f"- teacher test accuracy: {100 * metrics['teacher_test_acc']:.2f}%"]
          if metrics.get("teacher_test_acc") is not None else []),
        *process, "",
        "## Use", "",
        "```python", "import fm2edge", "", f'model = fm2edge.load("{path.name}")  # this folder',
        'print(model.predict(["image.jpg"]).labels)', "",
        "net = fm2edge.from_pretrained(\"user/repo\")  # the PyTorch module, from this folder or the Hub", "```",
        "",
        "The folder is a `huggingface_hub` `PyTorchModelHubMixin` folder (`config.json` names the architecture, the "
        "classes and the preprocessing). After `fm2edge export`, a timm student also has "
        "`export/timm_model.safetensors`: `export/export.json` (`timm`) gives the `timm.create_model` arguments "
        "that load it.", "",
        f"Inputs are RGB images; the model resizes the shortest edge to {p.resize_size()} px ({p.interpolation}), "
        f"centre-crops {p.size} px and normalises with mean {list(p.mean)} and std {list(p.std)}."
        + ("" if origin is not None else
           " `fm2edge export` writes an ONNX graph that takes uint8 images and returns probabilities."), "",
        *([origin.graph, ""] if origin is not None else []),
        "## Reproduce", "", "```bash", reproduce, "```", "",
        "## Intended use and limits", "",
        f"Classifying images like those of {metrics.get('data', 'its training data')} into its classes. It has "
        "seen only that data: expect lower accuracy on other cameras, scenes or classes, and check it on your own "
        "images before relying on it.", ""]
    return "\n".join(lines)


def onnx_snippet(graph: str, preprocess, class_names: list[str]) -> str:
    """Python that classifies one image file with the exported ``graph`` (uint8 NHWC input "images", probabilities
    out) through ONNX Runtime, PIL and NumPy alone, preparing the image as ``preprocess`` does (the shortest edge
    resized with PIL's antialiased kernels, which the model's own resize follows, then the centre crop)."""
    size, short = preprocess.size, preprocess.resize_size()
    kernel = {"bicubic": "BICUBIC", "nearest": "NEAREST"}.get(preprocess.interpolation, "BILINEAR")
    return "\n".join([
        "```python", "import numpy as np", "import onnxruntime as ort", "from PIL import Image, ImageOps", "",
        f"classes = {class_names!r}",
        f'session = ort.InferenceSession("{graph}")',
        'image = ImageOps.exif_transpose(Image.open("image.jpg")).convert("RGB")',
        f"scale = {short} / min(image.size)  # the shortest edge to {short} px, then the centre {size} x {size}",
        f"width, height = max({short}, round(image.width * scale)), max({short}, round(image.height * scale))",
        f"image = image.resize((width, height), Image.Resampling.{kernel})",
        f"left, top = (width - {size}) // 2, (height - {size}) // 2",
        f"pixels = np.asarray(image.crop((left, top, left + {size}, top + {size})))[None]  # uint8, 1 x {size} x "
        f"{size} x 3",
        'probabilities = session.run(None, {"images": pixels})[0][0]',
        "print(classes[int(probabilities.argmax())], float(probabilities.max()))", "```"])


def over_seeds(job, run_one, default_name: str) -> dict:
    """Run ``run_one(job)`` once, or once per seed of ``job.seeds`` in RUN/seed-N with a mean / std summary."""
    import numpy as np

    if not job.seeds:
        return run_one(job)
    name = job.run.name or default_name
    per_seed = {}
    for seed in job.seeds:
        sub = dataclasses.replace(job, seeds=None, train=dataclasses.replace(job.train, seed=seed),
                                  run=dataclasses.replace(job.run, root=str(Path(job.run.root) / name),
                                                          name=f"seed-{seed}"))
        per_seed[seed] = run_one(sub)
    if not all(per_seed.values()):  # other processes of a distributed run hold no metrics
        return {}
    if any(m["test_acc"] is None for m in per_seed.values()):  # --train.score_test false: nothing to summarise
        return {"seeds": list(job.seeds), "runs": [f"seed-{s}" for s in job.seeds],
                "val_acc": [m.get("val_acc") for m in per_seed.values()]}
    accs = np.array([m["test_acc"] for m in per_seed.values()])
    summary = {"seeds": list(job.seeds), "test_acc": [float(a) for a in accs], "mean": float(accs.mean()),
               "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0, "runs": [f"seed-{s}" for s in job.seeds],
               "val_acc": [m.get("val_acc") for m in per_seed.values()]}  # each kept epoch's, None without one
    atomic_write_json(Path(job.run.root) / name / "seeds.json", summary)
    print(f"test accuracy over seeds {list(job.seeds)}: {100 * summary['mean']:.2f} +- {100 * summary['std']:.2f}% "
          f"({', '.join(f'{100 * a:.2f}' for a in accs)}) | {Path(job.run.root) / name}")
    return summary
