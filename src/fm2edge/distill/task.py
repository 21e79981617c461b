"""The distillation task and the `fm2edge distill` stage.

A :class:`DistillTask` combines a trainable student, a frozen teacher and weighted losses, and returns
``{"loss", "logits", <part>...}`` to the one training loop. Teacher and student each keep their own preprocessing
(the teacher may see 224 px ImageNet-normalised inputs while the student trains at 32 px). When the student's inputs
are deterministic (no augmentation), teacher logits and features are computed once, stored memory-mapped in the
fm2edge cache (``$FM2EDGE_CACHE/teacher``, keyed by teacher weights, preprocessing and images, so seeds and loss
variants share them), and reused every epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from fm2edge.augment import StoredViews, Views, model_views, soft_targets
from fm2edge.config import (
    DistillConfig,
    DistillJob,
)
from fm2edge.distill.losses import DIST, DKD, RKD, FeatureDistillation, KDLoss, MaskedCrossEntropy
from fm2edge.distill.teacher import (
    cache_dir_for,
    graph_folder,
    limited,
    load_teacher,
    share_teacher_cache,
    teacher_graph,
    teacher_logits,
    views_accuracy,
    with_unlabeled,
)
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import Classifier


@dataclass(frozen=True)
class LossSpec:
    """How a loss is built from the config, student and teacher, and which tensors it compares: "logits" (student
    and teacher logits), "logits+labels" (and the labels), "labels" (student logits and labels) or "features"
    (student and teacher features)."""

    build: Callable[..., nn.Module]
    inputs: Literal["logits", "logits+labels", "labels", "features"]


# The one table of distillation losses: the config check, the task's modules and its forward pass all read it.
# ``steps`` is the number of training batches per epoch, each one call of the loss (DKD's warm-up is given in
# epochs and counted in calls).
LOSSES: dict[str, LossSpec] = {
    "kd": LossSpec(lambda cfg, student, teacher, steps=1: KDLoss(cfg.temperature, cfg.alpha), "logits+labels"),
    "dkd": LossSpec(lambda cfg, student, teacher, steps=1: DKD(cfg.dkd_alpha, cfg.dkd_beta, cfg.temperature,
                                                              round(cfg.dkd_warmup * steps)), "logits+labels"),
    "dist": LossSpec(lambda cfg, student, teacher, steps=1: DIST(cfg.dist_beta, cfg.dist_gamma, cfg.dist_tau),
                     "logits"),
    "rkd": LossSpec(lambda cfg, student, teacher, steps=1: RKD(cfg.rkd_distance, cfg.rkd_angle), "features"),
    "feature": LossSpec(lambda cfg, student, teacher, steps=1: FeatureDistillation(student.feature_dim,
                                                                                   teacher.feature_dim), "features"),
    "ce": LossSpec(lambda cfg, student, teacher, steps=1: MaskedCrossEntropy(), "labels"),
}


def model_inputs(model: Classifier, images: torch.Tensor, views: Views | None, partners: torch.Tensor | None,
                 channels_last: bool = False) -> torch.Tensor:
    """``model``'s normalised input: the plain images through its own preprocessing, or the views rendered at its
    own size (what consistent teaching shows a teacher and a student alike)."""
    if views is None:
        x = model.preprocess(images)
    else:
        x = model_views(model.preprocess, images, views, partners)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class DistillTask(nn.Module):
    """Student + frozen teacher + weighted losses. The teacher is held outside the module tree, so it is neither
    trained, wrapped by DDP, nor written into checkpoints; the feature projector is a submodule (trained and
    checkpointed) but not part of the exported student.

    With augmentation, "consistent" teaching renders each batch's views twice from the same parameters, at the
    student's and at the teacher's input size. ``cache`` (teacher outputs, (N, K, C)) and ``view_source`` (the
    stored views they were computed on) replace the online teacher when set; ``view_source`` is what the training
    loop draws its views from.
    """

    def __init__(self, student: Classifier, teacher: Classifier, cfg: DistillConfig, channels_last: bool = False,
                 steps_per_epoch: int = 1) -> None:
        super().__init__()
        self.model = student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        if channels_last:  # the teacher's inputs are channels-last too: a conv teacher runs fastest in kind
            teacher.to(memory_format=torch.channels_last)
        self.teacher_precision = cfg.teacher_precision
        self.weights = dict(cfg.losses)
        self.channels_last = channels_last
        self.teaching = cfg.teaching
        self.cache: dict[str, torch.Tensor] | None = None
        self.view_source: StoredViews | None = None
        # the teacher's pooled features as an ONNX Runtime session (distill.teacher.teacher_graph), or None: PyTorch
        self.teacher_graph: Callable[[torch.Tensor], np.ndarray] | None = None
        self.losses = nn.ModuleDict({name: LOSSES[name].build(cfg, student, teacher, steps_per_epoch)
                                     for name in self.weights})

    @property
    def needs_features(self) -> bool:
        return any(LOSSES[name].inputs == "features" for name in self.weights)

    def inputs(self, model: Classifier, images: torch.Tensor, views: Views | None,
               partners: torch.Tensor | None) -> torch.Tensor:
        return model_inputs(model, images, views, partners, self.channels_last)

    @torch.no_grad()
    def teacher_outputs(self, images: torch.Tensor, views: Views | None = None,
                        partners: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits (and features when a loss needs them) on the images, or on their views when
        teaching is consistent."""
        consistent = views is not None and self.teaching == "consistent"
        x = self.inputs(self.teacher, images, views if consistent else None, partners)
        dtype = self.teacher_dtype(x.device)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            feats = self.teacher.features(x) if self.teacher_graph is None else \
                torch.from_numpy(self.teacher_graph(x))
            logits = self.teacher.head(feats)
        return logits.float(), feats.float() if self.needs_features else None

    def teacher_arrays(self, images: torch.Tensor, views: Views | None = None,
                       partners: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What the teacher cache stores for these images: logits, and features when a loss needs them."""
        logits, feats = self.teacher_outputs(images, views, partners)
        return {"logits": logits} if feats is None else {"logits": logits, "features": feats}

    def teacher_dtype(self, device: torch.device) -> torch.dtype | None:
        """The teacher's autocast dtype on ``device`` (None: fp32)."""
        from fm2edge.device import autocast_dtype

        return autocast_dtype(self.teacher_precision, device)

    def cached_outputs(self, index: torch.Tensor, views: Views | None,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stored teacher outputs for these images (and, with stored views, for the view each one shows)."""
        rows = index.cpu()
        slot = torch.zeros_like(rows)
        if views is not None and self.teaching == "consistent":
            slot = views.col("slot").long().clamp_min(0).cpu()
        logits = self.cache["logits"][rows, slot].to(device).float()
        feats = self.cache["features"][rows, slot].to(device).float() if "features" in self.cache else None
        return logits, feats

    def forward(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None,
                views: Views | None = None, partners: torch.Tensor | None = None,
                partner_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.cache is not None and index is not None:
            t_logits, t_feats = self.cached_outputs(index, views, images.device)
        else:
            t_logits, t_feats = self.teacher_outputs(images, views, partners)
        s_feats = self.model.features(self.inputs(self.model, images, views, partners))
        logits = self.model.head(s_feats)
        if partners is not None:  # a mixed view's labels are the mix of both images' labels
            labels = soft_targets(labels, views, partner_labels, logits.shape[1])
        parts: dict[str, torch.Tensor] = {}
        for name, loss_fn in self.losses.items():
            inputs = LOSSES[name].inputs
            if inputs == "features":
                parts[name] = loss_fn(s_feats, t_feats)
            elif inputs == "logits":
                parts[name] = loss_fn(logits, t_logits)
            elif inputs == "labels":
                parts[name] = loss_fn(logits, labels)
            else:
                parts[name] = loss_fn(logits, t_logits, labels)
        loss = sum(self.weights[n] * p for n, p in parts.items())
        # The parts are returned as they are and detached by whoever logs them: detaching here breaks
        # torch.compile, which folds ``1.0 * part`` into the part itself and then marks the loss non-differentiable
        # along with the detached copy (pytorch/pytorch#195357, fixed after torch 2.14).
        return {"loss": loss, "logits": logits, **{f"loss_{n}": p for n, p in parts.items()}}


# ---------------------------------------------------------------- the teacher's gate, its cache key, the teaching

# The quality gate reads validation where it holds this many images (a teacher 90% right scores under the gate's
# floor, 75% for two classes, on 30 of them about once in a thousand), else this many labelled training images
GATE_VALIDATION_IMAGES, GATE_TRAINING_IMAGES = 30, 200


def quality_gate(teacher_acc: float, num_classes: int, cfg: DistillConfig, name: str,
                 split: str = "the validation split") -> None:
    """Refuse a teacher near chance (such as a pretrained backbone whose new head was never trained)."""
    chance = 1.0 / num_classes
    floor = chance * (1 + cfg.min_teacher_gain)
    if teacher_acc < floor and not cfg.force:
        raise Fm2EdgeError(
            f"the teacher '{name}' scores {100 * teacher_acc:.1f}% on {split}, near chance "
            f"({100 * chance:.1f}%): its classification head is untrained. Train it first, e.g. "
            f"`fm2edge probe --model.name {name}` (a linear probe) or `fm2edge train --model.name {name}`, and pass "
            f"that run folder as --distill.teacher; or pass --distill.force true to distil anyway")


def gate_images(train, val, most: int = GATE_TRAINING_IMAGES) -> tuple:
    """(the images the quality gate scores the teacher on, what they are, for its messages). The gate is a choice,
    so it reads the validation split; where there is none, or it holds fewer than GATE_VALIDATION_IMAGES (two
    validation images of a 16-photo folder: a probe scoring 1 of 2 was refused as "near chance"), it reads up to
    ``most`` labelled training images: an untrained head is near chance on those too."""
    if val is not None and len(val) >= GATE_VALIDATION_IMAGES:
        return val, "the validation split"
    why = "no validation split" if val is None else f"validation holds {len(val)}, too few to judge it"
    n = min(len(train), most)
    return train.subset(torch.arange(n)), f"{n} training images ({why})"


def teacher_cache_dir(job: DistillJob, teacher: Classifier, train, features: bool, views: dict | None,
                      dtype: torch.dtype | None = None) -> Path:
    """Where the teacher's outputs on these training images live, shared by every run (seeds, loss variants) with
    the same teacher weights, teacher preprocessing, images and stored views (``views``: their augmentation, count,
    seed and the teaching): under the fm2edge cache, keyed by all of those, so a change of any one recomputes."""
    # a registered model's head is new and seeded: its seed is part of what it is
    registered = f"{job.distill.teacher}|{job.distill.teacher_pretrained}|seed={job.train.seed}"
    return cache_dir_for(job.data, job.distill.teacher, registered, teacher, train, features, views, dtype)


def teaching_plan(job: DistillJob, train) -> tuple[torch.Tensor | None, bool, dict | None]:
    """(the stored views (N, K, columns) or None, whether teacher outputs are cached, the views' cache key part).

    Without augmentation, or with "fixed" teaching, the teacher's outputs on the plain images are deterministic
    and are cached; with consistent teaching they are cached only on stored views (``distill.views`` > 0)."""
    from fm2edge.augment import draw_stored_views
    from fm2edge.config import to_dict

    cfg, augment = job.distill, job.train.augment
    views = key = None
    if consistent_teaching(job) and cfg.views:
        views = draw_stored_views(len(train), cfg.views, augment, cfg.view_seed, train.image_size[0])
        key = {"augment": to_dict(augment), "views": cfg.views, "seed": cfg.view_seed}
    return views, caches_teacher(job), key


def consistent_teaching(job: DistillJob) -> bool:
    """Whether the teacher sees the student's augmented views (rather than the plain images)."""
    return job.train.augment.active and job.distill.teaching == "consistent"


def caches_teacher(job: DistillJob) -> bool:
    """Whether the teacher's outputs are computed once and cached (see :func:`teaching_plan`), so that training
    never runs the teacher."""
    return job.distill.cache_teacher == "auto" and (not consistent_teaching(job) or bool(job.distill.views))


def teaching_line(job: DistillJob, task: DistillTask) -> str:
    """``"consistent teaching on 8 stored views per image (teacher outputs cached)"`` for the start-up line."""
    if not job.train.augment.active:
        what = "no augmentation"
    elif job.distill.teaching == "fixed":
        what = "fixed teaching (the teacher sees the plain images)"
    elif task.view_source is not None:
        what = f"consistent teaching on {task.view_source.per_image} stored views per image"
    else:
        what = "consistent teaching on views drawn every epoch"
    return f"{what}, teacher outputs {'cached' if task.cache is not None else 'online'}"


# Views stored per image when --distill.views is left empty and the student trains on a CPU.
CPU_VIEWS = 4


def resolved_views(cfg: DistillConfig, device: torch.device) -> int:
    """--distill.views, or when empty CPU_VIEWS stored views on a CPU and the teacher online (0) elsewhere."""
    return cfg.views if cfg.views is not None else (CPU_VIEWS if device.type == "cpu" else 0)


def distill_job(job: DistillJob) -> dict:
    """`fm2edge distill`: gate the teacher, build the task, run the one loop, write the run folder (per seed)."""
    from fm2edge.results import over_seeds, slug

    return over_seeds(job, distill_one, slug(f"distill-{job.model.name}"))


def with_unlabeled_images(job: DistillJob, train, accelerator):
    """The training split with the unlabelled images the job asks for (``--distill.unlabeled``: the source's own
    unlabelled split; ``--distill.unlabeled_source``: a folder, at most ``--distill.unlabeled_limit``), read by the
    main process first so that the others find its cache."""
    from fm2edge.data import load_unlabeled, load_unlabeled_source

    if job.distill.unlabeled:
        with accelerator.main_process_first():
            train = with_unlabeled(train, load_unlabeled(job.data, None if job.distill.unlabeled < 0
                                                         else job.distill.unlabeled))
    if job.distill.unlabeled_source:
        with accelerator.main_process_first():
            extra = limited(load_unlabeled_source(job.distill.unlabeled_source, job.data, train.image_size),
                            job.distill.unlabeled_limit)
            train = with_unlabeled(train, extra)
    return train


def distill_one(job: DistillJob) -> dict:
    from fm2edge.config import proven_recipe, starts_trained, to_dict
    from fm2edge.device import autocast_dtype, environment
    from fm2edge.report.metrics import accuracy, balanced_accuracy
    from fm2edge.results import selection_line, slug, start_stage, write_outputs
    from fm2edge.train import fit

    session = start_stage(job.data, job.train.device, job.train.precision)
    test, accelerator = session.test, session.accelerator
    train = with_unlabeled_images(job, session.train, accelerator)
    job = dataclasses.replace(job, train=proven_recipe(job.train, len(train), train.image_size[0],
                                                       starts_trained(job.model), job.model.pretrained),
                              distill=dataclasses.replace(job.distill, views=resolved_views(job.distill,
                                                                                            accelerator.device)))
    torch.manual_seed(job.train.seed)  # a registered teacher gets a fresh head: its gate verdict must be reproducible
    cfg = job.distill
    teacher = load_teacher(cfg.teacher, train.num_classes, cfg.teacher_pretrained, cfg.teacher_image_size,
                           cfg.teacher_flip).to(accelerator.device)
    open_graph = functools.partial(teacher_graph, teacher, cfg.teacher_backend, accelerator.device,
                                   autocast_dtype(cfg.teacher_precision, accelerator.device), graph_folder(job.data))
    # several processes share the gate and the test split out through predict (teacher_logits), and only the main
    # one fills a cache: the others open the graph only where training runs the teacher
    graph = open_graph() if accelerator.is_main_process or not caches_teacher(job) else None
    gate_data, gate_split = gate_images(session.train, session.val)
    gate_acc = accuracy(teacher_logits(teacher, gate_data, accelerator.device, graph, job.train.eval_batch_size,
                                       accelerator), gate_data.labels)
    if accelerator.is_main_process:
        print(f"teacher {teacher.name}: {100 * gate_acc:.2f}% on {gate_split}"
              f"{' (its forward passes in ONNX Runtime)' if graph and accelerator.num_processes == 1 else ''}")
    quality_gate(gate_acc, train.num_classes, job.distill, teacher.name, gate_split)
    student = session.model(job.model, job.train.seed)
    with session.open(job.run, slug(f"distill-{job.model.name}")) as run:
        config = to_dict(job)
        # DKD's ramp counts the loss's training calls: one per batch, so --train.grad_accum's several batches per
        # optimiser step still ramp over the epochs asked for
        calls = math.ceil(len(train) / job.train.batch_size)
        task = DistillTask(student, teacher, job.distill, job.train.channels_last, calls)
        task.teacher_graph, graph = graph, None  # one reference, so that dropping it closes the session
        views, cached, views_key = teaching_plan(job, train)
        cache_dir = views_acc = None
        if views is not None:
            task.view_source = StoredViews(views)
        if cached:
            cache_dir = teacher_cache_dir(job, teacher, train, task.needs_features, views_key,
                                          task.teacher_dtype(accelerator.device))
            share_teacher_cache(task, train.images, views, cache_dir, job.train.eval_batch_size, accelerator,
                                task.needs_features)
        if accelerator.is_main_process:
            if cached and views is not None:  # read once, by the process that reports it
                views_acc = views_accuracy(task.cache["logits"], train.labels)
            run.write_config(config)
            print(f"student {student.name}: {sum(p.numel() for p in student.parameters()):,} parameters, input "
                  f"{student.preprocess.size} px | teacher input {teacher.preprocess.size} px | "
                  f"{int((train.labels >= 0).sum())} labelled + {int((train.labels < 0).sum())} unlabelled training "
                  f"images | losses "
                  f"{job.distill.losses} | {teaching_line(job, task)}")
            if views_acc is not None:
                print(f"teacher on the stored views: {100 * views_acc:.2f}% name the label ({100 * gate_acc:.2f}% "
                      f"on {gate_split})")
        scored = job.train.score_test  # false: a candidate; neither it nor its teacher reads the test split here
        result = fit(task, student, train, session.val, test if scored else None, job.train, run, accelerator, config)
        metrics = {}
        # the test split's teacher logits: through the graph again (exported, so quick to open) in one process;
        # several processes share them out through predict (teacher_logits)
        if cached and scored and accelerator.num_processes == 1:
            task.teacher_graph = open_graph()
        t_logits = teacher_logits(teacher, test, accelerator.device, task.teacher_graph, job.train.eval_batch_size,
                                  accelerator) if scored else None
        teacher_acc = accuracy(t_logits, test.labels) if scored else None
        teacher_balanced = balanced_accuracy(t_logits.argmax(1), test.labels) if scored else None
        if accelerator.is_main_process:
            agree = accuracy(result.test_logits.argmax(1), t_logits.argmax(1)) if scored else None
            metrics = write_outputs(run, "distill", student, result, test, {
                "data": job.data.source, "splits": session.splits, "env": environment(accelerator),
                "teacher": teacher.name,
                "teacher_test_acc": teacher_acc, "teacher_test_balanced_acc": teacher_balanced,
                "teacher_gate_acc": gate_acc, "teacher_gate_split": gate_split,
                "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
                "agreement_with_teacher": agree, "teacher_cached": task.cache is not None,
                "labelled_images": int((train.labels >= 0).sum()), "unlabelled_images": int((train.labels < 0).sum()),
                "teaching": job.distill.teaching if job.train.augment.active else "plain images",
                "stored_views": job.distill.views if views is not None else 0, "teacher_views_acc": views_acc,
                "teacher_cache": str(cache_dir) if cache_dir else None})
            if scored:
                run.write_predictions(t_logits.numpy(), test.labels.numpy(), test.class_names,
                                      "teacher_predictions.npz")
                print(f"{selection_line(result.selection)}: student test accuracy {100 * metrics['test_acc']:.2f}% "
                      f"(teacher {100 * teacher_acc:.2f}%, agreement {100 * agree:.1f}%) | results in {run.path}")
            else:
                print(f"{selection_line(result.selection)}: test split not read | results in {run.path}")
        accelerator.wait_for_everyone()
    return metrics
