"""The one training loop, shared by training from scratch, distillation and fine-tuning.

A *task* is an ``nn.Module`` that takes a uint8 image batch and labels and returns ``{"loss", "logits", ...}``; a new
method is a new task, never a change to this loop. The loop keeps images as uint8 tensors (on the GPU when they
fit), draws batches by index (no per-sample Python work or collation), augments on the device, and writes an atomic
checkpoint every epoch. Each epoch reseeds from ``(seed, epoch)``, so a run resumed from a checkpoint follows the
same path as an uninterrupted one. Distribution (DDP over torchrun / ``accelerate launch``) and mixed precision come
from Hugging Face Accelerate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fm2edge.augment import OnlineViews, Views, model_views, soft_targets
from fm2edge.config import TrainConfig, is_resolved
from fm2edge.data import ImageData
from fm2edge.data.splits import selection_noise
from fm2edge.device import inference_batch, move, training_memory
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import Classifier
from fm2edge.report.metrics import accuracy, balanced_accuracy
from fm2edge.results import describe_splits, over_seeds, selection_line, slug, start_stage, write_outputs
from fm2edge.runs import RunDir, atomic_dir, atomic_write_bytes

log = logging.getLogger(__name__)
CHECKPOINT = re.compile(r"^epoch-(\d+)$")


# ---------------------------------------------------------------- tasks


class SupervisedTask(nn.Module):
    """Cross-entropy on the labels: training from scratch or fine-tuning.

    ``frozen`` modules (a linear probe's backbone, BatchNorm layers whose statistics must not move) stay in eval
    mode whenever the loop switches the task to training, so their running statistics never change.
    """

    def __init__(self, model: Classifier, label_smoothing: float = 0.0, channels_last: bool = False,
                 frozen: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.frozen = list(frozen or [])  # a plain list: these modules are already registered inside ``model``

    def train(self, mode: bool = True) -> SupervisedTask:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None,
                views: Views | None = None, partners: torch.Tensor | None = None,
                partner_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if views is None:
            x = self.model.preprocess(images)
        else:
            x = model_views(self.model.preprocess, images, views, partners)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        targets = labels if partners is None else soft_targets(labels, views, partner_labels, logits.shape[1])
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}


# ---------------------------------------------------------------- building blocks


def build_optimizer(params, cfg: TrainConfig, backbone: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimiser over the trainable ``params``; those of ``backbone`` learn at ``cfg.backbone_lr`` x the rate."""
    params = [p for p in params if p.requires_grad]
    if backbone is not None and cfg.backbone_lr != 1.0:
        inside = {id(p) for p in backbone.parameters()}
        params = [{"params": [p for p in params if id(p) not in inside]},
                  {"params": [p for p in params if id(p) in inside], "lr": cfg.lr * cfg.backbone_lr}]
        params = [group for group in params if group["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def probe_head(model: Classifier, train: ImageData, batch_size: int, device: torch.device) -> dict:
    """Set ``model.head`` to a logistic regression on the frozen backbone's features of the labelled training images
    (eval preprocessing, no augmentation), C chosen by cross-validation: the "LP" of LP-FT. Returns its settings."""
    from fm2edge.features import embed_batches
    from fm2edge.linear import fit_logreg

    labelled = train.labels >= 0
    features = embed_batches(model, train.images[labelled], batch_size, device, None, progress="probe head")
    labels = train.labels[labelled].numpy()
    if len(np.unique(labels)) < 2:
        raise Fm2EdgeError("--train.head_init probe needs labelled images of at least two classes")
    head = fit_logreg(features, labels, cs=[0.01, 0.1, 1.0, 10.0])
    rows = torch.as_tensor(head.weight)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[:len(rows)] = rows
        # a class without training images keeps a very negative bias, clipped so that its gradients stay sane
        model.head.bias.fill_(-10.0)
        model.head.bias[:len(rows)] = torch.as_tensor(head.bias).clamp_min(-10.0)
    accuracy_now = float((torch.as_tensor(head.predict_logits(features)).argmax(1).numpy() == labels).mean())
    return {**head.info, "train_acc": accuracy_now}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at optimiser ``step`` of ``total``: constant, cosine with warm-up, or one-cycle."""
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":
        peak = max(1, int(0.25 * total))
        return (step + 1) / peak if step < peak else max(0.0, (total - step) / max(1, total - peak))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_plan(n: int, batch_size: int, world: int, rank: int, generator: torch.Generator) -> list[torch.Tensor]:
    """This process's index batches for one epoch: a seeded permutation cut into global batches, each split
    evenly over the processes (a tail too small to give every process a sample is dropped)."""
    perm = torch.randperm(n, generator=generator)
    per_rank = max(1, batch_size // world)
    step = per_rank * world
    out = []
    for start in range(0, n, step):
        chunk = perm[start:start + step]
        k = len(chunk) // world
        if k == 0:
            break
        out.append(chunk[rank * k:(rank + 1) * k])
    return out


def _place(data: ImageData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the uint8 images on the device when they take under a quarter of its free memory, else keep them on
    the host (pinned) and move one batch at a time."""
    images = data.images
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < free // 4:
            return images.to(device), data.labels.to(device)
        return images.pin_memory(), data.labels.to(device)
    return images, data.labels


@torch.inference_mode()
def predict(model: Classifier, data: ImageData, batch_size: int, device: torch.device, channels_last: bool = False,
            accelerator=None, progress: bool = False) -> torch.Tensor:
    """Logits for every image of ``data`` (fp32, on the CPU), sharded over processes when an accelerator runs many."""
    from tqdm.auto import tqdm

    model.eval()
    batch_size = inference_batch(batch_size, model.preprocess.size, device)
    n = len(data)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    per = math.ceil(n / world)
    idx = torch.arange(rank * per, min(n, (rank + 1) * per))
    outs = []
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
    with autocast:
        for start in tqdm(range(0, len(idx), batch_size), desc="eval", leave=False, disable=not progress):
            b = idx[start:start + batch_size]
            x = model.preprocess(move(data.images[b], device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(model(x).float())
    logits = torch.cat(outs) if outs else torch.zeros(0, model.num_classes, device=device)
    if world > 1:
        pad = per - len(logits)
        if pad:
            logits = torch.cat([logits, logits.new_zeros(pad, logits.shape[1])])
        logits = accelerator.gather(logits)[:n]
    return logits.cpu()


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(run: RunDir) -> Path | None:
    folder = run.path / "checkpoints"
    if not folder.exists():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and
            (p / "state.json").exists()]
    return max(done)[1] if done else None


def save_checkpoint(run: RunDir, epoch: int, module: nn.Module, optimizer, state: dict, keep: int,
                    average: nn.Module | None = None) -> Path:
    """Write ``checkpoints/epoch-NNN`` atomically (model as safetensors, optimiser state, JSON state, and the
    weight average when one is kept), then prune."""
    import json

    from safetensors.torch import save_model

    final = run.path / "checkpoints" / f"epoch-{epoch:03d}"
    with atomic_dir(final) as tmp:
        save_model(module, str(tmp / "model.safetensors"))
        if average is not None:
            save_model(average, str(tmp / "ema.safetensors"))
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        atomic_write_bytes(tmp / "optimizer.pt", buf.getvalue())
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    done = sorted(p for p in final.parent.iterdir() if CHECKPOINT.match(p.name))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, module: nn.Module, optimizer, average: nn.Module | None = None) -> dict:
    import json

    from safetensors.torch import load_model

    if average is not None and not (folder / "ema.safetensors").exists():
        raise Fm2EdgeError(f"checkpoint '{folder}' holds no weight average: the run was started without "
                           f"--train.ema; resume it with the same setting, or start a new run")
    try:
        load_model(module, str(folder / "model.safetensors"), device=str(next(module.parameters()).device))
        if average is not None:
            load_model(average, str(folder / "ema.safetensors"), device=str(next(average.parameters()).device))
    except RuntimeError as exc:
        raise Fm2EdgeError(f"checkpoint '{folder}' was written for a different architecture than this run's model "
                           f"({str(exc).splitlines()[0][:200]}); start a new run or fix --model.name") from exc
    try:  # weights_only: a checkpoint may hold tensors and plain containers, never code to run
        state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise Fm2EdgeError(f"'{folder / 'optimizer.pt'}' holds more than tensors, so it is not loaded (it could run "
                           f"code); start a new run, or delete that checkpoint to resume from an earlier one") from None
    optimizer.load_state_dict(state)
    return json.loads((folder / "state.json").read_text())


# ---------------------------------------------------------------- the loop


@dataclass
class Selection:
    """Which epoch's weights are kept: the best by validation accuracy so far, ties broken by the lower validation
    loss (ties are common on small validation splits, and the earliest epoch is rarely the better one), or the last.
    ``stale`` counts evaluations since the last improvement, for early stopping."""

    epoch: int | None = None  # 1-based
    val_acc: float | None = None
    stale: int = 0
    stopped_early: bool = False
    val_loss: float | None = None

    def offer(self, epoch: int, val_acc: float, val_loss: float | None = None) -> bool:
        """Record ``epoch``'s validation accuracy (and loss); True when it is the new best."""
        tie_won = (val_acc == self.val_acc and val_loss is not None and self.val_loss is not None
                   and val_loss < self.val_loss)
        if self.val_acc is None or val_acc > self.val_acc or tie_won:
            self.epoch, self.val_acc, self.val_loss, self.stale = epoch, val_acc, val_loss, 0
            return True
        self.stale += 1
        return False


def validate(model: Classifier, val: ImageData, cfg: TrainConfig, device: torch.device, channels_last: bool,
             accelerator=None) -> tuple[float, float, float]:
    """(accuracy, mean cross-entropy, balanced accuracy) of ``model`` on the validation images."""
    logits = predict(model, val, cfg.eval_batch_size, device, channels_last, accelerator)
    return (accuracy(logits, val.labels), float(F.cross_entropy(logits, val.labels.long())),
            balanced_accuracy(logits.argmax(1), val.labels))


@dataclass
class FitResult:
    history: list[dict]
    test_logits: torch.Tensor | None
    seconds: float
    resumed_from: int | None
    selection: dict  # {"epoch", "on", "val_acc", "stopped_early"}: which weights were tested, chosen on what


def save_best(run: RunDir, module: nn.Module, selection: Selection) -> None:
    """The best weights so far in ``checkpoints/best`` (atomic); epoch checkpoints are pruned, this one is kept."""
    import json

    from safetensors.torch import save_model

    with atomic_dir(run.path / "checkpoints" / "best") as tmp:
        save_model(module, str(tmp / "model.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"epoch": selection.epoch, "val_acc": selection.val_acc}))


def load_best(run: RunDir, module: nn.Module) -> None:
    from safetensors.torch import load_model

    load_model(module, str(run.path / "checkpoints" / "best" / "model.safetensors"),
               device=str(next(module.parameters()).device))


def fit(task: nn.Module, model: Classifier, train: ImageData, val: ImageData | None, test: ImageData | None,
        cfg: TrainConfig, run: RunDir, accelerator, config: dict | None = None) -> FitResult:
    """Train ``task`` (which owns ``model``): :func:`fit_loop`, keeping freed memory for the next batch while it
    runs on a CPU (see :func:`fm2edge.device.freed_memory_kept`). ``cfg`` has its defaults filled for the data
    (:func:`fm2edge.config.proven_recipe`)."""
    if not is_resolved(cfg):
        raise ValueError("fit() takes a training config with its defaults filled for the data: pass it through "
                         "fm2edge.config.proven_recipe first")
    with training_memory(accelerator.device):
        return fit_loop(task, model, train, val, test, cfg, run, accelerator, config)


@dataclass
class LoopState:
    """Where a run's training stands (what its checkpoints hold besides the weights): the next epoch, the epochs'
    rows, the epoch it resumed from, the seconds earlier calls spent, and which epoch is kept so far."""

    start_epoch: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    resumed_from: int | None = None
    elapsed: float = 0.0
    selection: Selection = dataclasses.field(default_factory=Selection)


@dataclass
class Steps:
    """The optimiser steps of a run: per epoch, in all, and of warm-up (what the rate schedule reads)."""

    per_epoch: int
    total: int
    warmup: int

    def factor(self, step: int, schedule: str) -> float:
        return lr_factor(step, self.total, self.warmup, schedule)


def batch_memory_note(cfg: TrainConfig, image_size: int, device: torch.device) -> str | None:
    """What to do where a CPU training batch holds more input pixels than a CPU forward pass is given
    (``device.inference_batch``, about two million): what a training step keeps grows with them (EfficientNet-Lite0
    at 224 px held 7.4 GB at batch 64 and 2.4 GB at 16, at the same images per second on a 2-core AMX Xeon). The
    same optimiser steps on smaller micro-batches, with gradients accumulated, hold a fraction of it; None where the
    batch is within that or not on a CPU."""
    micro = inference_batch(cfg.batch_size, image_size, device)
    if micro >= cfg.batch_size:
        return None
    micro = max(d for d in range(1, micro + 1) if cfg.batch_size % d == 0)  # the same images in every step
    accum = cfg.grad_accum * cfg.batch_size // micro
    return (f"a training batch of {cfg.batch_size} images at {image_size} px can hold several GB on a CPU "
            f"(EfficientNet-Lite0 at 224 px: 7.4 GB at batch 64); --train.batch_size {micro} --train.grad_accum "
            f"{accum} takes the same steps on micro-batches of {micro} (BatchNorm layers that still learn their "
            f"statistics then see {micro} images at a time)")


def plan_steps(n: int, cfg: TrainConfig, world: int, rank: int) -> Steps:
    batches = len(batch_plan(n, cfg.batch_size, world, rank, torch.Generator().manual_seed(0)))
    if batches == 0:
        raise Fm2EdgeError(f"the training set has {n} images, fewer than the {world} processes")
    per_epoch = math.ceil(batches / cfg.grad_accum)  # optimiser steps
    return Steps(per_epoch, per_epoch * cfg.epochs, int(cfg.warmup_epochs * per_epoch))


def fit_loop(task: nn.Module, model: Classifier, train: ImageData, val: ImageData | None, test: ImageData | None,
             cfg: TrainConfig, run: RunDir, accelerator, config: dict | None = None) -> FitResult:
    """Train ``task`` (which owns ``model``) for ``cfg.epochs``, checkpointing every epoch and resuming when possible.

    Every evaluated epoch is scored on ``val``; with ``cfg.select == "best"`` the weights of the best validation
    epoch are kept (and ``cfg.patience`` stops training after that many evaluations without improvement). The test
    split is read once, at the end, on the kept weights. A task without labels to score (``fm2edge pretrain``)
    returns no "logits" and passes no test split.
    """
    device = accelerator.device
    torch.manual_seed(cfg.seed)
    channels_last = cfg.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    task.to(device)
    # frozen weights (a LoRA base, a linear probe's backbone) get no optimiser state
    optimizer = build_optimizer(task.parameters(), cfg, getattr(model, "backbone", None))
    steps = plan_steps(len(train), cfg, accelerator.num_processes, accelerator.process_index)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: steps.factor(s, cfg.schedule))
    noise = selection_noise(len(val)) if val is not None and cfg.select == "best" else None
    if noise and noise["noisy"] and accelerator.is_main_process:
        log.warning(noise["warning"])
    if (memory := batch_memory_note(cfg, model.preprocess.size, device)) and accelerator.is_main_process:
        log.warning(memory)
    continued = bool((config or {}).get("model", {}).get("init"))  # the run's config: --model.init
    state, ema = start_or_resume(run, task, model, optimizer, scheduler, steps, train, val, cfg, channels_last,
                                 accelerator, continued)
    average = ema.module if ema is not None else None
    raw_task = task  # checkpoints and evaluation use the module itself, not its DDP / compiled wrappers
    if cfg.compile:
        task = torch.compile(task)
    task, optimizer = accelerator.prepare(task, optimizer)
    images, labels = _place(train, device)
    # where each batch's views come from: the task's stored ones (cached teaching) or drawn afresh each epoch
    view_source = getattr(raw_task, "view_source", None) or OnlineViews(cfg.augment, len(train),
                                                                         train.image_size[0])
    t_start = time.perf_counter()
    for epoch in range(state.start_epoch, state.start_epoch if state.selection.stopped_early else cfg.epochs):
        sums = train_epoch(task, model, (images, labels), view_source, optimizer, scheduler, ema, cfg, epoch,
                           accelerator, run)
        row, improved = score_epoch(sums, model, average, val, cfg, epoch, channels_last, accelerator,
                                    state.selection, optimizer.param_groups[0]["lr"])
        state.history.append(row)
        if accelerator.is_main_process:
            record_epoch(run, raw_task, optimizer, row, improved, cfg, epoch, model, average, state.selection,
                         {"epoch": epoch, "history": state.history, "selection": dataclasses.asdict(state.selection),
                          "config": config, "elapsed": state.elapsed + time.perf_counter() - t_start},
                         val is not None)
        accelerator.wait_for_everyone()
        if state.selection.stopped_early:
            if accelerator.is_main_process:
                print(f"no better validation accuracy for {cfg.patience} evaluations: stopping after epoch "
                      f"{epoch + 1} (best: epoch {state.selection.epoch})")
            break
    if average is not None:  # the average is what is kept, whichever epoch's
        model.load_state_dict(average.state_dict())
    chosen = finish_selection(run, raw_task, state.selection, state.history, cfg, val is not None)
    if noise is not None:
        chosen["noise"] = noise
    test_logits = None if test is None else predict(model, test, cfg.eval_batch_size, device, channels_last,
                                                    accelerator)
    # a resumed run's time is all of its calls': reopening a finished run must not report 0 s of training
    return FitResult(state.history, test_logits, state.elapsed + time.perf_counter() - t_start, state.resumed_from,
                     chosen)


def start_or_resume(run: RunDir, task: nn.Module, model: Classifier, optimizer, scheduler, steps: Steps,
                    train: ImageData, val: ImageData | None, cfg: TrainConfig, channels_last: bool, accelerator,
                    continued: bool = False):
    """(the loop's state, the weight average or None): from the run's latest checkpoint when it has one (weights,
    optimiser, schedule position, history, selection), else from the start, with the head first fitted as a probe
    under --train.head_init probe. Such a start, or the trained weights a ``continued`` run (--model.init) starts
    from, is epoch 0, itself a candidate for "best": on digits a pretrained student whose probe head scored 97% on
    validation fell to 32% after one epoch of distillation and 93% after eleven, and its continued schedule, which
    started from the 97% weights, kept the 93% ones."""
    state, ema = LoopState(), None
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        ema = weight_average(model, cfg)
        saved = load_checkpoint(ckpt, task, optimizer, ema.module if ema is not None else None)
        epoch = saved["epoch"] + 1
        state = LoopState(epoch, saved["history"], epoch,  # older checkpoints: the epochs' own seconds
                          saved.get("elapsed", sum(h["seconds"] for h in saved["history"])),
                          Selection(**saved.get("selection", {})))
        scheduler.last_epoch = epoch * steps.per_epoch  # steps taken: the next one reads f(that count)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * steps.factor(epoch * steps.per_epoch, cfg.schedule)
        if accelerator.is_main_process:
            print(f"resuming {run.path.name} from the end of epoch {epoch} ({ckpt.name})")
        return state, ema
    start = ""
    if cfg.head_init == "probe":  # every process fits the same head (a deterministic convex fit)
        info = probe_head(model, train, cfg.eval_batch_size, accelerator.device)
        start = (f"head = linear probe on the frozen backbone, C {info['C']:g}: train acc "
                 f"{100 * info['train_acc']:.2f}%")
    elif continued:
        start = "the weights it continues from"
    if start and val is not None:  # the start itself is a candidate: "best" may keep it when training only hurts
        val_acc, val_loss, _ = validate(model, val, cfg, accelerator.device, channels_last)
        state.selection.offer(0, val_acc, val_loss)
        start += f", val acc {100 * val_acc:.2f}%"
        if accelerator.is_main_process and cfg.select == "best":
            save_best(run, task, state.selection)
    if start and accelerator.is_main_process:
        print(f"epoch 0 ({start})")
    # the average starts from the weights training starts from (after a probe head, if any)
    return state, weight_average(model, cfg)


def train_epoch(task: nn.Module, model: Classifier, data: tuple[torch.Tensor, torch.Tensor], view_source,
                optimizer, scheduler, ema, cfg: TrainConfig, epoch: int, accelerator, run: RunDir) -> dict:
    """One pass over the training images in this epoch's seeded order (this process's shard), with gradient
    accumulation and the weight average's update; the sums every process contributed: loss, correct, images,
    labelled images and each loss part, and the seconds it took."""
    from tqdm.auto import tqdm

    images, labels = data
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    task.train()
    if cfg.freeze_bn:  # running statistics fixed, affine parameters trained (timm's BatchNormAct2d included)
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
                module.eval()
    seed = cfg.seed * 1_000_003 + epoch
    torch.manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed + rank)
    batches = batch_plan(len(labels), cfg.batch_size, world, rank, torch.Generator().manual_seed(seed))
    loss_sum = torch.zeros((), device=device)
    part_sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    labelled = torch.zeros((), device=device)  # images distilled on without a label (-1) count in no accuracy
    seen = 0
    t0 = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
               disable=not accelerator.is_local_main_process)
    for step, idx in enumerate(bar):
        gidx = idx.to(images.device) if images.device.type == "cuda" else idx
        x = move(images[gidx], device)
        y = move(labels[idx.to(labels.device)], device)
        views = view_source(idx, epoch, dev_gen)
        partners = partner_labels = None
        if views is not None and views.mixes:  # each mixed view's partner image, from anywhere in the data
            pidx = views.col("partner").long().clamp_min(0).cpu()
            partners = move(images[pidx.to(images.device)], device)
            partner_labels = move(labels[pidx.to(labels.device)], device)
        # gradient accumulation: sum micro-batch gradients (without a DDP all-reduce until the last one), then take
        # one optimiser step
        group_end = (step + 1) % cfg.grad_accum == 0 or step == len(batches) - 1
        in_group = min(cfg.grad_accum, len(batches) - (step // cfg.grad_accum) * cfg.grad_accum)
        sync = contextlib.nullcontext() if group_end or world == 1 else accelerator.no_sync(task)
        with sync:
            # the index lets a task look up cached teacher outputs
            out = task(x, y, idx.to(device), views, partners, partner_labels)
            accelerator.backward(out["loss"] / in_group if cfg.grad_accum > 1 else out["loss"])
        if group_end:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:  # the step count sets the warmed-up decay, the same after a resume
                ema.update(model, step=scheduler.last_epoch)
        loss_sum += out["loss"].detach() * len(y)
        for name, part in out.items():
            if name.startswith("loss_"):
                part_sums[name] = part_sums.get(name, torch.zeros((), device=device)) + part.detach() * len(y)
        if "logits" in out:
            correct += (out["logits"].detach().argmax(-1) == y).sum()
            labelled += (y >= 0).sum()
        seen += len(y)
        if step % 20 == 0 or step == len(batches) - 1:
            mean_loss = float(loss_sum) / seen
            if not math.isfinite(mean_loss):
                last = latest_checkpoint(run)
                raise Fm2EdgeError(f"the loss became {mean_loss} at epoch {epoch + 1}, step {step + 1}; the last "
                                   f"good checkpoint is {last.name if last else 'none'}; lower --train.lr or check "
                                   f"the data")
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{seen * world / (time.perf_counter() - t0):.0f}")
    totals = accelerator.reduce(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device),
                                             labelled.float(), *part_sums.values()]), reduction="sum")
    return {"loss": float(totals[0]), "correct": float(totals[1]), "images": float(totals[2]),
            "labelled": float(totals[3]), "parts": {name: float(t) for name, t in zip(part_sums, totals[4:],
                                                                                       strict=True)},
            "seconds": time.perf_counter() - t0}


def score_epoch(sums: dict, model: Classifier, average: nn.Module | None, val: ImageData | None, cfg: TrainConfig,
                epoch: int, channels_last: bool, accelerator, selection: Selection, lr: float) -> tuple[dict, bool]:
    """(the epoch's row of the history, whether it is the new best): the training sums as means, and on evaluated
    epochs validation accuracy and loss (of the weight average, with the live weights' beside it), offered to the
    selection, which stops early after --train.patience evaluations without improvement."""
    evaluate = val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
    val_acc = val_loss = val_balanced = None
    raw = {}
    if evaluate:
        val_acc, val_loss, val_balanced = validate(model if average is None else average, val, cfg,
                                                   accelerator.device, channels_last, accelerator)
        if average is not None:  # the live weights beside their average, to see what it gives
            raw = {"val_acc_raw": validate(model, val, cfg, accelerator.device, channels_last, accelerator)[0]}
    improved = val_acc is not None and selection.offer(epoch + 1, val_acc, val_loss)
    if cfg.patience and selection.stale >= cfg.patience:
        selection.stopped_early = True
    row = {"epoch": epoch + 1, "train_loss": sums["loss"] / sums["images"],
           "train_acc": sums["correct"] / sums["labelled"] if sums["labelled"] else float("nan"),
           "val_acc": val_acc, "val_loss": val_loss, "val_balanced_acc": val_balanced, **raw, "lr": lr,
           "seconds": sums["seconds"], "images_per_s": sums["images"] / sums["seconds"],
           **{name: total / sums["images"] for name, total in sums["parts"].items()}}
    return row, improved


def record_epoch(run: RunDir, module: nn.Module, optimizer, row: dict, improved: bool, cfg: TrainConfig,
                 epoch: int, model: Classifier, average: nn.Module | None, selection: Selection, state: dict,
                 has_val: bool) -> None:
    """The epoch's row to the tracker and the console, the best weights so far kept, and a checkpoint (with the
    loop's ``state``) every --train.checkpoint_every epochs and after the last."""
    run.log_epoch({k: v for k, v in row.items()
                   if isinstance(v, (int, float)) and k != "epoch" and not math.isnan(v)}, epoch + 1)
    evaluated = row["val_acc"] is not None
    if cfg.epochs <= 20 or evaluated:
        val_text = f"val acc {100 * row['val_acc']:.2f}%{' (best)' if improved else ''}" if evaluated else (
            "val acc -" if has_val else "")
        acc_text = "" if math.isnan(row["train_acc"]) else f"train acc {100 * row['train_acc']:.2f}%  "
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}  {acc_text}{val_text}  "
              f"({row['seconds']:.1f} s, {row['images_per_s']:.0f} img/s)")
    if improved and cfg.select == "best":
        with holding(model, average):
            save_best(run, module, selection)
    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs or selection.stopped_early:
        save_checkpoint(run, epoch, module, optimizer, state, cfg.keep_checkpoints, average)
        run.write_metrics(None, {"history": state["history"]})


def weight_average(model: nn.Module, cfg: TrainConfig):
    """--train.ema: timm's exponential moving average of ``model``'s weights and buffers (ModelEmaV3), its decay
    warming up as 1 - (1 + step)^-3/4 to at most ``cfg.ema``; None when the setting is 0."""
    if not cfg.ema:
        return None
    from timm.utils.model_ema import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema, use_warmup=True, warmup_power=0.75)


@contextlib.contextmanager
def holding(model: nn.Module, weights: nn.Module | None):
    """Inside the block ``model`` holds the weights of ``weights`` (a copy of its architecture, e.g. the weight
    average); its own afterwards. Without ``weights`` the block changes nothing."""
    if weights is None:
        yield
        return
    own = {name: value.clone() for name, value in model.state_dict().items()}
    model.load_state_dict(weights.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(own)


def finish_selection(run: RunDir, module: nn.Module, selection: Selection, history: list[dict], cfg: TrainConfig,
                     has_val: bool) -> dict:
    """Load the kept weights into ``module`` and say which they are and what chose them."""
    if cfg.select == "best" and selection.epoch is not None:
        load_best(run, module)
        kept = next((h for h in history if h["epoch"] == selection.epoch), {})
        return {"epoch": selection.epoch, "on": "validation accuracy", "val_acc": selection.val_acc,
                "val_loss": selection.val_loss, "val_balanced_acc": kept.get("val_balanced_acc"),
                "stopped_early": selection.stopped_early}
    last = history[-1] if history else {}
    why = "last epoch" if has_val else "last epoch (no validation images)"
    return {"epoch": last.get("epoch"), "on": why, "val_acc": last.get("val_acc"),
            "val_balanced_acc": last.get("val_balanced_acc"), "stopped_early": selection.stopped_early}


# ---------------------------------------------------------------- the `fm2edge train` stage


def train_job(job) -> dict:
    """`fm2edge train`: one run, or one per seed of ``--seeds``."""
    return over_seeds(job, train_one, slug(f"train-{job.model.name}"))


def train_one(job) -> dict:
    """Load data, build the model, run the loop, write the run folder. Returns the metrics."""
    from fm2edge.config import proven_recipe, starts_trained, to_dict
    from fm2edge.device import environment

    session = start_stage(job.data, job.train.device, job.train.precision)
    train, val, test, accelerator = session.train, session.val, session.test, session.accelerator
    job = dataclasses.replace(job, train=proven_recipe(job.train, len(train), train.image_size[0],
                                                       starts_trained(job.model), job.model.pretrained))
    model = session.model(job.model, job.train.seed)
    with session.open(job.run, slug(f"train-{job.model.name}")) as run:
        config = to_dict(job)
        if session.is_main:
            run.write_config(config)
            print(f"{model.name}: {sum(p.numel() for p in model.parameters()):,} parameters, input "
                  f"{model.preprocess.size} px | data {job.data.source}: {describe_splits(session)}, "
                  f"{train.num_classes} classes | {environment(accelerator)['device']}")
        task = SupervisedTask(model, job.train.label_smoothing, job.train.channels_last)
        result = fit(task, model, train, val, test if job.train.score_test else None, job.train, run, accelerator,
                     config)
        metrics = {}
        if session.is_main:
            metrics = write_outputs(run, "train", model, result, test,
                                    {"data": job.data.source, "splits": session.splits, "env": environment(accelerator),
                                     "skipped_images": train.skipped + test.skipped})
            scored = (f"test accuracy {100 * metrics['test_acc']:.2f}%" if metrics["test_acc"] is not None
                      else "test split not read")
            print(f"{selection_line(result.selection)}: {scored} | results in {run.path}")
        accelerator.wait_for_everyone()
    return metrics
