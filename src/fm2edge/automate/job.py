"""`fm2edge auto`: plan, run and prove. The job reads as its steps; each training or export is an ordinary stage
(a run folder) cached like a recipe's, and the plan is written once, so a rerun after a kill resumes to the same
choice."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fm2edge.automate.config import AutoJob
from fm2edge.automate.heldout import (
    agreement,
    agreement_share,
    held_out_count,
    held_out_images,
    predicted_labels,
    ranking_pool_text,
    unlabeled_pool,
)
from fm2edge.automate.measure import (
    INT8_LAYOUTS,
    LOOP_EFFICIENCY,
    PRETRAINED_BATCH,
    Candidate,
    latency_cache,
    measure,
    measure_training,
)
from fm2edge.automate.sizes import (
    HEDGE_MARGIN,
    fastest_pretrained,
    fastest_pretrained_text,
    fitted_sizes,
    judged_ms,
    precisions_within,
    within_budget,
)
from fm2edge.automate.stages import run_one_stage
from fm2edge.automate.teachers import (
    TEACHER_STAGE,
    finetuned_teachers,
    plan_finetune,
    score_teachers,
    teacher_stages,
    usable_teachers,
)
from fm2edge.config import EPOCHS_FEWEST, ExportConfig, is_photo, scaled_epochs, to_dict
from fm2edge.data.summary import IMBALANCED, class_imbalance, imbalance_text, per_class
from fm2edge.distill.teacher import graph_folder
from fm2edge.errors import Fm2EdgeError
from fm2edge.runs import METRICS_FILE, atomic_dir, atomic_write_json, atomic_write_text, read_metrics
from fm2edge.stagecache import moved
from fm2edge.timing import timings_text

BEST_SETTINGS = "auto.yaml"  # RUN/best/auto.yaml: the settings of the run that chose it
AUTO_FILE = "auto.json"  # RUN/auto.json: the choice, its test figures and the leaderboard (read again by a rerun)

# A candidate measured up to this much over the latency budget is kept for training: a screen of 30 runs is noisier
# than the finalists' export (100 runs of the shipped graph), which decides.
SCREEN_TOLERANCE = 0.10
# A candidate measured over the latency budget while the machine ran slower than it runs once every candidate is
# measured (the reference timing, :func:`fm2edge.timing.reference_ms`, taken again), and that the difference would
# bring within it, is measured again before the screen, keeping the quieter of its two figures. On a shared 2-core
# AVX2 EPYC the reference took 2.13 ms while the candidates were first measured and 1.13 ms minutes later; Lite0 at
# 112 px measured 8.37 ms fp32 then, 4.38 ms on a quiet machine, and was dropped from a 5 ms budget.
# An export stage's cost (one per int8 recipe): tracing, ONNX Runtime sessions and the quantiser's passes, which grow
# with the network (EXPORT_BASE_SECONDS and EXPORT_SECONDS_PER_PARAM), its timed runs (repeated medians of the graphs
# and of PyTorch beside them) and parity checks, about EXPORT_INFERENCES batch-1 inferences of the graph, calibration
# at about CALIBRATION_COST inferences an image (the calibration graph reports every tensor's range) and the
# validation passes. Measured per stage in one process on a 2-core AMX Xeon (2026-12-05; fp32 p50, calibration and
# validation images -> seconds): the small CNN 0.3 ms, 167 / 19 -> 0.8-0.9 s and 500 / 135 -> 1.0-1.1 s; Lite0
# (3.4 M parameters) at 96 px 1.1 ms, 167 / 19 -> 5.0-5.3 s and 500 / 135 -> 7.4-7.7 s, at 112 px 1.45 ms -> 5.4-5.7 s,
# at 224 px 4.35 ms -> 10.2-10.4 s; the fit errs long at each (1.9, 2.5, 6.7, 9.3, 7.3, 13.3 s). Percentile
# calibration's histograms cost about PERCENTILE_COST batch-1 inferences per calibration image on top (measured 4-18:
# 12.9 s for 167 images at 224 px, 7.5 s for 500 at 96 px); it is counted although it is skipped where min-max's graph
# is faithful, so the estimate errs long. The plan reserves the exports of the costliest candidates it trains (the
# finalists are not known yet) and the teacher's where it is exported beside them; each later rung is re-sized with the
# exports of the candidates still training, so a run whose costly candidates were left behind gets that time back.
# Planned at 10 s per finalist, two finalists' exports took 2.3 minutes where 32 s were reserved, and the run 16.9 of
# its 15 minutes; the fit before this one (2 s + 8,000 inferences, percentile 75) reserved 225 s for exports that took
# 34 s on a 369-photo folder.
EXPORT_BASE_SECONDS = 1.0
EXPORT_SECONDS_PER_PARAM = 1e-6
EXPORT_INFERENCES = 1000
CALIBRATION_COST = 6.0
PERCENTILE_COST = 20.0
EXPORT_LATENCY_RUNS = 100
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
# More timings of an exported graph over the latency budget whose candidate screened within it, before it is judged
# over: the export timed it once, and that minute's machine may have been busy
RETIMES = 2
# More timings of such a graph while every one was taken with the machine slower than at the screen: a shared host's
# reference timing moved between 0.44 and 0.82 ms within a minute, so a few tries usually find it in the screen's state
SLOW_RETIMES = 3
# Timed again and still this many times its screened figure: the two disagree beyond what int8 recipes of one model
# differ by (Lite0 at 192 px: 1.68 ms screened, its three int8 graphs 1.76-2.10 ms on an idle machine)
STILL_DISPUTED = 1.5
PLAN_VERSION = 20  # 20: the test read is reserved in the budget (read_once_seconds)
# Held back from the time left when the later rungs are re-sized: the work no stage records and no estimate covers
# (loading the data on each call, choosing, writing the results and plots).
RESPACE_MARGIN = 0.03
# Successive halving: each rung keeps the better 1/HALVING of the previous one on validation and trains it HALVING
# times the epochs more (continuing from its weights), until the finalists remain.
HALVING = 2
# A pretrained student's peak learning rate at PRETRAINED_BATCH images (AdamW, one-cycle). A first rung is a few
# optimiser steps, and AdamW's first steps move every weight by about the rate whatever its gradient: Lite0 at 128 px
# on 180 cat/dog photos, 4 epochs of 3 steps from its probe head (benchmarks/warmup_study.py), scored 88.62 / 91.75%
# on 800 unseen photos at 5e-4 and 95.00 / 93.38% at 2e-4; after 16 epochs 94.50 / 94.88% at 5e-4 and 95.62 / 94.62%
# at 2e-4 (seeds 0 / 1; 2-core VNNI Xeon; docs: auto, "The rate of a pretrained student's first steps").
PRETRAINED_LR = 2e-4
# A continuing rung's peak learning rate, relative to the first rung's (a second, gentler cycle from trained weights).
CONTINUE_LR = 0.5
# A run whose finalists reached --auto.max_epochs within this share of --auto.minutes says where the rest could go
# (the offline default, `fm2edge auto --auto.minutes 8` on digits, stopped so at 4.9 minutes and had said nothing,
# the note then waiting for a run that used under half).
EARLY_FINISH_SHARE = 0.75
# Fewest epochs worth a further cycle for the finalists when the planned rungs leave time over.
MIN_EXTENSION = 2
# At most this share of the time budget goes to the teacher's outputs on every stored view: with many unlabelled
# images a CPU teacher would otherwise spend the whole budget before a student trains, so the plan takes as many
# of them as that share affords.
TEACHING_SHARE = 0.25
# Views per second the teacher's cache build reaches, relative to its speed on plain validation images timed the way
# the cache runs it (the views are rendered at its input size first). Lite0 at 224 px on a 2-core AMX Xeon, 360
# photos x 4 views: 143 views/s against 144 img/s through ONNX Runtime, 58 against 52 in PyTorch channels-last.
TEACHER_VIEW_EFFICIENCY = 0.9
MIN_UNLABELED = 100  # below this many, unlabelled images are not worth their teacher passes
# Inference runs about this many times faster than a training step (no backward pass, no optimiser step): what a
# student's labels on the held-out images (`automate.heldout`) are priced at, twice per candidate.
INFERENCE_SPEEDUP = 3.0
# int8 recipes tried on each finalist (static QDQ, per-channel weights), in the order :func:`int8_recipes` gives:
# min-max calibration in the layout the screen timed fastest (its export writes the fp32 graph too), min-max in the
# other layout (every layer in int8, or the first and last layers, raw pixels in and logits out, kept in fp32), and
# percentile calibration (outliers clipped) in the fastest layout. Validation chooses among them, ties going to the
# closest agreement with the fp32 graph. A layout the screen timed over the latency budget (beyond SCREEN_TOLERANCE)
# is not exported again, whatever its calibration: under a 1.5 ms budget Lite0's all-int8 graph at 144 px, screened
# at 1.88 ms, timed 2.16 ms in its export, and a Tux Paint run's two percentile graphs, all-int8 then, 1.58-2.09 ms:
# 57 s of exports no choice could take. Percentile calibration only moves min-max's scales, to win back what
# outliers cost, and its histograms make it the slow one (Lite0 at 128 to 176 px on a 2-core AMX Xeon: 63-126 s
# against 16-24 s for each of the others): it is skipped where min-max's graph of its layout already answers as the
# fp32 graph on every validation image. It runs in the fastest layout only: Lite0's all-int8 graphs run 1.2-1.4x
# slower than those with the first and last layers in fp32, which answered as their fp32 graphs on 0.3-0.7 points
# more of 1,000 photos no calibration saw (four Tux Paint students at 128 and 144 px: benchmarks/int8_layouts.py).
# Images on which each int8 graph's agreement with its fp32 graph is measured (the students' own training images,
# unlabelled ones included): a validation split of a few dozen images cannot tell the int8 recipes apart, their
# fidelity to the fp32 graph on hundreds of images can.
AGREEMENT_IMAGES = 500
# Most share of the images checked on which a pretrained student's graph may answer otherwise than its fp32 graph
# and still win a validation tie by its larger input (:func:`choose`): the drop past which an export warns
# (--export.max_int8_drop, in points)
FAITHFUL_DROP = ExportConfig().max_int8_drop / 100
# A second finalist is a hedge against the leader's exported graph timing over the latency budget (one graph
# measured 3.53, 2.66 and 2.58 ms minutes apart against a 2.70 ms budget; screen figures of one model moved up to
# 1.5x between runs). Where every kept candidate measured within this share of the budget in one precision at
# least, a swing of 1.6x still leaves the leader a graph that fits, and one finalist is kept unless --auto.finalists
# says otherwise: the ladder's last rung trains it alone, for as many epochs again.
FAR_INSIDE = 0.6
# A candidate trailing the leader after a rung by more than this, beyond what the noise of the images it was scored
# on explains (99%), is left behind even where the halving would keep it: its place in the next rung buys epochs
# it cannot turn into a win, and the time goes to the others. Small CNNs from scratch trailed the Lite0 students by
# 20-25 points after 4-6 epochs on the cat/dog photos and by as much after 30; the CIFAR-10 small CNNs stayed within
# a point of each other.
HOPELESS_GAP = 0.10
Z_99 = 2.576
# WiSE-FT (Wortsman et al., CVPR 2022): the average of a fine-tuned model's weights and the weights it was fine-tuned
# from is often more accurate than either where training images are few. A pretrained student of the teacher's own
# architecture is averaged with the teacher's weights (the same pretrained backbone, with the teacher's head, or a
# fine-tune of it), BatchNorm statistics averaged too (both kept their pretrained ones). Measured on 800 cat/dog
# photos no run saw (student / the teacher's weights at the student's input size / their average): 77 labelled
# photos, 112 px: 89.75 / 92.75 / 93.50%; 180 labelled, 112 px: 94.75 / 94.38 / 95.38% (three more seeds: +0.38,
# +0.25, +0.25 points), 96 px: 92.88 / 90.75 / 90.75%; 180 labelled and 3,500 unlabelled, 112 px: 95.00 / 94.38 /
# 95.00% and 96.25 / 94.38 / 95.38%. It helps where the teacher's weights at that size are nearly as good as the
# student, and not otherwise, so the average replaces the student only where it ranks at least as high. Over four
# runs without unlabelled photos (180 labelled) the average changed the 800 photos' accuracy by +0.63, +0.50, +0.62,
# +0.75 points at 112 px (half the teacher's 224) and by -2.13, -0.75, +0.12, -1.75 at 96 px, where the 20
# validation images kept it twice (-1.75 in one of those: the run's choice fell from 95% test to 91%): students
# below half the teacher's input size are not averaged.
AVERAGE_STAGE = "average-"
AVERAGE_MIN_SCALE = 0.5
# A model soup of seeds (Wortsman et al., ICML 2022): where the budget has time left once the finalists reached
# --auto.max_epochs (a few hundred labelled photos and no unlabelled ones: the recipe's 30 epochs took 3-11 of 30
# minutes in the cat/dog runs), a pretrained finalist is trained again with other seeds for the same epochs and its
# weights averaged with theirs: the same network, so the same latency. Measured once on 800 cat/dog photos no run
# saw (Lite0 at 112 px, 180 labelled photos, 30 epochs): seeds 94.88 / 95.00 / 94.38%, their soup 95.13%; each
# averaged with the teacher's weights 95.25 / 95.25 / 94.62%, the soup so averaged 95.50%. Students from random
# weights are not souped: runs from different random starts do not share a basin, and their average is no model.
SEED_STAGE = "seed"  # seed1-student-..., the finalist trained again with seed 1
SOUP_STAGE = "soup-"  # soup-student-..., the finalist averaged with its seeds
# The seeds are bought with this margin on their estimated cost (their epochs at the loop's recorded speed): a
# seed's stage also loads the data and writes its checkpoints.
SEED_MARGIN = 1.15
INT8_RECIPES = {"minmax": {"fp32_layers": "none"}, "first-last-fp32": {"fp32_layers": "first_last"},
                "percentile": {"calibration_method": "percentile", "fp32_layers": "none"},
                "percentile-first-last-fp32": {"calibration_method": "percentile", "fp32_layers": "first_last"}}


# ---------------------------------------------------------------- pure pieces


def screen(figures: list[dict], cfg) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): candidates over the latency, parameter or size budget in both precisions are dropped before
    any training, each with the reason; within SCREEN_TOLERANCE of the latency budget they stay (the finalists'
    exports measure again, and only what meets the budget there is chosen)."""
    kept, dropped = [], []
    for f in figures:
        if why := screened_out(f, cfg):
            dropped.append({**f, "why": why})
        else:
            kept.append({**f, "fits": precisions_within(f, screen_limit(cfg.latency_ms), cfg.max_mb)})
    return kept, dropped


def screen_limit(latency_ms: float | None) -> float | None:
    """The latency (ms) the screen keeps candidates within: the budget ``latency_ms`` and SCREEN_TOLERANCE over it
    (None without a budget)."""
    return None if latency_ms is None else latency_ms * (1 + SCREEN_TOLERANCE)


def screened_out(f: dict, cfg) -> str | None:
    """Why the screen drops a measured candidate ``f`` (over the parameter budget, or over the latency or size
    budget in both precisions); None where it keeps it."""
    if cfg.max_params is not None and f["params"] > cfg.max_params:
        return f"{f['params']:,} parameters, over --auto.max_params {cfg.max_params:,}"
    if not precisions_within(f, screen_limit(cfg.latency_ms), cfg.max_mb):
        return (f"fp32 {f['fp32']['p50_ms']:.2f} ms / int8 {f['int8']['p50_ms']:.2f} ms, "
                f"{f['fp32']['mb']:.1f} / {f['int8']['mb']:.1f} MB, over the budget")
    return None


def over_at_a_smaller_size(cand: Candidate, measured: list[dict], cfg) -> str | None:
    """Why ``cand`` need not be measured: the largest smaller input of the same network measured so far is
    dropped by the screen, and a larger input runs no faster (the same weights, so the same file size and
    parameters, and more pixels through every layer: Lite0's fp32 graph ran 0.87, 1.08, 1.15, 1.37 and 3.29 ms at
    96, 104, 112, 128 and 224 px in one run on a 2-core AMX Xeon, docs/benchmarks.md#fixed_paddingpy); None where
    none is measured or it is kept."""
    smaller = [f for f in measured if (c := Candidate.parse(f["candidate"])).name == cand.name and c.size < cand.size]
    if not smaller:
        return None
    largest = max(smaller, key=lambda f: Candidate.parse(f["candidate"]).size)
    if (why := screened_out(largest, cfg)) is None:
        return None
    return (f"not measured: {largest['candidate']} is over the budget already "
            f"({why.removesuffix(', over the budget')}), and a larger input is no faster")


def worth_a_second_look(f: dict, now_ms: float, latency_ms: float | None) -> bool:
    """Whether candidate figures ``f`` put it over the latency budget (beyond SCREEN_TOLERANCE) while the machine ran
    slower than it does now (``now_ms``: the reference timing now; ``f["reference_ms"]``: beside its figures), by
    enough that the difference would bring it within: then it is measured again before the screen."""
    if latency_ms is None or not f.get("reference_ms"):
        return False
    limit = screen_limit(latency_ms)
    ratio = state_ratio(f["reference_ms"], now_ms)  # within the cache's tolerance, measure() would return f itself
    return ratio is not None and ratio < 1 and fastest_ms(f) > limit and fastest_ms(f) * ratio <= limit


def state_ratio(then_ms: float, now_ms: float) -> float | None:
    """How much slower (above 1) or faster the machine runs now than when ``then_ms`` was taken (both reference
    timings), where the two states differ beyond the cache's tolerance (:func:`fm2edge.timing.same_state`); None
    where they are the same state, and figures taken in either may be compared."""
    from fm2edge.timing import same_state

    return None if same_state(then_ms, now_ms) else now_ms / then_ms


def fastest_ms(f: dict) -> float:
    """A measured candidate's batch-1 latency in its faster precision."""
    return min(f["fp32"]["p50_ms"], f["int8"]["p50_ms"])


def latency_hedge(kept: list[dict], latency_ms: float | None) -> str | None:
    """Where validation ties go to the larger input (:func:`ladder_sets`), the pretrained candidate that the search
    keeps to the finalists beside the larger ones: the largest input measured at least HEDGE_MARGIN inside the
    latency budget, where the largest pretrained input is not (None where it is, or nothing is). Sizes fitted to
    the budget sit at its edge: on Fashion-MNIST (1.5 ms, 4 minutes) Lite0 at 160 and 144 px screened at 1.49-1.50
    ms, went on alone, and timed 1.51 ms and more in their exports; no smaller Lite0 had trained, and the run
    shipped a small CNN from random weights, 22.75% on test against the teacher's 81.70%."""
    pretrained = [f for f in kept if Candidate.parse(f["candidate"]).pretrained]
    if latency_ms is None or not pretrained:
        return None
    safe = [f for f in pretrained if fastest_ms(f) <= (1 - HEDGE_MARGIN) * latency_ms]
    largest = max(pretrained, key=candidate_size)
    return max(safe, key=candidate_size)["candidate"] if safe and largest not in safe else None


def candidate_size(f: dict) -> int:
    """A measured candidate's input size."""
    return Candidate.parse(f["candidate"]).size


def hedge_text(hedge: str) -> str:
    """What the run and its report say of the ``hedge`` (:func:`latency_hedge`)."""
    return (f"{hedge} goes on to the finalists beside the larger inputs, which validation ties favour: it measured at "
            f"least {HEDGE_MARGIN:.0%} inside the latency budget, where they did not, and a graph at the budget's "
            f"edge can time over it once exported")


def with_hedge(ranked: list[dict], count: int, hedge: str | None) -> list[dict]:
    """The first ``count`` of ``ranked``, the ``hedge`` (:func:`latency_hedge`) in the last place where it is among
    ``ranked`` but not among them and two or more go on."""
    top = ranked[:count]
    spare = next((t for t in ranked[count:] if t["candidate"] == hedge), None)
    return top[:-1] + [spare] if spare is not None and count >= 2 else top


def in_screen_state(ms: float, screened_ref: float, now_ref: float) -> float | None:
    """``ms``, timed while the machine runs its reference in ``now_ref`` ms, as it would time in the state its
    candidate was screened in (``screened_ref``), where the machine runs slower now beyond the cache's tolerance
    (:func:`fm2edge.timing.same_state`); None where it does not (then the figure stands as timed)."""
    ratio = state_ratio(screened_ref, now_ref)
    return ms / ratio if ratio is not None and ratio > 1 else None


def teacher_export_too_long(seconds: float, minutes: float, photos: bool = False) -> str | None:
    """Why the teacher is not exported beside the finalists where its export (``seconds``) would take more than
    TEACHER_EXPORT_SHARE of the ``minutes`` budget, on ``photos`` more than PHOTO_TEACHER_EXPORT_SHARE (there
    students trained in a short budget trail the teacher far); None where it may be."""
    share = PHOTO_TEACHER_EXPORT_SHARE if photos else TEACHER_EXPORT_SHARE
    if seconds <= share * minutes * 60:
        return None
    return (f"its export would take {seconds / 60:.1f} of the {minutes:g}-minute budget, more than {share:.0%}: the "
            f"students get the time")


def finalists_wanted(kept: list[dict], cfg) -> int:
    """How many students are exported and judged at the end: ``--auto.finalists`` when given; else one where there
    is no latency budget or every kept candidate measured within FAR_INSIDE of it in one precision at least (the
    leader then has a graph no timing swing takes over the budget), two otherwise."""
    if cfg.finalists is not None:
        return cfg.finalists
    far_inside = cfg.latency_ms is None or all(fastest_ms(f) <= FAR_INSIDE * cfg.latency_ms for f in kept)
    return 1 if far_inside else 2


def size_epochs(speeds: dict[str, float], images: int, seconds: float, lo: int, hi: int) -> dict[str, int]:
    """Epochs per candidate so that all of them train within ``seconds``: equal shares of the time, water-filled
    (a candidate capped at ``hi`` epochs hands its unused time to the others); 0 for a candidate whose share buys
    fewer than ``lo`` epochs. ``speeds`` are training images per second."""
    epochs = {c: 0 for c in speeds}
    open_ = sorted(speeds, key=lambda c: speeds[c], reverse=True)
    left = max(0.0, seconds)
    while open_:
        share = left / len(open_)
        capped = [c for c in open_ if share * speeds[c] / images >= hi]
        if not capped:
            for c in open_:
                n = int(share * speeds[c] / images)
                epochs[c] = n if n >= lo else 0
            break
        for c in capped:
            epochs[c] = hi
            left -= hi * images / speeds[c]
            open_.remove(c)
    return epochs


def plan_rungs(speeds: dict[str, float], images: int, seconds: float, lo: int, hi: int, keep: int) -> list[dict]:
    """Successive halving sized to the budget (Jamieson & Talwalkar, AISTATS 2016; Hyperband's inner loop): rung 0
    trains every candidate ``e`` epochs, each later rung the better 1/HALVING of the previous one on validation for
    HALVING times the epochs more, from its weights, until ``keep`` candidates remain. ``e`` is the most whole
    epochs (at least ``lo``; a survivor's total at most ``hi``) for which the whole ladder fits in ``seconds`` even
    when the slowest candidates survive. ``[]`` when not even ``lo`` epochs each fit: then fewer candidates must
    train (see :func:`size_epochs`). Each rung: its candidates' count, the epochs each trains in it, and its cost
    (seconds, slowest survivors)."""
    counts = [len(speeds)]
    while counts[-1] > keep:
        counts.append(max(keep, math.ceil(counts[-1] / HALVING)))
    slow = sorted((1 / s for s in speeds.values()), reverse=True)  # seconds per image, slowest first
    rung_epochs = [HALVING ** r for r in range(len(counts))]  # times e

    def cost(e: int) -> list[float]:
        return [e * m * images * sum(slow[:k]) for m, k in zip(rung_epochs, counts, strict=True)]

    most = hi // sum(rung_epochs)  # a final survivor's total epochs stay within hi
    fitting = [e for e in range(lo, most + 1) if sum(cost(e)) <= seconds]
    if not fitting:
        return []
    e = max(fitting)
    return [{"candidates": k, "epochs": e * m, "seconds": c}
            for k, m, c in zip(counts, rung_epochs, cost(e), strict=True)]


def ladder_sets(speeds: dict[str, float], photos: bool = False, larger_first: bool = False,
                hedge: str | None = None, over: frozenset[str] = frozenset()) -> list[list[str]]:
    """The candidate sets a ladder is tried on when the budget is short, largest first: all of them; then one at a
    time without the slowest candidate whose start (pretrained or random weights) another one left shares, down to
    one of each (for ``photos``, those from random weights first: on photo folders they trail the pretrained ones by
    20-60 points, and a 6-minute run on 201 photos kept two small CNNs, one 61.5 points under the leader after its
    first rung, and left Lite0 at 112 px out); then the fastest pretrained candidate alone, and last the fastest of
    all alone (where a pretrained
    student's training and export do not fit, a student is better than none: Lite0 on a 2-core AVX2-only EPYC, 8
    minutes on digits, left no time for any set that held one, and the run stopped). A short
    budget that cannot give every candidate --auto.min_epochs shared them out equally before, and the equal shares
    bought the slow pretrained students nothing (digits, 8 minutes: the five Lite0 sizes were dropped at 0.3
    minutes each and the small CNNs trained), while on small photo folders students from random weights trail the
    pretrained ones by 20-25 points: so one of each start stays in the search, and a pretrained one last.

    ``larger_first``: validation ties decide (:func:`tie_width`), and a tie goes to the pretrained student with the
    larger input (:func:`rank`), so a smaller one goes on only where it beats every larger one by more than the
    tie: the pretrained students leave smallest input first instead of slowest first, and once one is left, each
    smaller one takes its place in turn (Tux Paint's 22 classes, 46 validation images, 8 minutes and 1.5 ms: the
    ladder left out Lite0 at 160 px, within the budget, trained the 96 px one for a rung, and the tie rule then
    kept 128 and 112 px as it would have without any of their scores). Those screened ``over`` the latency budget
    (kept for a noisy screen's sake) leave before any within it, and the ``hedge`` (:func:`latency_hedge`) is the
    last pretrained one left, after the largest input: the larger inputs sit at the budget's edge."""
    pretrained = {c: Candidate.parse(c).pretrained for c in speeds}
    left = sorted(speeds, key=lambda c: speeds[c])  # slowest first
    sets = [left]
    order = sorted(left, key=lambda c: photos and pretrained[c])  # stable: slowest first within each start
    if larger_first:  # the pretrained ones' places taken by them smallest input first (slowest first among equals)
        by_size = iter(sorted((c for c in order if pretrained[c]), key=lambda c: (c not in over,
                                                                                    Candidate.parse(c).size)))
        order = [next(by_size) if pretrained[c] else c for c in order]
    if hedge in order:  # the last pretrained one standing
        order = [c for c in order if c != hedge] + [hedge]
    while drop := next((c for c in order if c in left and sum(pretrained[o] == pretrained[c] for o in left) > 1),
                       None):
        left = [c for c in left if c != drop]
        sets.append(left)
    if larger_first and (kept := [c for c in left if pretrained[c]]):
        size = Candidate.parse(kept[0]).size
        for smaller in sorted((c for c in speeds if pretrained[c] and Candidate.parse(c).size < size),
                              key=lambda c: -Candidate.parse(c).size):
            sets.append(sorted([smaller] + [c for c in left if not pretrained[c]], key=lambda c: speeds[c]))
    starts = [c for c in speeds if pretrained[c]] or list(speeds)
    for alone in ([max(starts, key=lambda c: speeds[c])], [max(speeds, key=lambda c: speeds[c])]):
        if alone not in sets:
            sets.append(alone)
    return sets


def respace_rungs(epoch_seconds: dict[str, float], counts: list[int], seconds: float, overhead: float,
                  hi: int) -> list[int]:
    """Epochs of each remaining rung once the loop's real speed is known: the successive-halving shape (each rung
    HALVING times the one before) scaled to the most whole epochs ``m`` that fit in ``seconds`` when the slowest of
    ``epoch_seconds``' candidates (the next rung's, measured seconds per epoch) survive, each stage costing
    ``overhead`` besides its epochs, and a survivor's further epochs stay within ``hi``. ``[]`` when not one epoch
    fits: the search ends with the rung it has."""
    slow = sorted(epoch_seconds.values(), reverse=True)
    shape = [HALVING ** i for i in range(len(counts))]

    def cost(m: int) -> float:
        return sum(m * s * sum(slow[:k]) + overhead * k for s, k in zip(shape, counts, strict=True))

    fitting = [m for m in range(1, hi // sum(shape) + 1) if cost(m) <= seconds]
    return [max(fitting) * s for s in shape] if fitting else []


def views_and_unlabeled(labelled: int, available: int, most_views: int, affordable_views: float) -> tuple[int, int]:
    """(views per image, unlabelled images) for the teacher's cached outputs: distinct images before views. Every
    available unlabelled image at the most views the teacher's share affords (``affordable_views`` outputs, down to
    one view each), else one view each and as many of them as it affords; fewer than MIN_UNLABELED are not worth
    their passes (then the labelled images alone, at ``most_views``). The studies measured why: on CIFAR-10 the
    small CNN reached 80.67% from 45,000 unlabelled images at 2 views, 70.63% from the 5,000 labelled ones at 5."""
    for views in range(most_views, 0, -1):
        if available and views * (labelled + available) <= affordable_views:
            return views, available
    extra = min(available, int(affordable_views) - labelled)
    return (1, extra) if extra >= MIN_UNLABELED else (most_views, 0)


def plan_pool(labelled: int, available: int, most_views: int, affordable: float, fewest: int,
              wanted_epochs: Callable[[int], int], ladder: Callable[[int, int], tuple]) -> dict:
    """How many unlabelled images (of ``available``) the teacher's outputs are cached on, at how many views, and the
    students' rungs that leaves. ``affordable``: the views the teacher's share of the budget buys; ``ladder(extra,
    views)``: (rungs, teaching seconds, student seconds) with that pool; ``fewest``: the finalists' fewest epochs;
    ``wanted_epochs(images)``: the epochs the proven recipe gives a set that size.

    Distinct images first (`views_and_unlabeled`); then fewer, halving, until every candidate gets a rung and the
    finalists ``fewest`` epochs (many images seen a few times lost to fewer seen more often: cats/dogs, 2 CPU cores,
    8,000 unlabelled photos at 4 epochs gave 91.2% test, 4,000 at 13 epochs 93.7%); or more, beyond the teacher's
    share, when the students would still get ``wanted_epochs`` (the most such, by bisection). ``reason`` says which.
    """
    views, extra = views_and_unlabeled(labelled, available, most_views, affordable)
    wanted = extra
    rungs, teaching, seconds = ladder(extra, views)

    def short(rungs: list[dict]) -> bool:
        return sum(r["epochs"] for r in rungs) < fewest

    def satisfied(extra: int) -> bool:
        rungs = ladder(extra, 1)[0]
        return bool(rungs) and sum(r["epochs"] for r in rungs) >= wanted_epochs(labelled + extra)

    while (not rungs and extra) or (rungs and short(rungs) and extra >= 2 * MIN_UNLABELED):
        # half as many images, each at as many views as the teacher's share then affords (the epochs are as long)
        views, extra = views_and_unlabeled(labelled, extra // 2 if extra >= 2 * MIN_UNLABELED else 0, most_views,
                                           affordable)
        rungs, teaching, seconds = ladder(extra, views)
    grown = extra < available and (views == 1 or not extra) and satisfied(extra)
    if grown:  # the students' epochs leave time over: the teacher's outputs on more unlabelled images take it
        views = 1
        low, high = extra, available
        while high - low > max(1, available // 100):  # the most images that keep the students' epochs (bisection)
            mid = (low + high + 1) // 2
            low, high = (mid, high) if satisfied(mid) else (low, mid - 1)
        extra = low
        rungs, teaching, seconds = ladder(extra, views)
    return {"views": views, "extra": extra, "wanted": wanted, "rungs": rungs, "teaching": teaching,
            "seconds": seconds, "reason": "grown" if grown else "bought" if extra == wanted else "cut"}


def rungs_as_run(plan: dict) -> list[dict]:
    """The rungs as they ran: the plan's, re-sized where ``plan["respaced"]`` says so (``planned`` keeps the planned
    epochs), then the extension rung when there was one."""
    rungs = [{**r, "planned": r["epochs"]} for r in plan["rungs"]]
    saved = plan.get("respaced", {})
    for key in sorted((k for k in saved if k.isdigit()), key=int):
        r = int(key)
        counts = saved[key].get("candidates", [rung["candidates"] for rung in rungs[r:]])
        rungs = rungs[:r] + [{**rung, "epochs": e, "candidates": k}
                             for rung, e, k in zip(rungs[r:], saved[key]["epochs"], counts, strict=False)]
    more = saved.get("extension", {}).get("epochs")
    if more and rungs:
        rungs.append({"candidates": min(rungs[-1]["candidates"], plan["finalists"]),
                      "epochs": more, "planned": None, "seconds": None, "extension": True})
    return rungs


METRIC_KEYS = {"accuracy": "val_acc", "balanced_accuracy": "val_balanced_acc"}  # --auto.metric: its figure
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}  # and its name in messages


def val_score(figures: dict, metric: str) -> float | None:
    """The --auto.metric figure of a stage's validation ``figures`` (``val_acc``, ``val_balanced_acc``)."""
    return figures.get(METRIC_KEYS[metric])


def score(t: dict) -> float:
    """What ranks a trained candidate: its agreement with the teacher on the held-out images where it has one,
    else its validation score (``val_score``: --auto.metric's figure; validation accuracy where it has none)."""
    return t.get("teacher_agreement", graph_score(t))


def graph_score(o: dict) -> float:
    """An entry's --auto.metric figure on validation (``val_score``), its validation accuracy where it has none (a
    stage cached before the figure was recorded)."""
    return o["val_acc"] if o.get("val_score") is None else o["val_score"]


def rank(trained: list[dict], within: float | None = None) -> list[dict]:
    """Best first on :func:`score` (agreement with the teacher on the held-out unlabelled images where validation was
    too small to rank and there are such images, else validation accuracy); ties (common on small validation
    splits) to the higher validation accuracy, then to the lower validation loss.

    ``within`` (:func:`tie_width`): where validation is too small to rank and nothing else ranks, scores within it of
    the best are a tie, which goes first to the candidates that start pretrained: the prior the studies measured
    (from random weights, students trailed pretrained ones by 20-25 points on small photo folders), where six
    validation images would otherwise choose (a from-scratch CNN scoring 6 of 6 there was chosen over a pretrained
    one scoring 5 of 6, and scored 83% on the test photos against the teacher's 94%); among those, the larger
    input first (a pretrained backbone scores higher with more pixels below the size it was pretrained at: see
    :mod:`fm2edge.automate.sizes`)."""
    best = max((score(t) for t in trained), default=0.0)

    def key(t: dict) -> tuple:
        tied, first = tie_to_pretrained(score(t), best, within, t.get("candidate", ""))
        size = Candidate.parse(t["candidate"]).size if first else 0
        return (not tied, not first, -size, -score(t), -t["val_acc"],
                t["val_loss"] if t["val_loss"] is not None else float("inf"))

    return sorted(trained, key=key)


def tie_to_pretrained(value: float, best: float, within: float | None, candidate: str) -> tuple[bool, bool]:
    """(``value`` ties with ``best``, and ``candidate`` starts pretrained and ties): the leading keys by which
    :func:`rank` and :func:`choose` order candidates, the true ones first. Without ``within`` every value ties and
    nothing is preferred, so the scores alone order them."""
    tied = within is None or best - value <= within
    return tied, tied and within is not None and Candidate.parse(candidate).pretrained


def tie_width(plan: dict) -> float | None:
    """How far apart validation accuracies can be and still be a tie (its 95% half-width) where validation is too
    small to rank candidates and no held-out images rank them instead; None where the scores rank."""
    selection = plan["selection"]
    return selection["half_width"] if selection["noisy"] and not plan["held_out"]["images"] else None


def scored_images(plan: dict) -> int:
    """How many validation images the candidates' scores are as noisy as accuracy on: all of them, or with
    --auto.metric balanced_accuracy fewer, as its small classes decide (``effective_images``)."""
    return plan["selection"].get("effective_images", plan["val_images"])


def hopeless(ranked: list[dict], scored_on: int) -> dict[str, float]:
    """{candidate: points behind the leader, as a share} for those of ``ranked`` (best first, as :func:`rank` orders
    them) trailing the leader by more than HOPELESS_GAP beyond the 99% noise of two accuracies measured on
    ``scored_on`` images each."""
    lead = score(ranked[0])
    behind = {}
    for t in ranked[1:]:
        s = score(t)
        noise = Z_99 * math.sqrt((lead * (1 - lead) + s * (1 - s)) / max(1, scored_on))
        if lead - s > HOPELESS_GAP + noise:
            behind[t["candidate"]] = lead - s
    return behind


def int8_recipes(f: dict, latency_ms: float | None = None) -> dict[str, dict]:
    """The INT8_RECIPES finalist ``f`` is exported with, in order: min-max calibration in the layout its screen timed
    fastest (all-int8 where ``f`` was not screened; its export writes the fp32 graph too), min-max in the other
    INT8_LAYOUTS, and percentile calibration in the fastest layout; each but the first left out where the screen
    timed its layout over the latency budget (beyond SCREEN_TOLERANCE): no calibration makes a graph faster."""
    screened = f.get("int8") if isinstance(f.get("int8"), dict) else {}
    fastest = screened.get("recipe", "minmax")

    def fits(layout: str) -> bool:
        timed = screened.get("layouts_ms", {}).get(layout)
        return latency_ms is None or timed is None or timed <= screen_limit(latency_ms)

    percentile = next(r for r, settings in INT8_RECIPES.items()
                      if settings.get("calibration_method") == "percentile" and layout_of(r) == fastest)
    names = [fastest, *(layout for layout in INT8_LAYOUTS if layout != fastest and fits(layout)),
             *([percentile] if fits(fastest) else [])]
    return {name: INT8_RECIPES[name] for name in names}


def layout_of(recipe: str) -> str | None:
    """The INT8_LAYOUTS entry (the layers kept in fp32) an INT8_RECIPES recipe quantises in; None for another name."""
    layers = INT8_RECIPES.get(recipe, {}).get("fp32_layers")
    return next((k for k, v in INT8_LAYOUTS.items() if v["fp32_layers"] == layers), None)


def export_seconds(f: dict, calibration: int, val: int, held: int = 0, agreement: int = AGREEMENT_IMAGES,
                   latency_ms: float | None = None) -> float:
    """What exporting a finalist costs: one export stage per int8 recipe (:func:`int8_recipes`), each its fixed
    part, its timed runs and checks, calibration and the validation passes at the finalist's measured batch-1 speed
    (batched inference is faster, so this errs long); percentile calibration's histograms; and every graph's labels
    for the ``agreement`` fidelity images (:func:`fidelity_images`) and the ``held`` held-out ones."""
    per_image = f["fp32"]["p50_ms"] / 1e3
    recipes = int8_recipes(f, latency_ms)
    fidelity = (1 + len(recipes)) * (agreement + held) * per_image
    stage = (EXPORT_BASE_SECONDS + EXPORT_SECONDS_PER_PARAM * f["params"]
             + (EXPORT_INFERENCES + CALIBRATION_COST * calibration + 2 * val) * per_image)
    percentile = any(r.get("calibration_method") == "percentile" for r in recipes.values())
    return len(recipes) * stage + percentile * PERCENTILE_COST * calibration * per_image + fidelity


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


def choose(finalists: list[dict], latency_ms: float | None, max_mb: float | None,
           noisy: bool = False, within: float | None = None) -> dict | None:
    """The most accurate (model, precision) on validation whose measured latency and size meet the budget; ties go to
    the model with the lower validation loss (a finer signal than accuracy on few images), then to the closer agreement
    with the fp32 graph, then to the faster one. When validation is too small to rank (``noisy``), each graph counts its
    own agreement with the teacher on the held-out unlabelled images where there are some (``teacher_agreement``:
    hundreds of images, int8's losses included); without them the graphs of one model are not told apart by validation:
    each counts its model's fp32 validation accuracy less its disagreement with the fp32 graph (on training or
    validation images, whichever is larger: the most it can lose), so the int8 recipe (or fp32) most faithful to the
    model is chosen, and a model whose only graph within the budget is an unfaithful int8 one does not win a tie against
    another's fp32 graph on the lower validation loss of its model (an int8 graph agreeing on 97.2% of 180 training
    images was chosen that way over the other model's fp32 graph: 90.50% test, where such runs scored 95-95.5%). There,
    graphs that agree with the fp32 graph equally go to the one whose probabilities stay closest to it (``fp32_gap``;
    the fp32 graph's is 0) before the faster: a tie on the model's own training images is no evidence that quantising
    costs nothing, and within the budget speed buys nothing (an int8 graph agreeing on all 77 such images, chosen for
    its speed, lost one of nine validation images that its fp32 graph, also within the budget, had right). ``within``:
    scores that close to the best are a tie, which goes first to the pretrained models (as in :func:`rank`), and among
    those to the larger input, as in :func:`rank`, where the graph answers as its fp32 graph on all but FAITHFUL_DROP
    of the images checked (its model's validation score then says as little as the others', and a pretrained
    backbone scores higher with more pixels: at 112 px the teacher's own weights score 94.4% on unseen cats and dogs,
    at 160 px 96.5%; an average of Lite0 at 112 px, fp32, won a tie on the loss of seven validation images over the
    128 px model's int8 graph, as fast and as faithful to its fp32 graph; Tux Paint's 160 px student lost one to
    its 128 px one on one of 46 validation images); a less faithful graph is ordered by its score, which counts what
    it loses (an int8 graph agreeing on 97.2% of the training images, above)."""
    def loss(o: dict) -> float:
        return float("inf") if o.get("val_loss") is None else o["val_loss"]

    scored = [(option_score(f, o, noisy), o, f) for f in finalists for o in f["options"]
              if within_budget(o, latency_ms, max_mb)]
    if not scored:
        return None
    best = max(s[0] for s in scored)

    def gap(o: dict) -> float:
        return o.get("fp32_gap", 0.0) if noisy else 0.0

    def key(s: tuple) -> tuple:
        tied, first = tie_to_pretrained(s[0], best, within, s[1].get("candidate", ""))
        size = Candidate.parse(s[1]["candidate"]).size if first else 0
        faithful = 1 - s[1].get("agreement_with_fp32", 1.0) <= FAITHFUL_DROP
        return (tied, first, size if faithful else 0, s[0], size, -loss(s[1]), s[1].get("agreement_with_fp32", 1.0),
                -gap(s[1]), -s[1]["p50_ms"])

    return max(scored, key=key)[1]


def option_score(finalist: dict, o: dict, noisy: bool) -> float:
    """What :func:`choose` ranks one exported graph ``o`` of ``finalist`` on: its validation score; where validation
    is too small to rank (``noisy``), its agreement with the teacher on held-out images where there are some, else its
    model's fp32 validation score less what the graph is measured to change (at most one error per disagreement)."""
    if not noisy:
        return graph_score(o)
    if "teacher_agreement" in o:
        return o["teacher_agreement"]
    model = next(graph_score(p) for p in finalist["options"] if p["precision"] == "fp32")
    return model - (1 - o.get("agreement_with_fp32", 1.0))


def precision_text(chosen: dict, finalists: list[dict], latency_ms: float | None, max_mb: float | None,
                   machine: str = "", noisy: bool = False) -> str | None:
    """Why the chosen graph is fp32 or int8, from what its other precision measured (None where it has none): over
    the budget, or the figure that chose between them (validation; where validation is too small to rank
    (``noisy``), agreement with the teacher on held-out images, or else fidelity to the model's fp32 graph, as
    :func:`choose` judges), latency and size beside the chosen one's. Where int8 ran no faster than fp32 on an x86
    CPU without VNNI or AMX (AVX2 only: Lite0 at 96 px measured 3.47 ms fp32 and 4.12 ms int8 on a 2-core EPYC), it
    says that such CPUs, and int8 accelerators, are where int8 pays."""
    f = next((f for f in finalists if f["candidate"] == chosen["candidate"]), None)
    others = [o for o in (f or {}).get("options", []) if o["precision"] != chosen["precision"]]
    if not others:
        return None
    mine, other = chosen["precision"], "int8" if chosen["precision"] == "fp32" else "fp32"
    fits = [o for o in others if within_budget(o, latency_ms, max_mb)]
    if not fits:
        o = min(others, key=lambda o: o["p50_ms"])
        return f"{mine}: its {other} graph is over the budget ({o['p50_ms']:.2f} ms, {o['mb']:.1f} MB)"
    held = noisy and "teacher_agreement" in chosen
    o = max(fits, key=lambda o: (option_score(f, o, noisy), -o["p50_ms"]))  # the best graph choose passed over
    int8, fp32 = (o, chosen) if mine == "fp32" else (chosen, o)
    recipe = f" ({int8['int8_recipe']})" if int8.get("int8_recipe") else ""
    figures = (f"agreement with the teacher on the held-out images {100 * chosen['teacher_agreement']:.2f}% against "
               f"{100 * o.get('teacher_agreement', 0.0):.2f}%" if held else
               f"validation {100 * graph_score(chosen):.2f}% against {100 * graph_score(o):.2f}%"
               + (", too few images to tell one model's graphs apart, so the graph most faithful to the model is kept"
                  if noisy else ""))
    text = (f"{mine} rather than {other}{recipe if mine == 'fp32' else ''}: {figures}; {chosen['p50_ms']:.2f} ms "
            f"against {o['p50_ms']:.2f} ms, {chosen['mb']:.1f} MB against {o['mb']:.1f} MB; the int8 graph{recipe} "
            f"answers as the fp32 graph on {100 * int8.get('agreement_with_fp32', 1.0):.1f}% of the images checked")
    x86 = "AVX" in machine and not any(k in machine for k in ("VNNI", "AMX"))
    if x86 and int8["p50_ms"] >= fp32["p50_ms"]:
        text += ("; int8 ran no faster than fp32 on this CPU, which lacks VNNI and AMX int8 instructions: on CPUs "
                 "that have them, or an int8 accelerator, the int8 graph is the faster one (export folders keep it)")
    return text


def passed_over_text(finalists: list[dict], chosen: dict, latency_ms: float | None, noisy: bool = False,
                     within: float | None = None) -> str | None:
    """Where a finalist's graph scored higher on validation than the chosen one and only its latency, timed again
    over the budget it had screened within or near (:func:`retime_disputed`), left it out (within the budget,
    :func:`choose` would have taken it, with ``noisy`` and ``within`` as it chose: a graph that only loses a
    validation tie is not named): the note that says so and what to do (on a busy machine the chosen model can be
    far less accurate than one that fits on an idle one)."""
    def won(o: dict) -> bool:
        fitted = {**o, "p50_ms": latency_ms, "state_ms": latency_ms}
        return choose([{**f, "options": [fitted if p is o else p for p in f.get("options", [])]} for f in finalists],
                      latency_ms, None, noisy, within) is fitted

    if latency_ms is None:
        return None
    over = [(f, o) for f in finalists for o in f.get("options", [])
            if "retimed_ms" in o and not within_budget(o, latency_ms, None) and graph_score(o) > graph_score(chosen)
            and won(o)]
    if not over:
        return None
    f, o = max(over, key=lambda fo: graph_score(fo[1]))
    screened = screened_ms(f, o)
    return (f"{o['candidate']} as {o['precision']} scored {100 * graph_score(o):.2f}% on validation against the "
            f"chosen model's {100 * graph_score(chosen):.2f}%, and timed {o['p50_ms']:.2f} ms in its export, over the "
            f"{latency_ms:.3g} ms budget" + (f", where it screened at {screened:.2f} ms" if screened else "") +
            f": if the machine was busy, rerun the same command when it is idle (the exports are reused and timed "
            f"again), or allow it with {budget_flag(o['p50_ms'])}")


def no_budget_text(chosen: dict, teacher_option: dict, latency_ms: float | None) -> str | None:
    """Where no latency budget was given and the most accurate model is the teacher itself: the note that says so
    and gives a budget to start from (a third of the teacher's fp32 latency, the budget the studies measured
    students at; docs: auto)."""
    if latency_ms is not None or chosen["candidate"] != teacher_option["candidate"]:
        return None
    fp32_ms = (teacher_option.get("fp32") or {}).get("p50_ms") or chosen["p50_ms"]
    return (f"with no latency budget the most accurate model won whatever its latency: the teacher itself, "
            f"{chosen['p50_ms']:.2f} ms here; for a smaller, faster student give the device's budget, e.g. "
            f"{budget_flag(fp32_ms / 3)} (a third of the teacher's fp32 latency)")


def budget_flag(ms: float) -> str:
    """The flag that sets a latency budget of ``ms``, rounded up to a hundredth of a millisecond."""
    return f"--auto.latency_ms {math.ceil(100 * ms) / 100:g}"


# ---------------------------------------------------------------- steps


def auto_root(job: AutoJob) -> Path:
    from fm2edge.results import slug

    return Path(job.run.root) / (job.run.name or slug(f"auto-{Path(job.data.source).name or 'data'}"))


def read_plan(path: Path, root: Path) -> dict | None:
    """A run's plan, or ``None``; its paths under the folder it was written in moved under ``root`` (a run folder
    moved or copied elsewhere resumes from where it is now)."""
    if not path.exists():
        return None
    plan = json.loads(path.read_text())
    return {**moved(plan, plan.get("root", str(root)), str(root)), "root": str(root)}


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


def minutes_by_step(root: Path, plan: dict, total_minutes: float) -> dict[str, float]:
    """Where the minutes went: measuring and planning, the teachers (probes, fine-tunes, soup), the students of
    each rung, the exports, and the rest (the teacher's cached outputs are inside the first student's stage;
    choosing, the test read and writing the results are in "other")."""
    from fm2edge.stagecache import stage_seconds

    steps = {"measuring and planning": plan["planning_seconds"] / 60}
    for name, seconds in stage_seconds(root).items():
        if name.startswith("student-"):
            rung = name.rsplit("-rung", 1)[1] if "-rung" in name else "0"
            step = f"students, rung {rung}"
        elif name.startswith(TEACHER_STAGE):  # run while planning: counted there, shown apart
            step = "teachers"
            steps["measuring and planning"] -= seconds / 60
        elif name.startswith(AVERAGE_STAGE):
            step = "weight averages"
        elif name.startswith((SEED_STAGE, SOUP_STAGE)):
            step = "seeds and their soup"
        else:
            step = "exports"
        steps[step] = steps.get(step, 0.0) + seconds / 60
    steps["other"] = max(0.0, total_minutes - sum(steps.values()))
    return dict(sorted(steps.items(), key=lambda kv: step_order(kv[0])))


def step_order(step: str) -> tuple[int, int]:
    """Where a step of :func:`minutes_by_step` comes in a run: planning, teachers, each rung in turn, the seeds and
    their soup, the weight averages, exports, the rest."""
    if step.startswith("students, rung "):
        return 2, int(step.rsplit(" ", 1)[1])
    return {"measuring and planning": 0, "teachers": 1, "seeds and their soup": 3, "weight averages": 4,
            "exports": 5}.get(step, 6), 0


def measure_candidates(job: AutoJob, num_classes: int,
                       known: list[dict] = ()) -> tuple[list[dict], list[tuple[Candidate, str]]]:
    """(figures, passed over): every candidate's figures, each network's inputs smallest first, each from the cache
    only when the machine runs now as it ran when they were measured (one reference timing for all: they are
    compared with each other and with the budget); a larger input of a network that a smaller one already puts over
    the budget is passed over instead, with why (:func:`over_at_a_smaller_size`: Lite0 at 128, 160 and 224 px took
    50 of the 82 seconds measuring on a 2-core AVX2 EPYC under a 5 ms budget that 112 px was over). ``known``:
    figures measured already (after :func:`second_look`), kept as they are."""
    from tqdm.auto import tqdm

    from fm2edge.timing import reference_ms

    cands = [Candidate.parse(s) for s in job.auto.students]
    figures = {f["candidate"]: f for f in known}
    passed, now = {}, None
    left = sorted({c.label: c for c in cands if c.label not in figures}.values(), key=lambda c: (c.name, c.size))
    for c in tqdm(left, desc="measuring candidates on this machine", unit="model", leave=False, disable=not left):
        if why := over_at_a_smaller_size(c, list(figures.values()), job.auto):
            passed[c.label] = c, why
            continue
        now = now or reference_ms(job.auto.threads)
        figures[c.label] = measure(c, num_classes, job.auto.threads, latency_cache(job.data), now)
    return ([figures[c.label] for c in cands if c.label in figures],
            [passed[c.label] for c in cands if c.label in passed])


def unmeasured(cand: Candidate, num_classes: int, why: str) -> dict:
    """A candidate's entry without timings (their places None), its parameters and compute counted, and ``why``."""
    from fm2edge.automate.measure import architecture, build

    untimed = {"p50_ms": None, "mb": None}
    return {"candidate": cand.label, **architecture(build(cand, num_classes), cand.size), "fp32": untimed,
            "int8": untimed, "why": why}


def second_look(job: AutoJob, figures: list[dict], num_classes: int) -> list[dict]:
    """``figures`` with those :func:`worth_a_second_look` measured again (the quieter of the two kept), each said."""
    from fm2edge.timing import reference_ms

    if job.auto.latency_ms is None:
        return figures
    now = reference_ms(job.auto.threads)
    out = []
    for f in figures:
        if worth_a_second_look(f, now, job.auto.latency_ms):
            again = measure(Candidate.parse(f["candidate"]), num_classes, job.auto.threads, latency_cache(job.data),
                            now)
            print(f"  {f['candidate']}: {fastest_ms(f):.2f} ms, measured while the machine ran "
                  f"{f['reference_ms'] / now:.1f}x slower than now; measured again: {fastest_ms(again):.2f} ms")
            f = min(f, again, key=fastest_ms)
        out.append(f)
    return out


def fit_sizes(job: AutoJob, figures: list[dict], num_classes: int) -> tuple[list[dict], list[dict], list[dict]]:
    """:func:`fm2edge.automate.sizes.fitted_sizes` with this machine's measurements (cached like the candidates'),
    unless --auto.fit_sizes is off; each backbone's search printed."""
    if not job.auto.fit_sizes:
        return [], [], []
    from fm2edge.timing import reference_ms

    now = reference_ms(job.auto.threads)
    added, probed, searches = fitted_sizes(
        figures, job.auto.latency_ms, job.auto.max_mb,
        lambda c: measure(c, num_classes, job.auto.threads, latency_cache(job.data), now))
    for s in searches:
        print("  " + s["text"])
    return added, probed, searches


def student_args(job: AutoJob, cand: Candidate, epochs: int, teacher: str, select: str, plan: dict) -> dict:
    """The proven recipe: AdamW with a one-cycle rate, random-resized crops and flips, consistent teaching on the
    plan's cached views, KD (on its unlabelled images too); pretrained students at a gentler rate than those from
    random weights, their head first fitted as a probe on their own features (LP-FT), their BatchNorm statistics
    kept as pretrained (measured on a million images, not re-estimated from a few hundred photos' augmented crops:
    on a 77-photo folder the student at 112 px scored 89.8% on 800 unseen photos with them kept, 81-84% without)."""
    batch = cand.batch_size
    # a smaller batch (large inputs) at a rate scaled by the square root of the batch, as timm does for Adam-family
    # optimisers (its --lr-base-scale): 1e-4 at 16 images
    lr = PRETRAINED_LR * math.sqrt(batch / PRETRAINED_BATCH) if cand.pretrained else 4e-3
    distill = {"teacher": teacher, "views": plan["views"], "losses": {"kd": 1.0}}
    unlabeled = plan["unlabeled_images"]
    if job.auto.unlabeled_source and unlabeled:
        distill.update(unlabeled_source=job.auto.unlabeled_source, unlabeled_limit=unlabeled)
    elif job.auto.unlabeled_left_out and unlabeled:
        distill["unlabeled"] = unlabeled
    return {"data": to_dict(job.data), "model": {"name": cand.name, "pretrained": cand.pretrained,
                                                 "image_size": cand.size},
            "train": {"epochs": epochs, "batch_size": batch, "lr": lr, "optimizer": "adamw",
                      "weight_decay": 0.05 if cand.pretrained else 5e-4, "schedule": "onecycle",
                      # crops and flips for photos, the plain images for digits (the proven recipe's choice)
                      "augment": {"crop": "auto"}, "device": job.auto.device, "seed": job.auto.seed,
                      "select": select, "score_test": False,  # the test split is read once, for the choice
                      # LP-FT: a pretrained student's head starts as a probe on its own features (docs: studies)
                      "head_init": "probe" if cand.pretrained else "random", "freeze_bn": cand.pretrained},
            "distill": distill}


def most_views(job: AutoJob, image_px: int) -> int:
    """The most views per image the teacher's outputs are cached on: --auto.views for photos; one, the plain image,
    for images too small to crop (8 x 8 digits: a Lite0 probe named the label on 54.76% of random-resized views of
    them against 92.59% of validation, and a small CNN distilled 13 epochs on its outputs on the plain images reached
    100.00% on validation where on the crops it reached 95.56%; one run each, 2-core AMD EPYC, docs: auto)."""
    return job.auto.views if is_photo(image_px) else 1


def settings(job: AutoJob) -> dict:
    """What a plan depends on: the data and the budgets (a plan made for other settings is made again). Not
    --auto.soup_seeds: the seeds spend what the plan leaves over (:func:`soup_of_seeds`), so a rerun with another
    number keeps the plan and every finished stage."""
    auto = {k: v for k, v in to_dict(job.auto).items() if k != "soup_seeds"}
    return json.loads(json.dumps({"data": to_dict(job.data), "auto": auto, "version": PLAN_VERSION}))


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


def plan_teacher(job: AutoJob, root: Path, train, val, device, noisy: bool) -> dict:
    """The plan's teacher entries: ``teachers`` (every candidate scored on validation: the probes and run folders,
    then the best probe fine-tuned and souped when `plan_finetune` says so), ``teacher`` (the chosen one),
    ``teacher_finetune`` (the fine-tuning decision) and ``teachers_left_out`` (those that cannot be loaded here)."""
    specs, left_out = usable_teachers(job.auto.teachers)
    for t in left_out:
        print(f"  teacher {t['teacher']} left out: {t['why']}")
    teachers = scored_teachers(job, teacher_stages(job, root, specs), val, device)
    probes = [t for t in teachers if "probe_of" in t]
    finetune = {"why": "the teachers are trained run folders: used as they are"}
    if probes:
        best = max(probes, key=score)
        finetune = plan_finetune(job, best, train.num_classes, len(train), noisy, len(val))
        shown = (f"{finetune['seeds']} x {finetune['epochs']} epochs at {finetune['size']} px, about "
                 f"{finetune['seconds'] / 60:.1f} min each" if "size" in finetune else finetune["why"])
        print(f"  teacher fine-tuning ({best['probe_of']}): {shown}")
        teachers = scored_teachers(job, teachers + finetuned_teachers(job, root, finetune, best["probe_of"]), val,
                                   device)
    return {"teachers": teachers, "teacher": max(teachers, key=score),  # the first wins a tie
            "teacher_finetune": finetune, "teachers_left_out": left_out}


def scored_teachers(job: AutoJob, teachers: list[dict], val, device) -> list[dict]:
    """:func:`score_teachers`, each with its --auto.metric figure as ``val_score``."""
    return [{**t, "val_score": val_score(t, job.auto.metric)}
            for t in score_teachers(teachers, val, device, graph_folder(job.data))]


def teacher_as_candidate(job: AutoJob, teacher: dict, num_classes: int, measured: list[dict]) -> dict:
    """The chosen teacher measured as a deployable model (its architecture at its input size, fp32 and int8 ONNX):
    within the budget it is exported and judged on validation beside the students' finalists (no student need
    beat it); over it, the screen's reason (``why``), or why it was not measured (``measured``: the students'
    figures, :func:`over_at_a_smaller_size`)."""
    from fm2edge.models.io import model_meta
    from fm2edge.timing import reference_ms

    meta = model_meta(teacher["folder"])
    cand = Candidate(meta["name"], int(meta["preprocess"]["size"]))
    if why := over_at_a_smaller_size(cand, measured, job.auto):  # a student of its network was over already
        kept, dropped = [], [unmeasured(cand, num_classes, why)]
    else:
        kept, dropped = screen([measure(cand, num_classes, job.auto.threads, latency_cache(job.data),
                                        reference_ms(job.auto.threads))], job.auto)
    return {**(kept or dropped)[0], "candidate": f"teacher {cand.label}", "folder": teacher["folder"],
            "val_acc": teacher["val_acc"], "val_score": score(teacher),
            "val_balanced_acc": teacher.get("val_balanced_acc"), "val_loss": teacher.get("val_loss"),
            "export_name": "export-teacher"}


def pool_text(pool: dict, available: int, min_epochs: int, fewest: int) -> str:
    why = {"grown": f"more than a {TEACHING_SHARE:.0%} share of the budget buys: the students' epochs leave time over",
           "bought": f"what a {TEACHING_SHARE:.0%} share of the budget buys of the teacher's outputs, more images "
                     f"before more views",
           "cut": f"fewer than the {pool['wanted']:,} the teacher's share of the budget buys, so that every "
                  f"candidate trains at least {min_epochs} passes over the labelled images and the finalists at "
                  f"least {fewest} epochs"}[pool["reason"]]
    views = f"{pool['views']} view{'s' if pool['views'] > 1 else ''}"
    return f"unlabelled images: {pool['extra']:,} of {available:,} at {views} each ({why})"


def size_candidates(kept: list[dict], rungs: list[dict], speeds: dict[str, float], images: int, seconds: float,
                    cfg, photos: bool = False, larger_first: bool = False) -> list[dict]:
    """Each kept candidate's first epochs and planned minutes (rung 0 of the ladder, or equal shares of the time
    when not even --auto.min_epochs each fit a ladder, those left short dropped with the reason); the rungs.
    ``photos``: the ladder left students from random weights out first; ``larger_first``: the pretrained ones with
    the smaller inputs before the slower ones (:func:`ladder_sets`)."""
    if rungs:
        trained = rungs[0].get("trained", [f["candidate"] for f in kept])
        starts = {Candidate.parse(c).pretrained for c in trained}
        slowest = ("the pretrained ones screened over the latency budget, then those with the smallest inputs "
                   "(validation ties go to the larger)" if larger_first else "the slowest")
        order = f"those from random weights first, then {slowest}" if photos else slowest
        why = (f"left out of the search: the budget fits {len(trained)} of the {len(kept)} candidates at "
               f"{cfg.min_epochs} epochs or more each ({order} left out"
               + (", one of each start, pretrained or random weights, kept)" if len(starts) > 1 else ")"))
        for f in kept:
            f["epochs"] = rungs[0]["epochs"] if f["candidate"] in trained else 0
            f["planned_minutes"] = f["epochs"] * images / speeds[f["candidate"]] / 60
            if not f["epochs"]:
                f["why"] = why
        if left := [f["candidate"] for f in kept if not f["epochs"]]:
            print(f"  {why}: {', '.join(left)}")
        shape = " -> ".join(f"{r['candidates']} x {r['epochs']}" for r in rungs)
        print(f"  successive halving: {shape} epochs (candidates x epochs per rung, the better half going on)")
        return rungs
    epochs = size_epochs(speeds, images, seconds, cfg.min_epochs, cfg.max_epochs)
    for f in kept:
        f["epochs"] = epochs[f["candidate"]]
        f["planned_minutes"] = f["epochs"] * images / speeds[f["candidate"]] / 60
        if not f["epochs"]:
            f["why"] = (f"fewer than {cfg.min_epochs} epochs fit in its share of the budget "
                        f"({seconds / 60 / len(kept):.1f} min)" if seconds > 0 else
                        "no time is left for students after measuring, the teacher's outputs and the exports")
            print(f"  dropped {f['candidate']}: {f['why']}")
    trained = sum(1 for f in kept if f["epochs"])
    return [{"candidates": trained, "epochs": None,
             "seconds": sum(60 * f["planned_minutes"] for f in kept)}] if trained else []


def plan_held_out(job: AutoJob, train, teacher: dict, available: int, noisy: bool,
                  speeds: dict[str, float]) -> dict:
    """When validation is too small to rank candidates: the unlabelled images held out of training to rank them
    instead (`automate.heldout`), with the teacher's labels for them (computed now, kept in the plan so that a
    resumed run ranks on the same labels) and the seconds the students' labels for them will take."""
    from fm2edge.device import resolve_device

    n = held_out_count(available, noisy)
    if not n:
        return {"images": 0, "seconds": 0.0}
    labels = predicted_labels(teacher["folder"], held_out_images(job, train, n), resolve_device(job.auto.device),
                              graph_folder(job.data))
    print(f"  {n:,} unlabelled images held out of training: the students are ranked by their agreement with the "
          f"teacher's labels for them (validation is too small to rank them)")
    return {"images": n, "teacher_labels": labels.tolist(),
            "seconds": n * sum(2 / (INFERENCE_SPEEDUP * s) for s in speeds.values())}


def make_plan(job: AutoJob, root: Path, data, started: float) -> dict:
    """Measure, screen, choose the teacher and size every student's epochs: written once (plan.json), so a resumed
    run follows the same plan whatever its clock says."""
    from fm2edge.data.splits import balanced_selection_noise, selection_noise
    from fm2edge.device import cpu_features, resolve_device

    train, val, test = data
    if val is None:
        raise Fm2EdgeError("auto chooses on validation images and this data has none; give it a validation split "
                           "(val/ beside train/) or more images per class (--data.val_fraction holds some out)")
    figures, _ = measure_candidates(job, train.num_classes)
    # measured again where a slower machine put them over; then what a smaller input no longer rules out
    figures, passed = measure_candidates(job, train.num_classes,
                                         second_look(job, figures, train.num_classes))
    added, probed, searches = fit_sizes(job, figures, train.num_classes)
    kept, dropped = screen(figures + added, job.auto)
    dropped += probed + [unmeasured(c, train.num_classes, why) for c, why in passed]
    for d in dropped:
        print(f"  dropped {d['candidate']}: {d['why']}")
    if not kept:
        fastest = min(figures, key=lambda f: f["int8"]["p50_ms"])
        raise Fm2EdgeError(f"no candidate student meets the budget ({budget_text(job.auto)}); the fastest measured "
                           f"here is {fastest['candidate']} ({fastest['int8']['p50_ms']:.3f} ms as int8); raise the "
                           f"budget or add smaller candidates with --auto.students")
    if out_of_budget := fastest_pretrained(figures + added + probed, kept):
        out_of_budget["text"] = fastest_pretrained_text(out_of_budget)
        print(f"  note: {out_of_budget['text']}")
    for f in kept:  # timed only for what the budget keeps
        speed = measure_training(Candidate.parse(f["candidate"]), train.num_classes, job.auto.threads,
                                 latency_cache(job.data))
        f.update(train_images_per_s=speed["train_images_per_s"], train_device=speed["train_device"])
    noise = (balanced_selection_noise(val.labels.bincount(minlength=val.num_classes).tolist(), val.class_names,
                                      "candidates") if job.auto.metric == "balanced_accuracy"
             else selection_noise(len(val), "candidates"))
    chosen = plan_teacher(job, root, train, val, resolve_device(job.auto.device), noise["noisy"])
    teacher = chosen["teacher"]
    teacher_option = teacher_as_candidate(job, teacher, train.num_classes, figures + added + probed)
    teacher_speed = TEACHER_VIEW_EFFICIENCY * teacher["images_per_s"]  # views per second while caching
    available = len(pool) if (pool := unlabeled_pool(job, train)) is not None else 0
    speeds = {f["candidate"]: LOOP_EFFICIENCY * f["train_images_per_s"] for f in kept}
    held_out = plan_held_out(job, train, teacher, available, noise["noisy"], speeds)
    available -= held_out["images"]  # the students never train on the held-out images
    elapsed = time.perf_counter() - started
    finalists = finalists_wanted(kept, job.auto)
    finalists_why = (f"every candidate measured within {FAR_INSIDE:.0%} of the latency budget in one precision at "
                     f"least (or there was none), so no second was kept as a hedge against the leader's exported graph "
                     f"timing over it" if finalists == 1 and job.auto.finalists is None else None)
    if finalists_why:
        print(f"  one finalist: {finalists_why}")
    exports = {"train_images": len(train), "unlabeled_images": available, "val_images": len(val),
               "held_out": held_out, "finalists": finalists,
               "teacher_option": teacher_option}  # what export_reserve reads of a plan

    def reserve(candidates: list[dict], plan: dict = exports) -> float:
        return export_reserve(plan, candidates, job.auto.latency_ms)

    if "why" not in teacher_option and (why := teacher_export_too_long(
            reserve([], {**exports, "finalists": 0}), job.auto.minutes, is_photo(train.image_size[0]))):
        teacher_option["why"] = why
    print(f"  the teacher as the model: {teacher_option['why']}" if "why" in teacher_option else
          "  the teacher as the model: within the budget (exported and judged beside the finalists)")

    test_read = read_once_seconds(len(test), teacher, kept + ([] if "why" in teacher_option else [teacher_option]))
    by_size = noise["noisy"] and not held_out["images"]  # ties decide, and go to the larger input (tie_width)
    hedge = latency_hedge(kept, job.auto.latency_ms) if by_size else None
    over = frozenset(f["candidate"] for f in kept if not precisions_within(f, job.auto.latency_ms, job.auto.max_mb))
    if hedge:
        print(f"  {hedge_text(hedge)}")

    def ladder(extra: int, views: int) -> tuple[list[dict], float, float]:
        """The rungs, the teacher's seconds and the students' seconds with ``extra`` unlabelled images: successive
        halving over every candidate, or without unlabelled images over the largest of :func:`ladder_sets` that
        fits the budget once its own exports are reserved (rung 0 names them under "trained"): `plan_pool` cuts the
        unlabelled images before any candidate is left out, as it did in the cat/dog runs that met their targets."""
        images = len(train) + extra
        # the teacher's outputs on every stored view, computed once and shared by all students
        teaching = views * images / teacher_speed
        left = job.auto.minutes * 60 - elapsed - teaching - held_out["seconds"] - test_read
        # --auto.min_epochs counts passes over the labelled images: unlabelled ones lengthen an epoch, not the need
        lo = max(1, math.ceil(job.auto.min_epochs * len(train) / images))
        for names in (ladder_sets(speeds, is_photo(train.image_size[0]), by_size, hedge, over) if not extra else
                      [list(speeds)]):
            seconds = left - reserve([f for f in kept if f["candidate"] in names])
            if rungs := plan_rungs({c: speeds[c] for c in names}, images, seconds, lo, job.auto.max_epochs,
                                   finalists):
                rungs[0]["trained"] = names
                return rungs, teaching, seconds
        return [], teaching, left - reserve(kept)  # equal shares instead: size_candidates

    fewest = min(EPOCHS_FEWEST, job.auto.max_epochs)  # the proven recipe's fewest epochs, for the finalists
    planned = plan_pool(len(train), available, most_views(job, train.image_size[0]),
                        TEACHING_SHARE * job.auto.minutes * 60 * teacher_speed, fewest,
                        lambda n: min(job.auto.max_epochs, scaled_epochs(n)), ladder)
    if available:
        print("  " + pool_text(planned, available, job.auto.min_epochs, fewest))
    images = len(train) + planned["extra"]
    # the candidates whose exports the students' seconds were planned around: the ladder's, or all where none fits
    laddered = planned["rungs"][0]["trained"] if planned["rungs"] else [f["candidate"] for f in kept]
    rungs = size_candidates(kept, planned["rungs"], speeds, images, planned["seconds"], job.auto,
                            is_photo(train.image_size[0]), by_size)
    return {"settings": settings(job), "machine": cpu_features(),
            "train_images": len(train), "unlabeled_images": planned["extra"], "unlabeled_available": available,
            "views": planned["views"], "val_images": len(val), "selection": noise, **chosen,
            "teacher_option": teacher_option,
            "candidates": kept, "dropped": dropped, "size_searches": searches,
            "pretrained_out_of_budget": out_of_budget,
            "held_out": held_out, "finalists": finalists, "finalists_why": finalists_why, "hedge": hedge,
            "teaching_seconds": planned["teaching"], "test_read_seconds": test_read,
            "export_seconds": reserve([f for f in kept if f["candidate"] in laddered]),
            "student_seconds": planned["seconds"],
            "rungs": rungs, "planning_seconds": time.perf_counter() - started}


def too_short(plan: dict, cfg) -> str:
    """Why no student could train within ``--auto.minutes``, where the minutes went, and the budget that would let
    the fastest candidate train ``--auto.min_epochs``."""
    images = plan["train_images"] + plan["unlabeled_images"]
    fastest = min(cfg.min_epochs * images / (LOOP_EFFICIENCY * c["train_images_per_s"]) for c in plan["candidates"])
    fixed = plan["planning_seconds"] + plan["teaching_seconds"] + plan["export_seconds"] + plan["test_read_seconds"]
    wanted = math.ceil(1.25 * (fixed + fastest) / 60)  # a quarter over: the exports and caches vary
    return (f"the {cfg.minutes:g}-minute budget leaves no time to train a student: measuring the candidates and "
            f"choosing the teacher took {plan['planning_seconds']:.0f} s, the teacher's outputs need "
            f"{plan['teaching_seconds']:.0f} s, the exports {plan['export_seconds']:.0f} s and the test read "
            f"{plan['test_read_seconds']:.0f} s, the fastest "
            f"candidate's {cfg.min_epochs} epoch(s) {f'{fastest:.0f} s' if fastest >= 1 else 'under 1 s'}; give "
            f"--auto.minutes {wanted} or more")


def teacher_alone_text(plan: dict, cfg) -> str:
    """What a run says where the budget left no student an epoch but the teacher, a candidate within the budget, can
    still be shipped: why no student trained (:func:`too_short`) and that the teacher is judged alone."""
    return f"the teacher itself, within the budget, is the model, judged alone, as {too_short(plan, cfg)}"


def train_students(job: AutoJob, root: Path, plan: dict, held=None) -> list[dict]:
    """The planned candidates distilled from the chosen teacher, rung by rung (successive halving: each rung's
    better half, on validation or on ``held``, the held-out unlabelled images, continues from its weights for more
    epochs), then, when the plan left time over, the finalists for the epochs it buys; each with its latest
    validation accuracy (and agreement with the teacher on ``held``), the rung it reached and the minutes it took in
    all."""
    select = kept_epoch(job, plan)
    alive = [dict(f) for f in plan["candidates"] if f["epochs"]]
    if not alive:  # the budget bought no candidate an epoch
        return []
    done: dict[str, dict] = {}
    rungs = plan.get("rungs") or [{"epochs": None}]
    r = 0
    while r < len(rungs):
        if r:
            ranked = rank(alive, tie_width(plan))
            behind = hopeless(ranked, plan["held_out"]["images"] or scored_images(plan))
            for c, gap in behind.items():
                done[c]["left_behind"] = f"left after rung {r - 1}, {100 * gap:.1f} points under the leader"
                print(f"  {c} {done[c]['left_behind']}: too far behind to be worth another rung")
            alive = with_hedge([t for t in ranked if t["candidate"] not in behind], rungs[r]["candidates"],
                               plan.get("hedge"))
            rungs = rungs[:r] + respaced(job, root, plan, r, alive)
            if r >= len(rungs):
                print(f"the budget has no time for rung {r}: the finalists are rung {r - 1}'s best")
                break
            print(f"rung {r}: {', '.join(f['candidate'] for f in alive)} go on for {rungs[r]['epochs']} more epochs")
        train_rung(job, root, plan, alive, r, rungs[r]["epochs"], select, done, held)
        r += 1
    else:  # every rung ran: the time the plan left over (a teacher faster than planned, say) goes to the finalists
        alive = with_hedge(rank(alive, tie_width(plan)), plan["finalists"], plan.get("hedge"))
        if more := extension(job, root, plan, alive):
            print(f"time left over: {', '.join(f['candidate'] for f in alive)} go on for {more} more epochs")
            train_rung(job, root, plan, alive, r, more, select, done, held)
    return list(done.values())


def kept_epoch(job: AutoJob, plan: dict) -> str:
    """Which epoch a student's stage keeps (``--train.select``): a fixed schedule's last where validation cannot rank
    epochs, or where the loop's best epoch (on accuracy) is not the metric that chooses; else the best."""
    return "last" if plan["selection"]["noisy"] or job.auto.metric != "accuracy" else "best"


def finalists_of(trained: list[dict], plan: dict) -> list[dict]:
    """The plan's finalists among ``trained`` (:func:`last_rung_best` with its count, tie width and hedge)."""
    return last_rung_best(trained, plan["finalists"], tie_width(plan), plan.get("hedge"))


def last_rung_best(trained: list[dict], count: int, within: float | None = None,
                   hedge: str | None = None) -> list[dict]:
    """The ``count`` best (:func:`rank`) of the candidates that reached the last rung, the ``hedge`` among them
    where it reached it (:func:`with_hedge`): the finalists (none where no student trained)."""
    last = max((t["rung"] for t in trained), default=0)
    return with_hedge(rank([t for t in trained if t["rung"] == last], within), count, hedge)


def train_rung(job: AutoJob, root: Path, plan: dict, alive: list[dict], r: int, epochs: int | None, select: str,
               done: dict[str, dict], held=None) -> None:
    """Rung ``r``: each of ``alive`` trained ``epochs`` more (its planned epochs when None), then scored on
    ``held`` (its agreement with the plan's teacher labels) when there are held-out images; ``done`` updated."""
    from fm2edge.device import resolve_device

    for f in alive:
        f.update(train_student(job, root, plan, f, r, epochs or f["epochs"], select, f.get("folder")))
        if held is not None:
            f["teacher_agreement"] = agreement(f["folder"], held, plan["held_out"]["teacher_labels"],
                                               resolve_device(job.auto.device))
        done[f["candidate"]] = {**done.get(f["candidate"], {}), **f,
                                "minutes": done.get(f["candidate"], {}).get("minutes", 0) + f["stage_minutes"]}


def extension(job: AutoJob, root: Path, plan: dict, alive: list[dict]) -> int:
    """Epochs the finalists can still train in the time the budget has left after the planned rungs (0 below
    MIN_EXTENSION, or past --auto.max_epochs); sized once and written into plan.json, so a resumed run follows it."""
    saved = plan.setdefault("respaced", {})
    if "extension" not in saved:
        seconds = seconds_left(job, root, plan, alive)
        epochs = respace_rungs({f["candidate"]: f["epoch_seconds"] for f in alive}, [len(alive)], seconds,
                               min(f["overhead_seconds"] for f in alive),
                               job.auto.max_epochs - max(f["trained_epochs"] for f in alive))
        saved["extension"] = {"seconds_left": seconds, "epochs": epochs[0] if epochs and epochs[0] >= MIN_EXTENSION
                              else 0}
        atomic_write_json(root / "plan.json", plan)
    return saved["extension"]["epochs"]


def respaced(job: AutoJob, root: Path, plan: dict, r: int, alive: list[dict]) -> list[dict]:
    """The rungs from ``r`` on, re-sized to the time the budget has left once the earlier rungs ran (see
    :func:`respace_rungs`): planned from a few timed steps, the loop's epochs often run faster or slower. Sized once
    from what the finished stages recorded and written into plan.json, so a resumed run follows it."""
    saved = plan.setdefault("respaced", {})
    if str(r) not in saved:
        seconds = seconds_left(job, root, plan, alive)
        trained = max(f["trained_epochs"] for f in alive)
        counts = [min(rung["candidates"], len(alive)) for rung in plan["rungs"][r:]]  # fewer: some left behind
        epochs = respace_rungs({f["candidate"]: f["epoch_seconds"] for f in alive}, counts, seconds,
                               min(f["overhead_seconds"] for f in alive), job.auto.max_epochs - trained)
        saved[str(r)] = {"seconds_left": seconds, "planned": [rung["epochs"] for rung in plan["rungs"][r:]],
                         "epochs": epochs, "candidates": counts}
        atomic_write_json(root / "plan.json", plan)
        print(f"  rungs {r}+ re-sized to the time left ({seconds / 60:.1f} min) at the loop's measured speed: "
              f"{saved[str(r)]['planned']} -> {epochs} epochs")
    epochs, counts = saved[str(r)]["epochs"], saved[str(r)]["candidates"]  # [] ends the search
    return [{**rung, "epochs": e, "candidates": k} for rung, e, k in zip(plan["rungs"][r:], epochs, counts,
                                                                          strict=False)]


def student_stage(cand: Candidate) -> str:
    """The stage (folder) name of a candidate's first rung, ``student-NAME-SIZE``: a folder name even where a hub
    name or a local path after the prefix holds "/"."""
    from fm2edge.results import slug

    return slug(f"student-{cand.name.split(':', 1)[-1]}-{cand.size}")


def train_student(job: AutoJob, root: Path, plan: dict, f: dict, rung: int, epochs: int, select: str,
                  start: str | None) -> dict:
    """One candidate's stage of one rung (a cached stage: a rerun skips it); rung 0 starts from the candidate's own
    weights, a later rung from its previous rung's, at a gentler rate."""
    cand = Candidate.parse(f["candidate"])
    name = student_stage(cand) + (f"-rung{rung}" if rung else "")
    args = student_args(job, cand, epochs, plan["teacher"]["folder"], select, plan)
    if rung:
        args["model"]["init"] = start
        args["train"]["lr"] *= CONTINUE_LR
        args["train"]["head_init"] = "random"  # the head it has is the trained one
    from fm2edge.stagecache import stage_seconds

    metrics = run_one_stage(root, name, "distill", args)
    kept = next((h for h in metrics["history"] if h["epoch"] == metrics["selected"]["epoch"]), {})
    stage = stage_seconds(root)[name]
    return {"folder": str(root / name), "val_acc": metrics["val_acc"], "val_score": val_score(metrics, job.auto.metric),
            "val_balanced_acc": metrics.get("val_balanced_acc"), "val_loss": kept.get("val_loss"),
            "rung": rung, "trained_epochs": f.get("trained_epochs", 0) + epochs,
            # the epochs behind the weights it kept: a rung that never beat its start keeps the weights it began from
            "kept_epochs": f.get("kept_epochs", 0) + metrics["selected"]["epoch"],
            "stage_minutes": metrics["train_seconds"] / 60,
            # what the loop really took per epoch (evaluation and checkpoints included), and the stage's cost
            # besides its epochs (loading, the teacher's outputs for the first student, the final predictions)
            "epoch_seconds": metrics["train_seconds"] / len(metrics["history"]),
            "overhead_seconds": max(0.0, stage - metrics["train_seconds"])}


def averages_with_teacher(candidate: str, teacher_model: str, teacher_size: int) -> bool:
    """Whether a student is averaged with the teacher's weights (see AVERAGE_STAGE): it starts from pretrained
    weights and has the teacher's architecture, so both lie near one pretrained start, and its input is at least
    AVERAGE_MIN_SCALE of the teacher's (further down, the teacher's weights see too different an image)."""
    cand = Candidate.parse(candidate)
    return cand.pretrained and cand.name == teacher_model and cand.size >= AVERAGE_MIN_SCALE * teacher_size


def average_with_teacher(job: AutoJob, root: Path, plan: dict, trained: list[dict], held=None) -> None:
    """Each student of the last rung that :func:`averages_with_teacher` averaged with the teacher's weights (a
    cached soup stage) and ranked against it as students are ranked (:func:`rank`: agreement with the teacher on
    ``held``, else validation accuracy, then validation loss); the average replaces the student's weights in
    ``trained`` where it ranks at least as high. Each such student keeps both scores under "averaged". A finalist
    whose graphs, exported before the seeds were bought, are over the budget by more than timings move by
    (:func:`far_over`) is not averaged: the average is the same network, as slow."""
    from fm2edge.models.io import model_meta

    teacher = plan["teacher"]["folder"]
    meta = model_meta(teacher)
    last = max((t["rung"] for t in trained), default=0)  # none where no student trained: nothing to average
    for t in trained:
        if t["rung"] != last or not averages_with_teacher(t["candidate"], meta["name"], meta["preprocess"]["size"]):
            continue
        if why := far_over(plan, t["candidate"]):  # an average has its latency too (as its seeds are not bought)
            print(f"  {t['candidate']} is not averaged with the teacher's weights: {why}")
            continue
        name = AVERAGE_STAGE + Path(t["folder"]).name
        result = run_one_stage(root, name, "soup", {
            "data": to_dict(job.data),
            "soup": {"runs": [t["folder"], teacher], "method": "uniform", "batchnorm": "average",
                     "score_test": False, "device": job.auto.device}})
        average = averaged_entry(job, plan, root / name, result, held)
        replace_if_as_good(job, t, average, "averaged", "averaged with the teacher's weights", "the average")


def averaged_entry(job: AutoJob, plan: dict, folder: Path, result: dict, held=None) -> dict:
    """A soup stage's model (``result``: its metrics) as an entry :func:`rank` can rank: its validation figures, and
    its agreement with the teacher on ``held`` where there are held-out images."""
    from fm2edge.device import resolve_device

    entry = {"folder": str(folder), "val_acc": result["val_acc"], "val_score": val_score(result, job.auto.metric),
             "val_balanced_acc": result.get("val_balanced_acc"), "val_loss": result["val_loss"]}
    if held is not None:
        entry["teacher_agreement"] = agreement(entry["folder"], held, plan["held_out"]["teacher_labels"],
                                               resolve_device(job.auto.device))
    return entry


def replace_if_as_good(job: AutoJob, t: dict, entry: dict, key: str, what: str, called: str) -> bool:
    """Whether ``entry`` (weights averaged from ``t``'s, ``called`` "the soup", say) ranks at least as high as the
    trained candidate ``t`` (as students are ranked; an exact tie to ``entry``): ``t`` records both under ``key`` and
    takes ``entry``'s folder and scores when it does, and the run says which was kept."""
    kept = rank([entry, t])[0] is entry
    t[key] = {**entry, "kept": kept, "student": {k: t.get(k) for k in entry}}
    scored = ("agreement with the teacher on the held-out images" if "teacher_agreement" in entry else "validation"
              if job.auto.metric == "accuracy" else f"validation {METRIC_NAMES[job.auto.metric]}")
    loss = (f" (validation loss {entry['val_loss']:.4f} against {t['val_loss']:.4f})"
            if score(entry) == score(t) and None not in (entry["val_loss"], t["val_loss"]) else "")
    print(f"  {t['candidate']} {what}: {scored} {100 * score(entry):.2f}% against {100 * score(t):.2f}% without"
          f"{loss}: {called} is {'kept' if kept else 'left out'}")
    if kept:
        t.update(entry)
    return kept


def soup_of_seeds(job: AutoJob, root: Path, plan: dict, trained: list[dict], held=None) -> None:
    """Each pretrained finalist (the last rung's best ``plan["finalists"]``, as they will be exported) trained again
    with the further seeds the time left buys (:func:`seeds_bought`, at most --auto.soup_seeds each, the leader's
    first and those whose exported graphs are over the latency budget last or not at all; decided once and written
    into plan.json, so a resumed run follows it), each seed its own views of the images and its own order for the
    finalist's epochs; the uniform average of the finalist's weights and its seeds' (a cached soup stage, BatchNorm
    statistics averaged: every pretrained student keeps its pretrained ones) replaces it in ``trained`` where it
    ranks at least as high (:func:`replace_if_as_good`, under "souped")."""
    if not job.auto.soup_seeds or not trained:
        return
    exported = finalists_of(trained, plan)
    finalists = [t for t in exported if Candidate.parse(t["candidate"]).pretrained]
    if not finalists:
        return
    saved = plan.setdefault("respaced", {})
    if "seeds" not in saved:
        saved["seeds"] = seeds_bought(job, root, plan, exported, finalists)
        atomic_write_json(root / "plan.json", plan)
    select = kept_epoch(job, plan)
    for t in finalists:
        seeds = min(job.auto.soup_seeds, saved["seeds"]["seeds"].get(t["candidate"], 0))
        if seeds:
            soup_finalist(job, root, plan, t, seeds, select, held)
        elif why := saved["seeds"].get("over_budget", {}).get(t["candidate"]):
            t["unsouped"] = why


def seeds_bought(job: AutoJob, root: Path, plan: dict, all_finalists: list[dict], finalists: list[dict]) -> dict:
    """What :func:`soup_of_seeds` buys: the seeds per pretrained finalist (``finalists``, among ``all_finalists``,
    the last rung's best) that the time left pays for (:func:`seeds_that_fit`), the time and each seed's cost, and,
    under "over_budget", the finalists whose exported graphs are over the budget, each with why ("far_over": those
    over by more than timings move by, or whose export failed, which get no seeds). Under a latency budget,
    where the time buys a seed at all, each finalist is exported first (cached stages, reused as they are where its
    weights do not change): its graphs' latency is its network's, which seeds do not change. A finalist none of whose
    graphs meets the budget gets no seeds where even its quickest graph is over by more than SCREEN_TOLERANCE
    (Lite0's int8 graph at 152 px timed 2.66 ms against a 1.88 ms budget: two cat/dog runs each spent 4-5 minutes on
    seeds of a finalist whose graphs then timed over), and its seeds come after those of the finalists within the
    budget where it is only just over: timed again in another state of the machine, such a graph can meet the
    budget (Lite0 at 144 px timed 1.56-1.60 ms against 1.53 before its seeds, and was chosen at 1.43 ms in the
    screen's state when the exports were timed again)."""
    def bought(order: list[dict]) -> tuple[float, list[tuple[str, float]], dict[str, int]]:
        seconds = seconds_left(job, root, plan, all_finalists)
        costs = [(t["candidate"], SEED_MARGIN * seed_seconds(t, plan)) for t in order]
        return seconds, costs, seeds_that_fit(costs, seconds, job.auto.soup_seeds)

    seconds, costs, seeds = bought(finalists)
    over: dict[str, str] = {}
    far: list[str] = []
    timings: dict[str, list[dict]] = {}
    if job.auto.latency_ms is not None and any(seeds.values()):
        # a copy of each exported (the finalists themselves are exported after the seeds and weight averages, the
        # unchanged ones from these cached stages), its int8 graphs' agreement unmeasured: the verdict reads latency
        # and size
        copies = {t["candidate"]: exported(job, root, dict(t), None) for t in finalists}
        timings = {name: [timing_record(o) for o in f["options"]] for name, f in copies.items()}
        verdicts = {name: over_budget(f, job.auto.latency_ms, job.auto.max_mb) for name, f in copies.items()}
        near = [t for t in finalists if verdicts[t["candidate"]] is not None and verdicts[t["candidate"]][0]]
        # the exports' time is spent: what is left buys the seeds, the finalists within the budget first
        seconds, costs, seeds = bought([t for t in finalists if verdicts[t["candidate"]] is None] + near)
        over = {name: v[1] for name, v in verdicts.items() if v is not None}
        far = [name for name, v in verdicts.items() if v is not None and not v[0]]
        for name, why in over.items():
            print(f"time left over: {name} " + (
                "is not trained again with seeds" if not verdicts[name][0] else
                "has its seeds after those of the finalists within the budget" if seeds.get(name) else
                "has no time left for seeds after those of the finalists within the budget") + f": {why}")
    return {"seconds_left": seconds, "seconds_per_seed": dict(costs), "seeds": seeds, "over_budget": over,
            "far_over": far, "timings": timings}


TIMING_KEYS = ("precision", "int8_recipe", "p50_ms", "mb", "state_ms", "reference_ms", "timings_ms")


def timing_record(o: dict) -> dict:
    """What plan.json keeps of an exported option's measurement (:func:`seeds_bought`): which graph, its timing, and
    the machine's state beside it where one was measured (``reference_ms``; ``state_ms``, its figure scaled to the
    screen's state)."""
    return {k: o[k] for k in TIMING_KEYS if k in o}


def earlier_timings(plan: dict, candidate: str) -> list[dict]:
    """The timings of ``candidate``'s graphs taken when it was exported before its seeds were bought (none where it
    was not)."""
    return plan.get("respaced", {}).get("seeds", {}).get("timings", {}).get(candidate, [])


def far_over(plan: dict, candidate: str) -> str | None:
    """Why ``candidate``'s graphs, exported before its seeds were bought, are over the budget by more than timings
    move by, or its export failed: the verdict :func:`seeds_bought` gave it no seeds for (None where it has none)."""
    seeds = plan.get("respaced", {}).get("seeds", {})
    return seeds["over_budget"][candidate] if candidate in seeds.get("far_over", ()) else None


def with_earlier(o: dict, before: dict, latency_ms: float | None) -> dict:
    """Exported option ``o`` judged with ``before``: the same network's graph in the same precision and int8 recipe,
    timed when its finalist was exported before the seeds were bought (seeds and weight averages change its weights,
    not its latency). Its median is the quieter of the two timings (as an export keeps the lowest of its fp32 graph's
    timings: ``earlier_ms`` keeps the other). Where both are over the budget, a figure scaled to the screen's machine
    state (``state_ms``) stands only where neither was timed in that state (a reference timing beside it, not slower
    beyond the cache's tolerance), and then the one scaled from the timing nearest that state (the lower reference):
    a cat/dog run timed Lite0 at 144 px 1.56-1.60 ms in the screen's state before its seeds, against a 1.53 ms
    budget, then 2.32 ms with the machine 1.6x slower, and chose it at that timing's 1.43 ms scaled."""
    out = {k: v for k, v in o.items() if k not in ("state_ms", "reference_ms")}
    out.update(p50_ms=min(o["p50_ms"], before["p50_ms"]), earlier_ms=before["p50_ms"],
               timings_ms=[*o.get("timings_ms", [o["p50_ms"]]), *before.get("timings_ms", [before["p50_ms"]])])
    if latency_ms is None or out["p50_ms"] <= latency_ms:
        return out
    timed = [x for x in (o, before) if "reference_ms" in x]
    if timed and all("state_ms" in x for x in timed):
        nearest = min(timed, key=lambda x: x["reference_ms"])
        out.update(state_ms=nearest["state_ms"], reference_ms=nearest["reference_ms"])
    return out


def judged_with_earlier(job: AutoJob, plan: dict, finalists: list[dict]) -> list[dict]:
    """``finalists`` with each option judged together with its graph's timing before the seeds (:func:`with_earlier`),
    saying where that changes whether it meets the budget."""
    for f in finalists:
        before = {(b["precision"], b.get("int8_recipe")): b for b in earlier_timings(plan, f["candidate"])}
        for i, o in enumerate(f["options"]):
            if (b := before.get((o["precision"], o.get("int8_recipe")))) is None:
                continue
            f["options"][i] = judged = with_earlier(o, b, job.auto.latency_ms)
            was, now = (within_budget(x, job.auto.latency_ms, job.auto.max_mb) for x in (o, judged))
            if was != now:
                print(f"  {o['candidate']} {option_text(o)}: judged {judged_ms(judged):.2f} ms with its "
                      f"timing before the seeds ({b['p50_ms']:.2f} ms), not {judged_ms(o):.2f} ms: "
                      + ("within the budget" if now else "over it"))
    return finalists


def over_budget(f: dict, latency_ms: float, max_mb: float | None) -> tuple[bool, str] | None:
    """None where one of exported finalist ``f``'s graphs meets the budget; else whether it is only just over (its
    quickest graph within SCREEN_TOLERANCE over the latency budget, and within the file-size one) and why."""
    if "export_failed" in f:
        return False, f"its export failed ({f['export_failed']})"
    if meets_budget(f, latency_ms, max_mb):
        return None
    near = any(within_budget(o, screen_limit(latency_ms), max_mb) for o in f["options"])
    quickest = min(f["options"], key=judged_ms)
    return near, (f"its exported graphs are {'just ' if near else ''}over the {latency_ms:.3g} ms budget (the "
                  f"quickest, {option_text(quickest)}, {judged_ms(quickest):.2f} ms"
                  + (f", within the {SCREEN_TOLERANCE:.0%} that timings move by)" if near else ")"))


def meets_budget(f: dict, latency_ms: float | None, max_mb: float | None) -> bool:
    """Whether one of exported finalist ``f``'s graphs (its options) is within the budget."""
    return any(within_budget(o, latency_ms, max_mb) for o in f.get("options", []))


def soup_finalist(job: AutoJob, root: Path, plan: dict, t: dict, seeds: int, select: str, held=None) -> None:
    """The finalist ``t`` trained again with seeds 1 to ``seeds`` (cached stages), and its weights averaged with
    theirs (see :func:`soup_of_seeds`)."""
    from fm2edge.stagecache import stage_seconds

    cand = Candidate.parse(t["candidate"])
    base = student_stage(cand)
    print(f"time left over: {t['candidate']} trained again with {seeds} more seed{'s' * (seeds > 1)} for its "
          f"{t['trained_epochs']} epochs, to be averaged with it")
    folders = []
    for k in range(1, seeds + 1):
        args = student_args(job, cand, t["trained_epochs"], plan["teacher"]["folder"], select, plan)
        args["train"]["seed"] = job.auto.seed + k
        args["distill"]["view_seed"] = k  # its own views of the images, the teacher's outputs on them cached apart
        run_one_stage(root, stage := f"{SEED_STAGE}{k}-{base}", "distill", args)
        folders.append(str(root / stage))
    name = SOUP_STAGE + base
    result = run_one_stage(root, name, "soup", {
        "data": to_dict(job.data),
        "soup": {"runs": [t["folder"], *folders], "method": "uniform", "batchnorm": "average",
                 "score_test": False, "device": job.auto.device}})
    recorded = stage_seconds(root)
    t["minutes"] = t.get("minutes", 0) + sum(recorded[Path(f).name] for f in folders + [name]) / 60
    soup = {**averaged_entry(job, plan, root / name, result, held), "seeds": seeds}
    replace_if_as_good(job, t, soup, "souped", f"averaged with {seeds} more seed{'s' * (seeds > 1)} (a soup)",
                       "the soup")


def soup_summary(t: dict) -> dict:
    """What auto.json says of a finalist's seeds: how many, and whether their soup was kept, or why it had none."""
    if "souped" in t:
        return {"candidate": t["candidate"], "seeds": t["souped"]["seeds"], "kept": t["souped"]["kept"]}
    return {"candidate": t["candidate"], "seeds": 0, "kept": False, "why": t["unsouped"]}


def fidelity_images(job: AutoJob, train, unlabeled: int):
    """Up to AGREEMENT_IMAGES of the students' training images (labelled first, then the unlabelled ones they were
    taught on), uint8: where the int8 graphs' agreement with their fp32 graphs is measured."""
    import torch

    images = train.images[:AGREEMENT_IMAGES]
    if unlabeled and len(images) < AGREEMENT_IMAGES and (pool := unlabeled_pool(job, train, unlabeled)) is not None:
        images = torch.cat([images, pool.images[:AGREEMENT_IMAGES - len(images)]])
    return images


def graph_probabilities(model, onnx: Path, images):
    """An exported graph's probabilities for ``images`` (preprocessed as ``model``, its classifier, does)."""
    import numpy as np

    from fm2edge.export import image_batches, open_session, run_images

    sess = open_session(onnx)
    return np.concatenate([run_images(sess, b) for b in image_batches(model, images, 256)])


def probability_gap(p, q) -> float:
    """Mean total-variation distance between two graphs' probabilities for the same images (0: identical; 1: each
    image's mass on different classes): how far an int8 graph strays from its fp32 graph where their labels agree."""
    import numpy as np

    return float(0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum(1).mean())


def export_teacher(job: AutoJob, root: Path, plan: dict, images, held=None,
                   teacher_labels: list[int] | None = None) -> dict | None:
    """The teacher as a candidate (``plan["teacher_option"]``) with its :func:`exported_options` where it fits the
    budget (None where it does not), exported before the students train, since it does not depend on them: the
    later rungs and the extension are then sized with the time its export took instead of its estimate, which errs
    long (for Lite0 at 224 px on 56 training photos 54 s were reserved for two exports that took 16.5 s, percentile
    calibration skipped). Marked in the plan (``teacher_exported``) for :func:`export_reserve`, with the seconds its
    graphs' labels for ``images`` and ``held`` took beyond its export stages, which no stage records, for
    :func:`spent_before`."""
    from fm2edge.stagecache import stage_seconds

    if "why" in plan["teacher_option"]:
        return None

    def stages() -> float:
        name = plan["teacher_option"]["export_name"]
        return sum(s for stage, s in stage_seconds(root).items() if stage.startswith(name))

    started, before = time.perf_counter(), stages()
    teacher = exported(job, root, dict(plan["teacher_option"]), images, held, teacher_labels)
    plan["teacher_exported"] = {"unrecorded_seconds": max(0.0, time.perf_counter() - started - (stages() - before))}
    atomic_write_json(root / "plan.json", plan)
    return teacher


def export_finalists(job: AutoJob, root: Path, trained: list[dict], plan: dict, images, held=None,
                     teacher_labels: list[int] | None = None) -> list[dict]:
    """The plan's finalists (:func:`finalists_of`), each with its :func:`exported_options`. A finalist whose export
    fails (its ONNX graph's probabilities stray from PyTorch's beyond the parity tolerance, say) is not a choice: it
    keeps no options and the reason under "export_failed", and the others are still judged."""
    return [exported(job, root, f, images, held, teacher_labels) for f in finalists_of(trained, plan)]


def exported(job: AutoJob, root: Path, f: dict, images, held=None, teacher_labels: list[int] | None = None) -> dict:
    """``f`` with its :func:`exported_options` (the disputed ones timed again: :func:`retime_disputed`), or with none
    and the reason under "export_failed" when its export fails."""
    try:
        f["options"] = exported_options(job, root, f, images, held, teacher_labels)
    except Fm2EdgeError as err:
        f["options"], f["export_failed"] = [], str(err)
        print(f"  {f['candidate']} is not a choice: its export failed ({err})")
    retime_disputed(job, f)
    return f


def screened_ms(f: dict, o: dict) -> float | None:
    """What the screen measured for the graph of exported option ``o`` of finalist ``f``: its fp32 figure, or the
    figure of the int8 layout its recipe has (fully int8, or the first and last layers in fp32: they time
    differently, 1.8 against 1.5 ms for Lite0 at 176 px); None where ``f`` was not screened."""
    screened = f.get(o["precision"])
    if not isinstance(screened, dict):
        return None
    if o["precision"] == "int8" and (layout := layout_of(o.get("int8_recipe"))) is not None:
        return screened.get("layouts_ms", {}).get(layout, screened["p50_ms"])
    return screened["p50_ms"]


def disputed(f: dict, o: dict, latency_ms: float | None) -> bool:
    """Whether exported option ``o`` of finalist ``f`` timed over the latency budget where the screen measured its
    graph within it (up to SCREEN_TOLERANCE over): the two timings of one graph disagree."""
    screened = screened_ms(f, o)
    return (latency_ms is not None and screened is not None and o["p50_ms"] > latency_ms
            and screened <= screen_limit(latency_ms))


def retime_disputed(job: AutoJob, f: dict) -> None:
    """Each :func:`disputed` option of ``f`` timed again, up to RETIMES times or until within the budget, keeping its
    quietest figure (``retimed_ms``: the new ones). An export times its graphs once, and a machine busy for that
    minute timed Lite0 students that had screened at 1.33 and 1.68 ms as int8 at 4.38 and 6.60 ms: both were judged
    over a 2 ms budget and a student 13 points less accurate on test was chosen. Where ``f`` was screened beside a
    reference timing, each new timing has one taken just before it (:func:`paired_timings`): still over the budget,
    a graph timed in the screen's state (or a faster one) is over it; timed only in slower states (up to SLOW_RETIMES
    more tries for a quieter minute), it is judged by its figure in the screen's state (``state_ms``:
    :func:`in_screen_state`), scaled from the timing nearest that state, as the screen judged it: a 6-minute run on a
    shared 2-core EPYC screened Lite0 at 80 px at 3.42 ms, timed its exported graphs at 5.3-6.0 ms against a 5 ms
    budget and chose a small CNN that scored 31% on test against the teacher's 96%. Paired, as a reference taken a
    minute apart from the timing misstates it: a cat/dog run's reference ran 1.6x slower than at the screen while
    Lite0's graph at 144 px ran 1.2-1.4x slower (1.75-1.90 ms timed beside a reference in the screen's state), and
    the scaled 1.17 ms put it within a 1.53 ms budget. Not cached with the exports: a rerun of the same command on
    an idle machine times them again."""
    for o in f["options"]:
        if not disputed(f, o, job.auto.latency_ms):
            continue
        pairs = paired_timings(job, f, o)
        before, o["retimed_ms"] = o["p50_ms"], [t for t, _ in pairs]
        o["timings_ms"] = [before, *o["retimed_ms"]]
        o["p50_ms"] = min(o["timings_ms"])
        timed = [(t, r) for t, r in pairs if r is not None]
        if o["p50_ms"] > job.auto.latency_ms and timed:
            nearest = min(timed, key=lambda pair: pair[1])
            o["reference_ms"] = nearest[1]  # the machine's state beside the figure (see with_earlier)
            if (scaled := in_screen_state(nearest[0], f["reference_ms"], nearest[1])) is not None:
                o["state_ms"] = scaled
        print(f"  {o['candidate']} {option_text(o)}: {before:.2f} ms in its export where it screened at "
              f"{screened_ms(f, o):.2f} ms; timed again: {', '.join(f'{t:.2f}' for t in o['retimed_ms'])} ms, "
              f"{retime_verdict(job, f, o)}")


def paired_timings(job: AutoJob, f: dict, o: dict) -> list[tuple[float, float | None]]:
    """Option ``o``'s graph timed again (quiet median, ms), each timing with the machine's reference timing taken
    just before it where ``f`` has one from its screen (else None): up to RETIMES timings or until one is within the
    budget, and while every one was taken with the machine slower than at the screen (beyond the cache's tolerance),
    up to SLOW_RETIMES more."""
    from fm2edge.export import graph_latency
    from fm2edge.timing import reference_ms

    def slower(reference: float | None) -> bool:
        return reference is not None and in_screen_state(1.0, f["reference_ms"], reference) is not None

    def more(pairs: list[tuple[float, float | None]]) -> bool:
        if pairs and pairs[-1][0] <= job.auto.latency_ms:
            return False
        return len(pairs) < RETIMES or (len(pairs) < RETIMES + SLOW_RETIMES and all(slower(r) for _, r in pairs))

    pairs: list[tuple[float, float | None]] = []
    while more(pairs):
        reference = reference_ms(job.auto.threads) if f.get("reference_ms") else None
        pairs.append((graph_latency(Path(o["onnx"]), job.auto.threads, EXPORT_LATENCY_RUNS)["quiet_p50_ms"],
                      reference))
    return pairs


def option_text(o: dict) -> str:
    """``"int8 (first-last-fp32)"``: an exported option's precision and int8 recipe."""
    return o["precision"] + (f" ({o['int8_recipe']})" if o.get("int8_recipe") else "")


def retime_verdict(job: AutoJob, f: dict, o: dict) -> str:
    """What :func:`retime_disputed` concluded for option ``o`` of ``f``, as its line says it."""
    if o["p50_ms"] <= job.auto.latency_ms:
        return "within the budget"
    if "state_ms" in o:
        return (f"over the budget as timed, but the machine ran {o['reference_ms'] / f['reference_ms']:.1f}x slower "
                f"than when it screened (reference timing {f['reference_ms']:.2f} -> {o['reference_ms']:.2f} ms) at "
                f"every timing: {o['state_ms']:.2f} ms in that state, "
                + ("within the budget" if o["state_ms"] <= job.auto.latency_ms else "over it"))
    if "reference_ms" in o:
        return "over the budget, timed with the machine in the state it screened in (or a faster one)"
    return "still over the budget" + (
        " (still far from its screened figure: if the machine is busy, rerun the same command when it is idle; the "
        "exports are reused and their graphs timed again)" if o["p50_ms"] > STILL_DISPUTED * screened_ms(f, o) else "")


def with_fallbacks(job: AutoJob, root: Path, trained: list[dict], finalists: list[dict], images, held=None,
                   teacher_labels: list[int] | None = None, within: float | None = None) -> list[dict]:
    """``finalists``, and where none of their graphs meets the budget once exported, the next students in rank order
    whose screened figures are within it, exported one at a time until a graph of theirs meets it. A candidate
    screened at the budget can time a few percent over it in its export: with a 2 ms budget, Lite0 at 208 px
    screened 2.00 ms as int8 and its exported graphs 2.07 ms and more, the 224 px one 2.14 ms, and the run ended
    with no model while the 160 px student (1.33 ms) had trained."""
    def met(fs: list[dict]) -> bool:
        return any(meets_budget(f, job.auto.latency_ms, job.auto.max_mb) for f in fs)

    tried = {f["candidate"] for f in finalists}
    for t in rank([t for t in trained if t["candidate"] not in tried], within):
        if met(finalists):
            break
        if precisions_within(t, job.auto.latency_ms, job.auto.max_mb):
            print(f"  no finalist meets the budget once exported: exporting {t['candidate']} as well")
            finalists = [*finalists, exported(job, root, {**t, "fallback": True}, images, held, teacher_labels)]
    return finalists


def exported_options(job: AutoJob, root: Path, f: dict, images, held=None,
                     teacher_labels: list[int] | None = None) -> list[dict]:
    """Finalist ``f`` exported to fp32 ONNX and to int8 with each of its :func:`int8_recipes`, scored there on
    validation (the test split stays unread): each (precision, recipe) an option with its measured latency and
    size, each int8 option its agreement with the fp32 graph on ``images`` (None: on validation alone, as the export
    measured it, and nothing else), and, with ``held`` (the held-out unlabelled images), each option its agreement
    with ``teacher_labels`` for them."""
    from fm2edge.models.io import load_classifier

    options, fp32_timings = [], []
    for i, (recipe, settings) in enumerate(int8_recipes(f, job.auto.latency_ms).items()):
        faithful = next((o for o in options if o["precision"] == "int8" and o["agreement_with_fp32"] >= 1.0
                         and layout_of(o["int8_recipe"]) == layout_of(recipe)), None)
        if settings.get("calibration_method") == "percentile" and faithful is not None:
            print(f"  {f['candidate']}: percentile calibration skipped: its {faithful['int8_recipe']} int8 graph "
                  f"(the layout percentile would calibrate) answers as its fp32 graph on every validation image")
            continue
        name = f.get("export_name", f"export-{Path(f['folder']).name}") + (f"-{recipe}" if i else "")
        result = run_one_stage(root, name, "export", {
            "model": f["folder"], "data": to_dict(job.data),
            "export": {"score_on": "validation", "threads": job.auto.threads,
                       "latency_runs": EXPORT_LATENCY_RUNS, **settings}})
        keys = (("fp32", "onnx_fp32"), ("int8", "onnx_int8")) if i == 0 else (("int8", "onnx_int8"),)
        options += [option(f, root / name, result, precision, key, recipe, job.auto.metric) for precision, key in keys]
        fp32_timings.append(result["latency_batch1"]["onnx_fp32"]["quiet_p50_ms"])
    # every export times the same fp32 graph again: its quiet figure is the lowest of them, as within one
    # export (a shared machine measured one graph at 2.58, 2.66 and 3.53 ms in three exports minutes apart)
    fp32_option = next(o for o in options if o["precision"] == "fp32")
    fp32_option.update(p50_ms=min(fp32_timings), fp32_timings_ms=fp32_timings)
    if images is None:  # the graphs' timings and sizes alone (see seeds_bought)
        return options
    model = load_classifier(f["folder"])
    reference = graph_probabilities(model, Path(fp32_option["onnx"]), images)
    for o in options:
        o["fp32_gap"] = 0.0
        if o["precision"] == "int8":
            probs = graph_probabilities(model, Path(o["onnx"]), images)
            # the lower of its agreement on training images and on validation's unseen ones: a model is confident on
            # what it fitted, so int8 flips few of those (96.3% agreement on 270 training images for a graph that
            # agreed on 66.7% of 30 validation images and lost 23 points there)
            o["agreement_train"] = float((probs.argmax(1) == reference.argmax(1)).mean())
            o["agreement_val"] = o["agreement_with_fp32"]
            o["agreement_with_fp32"] = min(o["agreement_train"], o["agreement_val"])
            o["fp32_gap"] = probability_gap(probs, reference)
            o["agreement_images"] = len(images)
        if held is not None:
            labels = graph_probabilities(model, Path(o["onnx"]), held.images).argmax(1)
            o["teacher_agreement"] = agreement_share(labels, teacher_labels)
    return options


def option(f: dict, folder: Path, result: dict, precision: str, key: str, recipe: str,
           metric: str = "accuracy") -> dict:
    """One deployable choice: a finalist's graph in one precision (and int8 recipe), with what export measured
    (``val_score``: its --auto.metric figure on validation)."""
    latency = result["latency_batch1"][key]
    figures = {"val_acc": result["validation_acc"][key],
               "val_balanced_acc": result.get("validation_balanced_acc", {}).get(key)}
    return {"candidate": f["candidate"], "precision": precision, "int8_recipe": recipe if precision == "int8" else None,
            "folder": f["folder"], "onnx": str(folder / result["files"][key]),
            "val_acc": figures["val_acc"], "val_score": val_score(figures, metric),
            "val_balanced_acc": figures["val_balanced_acc"], "val_loss": f.get("val_loss"),
            "agreement_with_fp32": result.get("int8_agreement_with_fp32", 1.0) if precision == "int8" else 1.0,
            # the lowest of repeated medians: the model's latency on its own device, not the contention of a shared
            # one (the median over all runs and the spread are kept beside it)
            "p50_ms": latency["quiet_p50_ms"], "median_ms": latency["p50_ms"], "p90_ms": latency["p90_ms"],
            "spread": latency["spread"], "mb": result["size_bytes"][key] / 1e6, "params": f["params"]}


def read_test_once(chosen: dict, teacher: dict, test, train, device, graphs: Path | None = None,
                   teacher_itself: bool = False) -> dict:
    """The test split, read once, for the chosen model (as shipped: its ONNX graph) and for the teacher, compared
    image by image (`chosen_against_teacher`). No candidate read it before: the teachers' probes and fine-tunes
    were scored on validation. The teacher reads it as its cached outputs were made (:func:`predicted_labels`, its
    graph kept under ``graphs``); where the chosen graph is the teacher's own fp32 one (``teacher_itself``), its
    answers are the teacher's. Where test images look like training images (near-copies: the same photo resized
    or re-saved), both accuracies are also given without them."""
    import numpy as np

    from fm2edge.data.splits import near_copies
    from fm2edge.models.io import load_classifier
    from fm2edge.report.metrics import chosen_against_teacher

    labels = test.labels.numpy()
    chosen_preds = graph_probabilities(load_classifier(chosen["folder"]), Path(chosen["onnx"]), test.images).argmax(1)
    teacher_preds = chosen_preds if teacher_itself else predicted_labels(teacher["folder"], test, device, graphs)
    out = chosen_against_teacher(chosen_preds, teacher_preds, labels, test.class_names)
    alike = near_copies(test, train)
    out["near_copies"] = None if alike is None else len(alike[0])
    if out["near_copies"]:
        apart = np.ones(len(labels), dtype=bool)
        apart[alike[0]] = False
        out["chosen_test_acc_without_near_copies"] = float((chosen_preds[apart] == labels[apart]).mean())
        out["teacher_test_acc_without_near_copies"] = float((teacher_preds[apart] == labels[apart]).mean())
    return out


def earlier_test_reads(previous: dict | None, chosen: dict, test_split: str) -> list[dict]:
    """The test reads of earlier runs in this folder for another choice than ``chosen`` (``previous``: the auto.json
    they left). A rerun chooses again, on validation and timings alone (an exported graph timed again on an idle
    machine may fit where it did not), and reads the test split for its own choice: each read is honest, but a test
    figure picked among several is not, so every earlier one is kept and shown beside the last. Only reads of the
    same test split count (``test_split``: its fingerprint, which follows the images' bytes, however the folder is
    spelled or wherever it was moved; an auto.json written before it was recorded counts as the same)."""
    if not previous or "test" not in previous or previous.get("test_split", test_split) != test_split:
        return []
    reads = list(previous.get("earlier_test_reads", []))
    was = previous["chosen"]
    if (was["candidate"], was["precision"]) != (chosen["candidate"], chosen["precision"]):
        reads.append({"candidate": was["candidate"], "precision": was["precision"],
                      "test_acc": previous["test"]["chosen_test_acc"]})
    return reads


def earlier_reads_text(reads: list[dict]) -> str | None:
    """The note that says where the test split was read before, for which choices, and what it scored."""
    if not reads:
        return None
    listed = "; ".join(f"{r['candidate']} as {r['precision']}, {100 * r['test_acc']:.2f}%" for r in reads)
    return (f"earlier runs in this folder read the test split for {len(reads)} other choice(s) ({listed}): each choice "
            f"was made on validation and timings alone, but a test figure picked among several reads is optimistic")


def write_best(job: AutoJob, root: Path, plan: dict, trained: list[dict], chosen: dict, test: dict) -> Path:
    """RUN/best: the chosen run folder (for `fm2edge predict`, `fm2edge.load`, push) with its chosen ONNX graph,
    its metrics and model card carrying the test accuracy `auto` read once (through that graph), how auto made it
    (:func:`best_card`) and the settings that make it again (auto.yaml)."""
    import yaml

    from fm2edge.models.io import class_names_of_run, load_classifier
    from fm2edge.results import model_card

    with atomic_dir(root / "best") as tmp:
        shutil.copytree(chosen["folder"], tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
        shutil.copy2(chosen["onnx"], tmp / Path(chosen["onnx"]).name)
        export_json = Path(chosen["onnx"]).parent / "export.json"
        shutil.copy2(export_json, tmp / "export.json")
        metrics = read_metrics(tmp)
        metrics.update(test_acc=test["chosen_test_acc"], teacher_test_acc=test["teacher_test_acc"],
                       **({"test_balanced_acc": test["chosen_balanced_acc"],
                           "teacher_test_balanced_acc": test["teacher_balanced_acc"]}
                          if "chosen_balanced_acc" in test else {}),
                       test_read_through=f"{Path(chosen['onnx']).name} ({chosen['precision']}), by fm2edge auto")
        atomic_write_json(tmp / METRICS_FILE, metrics)
        given = to_dict(job)
        given["run"]["overwrite"] = False  # running the card's command again resumes; it never empties the run
        atomic_write_text(tmp / BEST_SETTINGS, yaml.safe_dump(given, sort_keys=False))
    best = root / "best"
    model = load_classifier(best)
    entry = next((t for t in trained if t["candidate"] == chosen["candidate"]), None)
    origin = best_card(job, plan, entry, chosen, model.preprocess, class_names_of_run(best))
    atomic_write_text(best / "README.md", model_card(model, metrics, metrics, best, origin))
    return best


def best_card(job: AutoJob, plan: dict, entry: dict | None, chosen: dict, preprocess, class_names: list[str]):
    """What best/'s model card says (a :class:`fm2edge.results.CardOrigin`): how the run made the chosen model
    (``entry``: its trained candidate, None for the teacher itself), the graph it ships with the figures its export
    measured and how ONNX Runtime runs it without fm2edge, and the command that makes it again."""
    from fm2edge.results import CardOrigin, onnx_snippet

    teacher = plan["teacher"]["teacher"]
    if entry is None:
        how = f"the teacher itself ({teacher}, as the run trained it to teach), which met the budget"
    else:
        how = f"distilled from {teacher} for {entry.get('trained_epochs', 0)} epochs"
        averages = ([f"{entry['souped']['seeds']} more seeds' (a soup)"] if entry.get("souped", {}).get("kept")
                    else []) + (["the teacher's (WiSE-FT)"] if entry.get("averaged", {}).get("kept") else [])
        how += f", its weights averaged with {', then with '.join(averages)}" if averages else ""
    within = f" within a {said} budget" if (said := budget_sentence(job.auto)) else ""
    name, recipe = Path(chosen["onnx"]).name, f", {chosen['int8_recipe']}" if chosen.get("int8_recipe") else ""
    graph = (f"`{name}` is the graph the test accuracy was read through ({chosen['precision']}{recipe}, "
             f"{chosen['p50_ms']:.2f} ms batch-1 median on {plan['machine']} when the run timed it"
             f"{timings_text(chosen.get('timings_ms'))}, "
             f"{chosen['mb']:.1f} MB). It takes uint8 RGB images, batch x {preprocess.size} x {preprocess.size} x 3 "
             f"(resized and cropped as above; it normalises them itself), and returns the classes' probabilities. "
             f"`fm2edge predict best PHOTOS` runs it; so does ONNX Runtime alone, without fm2edge or PyTorch:\n\n"
             + onnx_snippet(name, preprocess, class_names))
    dropped = f"; {len(plan['dropped'])} more left out before training" if plan["dropped"] else ""
    process = [f"- chosen by `fm2edge auto` on validation among {len(plan['candidates'])} candidates (networks at "
               f"input sizes{dropped}) in a search of {job.auto.minutes:g} minutes; the run folder's report.html and "
               f"auto.json give every one's figures"]
    return CardOrigin(made=f"chosen by `fm2edge auto`{within}: {how}", process=process, graph=graph,
                      reproduce=f"fm2edge auto --config {BEST_SETTINGS}  # this run's settings, beside this card "
                                f"where the run was made; a finished run resumes (its stages are reused)")


def leaderboard(plan: dict, trained: list[dict], finalists: list[dict], chosen: str | None = None) -> list[dict]:
    """One row per candidate: its measured figures, what happened to it, and its validation accuracy and balanced
    accuracy; the ``chosen`` candidate first (it may have won a tie), the others ranked on --auto.metric's."""
    done = {t["candidate"]: t for t in trained}
    options: dict[tuple[str, str], dict] = {}

    budget = plan.get("settings", {}).get("auto", {})

    def order(o: dict) -> tuple:  # within the budget first, then as `choose` ranks them (held-out agreement first,
        # the faster last: where every recipe timed over the budget, the row quotes the one closest to it)
        return (within_budget(o, budget.get("latency_ms"), budget.get("max_mb")), o.get("teacher_agreement", 0.0),
                graph_score(o), o["agreement_with_fp32"], -o.get("fp32_gap", 0.0), -o["p50_ms"])

    for f in finalists:  # per candidate and precision, its best option (the int8 recipe validation prefers)
        for o in f["options"]:
            key = (o["candidate"], o["precision"])
            if key not in options or order(o) > order(options[key]):
                options[key] = o
    failed = {f["candidate"]: f["export_failed"] for f in finalists if "export_failed" in f}
    fallbacks = {f["candidate"] for f in finalists if f.get("fallback")}
    rows = []
    teacher = plan["teacher_option"]
    for f in plan["candidates"] + plan["dropped"] + [teacher]:
        if f is teacher:  # not trained here: its validation figures are the ones that chose it
            t = {k: f.get(k) for k in ("val_acc", "val_score", "val_balanced_acc")}
            status = f"the teacher: {f.get('why', 'screened within the budget, not retrained')}"
        else:
            t = done.get(f["candidate"], {})
            status = (f"trained, {t['left_behind']}" if "left_behind" in t else "trained") if t \
                else f"dropped: {f.get('why')}"
            if t.get("souped", {}).get("kept"):
                status += f", weights averaged with {t['souped']['seeds']} more seed(s) of it (a soup)"
            if t.get("averaged", {}).get("kept"):
                status += ", weights averaged with the teacher's (WiSE-FT)"
        if f["candidate"] in fallbacks:
            status += "; exported because no finalist's graph met the budget"
        graphs = {p: options[f["candidate"], p] for p in ("fp32", "int8") if (f["candidate"], p) in options}
        if graphs and not any(within_budget(o, budget.get("latency_ms"), budget.get("max_mb"))
                              for o in graphs.values()):
            status += "; not a choice: over the budget as exported (" + ", ".join(
                f"{p} {o['p50_ms']:.2f} ms, {o['mb']:.1f} MB" for p, o in graphs.items()) + ")"
        if f["candidate"] in failed:
            status += f"; not a choice: its export failed ({failed[f['candidate']]})"
        rows.append({"candidate": f["candidate"], "status": status,
                     "params": f["params"], "macs": f["macs"], "screen_fp32_ms": f["fp32"]["p50_ms"],
                     "screen_int8_ms": f["int8"]["p50_ms"], "epochs": t.get("trained_epochs"),
                     "kept_epochs": t.get("kept_epochs"), "rung": t.get("rung"),
                     "val_acc": t.get("val_acc"), "val_balanced_acc": t.get("val_balanced_acc"),
                     "val_score": graph_score(t) if t else None, "teacher_agreement": t.get("teacher_agreement"),
                     **{f"{k}_onnx_{p}": graphs.get(p, {}).get(k)
                        for p in ("fp32", "int8") for k in ("val_acc", "val_balanced_acc")},
                     "fp32_ms": graphs.get("fp32", {}).get("p50_ms"),
                     "int8_ms": graphs.get("int8", {}).get("p50_ms"),
                     "int8_recipe": graphs.get("int8", {}).get("int8_recipe"),
                     "minutes": t.get("minutes")})
    # the choice, then the order the search ranked them in: agreement with the teacher on held-out images first,
    # equal scores by how far they went
    return sorted(rows, key=lambda r: (r["candidate"] != chosen, r["val_score"] is None,
                                       -(r["teacher_agreement"] or 0), -(r["val_score"] or 0), -(r["rung"] or 0)))


def leaderboard_csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def early_finish(minutes: float, budget: float, epochs: int, max_epochs: int, unlabeled_available: int) -> str | None:
    """What to tell a user whose run left a quarter or more of its time budget (EARLY_FINISH_SHARE) because its
    finalists trained ``epochs`` = --auto.max_epochs (None otherwise): where the rest of the budget could go."""
    if minutes > EARLY_FINISH_SHARE * budget or epochs < max_epochs:
        return None
    more = ("unlabelled photos of the same kind (--auto.unlabeled_source DIR), which the students distil on"
            if not unlabeled_available else f"more epochs (--auto.max_epochs above {max_epochs})")
    return (f"finished in {minutes:.1f} of {budget:g} minutes: the finalists reached --auto.max_epochs ({max_epochs} "
            f"epochs); the rest of the budget would go to {more}")


def print_summary(result: dict) -> None:
    from fm2edge.report.metrics import gap_text

    c, t = result["chosen"], result["test"]
    recipe = f" ({c['int8_recipe']} calibration)" if c.get("int8_recipe") else ""
    agreed = (f", agreement with the teacher on {result['held_out_images']:,} held-out images "
              f"{100 * c['teacher_agreement']:.2f}%" if "teacher_agreement" in c else "")
    judged = (f"validation balanced accuracy {100 * graph_score(c):.2f}% (accuracy {100 * c['val_acc']:.2f}%)"
              if result.get("metric") == "balanced_accuracy" else f"validation {100 * c['val_acc']:.2f}%")
    state = (f" ({c['state_ms']:.2f} ms in the state the machine screened it in: it ran slower when timed)"
             if "state_ms" in c else "")
    print(f"\nchosen: {c['candidate']} as {c['precision']} ONNX{recipe}: {judged}{agreed}, "
          f"{c['p50_ms']:.2f} ms batch-1 p50 on this CPU{timings_text(c.get('timings_ms'))}{state}, "
          f"{c['mb']:.1f} MB, {c['params']:,} parameters")
    if result.get("precision_why"):
        print(f"precision: {result['precision_why']}")
    print(f"test (read once): {100 * t['chosen_test_acc']:.2f}% against the teacher's "
          f"{100 * t['teacher_test_acc']:.2f}% on {t['test_images']} images: "
          f"{gap_text(t['gap_points'], t.get('gap_interval_points'), result.get('teacher_itself', False))}")
    if result.get("test_read_before"):
        print(f"note: {result['test_read_before']}")
    if t.get("near_copies"):
        print(f"{t['near_copies']} test image(s) look like a training image (near-copies: `fm2edge data` names them); "
              f"without them, {100 * t['chosen_test_acc_without_near_copies']:.2f}% against the teacher's "
              f"{100 * t['teacher_test_acc_without_near_copies']:.2f}%")
    if t.get("class_imbalance", 1.0) >= IMBALANCED:
        print(f"the test classes are imbalanced ({t['class_imbalance']:.1f} to 1): balanced accuracy (the mean of "
              f"the classes' accuracies) {100 * t['chosen_balanced_acc']:.2f}% against the teacher's "
              f"{100 * t['teacher_balanced_acc']:.2f}%")
    print(f"results in {result['root']} (report.html, leaderboard.csv, best/, auto.json, plots/); "
          f"{result['minutes']:.1f} min of the {result['budget_minutes']:.0f}-minute budget")
    if result.get("finished_early"):
        print(f"note: {result['finished_early']}")
    if result.get("pretrained_out_of_budget"):
        print(f"note: {result['pretrained_out_of_budget']['text']}")
    if result.get("passed_over"):
        print(f"note: {result['passed_over']}")
    if result.get("no_budget"):
        print(f"note: {result['no_budget']}")
    if result.get("students_skipped"):
        print(f"note: {result['students_skipped']}")
    graph = Path(result["best"]) / Path(c["onnx"]).name
    print(f"next: fm2edge predict {result['best']} PHOTOS (runs {graph.name}); on the device itself: copy {graph} "
          f"there and run fm2edge bench {graph.name}; without fm2edge, {Path(result['best']) / 'README.md'} has the "
          f"lines that run it with ONNX Runtime")


def auto_job(job: AutoJob) -> dict:
    """Plan (measure, screen, teacher, epochs), train the students, export the finalists, choose, test once."""
    from fm2edge.data import load_data
    from fm2edge.device import resolve_device
    from fm2edge.report import plots
    from fm2edge.report.job import ReportJob, write_pages
    from fm2edge.report.write import save_figure

    started = time.perf_counter()
    root = auto_root(job)
    # what earlier runs here chose and read the test split for: read before --run.overwrite empties the folder, as
    # replacing the run does not undo the read
    previous = json.loads((root / AUTO_FILE).read_text()) if (root / AUTO_FILE).exists() else None
    if job.run.overwrite and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    data = load_data(job.data)
    plan_path = root / "plan.json"
    plan = read_plan(plan_path, root)
    before = 0.0
    if plan is not None and plan.get("settings") == settings(job):
        before = spent_before(root)
        atomic_write_json(plan_path, plan)  # where it is now, if the folder was moved
        print(f"resuming {root} with its plan ({len(plan['candidates'])} candidates, {before / 60:.1f} min spent)")
    else:
        if plan is not None:
            print(f"the settings differ from those {root} was planned with: planning again (finished stages with "
                  f"unchanged settings are reused)")
        plan = {**make_plan(job, root, data, started), "root": str(root)}
        atomic_write_json(plan_path, plan)
    if plan["selection"]["noisy"]:
        print(f"note: {plan['selection']['warning']}; students train a fixed schedule (their last epoch is kept)")
    if job.auto.metric == "accuracy" and (text := imbalance_text(class_imbalance(per_class(data[0])))):
        print(f"note: {text}: accuracy, which chooses here, favours the large classes; --auto.metric "
              f"balanced_accuracy chooses on the mean of the classes' accuracies")
    left_out = "".join(f"; {t['teacher']} left out: {t['why']}" for t in plan.get("teachers_left_out", []))
    figure = "validation balanced accuracy" if job.auto.metric == "balanced_accuracy" else "validation"
    print(f"teacher: {plan['teacher']['teacher']} ({100 * graph_score(plan['teacher']):.2f}% {figure}){left_out}")
    if job.auto.latency_ms is None:
        print("note: no latency budget (--auto.latency_ms): the most accurate model wins whatever its latency, the "
              "teacher itself included")
    held = (held_out_images(job, data[0], plan["held_out"]["images"]) if plan["held_out"]["images"] else None)
    if held is not None:
        print(f"note: the candidates are ranked by their agreement with the teacher on {len(held):,} unlabelled "
              f"images held out of training")
    elif (within := tie_width(plan)) is not None:
        pool = ranking_pool_text(plan.get("unlabeled_available", 0),
                                 bool(job.auto.unlabeled_source or job.auto.unlabeled_left_out))
        print(f"note: validation scores ({METRIC_NAMES[job.auto.metric]}) within {100 * within:.0f} points of the "
              f"best count as a tie, which goes to the students that start pretrained ({pool})")
    images, labels = fidelity_images(job, data[0], plan["unlabeled_images"]), plan["held_out"].get("teacher_labels")
    teacher = export_teacher(job, root, plan, images, held, labels)
    trained = train_students(job, root, plan, held)
    if not trained and teacher is None:  # nothing to ship: no student, the teacher not a choice
        raise Fm2EdgeError(too_short(plan, job.auto))
    if students_skipped := (None if trained else teacher_alone_text(plan, job.auto)):
        print(f"note: {students_skipped}")
    soup_of_seeds(job, root, plan, trained, held)
    average_with_teacher(job, root, plan, trained, held)
    students = export_finalists(job, root, trained, plan, images, held, labels)
    finalists = judged_with_earlier(job, plan, students + ([teacher] if teacher else []))
    finalists = with_fallbacks(job, root, trained, finalists, images, held, labels, tie_width(plan))
    chosen = choose(finalists, job.auto.latency_ms, job.auto.max_mb, plan["selection"]["noisy"], tie_width(plan))
    if chosen is None:
        failed = [f"{f['candidate']}: {f['export_failed']}" for f in finalists if "export_failed" in f]
        if len(failed) == len(finalists):
            raise Fm2EdgeError(f"no finalist could be exported: {'; '.join(failed)}")
        raise Fm2EdgeError(f"no finalist meets the budget once exported (latency {job.auto.latency_ms:.3g} ms); see "
                           f"{root}/plan.json and the export folders; raise --auto.latency_ms or --auto.finalists")
    earlier = earlier_test_reads(previous, chosen, data[2].fingerprint)
    # the teacher's own fp32 graph: no speed-up to pay for (its int8 graph is one)
    teacher_itself = (chosen["candidate"] == plan["teacher_option"]["candidate"] and chosen["precision"] == "fp32")
    test = read_test_once(chosen, plan["teacher"], data[2], data[0], resolve_device(job.auto.device),
                          graph_folder(job.data), teacher_itself)
    rows = leaderboard(plan, trained, finalists, chosen["candidate"])
    best = write_best(job, root, plan, trained, chosen, test)
    minutes = (before + time.perf_counter() - started) / 60
    result = {"root": str(root), "metric": job.auto.metric, "chosen": chosen, "test": test, "teacher": plan["teacher"],
              "teachers": plan["teachers"], "teachers_left_out": plan.get("teachers_left_out", []),
              "teacher_finetune": plan["teacher_finetune"], "best": str(best),
              "leaderboard": rows, "budget_minutes": job.auto.minutes, "latency_budget_ms": job.auto.latency_ms,
              "minutes": minutes, "minutes_by_step": minutes_by_step(root, plan, minutes), "rungs": rungs_as_run(plan),
              "selection": plan["selection"], "held_out_images": plan["held_out"]["images"],
              "finalists": plan["finalists"], "finalists_why": plan["finalists_why"], "machine": plan["machine"],
              "train_images": plan["train_images"], "unlabeled_images": plan["unlabeled_images"],
              "views": plan["views"], "size_searches": plan.get("size_searches", []),
              "hedge": {"candidate": plan["hedge"], "text": hedge_text(plan["hedge"])} if plan.get("hedge") else None,
              "pretrained_out_of_budget": plan.get("pretrained_out_of_budget"),
              "precision_why": precision_text(chosen, finalists, job.auto.latency_ms, job.auto.max_mb,
                                              plan["machine"], plan["selection"]["noisy"]),
              "passed_over": passed_over_text(finalists, chosen, job.auto.latency_ms, plan["selection"]["noisy"],
                                              tie_width(plan)),
              "no_budget": no_budget_text(chosen, plan["teacher_option"], job.auto.latency_ms),
              "students_skipped": students_skipped,
              "teacher_itself": teacher_itself,
              "earlier_test_reads": earlier, "test_read_before": earlier_reads_text(earlier),
              "test_split": data[2].fingerprint,
              "soups": [soup_summary(t) for t in trained if "souped" in t or "unsouped" in t]}
    result["finished_early"] = early_finish(minutes, job.auto.minutes,
                                            max(f.get("trained_epochs", 0) for f in finalists), job.auto.max_epochs,
                                            plan["unlabeled_available"])
    atomic_write_text(root / "leaderboard.csv", leaderboard_csv(rows))
    atomic_write_json(root / AUTO_FILE, result)
    points = [o for f in finalists for o in f["options"]]
    held_n = plan["held_out"]["images"]  # the choice was made on agreement there: the plot shows what chose
    scored = [{**o, "val_score": graph_score(o)} for o in points + [chosen]]
    figure = (plots.accuracy_vs_latency(points, job.auto.latency_ms, chosen, None, "teacher_agreement",
                                        f"agreement with the teacher on {held_n:,} held-out images (%)") if held_n
              else plots.accuracy_vs_latency(scored[:-1], job.auto.latency_ms, scored[-1],
                                             graph_score(plan["teacher"]), "val_score",
                                             f"validation {METRIC_NAMES[job.auto.metric]} (%)"))
    save_figure(figure, root / "plots" / "accuracy_vs_latency.png")
    save_figure(plots.per_class_pair(test["per_class"], ("teacher", "chosen"),
                                     f"test accuracy per class (images), {test['test_images']:,} read once"),
                root / "plots" / "test_per_class.png")
    write_pages(ReportJob(runs=[str(root)], title=f"{root.name}: the choice and every candidate"))
    print_summary(result)
    return result
