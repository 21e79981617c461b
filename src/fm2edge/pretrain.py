"""`fm2edge pretrain`: distil a foundation model's *features* into a small network on images without labels.

The teacher is any backbone fm2edge loads (``hf:``, ``timm:``, ``pypi:``, a file teacher, a run folder); its head is
never used. The student learns to match the teacher's pooled embedding (through a projector) and its last feature
map (through a 1x1 convolution, both maps on one grid), on the same augmented views the teacher sees (consistent
teaching), with the teacher's outputs cached per stored view when ``--pretrain.views`` is set (the distillation
stage's cache, shared). The projectors are dropped from the saved student, whose backbone then starts a
classifier: ``--model.init RUN`` in ``train``, ``finetune`` and ``distill``, or a backbone for ``embed``/``probe``.
This is the recipe of LightlyTrain's ``pretrain(method="distillation")``, on fm2edge's one training loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fm2edge.augment import StoredViews, Views
from fm2edge.config import (
    ModelConfig,
    PretrainConfig,
    PretrainJob,
)
from fm2edge.distill.losses import DenseMatch, EmbeddingMatch
from fm2edge.models.classifier import Classifier
from fm2edge.models.dense import pooled_and_map


class PretrainTask(nn.Module):
    """Student + frozen teacher (held outside the module tree, so neither trained nor checkpointed) + the
    projectors (trained and checkpointed, never part of the saved student)."""

    def __init__(self, student: Classifier, teacher: Classifier, cfg: PretrainConfig, channels_last: bool = False):
        super().__init__()
        self.model = student
        student.head.requires_grad_(False)  # no classes here: the head is neither trained nor saved (nor DDP's)
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        if channels_last:  # its inputs are channels-last: a conv teacher runs fastest in kind
            teacher.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.weights = {"pooled": cfg.pooled, "dense": cfg.dense}
        self.teacher_precision = cfg.teacher_precision
        self.cache: dict[str, torch.Tensor] | None = None
        self.view_source: StoredViews | None = None
        # the teacher's embedding (and map) as an ONNX Runtime session (distill.teacher.teacher_graph), or None
        self.teacher_graph: Callable[[torch.Tensor], np.ndarray] | None = None
        size, t_size = student.preprocess.size, teacher.preprocess.size
        device = next(iter(teacher.parameters()), torch.zeros(())).device
        with torch.no_grad():  # one look at both tells the widths and the map sizes
            was = student.training
            s_pooled, s_map = pooled_and_map(student.eval(), torch.zeros(2, 3, size, size))
            student.train(was)
            t_pooled, t_map = self.teacher_features(torch.zeros(2, 3, t_size, t_size, device=device),
                                                    dense=cfg.dense > 0)
        self.pooled = EmbeddingMatch(s_pooled.shape[1], t_pooled.shape[1], cfg.distance, cfg.hidden)
        self.dense = None
        self.teacher_shapes = (t_pooled.shape[1], tuple(t_map.shape[1:]) if t_map is not None else None)
        if cfg.dense > 0:
            self.grid = cfg.grid or min(s_map.shape[-1], t_map.shape[-1])
            self.dense = DenseMatch(s_map.shape[1], t_map.shape[1], self.grid, cfg.distance)

    def teacher_dtype(self, device: torch.device) -> torch.dtype | None:
        from fm2edge.device import autocast_dtype

        return autocast_dtype(self.teacher_precision, device)

    def teacher_features(self, x: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.teacher_graph is not None:
            from fm2edge.distill.teacher import split_pooled_and_map

            out = torch.from_numpy(self.teacher_graph(x)).to(x.device)
            return split_pooled_and_map(out, *self.teacher_shapes) if dense else (out, None)
        dtype = self.teacher_dtype(x.device)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if dense:
                return pooled_and_map(self.teacher, x)
            return self.teacher.features(x), None

    def inputs(self, model: Classifier, images: torch.Tensor, views: Views | None,
               partners: torch.Tensor | None) -> torch.Tensor:
        from fm2edge.distill.task import model_inputs

        return model_inputs(model, images, views, partners, self.channels_last)

    @torch.no_grad()
    def teacher_arrays(self, images: torch.Tensor, views: Views | None = None,
                       partners: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The teacher's pooled embedding and (when the dense loss is on) its map on the grid, in fp16: what the
        cache stores per view and what the loss compares with."""
        from fm2edge.distill.losses import to_grid

        pooled, fmap = self.teacher_features(self.inputs(self.teacher, images, views, partners), self.dense is not None)
        out = {"pooled": pooled.half()}
        if fmap is not None:
            out["map"] = to_grid(fmap.float(), self.grid).half()
        return out

    def forward(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None,
                views: Views | None = None, partners: torch.Tensor | None = None,
                partner_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.cache is not None and index is not None:
            slot = views.col("slot").long().clamp_min(0).cpu() if views is not None else torch.zeros_like(index.cpu())
            rows = index.cpu()
            target = {k: self.cache[k][rows, slot].to(images.device) for k in ("pooled", "map") if k in self.cache}
        else:
            target = self.teacher_arrays(images, views, partners)
        s_pooled, s_map = pooled_and_map(self.model, self.inputs(self.model, images, views, partners))
        parts = {"pooled": self.pooled(s_pooled, target["pooled"])}
        if self.dense is not None:
            parts["dense"] = self.dense(s_map, target["map"])
        loss = sum(self.weights[n] * p for n, p in parts.items())
        return {"loss": loss, **{f"loss_{n}": p for n, p in parts.items()}}


def save_student(student: Classifier, folder: Path, extra: dict) -> None:
    """The student's backbone alone (no projector, no head) as model.safetensors + model.json, atomically: what
    ``--model.init`` and ``--model.weights`` load (a new head is made for the classes at hand)."""
    import json

    from safetensors.torch import save_file

    from fm2edge.runs import atomic_write_text

    state = {f"backbone.{k}": v.detach().contiguous() for k, v in student.backbone.state_dict().items()}
    tmp = folder / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / "model.safetensors")
    meta = {**student.describe(), "num_classes": 0, "head": None, **extra}
    atomic_write_text(folder / "model.json", json.dumps(meta, indent=2))


def pretrain_job(job: PretrainJob) -> dict:
    """`fm2edge pretrain`: once, or once per seed."""
    from fm2edge.results import over_seeds, slug

    return over_seeds(job, pretrain_one, slug(f"pretrain-{job.model.name}"))


def pretrain_images(job: PretrainJob, session):
    """Every image pretraining may use: the training split's (labels dropped), the rest of the training split, and
    any further source. Validation and test images are never among them."""
    from fm2edge.data import ImageData, load_unlabeled, load_unlabeled_source
    from fm2edge.distill.teacher import with_unlabeled
    from fm2edge.errors import Fm2EdgeError

    train = session.train
    images = ImageData(train.images, torch.full_like(train.labels, -1), train.class_names, train.fingerprint,
                         train.skipped)
    if job.pretrain.unlabeled:
        try:
            images = with_unlabeled(images, load_unlabeled(job.data, None if job.pretrain.unlabeled < 0
                                                           else job.pretrain.unlabeled))
        except Fm2EdgeError:
            if job.pretrain.unlabeled > 0:  # asked for a number that is not there
                raise
    if job.pretrain.unlabeled_source:
        images = with_unlabeled(images, load_unlabeled_source(job.pretrain.unlabeled_source, job.data,
                                                              train.image_size))
    return images


def pretrain_one(job: PretrainJob) -> dict:
    from fm2edge.augment import draw_stored_views
    from fm2edge.config import proven_recipe, starts_trained, to_dict
    from fm2edge.device import environment
    from fm2edge.distill.teacher import (
        cache_dir_for,
        graph_folder,
        share_teacher_cache,
        teacher_graph,
    )
    from fm2edge.models import create_model
    from fm2edge.models.io import is_model_folder, load_classifier
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure
    from fm2edge.results import slug, start_stage
    from fm2edge.train import fit

    session = start_stage(job.data, job.train.device, job.train.precision)
    accelerator = session.accelerator
    with accelerator.main_process_first():
        images = pretrain_images(job, session)
    job = dataclasses.replace(job, train=proven_recipe(job.train, len(images), images.image_size[0],
                                                       starts_trained(job.model)))
    cfg = job.pretrain
    teacher = (load_classifier(cfg.teacher) if is_model_folder(cfg.teacher)
               else create_model(ModelConfig(name=cfg.teacher, pretrained=cfg.teacher_pretrained,
                                             image_size=cfg.teacher_image_size), 1))
    student = session.model(job.model, job.train.seed)
    with session.open(job.run, slug(f"pretrain-{job.model.name}")) as run:
        config = to_dict(job)
        task = PretrainTask(student, teacher.to(accelerator.device), cfg, job.train.channels_last)
        augment = job.train.augment
        cached = bool(cfg.views) and augment.active
        # only the main process fills a cache: the others open the graph only where training runs the teacher
        if accelerator.is_main_process or not cached:
            task.teacher_graph = teacher_graph(teacher, cfg.teacher_backend, accelerator.device,
                                               task.teacher_dtype(accelerator.device), graph_folder(job.data),
                                               with_map=task.dense is not None, stage="pretrain")
        in_graph = task.teacher_graph is not None
        cache_dir = None
        if cached:
            views = draw_stored_views(len(images), cfg.views, augment, cfg.view_seed, images.image_size[0])
            task.view_source = StoredViews(views)
            key = {"augment": to_dict(augment), "views": cfg.views, "seed": cfg.view_seed, "teaching": "consistent"}
            what = {"pretrain": ["pooled", *(["map", task.grid] if task.dense is not None else [])]}
            cache_dir = cache_dir_for(job.data, cfg.teacher, f"{cfg.teacher}|{cfg.teacher_pretrained}", teacher,
                                      images, what, key, task.teacher_dtype(accelerator.device))
            share_teacher_cache(task, images.images, views, cache_dir, job.train.eval_batch_size, accelerator,
                                ("pooled", "map") if task.dense is not None else ("pooled",))
        if accelerator.is_main_process:
            run.write_config(config)
            teaching = (f"{cfg.views} stored views per image, teacher features cached" if task.cache is not None
                        else "views drawn every epoch, teacher online" if augment.active else "no augmentation")
            teaching += ", the teacher run in ONNX Runtime" if in_graph else ""
            print(f"pretrain {student.name} ({sum(p.numel() for p in student.parameters()):,} parameters, "
                  f"{student.preprocess.size} px) on {len(images)} images without labels from {teacher.name} "
                  f"({teacher.preprocess.size} px) | losses pooled {cfg.pooled:g}, dense {cfg.dense:g}"
                  f"{f' on a {task.grid}x{task.grid} grid' if task.dense is not None else ''} ({cfg.distance}) | "
                  f"{teaching}")
        result = fit(task, student, images, None, None, job.train, run, accelerator, config)
        metrics: dict = {}
        if accelerator.is_main_process:
            metrics = {"history": result.history, "train_seconds": result.seconds,
                       "images": len(images), "epochs": job.train.epochs, "teacher": teacher.name,
                       "data": job.data.source,
                       "final_loss": result.history[-1]["train_loss"] if result.history else math.nan,
                       "resumed_from_epoch": result.resumed_from,
                       "teacher_cache": str(cache_dir) if cache_dir else None,
                       "parameters": sum(p.numel() for p in student.backbone.parameters()),
                       "env": environment(accelerator)}
            save_student(student, run.path, {"pretrained_from": teacher.name})
            run.write_metrics("pretrain", metrics)
            run.log_summary(metrics)
            save_figure(plots.learning_curves(result.history, f"{student.name} pretrained from {teacher.name}", None),
                        run.file("plots", "learning_curves.png"))
            print(f"pretrained {student.name}: final loss {metrics['final_loss']:.4f} after {job.train.epochs} epochs "
                  f"({result.seconds / 60:.1f} min) | start a classifier from it with --model.name {student.name} "
                  f"--model.init {run.path}")
        accelerator.wait_for_everyone()
    return metrics
