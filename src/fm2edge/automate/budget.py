"""What `fm2edge auto`'s time budget pays for: the seconds earlier calls of the run spent (a resumed run counts
them), the finalists' exports held in reserve, the test read, what is left for the students and their seeds, and
how the budget is told."""

from __future__ import annotations

import json
from pathlib import Path

from fm2edge.automate.config import AutoJob
from fm2edge.automate.exports import AGREEMENT_IMAGES, export_seconds
from fm2edge.automate.teachers import TEACHER_STAGE
from fm2edge.config import ExportConfig

# On images smaller than photos (8 px digits) the teacher is exported and judged beside the finalists (where it fits
# the latency budget) only where its export takes at most this share of --auto.minutes: Lite0 at 224 px on a 2-core
# AVX2-only EPYC (13.7 ms a batch-1 image) was reserved most of an 8-minute budget for digits, where students beat
# it (`fm2edge auto --auto.minutes 8` on a 2-core VNNI Xeon: 98.22% test against 95.56%). Half, not less: the
# estimate follows the measured latency, and a small teacher on a busy machine must not flip in and out of the plan.
# On photos the teacher's export is reserved wherever it fits the whole budget (PHOTO_TEACHER_EXPORT_SHARE): the
# students trained in the time it frees trailed it far (cats and dogs, 2-core VNNI Xeon, no latency budget:
# --auto.minutes 1, a 32 px CNN from random weights 58.30% test against the teacher's 96.40%; 2 minutes with
# --auto.min_epochs 40, 74.70% against 97.20%; 2 minutes on a busy machine, Lite0 at 96 px 91.90% against 96.40%), and
# where the reserve leaves the students no time the teacher is shipped alone (`teacher_alone_text`). One longer than
# the whole budget (one of 86 M parameters at 100 ms a batch-1 image is estimated at 45 minutes with 500 training
# and 100 validation images) gives the students the time.
TEACHER_EXPORT_SHARE = 0.5
PHOTO_TEACHER_EXPORT_SHARE = 1.0
# Held back from the time left when the later rungs are re-sized: the work no stage records and no estimate covers
# (loading the data on each call, choosing, writing the results and plots).
RESPACE_MARGIN = 0.03
# Views per second the teacher's cache build reaches, relative to its speed on plain validation images timed the way
# the cache runs it (the views are rendered at its input size first). Lite0 at 224 px on a 2-core AMX Xeon, 360
# photos x 4 views: 143 views/s against 144 img/s through ONNX Runtime, 58 against 52 in PyTorch channels-last.
TEACHER_VIEW_EFFICIENCY = 0.9
# Inference runs about this many times faster than a training step (no backward pass, no optimiser step): what a
# student's labels on the held-out images (`automate.heldout`) are priced at, twice per candidate.
INFERENCE_SPEEDUP = 3.0


def teacher_export_too_long(seconds: float, minutes: float, photos: bool = False) -> str | None:
    """Why the teacher is not exported beside the finalists where its export (``seconds``) would take more than
    TEACHER_EXPORT_SHARE of the ``minutes`` budget, on ``photos`` more than PHOTO_TEACHER_EXPORT_SHARE (there
    students trained in a short budget trail the teacher far); None where it may be."""
    share = PHOTO_TEACHER_EXPORT_SHARE if photos else TEACHER_EXPORT_SHARE
    if seconds <= share * minutes * 60:
        return None
    return (f"its export would take {seconds / 60:.1f} of the {minutes:g}-minute budget, more than {share:.0%}: the "
            f"students get the time")


def seeds_that_fit(costs: list[tuple[str, float]], seconds: float, most: int) -> dict[str, int]:
    """Further seeds per finalist that ``seconds`` buys, at most ``most`` each, given each one's seconds per seed
    (``costs``, the leader first): the leader's first, then the next finalist's from what is left."""
    seeds = {}
    for name, cost in costs:
        seeds[name] = max(0, min(most, int(seconds // cost) if cost > 0 else most))
        seconds -= seeds[name] * cost
    return seeds


def seed_seconds(f: dict, plan: dict) -> float:
    """What one more seed of the trained candidate ``f`` costs: the teacher's outputs on the seed's own views of
    the images, the epochs ``f`` trained at the speed its last stage recorded, that stage's cost besides its epochs,
    and the seed's share of the soup (the network scored on validation twice, and on the held-out images)."""
    images = plan["train_images"] + plan["unlabeled_images"]
    teaching = plan["views"] * images / (TEACHER_VIEW_EFFICIENCY * plan["teacher"]["images_per_s"])
    scoring = (2 * plan["val_images"] + plan["held_out"]["images"]) / (INFERENCE_SPEEDUP * f["train_images_per_s"])
    return teaching + f["trained_epochs"] * f["epoch_seconds"] + f["overhead_seconds"] + scoring


def spent_before(root: Path) -> float:
    """Seconds earlier calls of this run spent: planning (the teachers included: probed and fine-tuned while it
    plans), the finished stages after it (a resumed run counts them against the budget) and the teacher's graphs'
    labels after its export (:func:`export_teacher`)."""
    from fm2edge.stagecache import stage_seconds

    after = sum(s for name, s in stage_seconds(root).items() if not name.startswith(TEACHER_STAGE))
    if not (root / "plan.json").exists():
        return after
    plan = json.loads((root / "plan.json").read_text())
    return after + plan["planning_seconds"] + (plan.get("teacher_exported") or {}).get("unrecorded_seconds", 0.0)


def seconds_left(job: AutoJob, root: Path, plan: dict, alive: list[dict]) -> float:
    """What the budget still has for training: the minutes less what was spent, the exports of ``alive`` (the
    candidates still training, the finalists among them: :func:`export_reserve`) and RESPACE_MARGIN for unrecorded
    work (what later rungs and the extension are sized to)."""
    exports = export_reserve(plan, alive, job.auto.latency_ms)
    return (job.auto.minutes * 60 * (1 - RESPACE_MARGIN) - spent_before(root) - exports - plan["held_out"]["seconds"]
            - plan["test_read_seconds"])


def read_once_seconds(images: int, teacher: dict, options: list[dict]) -> float:
    """What reading ``images`` test images once costs (:func:`read_test_once`): the ``teacher``'s pass as its
    cached outputs are made, at its measured speed, and the slowest fp32 graph of ``options`` (those that may be
    chosen) at its batch-1 latency (batched, the graphs ran within 13% of it: EfficientNet-Lite0 at 160 and 224 px on
    2,000 photos, 2-core AMX Xeon). Reserved in the budget: on Fashion-MNIST's 2,000 test images the read took a
    minute of a 4-minute budget (the teacher in PyTorch) that no stage recorded."""
    return images * (1 / teacher["images_per_s"] + max((f["fp32"]["p50_ms"] / 1e3 for f in options), default=0.0))


def export_reserve(plan: dict, candidates: list[dict], latency_ms: float | None = None) -> float:
    """Seconds the exports need when the finalists will be ``plan["finalists"]`` of ``candidates``: the costliest
    that many (:func:`export_seconds` under the ``latency_ms`` budget), and the teacher's where it is exported
    beside them (it fits the budget)."""
    calibration = min(ExportConfig().calibration_images, plan["train_images"])
    # the fidelity images: the training images, then the unlabelled ones (before the pool is planned, all of them)
    agreement = min(AGREEMENT_IMAGES, plan["train_images"] + plan.get("unlabeled_images", 0))

    def cost(f: dict) -> float:
        return export_seconds(f, calibration, plan["val_images"], plan["held_out"]["images"], agreement, latency_ms)

    costs = sorted((cost(f) for f in candidates), reverse=True)
    teacher = plan["teacher_option"]  # exported already (`export_teacher`): its time is spent, not to be reserved
    return sum(costs[:plan["finalists"]]) + (0.0 if "why" in teacher or plan.get("teacher_exported") else
                                             cost(teacher))


def budget_parts(cfg) -> list[str]:
    """``["2 ms batch-1 latency", "5 MB"]``: the limits that were set (an AutoConfig), each as the run says it."""
    parts = [f"{cfg.latency_ms:.3g} ms batch-1 latency" if cfg.latency_ms is not None else "",
             f"{cfg.max_mb:.3g} MB" if cfg.max_mb is not None else "",
             f"{cfg.max_params:,} parameters" if cfg.max_params is not None else ""]
    return [p for p in parts if p]


def budget_text(cfg) -> str:
    """``"2 ms batch-1 latency, 5 MB"``: the limits that were set."""
    return ", ".join(budget_parts(cfg)) or "no limits"


def budget_sentence(cfg) -> str:
    """``"2 ms batch-1 latency, 5 MB and 100,000 parameters"``: the limits that were set, as a sentence says them."""
    parts = budget_parts(cfg)
    return f"{', '.join(parts[:-1])} and {parts[-1]}" if len(parts) > 1 else "".join(parts)
