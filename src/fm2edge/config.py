"""Typed configuration: one dataclass per stage.

YAML sections and ``--section.field`` flags map 1:1 onto these classes (jsonargparse reads the signatures and the
``Args:`` docstrings below, so ``fm2edge CMD --help`` shows them). Precedence is defaults < YAML (``--config``) <
flags; unknown keys are errors. ``__post_init__`` validates values so a bad one fails before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DataConfig", "ModelConfig", "AugmentConfig", "TrainConfig", "RunConfig", "TrainJob", "DemoJob", "to_dict"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
Tracker = Literal["auto", "none", "tensorboard", "wandb", "mlflow"]


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class DataConfig:
    """Where images and labels come from, and which of them to use.

    Args:
        source: "digits" (scikit-learn's 8x8 digits, offline), a Hugging Face dataset id such as "uoft-cs/cifar10",
            a local folder of parquet/arrow files in the hub's schema, a single parquet/arrow file, or an image
            folder laid out as root/<class>/<image> or root/<split>/<class>/<image> (train, val, test; links are
            followed, hidden and non-image files skipped; a class folder's sub-folders are read as the class, each
            kept whole on one side of a held-out split), or labelled by a metadata.csv (columns file_name and
            label) as the hub's image folders are, or by a labels file (`labels`). `fm2edge data SOURCE` shows what
            it resolves to.
        train_split: Name of the training split.
        test_split: Name of the test split; when the source has none, a stratified hold-out of the training split
            of size test_fraction is used.
        test_fraction: Share of the training split held out as test data when the source has no test split.
        val_split: The source's validation split, used for every choice (best epoch, early stopping, the teacher
            check); empty finds one named val, validation or valid.
        val_fraction: When the source has no validation split, this stratified share of the labelled training
            images (at least one per class) is held out for validation instead; 0 turns validation off, and then
            the last epoch is kept.
        image_column: Image column; detected from the schema when empty.
        label_column: Label column; detected from the schema when empty.
        labels: For an image folder whose images are not in class folders: a CSV (or JSON Lines) file listing each
            image and its class, as Kaggle ships train/ beside labels.csv. Images are named by their path from the
            data folder, or by their file name with or without its extension (id, file_name, image, ... column);
            the class is in label_column, a column named label, class, category or target, or the file's one other
            column. Its images are the training split (validation and test held out from it); images it does not
            list are left out and counted. A relative path is looked for in the current folder, then the data folder.
        group_column: A column of the labels file, metadata file or parquet/hub dataset naming each image's group:
            the patient, site, camera or shoot it comes from. Images of one group are held out together, never some
            for training and others for validation or test (which would measure how well the model recognises the
            group, not the class); a group may hold images of several classes. Empty: each image is its own group
            (class folders: each sub-folder of a class folder is one).
        max_train: Use at most this many training images, class-balanced.
        max_test: Use at most this many test images, class-balanced.
        per_class: Use this many labelled training images per class (overrides max_train).
        image_size: Store images at this square size (shortest-edge resize then centre crop); empty keeps the native
            size when all images share it and it is at most 256 px, else the largest shorter side among them up to
            256 (room for random crops of 224 px inputs, and memory for thousands of camera photos; small images
            are not enlarged).
        revision: Dataset revision on the hub (branch, tag or commit).
        cache_dir: Folder for the decoded uint8 image cache; empty uses $FM2EDGE_CACHE or ~/.cache/fm2edge.
        on_bad_image: What to do with an image that cannot be decoded: "error" stops, "skip" drops it and counts it.
    """

    source: str = "digits"
    train_split: str = "train"
    test_split: str = "test"
    test_fraction: float = 0.25
    val_split: str | None = None
    val_fraction: float = 0.1
    image_column: str | None = None
    label_column: str | None = None
    labels: str | None = None
    group_column: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    per_class: int | None = None
    image_size: int | None = None
    revision: str | None = None
    cache_dir: str | None = None
    on_bad_image: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        check(bool(self.source), "data.source must not be empty")
        check(0.0 < self.test_fraction < 1.0, f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("max_train", "max_test", "per_class", "image_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"data.{name} must be at least 1, got {value}")


@dataclass
class ModelConfig:
    """Which network, and how its inputs are prepared.

    Args:
        name: Registered model name with its source prefix, e.g. "student:cifar_resnet18", "torchvision:resnet18",
            "timm:mobilenetv3_small_100", "hf:facebook/dinov2-small" or "hf:/path/to/saved/model"
            (see `fm2edge list`). Trust: "torchscript:" and "export:" files run code when loaded, as a pickle
            does, so load only files you trust; run folders (safetensors) and "onnx:" graphs hold no code.
        pretrained: Load pretrained weights (hub or package); false builds the architecture with random weights.
        image_size: Input resolution; empty uses the model's own (a "student:" model follows the data: the stored
            image size, kept within 32-128 px).
        crop_pct: Share of the resized image kept by the centre crop (1.0 resizes straight to image_size);
            empty uses the model's own.
        mean: Per-channel normalisation mean; empty uses the model's own.
        std: Per-channel normalisation std; empty uses the model's own.
        weights: A state dict to load into the architecture (.safetensors, or .pt / .pth read without running code):
            a whole classifier's or the bare network's (then the head is new); "module." / "model." prefixes are
            dropped.
        init: A run folder whose trained weights this run starts from (a new run, not a resume); its head is kept
            when the classes match.
        stem_stride: How much a "student:" CNN's first convolution downsamples: 1, 2 or 4; empty sizes it to the
            input (1 up to 48 px, 2 up to 96 px, 4 above), so a student at 128 px costs about what it does at 32.
    """

    name: str = "student:small_cnn"
    pretrained: bool = False
    image_size: int | None = None
    crop_pct: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    weights: str | None = None
    init: str | None = None
    stem_stride: Literal[1, 2, 4] | None = None

    def __post_init__(self) -> None:
        check(bool(self.name), "model.name must not be empty")
        check(self.image_size is None or self.image_size >= 8, f"model.image_size must be >= 8, got {self.image_size}")
        check(self.crop_pct is None or 0.0 < self.crop_pct <= 1.0,
              f"model.crop_pct must be in (0, 1], got {self.crop_pct}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            check(value is None or len(value) == 3, f"model.{name} needs 3 values (R, G, B), got {value}")
        check(self.std is None or all(s > 0 for s in self.std), f"model.std must be positive, got {self.std}")


@dataclass
class AugmentConfig:
    """Augmentation, drawn per image on the device from the run's seed (the same view reaches a teacher in
    distillation).

    Args:
        crop: "auto" (the default: "resized" for photos, images stored at 32 px or more, and "none" for smaller
            ones such as digits); "none"; "pad" (shift by up to ``pad`` pixels, zero-filled: the CIFAR classic); or
            "resized" (a random box of ``scale`` x the image's area and aspect ratio in ``ratio``, resized to the
            input size).
        pad: Largest shift of the "pad" crop, in stored pixels.
        scale: Area share range of the "resized" crop.
        ratio: Aspect-ratio range of the "resized" crop.
        flip: Random horizontal flips; empty flips photos (images stored at 32 px or more) and not smaller ones.
            Turn it off for classes that change when mirrored (text, digits, left/right signs).
        jitter: Colour jitter strength: brightness, contrast and saturation each scaled by a factor in
            [1 - jitter, 1 + jitter]; 0 turns it off.
        auto: "none", "trivial" (TrivialAugment: one random operation at a random strength per image) or
            "randaugment" (two random operations at ``magnitude``).
        magnitude: RandAugment's strength, 0-30.
        mixup: MixUp's Beta(a, a) parameter; 0 turns it off.
        cutmix: CutMix's Beta(a, a) parameter; 0 turns it off. With both on, each image takes one of the two.
        mix_prob: Share of images that are mixed when mixup or cutmix is on.
    """

    crop: Literal["auto", "none", "pad", "resized"] = "auto"
    pad: int = 4
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    flip: bool | None = None
    jitter: float = 0.0
    auto: Literal["none", "trivial", "randaugment"] = "none"
    magnitude: int = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1,
              f"augment.scale must be two area shares 0 < min <= max <= 1, got {self.scale}")
        check(len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1],
              f"augment.ratio must be two aspect ratios 0 < min <= max, got {self.ratio}")
        check(self.pad >= 0, f"augment.pad must be >= 0, got {self.pad}")
        check(0 <= self.jitter < 1, f"augment.jitter must be in [0, 1), got {self.jitter}")
        check(0 <= self.magnitude <= 30, f"augment.magnitude must be in [0, 30], got {self.magnitude}")
        check(self.mixup >= 0 and self.cutmix >= 0, "augment.mixup and augment.cutmix must be >= 0 (0 is off)")
        check(0 <= self.mix_prob <= 1, f"augment.mix_prob must be in [0, 1], got {self.mix_prob}")

    @property
    def active(self) -> bool:
        return (self.crop != "none" or self.flip or self.jitter > 0 or self.auto != "none" or self.mixup > 0
                or self.cutmix > 0)

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0


@dataclass
class TrainConfig:
    """The training loop: optimiser, schedule, precision, batching. Left at their defaults, the settings are the
    recipe the studies proved (docs: studies): AdamW with a one-cycle rate, epochs scaled to the training set, a
    peak rate and weight decay suited to where the weights start, and random-resized crops and flips for photos.

    Args:
        epochs: Passes over the training set; empty scales them to it: 30 up to 10,000 images, fewer above (about
            300,000 images seen in all), at least 10.
        batch_size: Images per optimiser step, summed over processes.
        lr: Peak learning rate; empty: 5e-4 from pretrained weights (--model.pretrained, --model.init,
            --model.weights), 4e-3 from random ones.
        optimizer: "adamw" (the default), "adam" or "sgd" (Nesterov momentum).
        weight_decay: Weight decay; empty: 0.05 from pretrained weights, 5e-4 from random ones.
        momentum: SGD momentum.
        schedule: "onecycle" (the default: linear warm-up over the first 25% of steps, then linear decay),
            "cosine" or "constant", stepped per batch.
        warmup_epochs: Linear warm-up length for "cosine".
        label_smoothing: Cross-entropy label smoothing.
        backbone_lr: Learning-rate multiplier for the backbone (the head, and any projector, get train.lr): below 1
            fine-tunes a pretrained backbone gently, so that a few labels do not overwrite what it learned.
        head_init: "probe": before the first epoch the head becomes a logistic regression on the frozen backbone's
            features of the training images (LP-FT, Kumar et al., ICLR 2022), so fine-tuning starts from a good
            classifier and distorts the pretrained features less; for a backbone with trained weights
            (--model.pretrained true, --model.init RUN, --model.weights FILE). "random": a fresh head. Empty
            ("auto"): "probe" from --model.pretrained weights, "random" otherwise.
        freeze_bn: BatchNorm layers stay in eval mode while training: their running statistics are kept (their scale
            and shift still learn). For tiny batches, and for LP-FT from a backbone whose statistics came from other
            images: the head then meets in training the features its probe was fitted on. Empty: true from
            --model.pretrained weights (statistics measured on a million images, not re-estimated from a few
            hundred photos' augmented crops), false otherwise.
        augment: On-device augmentation (--train.augment.crop resized --train.augment.flip true ...): by default
            random-resized crops and flips for photos (images stored at 32 px or more), none for smaller ones.
        precision: "auto" is bf16 autocast on CUDA and fp32 on CPU; "bf16" forces autocast where supported.
        device: "auto" picks CUDA when available.
        seed: Seed for weights, data order and augmentation; each epoch reseeds from (seed, epoch) so a resumed run
            follows the same path as an uninterrupted one.
        eval_batch_size: Batch size for evaluation (on a CPU capped at about two million input pixels, 41 images at
            224 px, where larger batches run slower).
        eval_every: Evaluate on the validation split every this many epochs (and always after the last).
        select: Which weights are kept and tested: "best" (the epoch with the highest validation accuracy) or "last".
            The test split is read once, on the kept weights.
        patience: Stop after this many evaluations without a better validation accuracy; empty trains every epoch.
        channels_last: Use channels_last memory format for convolutional networks.
        compile: Wrap the model in torch.compile.
        grad_accum: Accumulate gradients over this many batches per optimiser step (effective batch = batch_size x
            grad_accum, whatever the number of processes), for batches that do not fit in memory.
        ema: Keep an exponential moving average of the weights with at most this decay per optimiser step (0, the
            default, keeps none; 0.999 suits a few thousand steps). Its decay warms up as 1 - (1 + step)^-3/4, so a
            short fine-tune averages its recent steps rather than its start. Validation, the kept weights and the
            test split use the average; each epoch's ``val_acc_raw`` scores the live weights beside it.
        keep_checkpoints: Epoch checkpoints to keep (the newest ones).
        checkpoint_every: Write a checkpoint every this many epochs (and always after the last).
        score_test: Read the test split once at the end, on the kept weights; false leaves it unread (for a
            candidate still to be chosen between on validation, as `fm2edge auto`'s students are: the test split
            is then read once, for the chosen model).
    """

    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    weight_decay: float | None = None
    momentum: float = 0.9
    schedule: Literal["constant", "cosine", "onecycle"] = "onecycle"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    backbone_lr: float = 1.0
    head_init: Literal["auto", "random", "probe"] = "auto"
    freeze_bn: bool | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Precision = "auto"
    device: Device = "auto"
    seed: int = 0
    eval_batch_size: int = 512
    eval_every: int = 1
    select: Literal["best", "last"] = "best"
    patience: int | None = None
    channels_last: bool = True
    compile: bool = False
    grad_accum: int = 1
    ema: float = 0.0
    keep_checkpoints: int = 2
    checkpoint_every: int = 1
    score_test: bool = True

    def __post_init__(self) -> None:
        check(self.checkpoint_every >= 1, f"train.checkpoint_every must be at least 1, got {self.checkpoint_every}")
        check(self.grad_accum >= 1, f"train.grad_accum must be at least 1, got {self.grad_accum}")
        check(self.epochs is None or self.epochs >= 1, f"train.epochs must be at least 1, got {self.epochs}")
        check(self.batch_size >= 1, f"train.batch_size must be at least 1, got {self.batch_size}")
        check(self.eval_batch_size >= 1, f"train.eval_batch_size must be at least 1, got {self.eval_batch_size}")
        check(self.eval_every >= 1, f"train.eval_every must be at least 1, got {self.eval_every}")
        check(self.patience is None or self.patience >= 1, f"train.patience must be at least 1, got {self.patience}")
        check(self.lr is None or self.lr > 0, f"train.lr must be positive, got {self.lr}")
        check(self.backbone_lr >= 0, f"train.backbone_lr must be >= 0 (a multiplier of train.lr), got "
              f"{self.backbone_lr}")
        check(self.weight_decay is None or self.weight_decay >= 0,
              f"train.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        check(0 <= self.ema < 1, f"train.ema must be in [0, 1) (a decay such as 0.999; 0 keeps no average), got "
              f"{self.ema}")
        check(self.keep_checkpoints >= 1, f"train.keep_checkpoints must be at least 1, got {self.keep_checkpoints}")


@dataclass
class RunConfig:
    """Where results go.

    Args:
        root: Folder that holds run folders.
        name: Run folder name under root; empty derives one from the command and the model.
        resume: Continue the run in an existing run folder from its last checkpoint (training) or its last saved
            chunk (feature extraction).
        overwrite: Delete an existing run folder of the same name first.
        log_with: Experiment tracker for the run's config, every epoch's losses (each part), learning rate,
            validation accuracy and images/s, and the stage's summary (test accuracy, throughput, probe
            accuracies...), through Accelerate's trackers: "auto" (TensorBoard in RUN/logs when tensorboard or
            tensorboardX is installed, else none), "tensorboard", "wandb" (files in RUN/wandb; WANDB_MODE=offline
            works without network), "mlflow" (MLFLOW_TRACKING_URI, else a file store in ROOT/mlruns) or "none".
    """

    root: str = "runs"
    name: str | None = None
    resume: bool = False
    overwrite: bool = False
    log_with: Tracker = "auto"

    def __post_init__(self) -> None:
        check(not (self.resume and self.overwrite), "run.resume and run.overwrite cannot both be true")
        check(self.name is None or ("/" not in self.name and self.name not in (".", "..")),
              f"run.name must be a plain folder name, got {self.name!r}")


@dataclass
class TrainJob:
    """`fm2edge train`: train a model on labelled images with the one training loop (no teacher).

    Args:
        seeds: Train once per seed (overriding train.seed), each in RUN/seed-N, and report mean and standard
            deviation of test accuracy in RUN/seeds.json.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        check_probe_head(self.model, self.train)


# Images stored at least this large are photos: augmented (random-resized crops and flips) unless told otherwise.
PHOTO_PX = 32
# Epochs scale with the training set: EPOCHS_MOST up to EPOCHS_IMAGES // EPOCHS_MOST images, then about
# EPOCHS_IMAGES images seen in all, never fewer than EPOCHS_FEWEST epochs (the studies trained 30 epochs on 5,000
# CIFAR-10 images and on 200 photos; a larger set needs fewer passes).
EPOCHS_MOST, EPOCHS_FEWEST, EPOCHS_IMAGES = 30, 10, 300_000


def scaled_epochs(images: int) -> int:
    """The epochs the proven recipe gives a training set of ``images``: EPOCHS_MOST up to a point, then about
    EPOCHS_IMAGES images seen in all, at least EPOCHS_FEWEST."""
    return max(EPOCHS_FEWEST, min(EPOCHS_MOST, round(EPOCHS_IMAGES / max(1, images))))


def starts_trained(model: ModelConfig) -> bool:
    """The model starts from trained weights (pretrained, a run folder's or a weights file's)."""
    return bool(model.pretrained or model.init or model.weights)


def is_photo(image_px: int) -> bool:
    """Images stored at ``image_px`` are photos, which random-resized crops and flips help; smaller ones (8 x 8
    digits) lose what they show to a crop."""
    return image_px >= PHOTO_PX


def proven_recipe(cfg: TrainConfig, images: int, image_px: int, trained: bool, pretrained: bool = False) -> TrainConfig:
    """``cfg`` with what was left empty filled as the studies found best (docs: studies): epochs scaled to the
    ``images`` of the training set; from trained weights a gentle rate (5e-4) and weight decay 0.05, from random
    weights 4e-3 and 5e-4; random-resized crops and flips for photos (stored at PHOTO_PX px or more), nothing for
    smaller images such as digits; from ``pretrained`` weights (trained on other images, with labels here to fit a
    probe on) LP-FT with the pretrained BatchNorm statistics kept, as `fm2edge auto` trains its pretrained students
    (docs: auto, "Measured"). Every training stage passes its settings through this before the loop."""
    photo = is_photo(image_px)
    augment = dataclasses.replace(cfg.augment, crop=("resized" if photo else "none") if cfg.augment.crop == "auto"
                      else cfg.augment.crop, flip=photo if cfg.augment.flip is None else cfg.augment.flip)
    epochs = cfg.epochs or scaled_epochs(images)
    head_init = ("probe" if pretrained else "random") if cfg.head_init == "auto" else cfg.head_init
    return dataclasses.replace(cfg, epochs=epochs, lr=cfg.lr or (5e-4 if trained else 4e-3),
                   weight_decay=(0.05 if trained else 5e-4) if cfg.weight_decay is None else cfg.weight_decay,
                   augment=augment, head_init=head_init,
                   freeze_bn=pretrained if cfg.freeze_bn is None else cfg.freeze_bn)


def is_resolved(cfg: TrainConfig) -> bool:
    """Nothing left for :func:`proven_recipe` to fill."""
    return (cfg.epochs is not None and cfg.lr is not None and cfg.weight_decay is not None
            and cfg.augment.crop != "auto" and cfg.augment.flip is not None and cfg.head_init != "auto"
            and cfg.freeze_bn is not None)


def check_probe_head(model: ModelConfig, train: TrainConfig) -> None:
    """A probe head needs features worth probing: a random network's have nothing to start from (and its untrained
    BatchNorm statistics make them tiny in eval mode, so the head would blow up once training starts)."""
    check(train.head_init != "probe" or starts_trained(model),
          "--train.head_init probe fits the head on a pretrained backbone's features, and this model starts "
          "random; give it weights (--model.init RUN, --model.pretrained true or --model.weights FILE) or set "
          "--train.head_init random")


@dataclass
class DemoJob:
    """`fm2edge demo`: the whole lifecycle, offline, on scikit-learn's digits, in a few minutes on a laptop CPU.

    Args:
        run: Where the demo's run folders go (ROOT/NAME/<stage>); run.overwrite true reruns every stage, else
            stages whose inputs are unchanged since the last demo are skipped.
        epochs: Training epochs for each student.
    """

    run: RunConfig = field(default_factory=lambda: RunConfig(name="demo"))
    epochs: int = 15

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain-dict view of a config dataclass, for YAML and JSON."""
    return dataclasses.asdict(cfg)
