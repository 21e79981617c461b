"""`fm2edge finetune`: adapt a pretrained backbone to the dataset's classes: LoRA, full or linear.

Every mode runs on the one training loop (Accelerate, bf16 autocast, checkpoints, resume) over a :class:`Classifier`,
so the new head is always the module named ``head`` and is always trained: a ``modules_to_save=
["classifier"]`` matched nothing in transformers' timm wrapper and left the head frozen; here the head's name is taken
from the model and checked after peft has wrapped it. LoRA target modules come from a per-family preset found by
looking at the model's own layers (timm's fused ``qkv``; transformers' ``q_proj``/``v_proj``, called
``query``/``value`` before transformers 5), and a target that matches nothing is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from fm2edge.config import (
    FinetuneConfig,
    FinetuneJob,
)
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import Classifier

HEAD = "head"  # Classifier's head attribute: the one module every mode trains in full
# (suffixes of the attention projections LoRA adapts, per model family), tried in this order
PRESETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timm ViT (fused qkv)", ("qkv",)),
    ("transformers >= 5 ViT / DINOv2, CLIP / SigLIP", ("q_proj", "v_proj")),
    ("transformers < 5 ViT / DINOv2", ("query", "value")),
    ("timm EfficientNet / MobileNet (pointwise 1x1 convolutions)", ("conv_pw", "conv_pwl")),
)


# ---------------------------------------------------------------- pure pieces


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters, as peft's ``print_trainable_parameters`` counts them."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def _adaptable(module: nn.Module) -> bool:
    """Layers peft's LoRA adapts: linear layers, and ungrouped convolutions (asked for by name, e.g. a CNN's 1x1s)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _adaptable(m) and not n.startswith(HEAD)]


def resolve_targets(model: Classifier, requested: list[str] | None) -> list[str]:
    """The LoRA target suffixes: the user's, checked to match, or the first family preset the model's layers fit."""
    names = linear_names(model)
    if requested:
        missing = [t for t in requested if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise Fm2EdgeError(f"LoRA target modules {missing} match no linear or convolution layer of {model.name}; "
                               f"its layers end in {suffixes[:12]}; pass some of these as --finetune.target_modules")
        return list(requested)
    for _family, suffixes in PRESETS:
        if all(any(n.endswith("." + s) for n in names) for s in suffixes):
            return list(suffixes)
    raise Fm2EdgeError(f"{model.name} has no attention projections LoRA knows (qkv, q_proj/v_proj, query/value); "
                       f"pass --finetune.target_modules with suffixes of its linear layers, or use "
                       f"--finetune.modes [full] or [linear]")


def expected_lora_parameters(model: Classifier, targets: list[str], r: int) -> int:
    """r x (in + out) for every adapted linear layer: what LoRA's A (r x in) and B (out x r) matrices add; for a
    convolution, A is a k x k convolution to r channels and B a 1 x 1 one back: r x (in x k x k + out)."""
    total = 0
    for name, m in model.named_modules():
        if not (_adaptable(m) and not name.startswith(HEAD) and any(name.endswith("." + t) for t in targets)):
            continue
        if isinstance(m, nn.Linear):
            total += r * (m.in_features + m.out_features)
        else:
            total += r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return total


def apply_mode(model: Classifier, mode: str, cfg: FinetuneConfig) -> nn.Module:
    """Freeze or wrap ``model`` for ``mode``; returns the module to train (a peft model for LoRA)."""
    if mode == "full":
        model.requires_grad_(True)
        return model
    if mode == "linear":
        model.requires_grad_(False)
        getattr(model, HEAD).requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, cfg.target_modules)
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                        target_modules=targets, modules_to_save=[HEAD])
    wrapped = get_peft_model(model, config)
    _unwrap_suffix_matches(wrapped)
    # peft keeps a trainable copy of each module to save under <name>.modules_to_save.<adapter>
    prefix = f"base_model.model.{HEAD}.modules_to_save."
    trained_head = [p for n, p in wrapped.named_parameters() if n.startswith(prefix)]
    if not trained_head or not all(p.requires_grad for p in trained_head):
        raise Fm2EdgeError(f"the new head '{HEAD}' of {model.name} is not trainable after LoRA wrapping; "
                           f"refusing to train adapters under a frozen random head")
    return wrapped


def _unwrap_suffix_matches(wrapped: nn.Module) -> None:
    """peft picks ``modules_to_save`` by bare name suffix, so "head" also catches ``conv_head`` (EfficientNet,
    MobileNet) and timm's inner ``head``, which would then train in full. Put those modules back as they were: only
    the classifier's own head is saved and trained besides the adapters."""
    from peft.utils import ModulesToSaveWrapper

    keep = f"base_model.model.{HEAD}"
    for name, module in list(wrapped.named_modules()):
        if isinstance(module, ModulesToSaveWrapper) and name != keep:
            parent, _, child = name.rpartition(".")
            setattr(wrapped.get_submodule(parent), child, module.original_module)


def frozen_modules(trainable: nn.Module, mode: str, cfg: FinetuneConfig) -> list[nn.Module]:
    """Modules that stay in eval mode while ``trainable`` trains, so their running statistics do not move: the
    whole backbone in linear mode; in LoRA mode, the BatchNorm layers when ``lora_norm_stats`` is "frozen"."""
    if mode == "linear":
        return [trainable.backbone]
    if mode == "lora" and cfg.lora_norm_stats == "frozen":
        return [m for m in trainable.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    return []


def merged(trained: nn.Module) -> Classifier:
    """The plain classifier: LoRA updates folded into the weights (``merge_and_unload``), the trained head kept."""
    if hasattr(trained, "merge_and_unload"):
        return trained.merge_and_unload()
    return trained


# ---------------------------------------------------------------- the stage


def finetune_one(job: FinetuneJob, mode: str, session, run_path: Path) -> dict:
    """One mode in its own run folder; a finished one is read back, an interrupted one resumes."""
    from fm2edge.config import proven_recipe, to_dict
    from fm2edge.device import environment, peak_memory, reset_peak_memory
    from fm2edge.models.io import is_model_folder
    from fm2edge.report.metrics import accuracy
    from fm2edge.results import open_run, write_outputs
    from fm2edge.runs import is_run_folder, read_metrics
    from fm2edge.train import SupervisedTask, fit, predict

    train, test, accelerator = session.train, session.test, session.accelerator
    job = dataclasses.replace(job, train=proven_recipe(job.train, len(train), train.image_size[0], trained=True))
    if is_run_folder(run_path) and is_model_folder(run_path) and job.run.resume:
        metrics = read_metrics(run_path)
        if "test_acc" in metrics and len(metrics.get("history", [])) >= job.train.epochs:
            if accelerator.is_main_process:
                print(f"{mode}: finished earlier, {percent(metrics['test_acc'])} test (from {run_path})")
            return metrics
    model = session.model(job.model, job.train.seed)
    before = count_parameters(model)
    trainable = apply_mode(model, mode, job.finetune)
    after = count_parameters(trainable)
    device = accelerator.device
    acc_before = None
    if job.finetune.eval_before and session.val is not None:
        acc_before = accuracy(predict(trainable.to(device), session.val, job.train.eval_batch_size, device,
                                      accelerator=accelerator), session.val.labels)
    with open_run(run_path, job.run, accelerator) as run:
        config = to_dict(job)
        extra = {}
        if accelerator.is_main_process:
            run.write_config(config)
            lines = [f"{mode}: {model.name} | trainable parameters before {before['trainable']:,} of "
                     f"{before['total']:,}, after {after['trainable']:,} of {after['total']:,} "
                     f"({100 * after['trainable'] / after['total']:.2f}%)"]
            if mode == "lora":
                targets = trainable.peft_config["default"].target_modules
                extra["lora_targets"] = sorted(targets)
                lines.append(f"  LoRA r={job.finetune.lora_r} alpha={job.finetune.lora_alpha} on {sorted(targets)}; "
                             f"head '{HEAD}' trained in full")
            if acc_before is not None:
                lines.append(f"  validation accuracy before training {100 * acc_before:.2f}%")
            print("\n".join(lines))
        reset_peak_memory(device)
        task = SupervisedTask(trainable, job.train.label_smoothing, job.train.channels_last,
                              frozen_modules(trainable, mode, job.finetune))
        # --train.score_test false: a candidate (a teacher `auto` may choose), its test split left unread
        result = fit(task, trainable, train, session.val, test if job.train.score_test else None, job.train, run,
                     accelerator, config)
        metrics = {}
        if accelerator.is_main_process:
            peak, peak_kind = peak_memory(device)
            if mode == "lora":
                trainable.save_pretrained(str(run.path / "adapter"))
            plain = merged(trainable)
            metrics = write_outputs(run, "finetune", plain, result, test, {
                "data": job.data.source, "splits": session.splits, "env": environment(accelerator), "mode": mode,
                "parameters_before": before, "parameters_after": after, "val_acc_before": acc_before,
                "peak_memory_bytes": peak, "peak_memory_kind": peak_kind, **extra})
            print(f"{mode}: test accuracy {percent(metrics['test_acc'])} after {job.train.epochs} epochs "
                  f"({metrics['train_seconds']:.0f} s) | results in {run.path}")
        accelerator.wait_for_everyone()
    return metrics


def percent(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"


def finetune_job(job: FinetuneJob) -> dict:
    """`fm2edge finetune`: each mode in RUN/<mode>, then a comparison table, JSON and plot in RUN."""
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure
    from fm2edge.results import slug, start_stage
    from fm2edge.runs import atomic_write_json

    session = start_stage(job.data, job.train.device, job.train.precision)
    accelerator = session.accelerator
    root = Path(job.run.root) / (job.run.name or slug(f"finetune-{job.model.name}"))
    if root.exists() and not (job.run.resume or job.run.overwrite) and any(
            (root / m).exists() for m in job.finetune.modes):
        raise Fm2EdgeError(f"run folder '{root}' already exists; pass --run.resume true to continue it or "
                           f"--run.overwrite true to replace it")
    results = {mode: finetune_one(job, mode, session, root / mode) for mode in job.finetune.modes}
    if not accelerator.is_main_process:
        return {}
    rows = [{"mode": m, "test_acc": r["test_acc"], "val_acc_before": r.get("val_acc_before"),
             "val_acc": r.get("val_acc"), "selected_epoch": r.get("selected", {}).get("epoch"),
             "trainable": r["parameters_after"]["trainable"], "total": r["parameters_after"]["total"],
             "train_seconds": r["train_seconds"], "peak_memory_bytes": r.get("peak_memory_bytes"),
             "images_per_s": r["history"][-1]["images_per_s"] if r["history"] else None}
            for m, r in results.items()]
    summary = {"model": job.model.name, "data": job.data.source, "epochs": job.train.epochs, "rows": rows}
    atomic_write_json(root / "comparison.json", summary)
    print(f"\n{'mode':<8} {'trainable':>12} {'of total':>9} {'val before':>11} {'val after':>10} {'test':>8} "
          f"{'train s':>8} {'img/s':>7} {'peak MB':>8}")
    for r in rows:
        before = f"{100 * r['val_acc_before']:.2f}%" if r["val_acc_before"] is not None else "-"
        after = f"{100 * r['val_acc']:.2f}%" if r["val_acc"] is not None else "-"
        peak = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r["peak_memory_bytes"] else "-"
        print(f"{r['mode']:<8} {r['trainable']:>12,} {100 * r['trainable'] / r['total']:>8.2f}% {before:>11} "
              f"{after:>10} {percent(r['test_acc']):>8} {r['train_seconds']:>8.0f} {r['images_per_s'] or 0:>7.0f} "
              f"{peak:>8}")
    if len(rows) > 1:
        save_figure(plots.finetune_comparison(rows, f"{job.model.name} on {job.data.source}"),
                    root / "plots" / "comparison.png")
    print(f"results in {root}")
    return summary
