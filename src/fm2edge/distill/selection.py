"""Teacher candidates and the choice among them: a pretrained model fine-tuned in full with the teacher recipe,
continued for more epochs (patience), refined at a larger input size (FixRes), averaged into a greedy soup; the
validation split chooses. `fm2edge auto` builds its fine-tuned teachers from this recipe; the studies build theirs
from these functions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fm2edge.config import (
    AugmentConfig,
    DataConfig,
    FinetuneConfig,
    FinetuneJob,
    ModelConfig,
    RunConfig,
    SoupConfig,
    SoupJob,
    TrainConfig,
)

# the teacher's fine-tuning recipe: full fine-tuning with strong augmentation (TrivialAugment on random-resized crops)
TEACHER_AUGMENT = AugmentConfig(crop="resized", scale=(0.5, 1.0), flip=True, auto="trivial")
TEACHER_EPOCHS = 10  # 10 epochs took Lite0 at 160 px from a 74.6% probe to 84% on CIFAR-10 with 5,000 labels
TEACHER_LR, TEACHER_BATCH = 5e-4, 64


def teacher_recipe(epochs: int = TEACHER_EPOCHS, batch: int = TEACHER_BATCH, ema: float = 0.0,
                   mix: bool = False, **overrides) -> TrainConfig:
    """Full fine-tuning of a pretrained teacher: AdamW at 5e-4 (scaled linearly with ``batch`` from 64), weight
    decay 0.05, one warm-up epoch then a cosine decay, label smoothing 0.1, TrivialAugment on random-resized crops;
    ``mix`` adds MixUp / CutMix on half the images, ``ema`` keeps a weight average. ``overrides`` are further
    TrainConfig fields (device, seed, score_test...)."""
    augment = replace(TEACHER_AUGMENT, mixup=0.8, cutmix=1.0, mix_prob=0.5) if mix else TEACHER_AUGMENT
    return TrainConfig(epochs=epochs, batch_size=batch, lr=TEACHER_LR * batch / TEACHER_BATCH, optimizer="adamw",
                       weight_decay=0.05, schedule="cosine", warmup_epochs=1, label_smoothing=0.1, ema=ema,
                       augment=augment, **overrides)


def finetune_teacher(root: Path, name: str, data: DataConfig, model: ModelConfig, train: TrainConfig) -> Path:
    """One `fm2edge finetune --finetune.modes [full]` run of the teacher (resumed when interrupted, reused when
    done), validation-selected like every run: ROOT/NAME/full."""
    from fm2edge.finetune import finetune_job
    from fm2edge.models.io import is_model_folder

    run = root / name / "full"
    if not is_model_folder(run):
        finetune_job(FinetuneJob(data=data, model=model, train=train, finetune=FinetuneConfig(modes=["full"]),
                                 run=RunConfig(root=str(root), name=name, resume=True)))
    return run


def saved_model(teacher: Path) -> tuple[str, int]:
    """(registered name, input size) of a saved teacher."""
    from fm2edge.models.io import model_meta

    saved = model_meta(teacher)
    return saved["name"], saved["preprocess"]["size"]


def continue_teacher(root: Path, data: DataConfig, teacher: Path, epochs: int, ema: float = 0.0) -> Path:
    """Patience (Beyer et al., CVPR 2022, for students; the same holds for a teacher still improving when its
    schedule ended): the fine-tuned teacher trained ``epochs`` more with its own recipe, a second cosine cycle from
    its weights at half the learning rate; with ``ema``, a weight average of that cycle is what validation scores
    and what is kept (a second cycle wanders: an average of its steps is flatter than any one of them)."""
    name, size = saved_model(teacher)
    return finetune_teacher(root, f"teacher-more{epochs}" + (f"-ema{ema:g}" if ema else ""), data,
                            ModelConfig(name=name, init=str(teacher), image_size=size),
                            replace(teacher_recipe(epochs, ema=ema), lr=TEACHER_LR / 2, warmup_epochs=0.5))


def refine_teacher(root: Path, data: DataConfig, teacher: Path, size: int, epochs: int) -> Path:
    """FixRes (Touvron et al., NeurIPS 2019): a few epochs more of the fine-tuned teacher at a larger input size,
    with light augmentation and a low learning rate, so that it sees objects at the apparent size of test images
    (random-resized crops enlarge them)."""
    name, _ = saved_model(teacher)
    return finetune_teacher(root, f"teacher-{size}", data, ModelConfig(name=name, init=str(teacher), image_size=size),
                            replace(teacher_recipe(epochs), lr=1e-4, warmup_epochs=0, precision="bf16",
                                    augment=AugmentConfig(crop="resized", scale=(0.8, 1.0), flip=True)))


def soup_teacher(root: Path, data: DataConfig, candidates: list[Path], name: str = "teacher-soup") -> Path:
    """A greedy model soup of the candidates (`fm2edge soup`: the best on validation first, each further one kept
    when the average's validation accuracy does not drop; BatchNorm statistics estimated again), itself a
    candidate. Its validation score is chosen on validation too, so it flatters the soup a little."""
    from fm2edge.runs import read_metrics
    from fm2edge.soup import soup_job

    run = root / name
    if not read_metrics(run):
        soup_job(SoupJob(data=data, soup=SoupConfig(runs=[str(c) for c in candidates]),
                         run=RunConfig(root=str(root), name=name)))
    return run


def choose_teacher(candidates: list[Path]) -> Path:
    """The candidate teacher with the best validation accuracy (its kept epoch's, on the same images); the first
    wins a tie."""
    from fm2edge.runs import read_metrics

    scores = {run: read_metrics(run)["val_acc"] for run in candidates}
    for run, acc in scores.items():
        print(f"teacher candidate {run}: validation {100 * acc:.2f}%")
    best = max(candidates, key=scores.get)
    print(f"teacher chosen on validation: {best}", flush=True)
    return best
