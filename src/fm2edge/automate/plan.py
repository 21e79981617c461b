"""The plan of an `fm2edge auto` run, written once into plan.json so that a resumed run follows it: the teacher, the
candidates kept, the unlabelled images and stored views, and the rungs of successive halving with their epochs."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from fm2edge.automate.budget import (
    INFERENCE_SPEEDUP,
    TEACHER_VIEW_EFFICIENCY,
    budget_text,
    export_reserve,
    read_once_seconds,
    teacher_export_too_long,
)
from fm2edge.automate.config import AutoJob
from fm2edge.automate.heldout import held_out_count, held_out_images, predicted_labels, unlabeled_pool
from fm2edge.automate.measure import LOOP_EFFICIENCY, Candidate, latency_cache, measure, measure_training
from fm2edge.automate.ranking import score, val_score
from fm2edge.automate.screen import (
    fastest_ms,
    fit_sizes,
    hedge_text,
    latency_hedge,
    measure_candidates,
    over_at_a_smaller_size,
    screen,
    second_look,
    unmeasured,
)
from fm2edge.automate.sizes import fastest_pretrained, fastest_pretrained_text, precisions_within
from fm2edge.automate.teachers import finetuned_teachers, plan_finetune, score_teachers, teacher_stages, usable_teachers
from fm2edge.config import EPOCHS_FEWEST, is_photo, scaled_epochs, to_dict
from fm2edge.distill.teacher import graph_folder
from fm2edge.errors import Fm2EdgeError
from fm2edge.stagecache import moved

PLAN_VERSION = 20  # 20: the test read is reserved in the budget (read_once_seconds)
# Successive halving: each rung keeps the better 1/HALVING of the previous one on validation and trains it HALVING
# times the epochs more (continuing from its weights), until the finalists remain.
HALVING = 2
# At most this share of the time budget goes to the teacher's outputs on every stored view: with many unlabelled
# images a CPU teacher would otherwise spend the whole budget before a student trains, so the plan takes as many
# of them as that share affords.
TEACHING_SHARE = 0.25
MIN_UNLABELED = 100  # below this many, unlabelled images are not worth their teacher passes
# A second finalist is a hedge against the leader's exported graph timing over the latency budget (one graph
# measured 3.53, 2.66 and 2.58 ms minutes apart against a 2.70 ms budget; screen figures of one model moved up to
# 1.5x between runs). Where every kept candidate measured within this share of the budget in one precision at
# least, a swing of 1.6x still leaves the leader a graph that fits, and one finalist is kept unless --auto.finalists
# says otherwise: the ladder's last rung trains it alone, for as many epochs again.
FAR_INSIDE = 0.6


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


def read_plan(path: Path, root: Path) -> dict | None:
    """A run's plan, or ``None``; its paths under the folder it was written in moved under ``root`` (a run folder
    moved or copied elsewhere resumes from where it is now)."""
    if not path.exists():
        return None
    plan = json.loads(path.read_text())
    return {**moved(plan, plan.get("root", str(root)), str(root)), "root": str(root)}


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


def screened(job: AutoJob, num_classes: int) -> tuple[list[dict], list[dict], list[dict], list[dict], dict | None]:
    """(measured, kept, dropped, size searches, out of budget): every candidate measured on this machine (again where
    a slower machine put it over, then what a smaller input no longer rules out), each pretrained backbone's input
    fitted to the budget, and the screen; the kept ones' training speed timed, and where the budget keeps only
    students from random weights, the fastest pretrained one that was over. One clear error where none is kept."""
    figures, _ = measure_candidates(job, num_classes)
    figures, passed = measure_candidates(job, num_classes, second_look(job, figures, num_classes))
    added, probed, searches = fit_sizes(job, figures, num_classes)
    kept, dropped = screen(figures + added, job.auto)
    dropped += probed + [unmeasured(c, num_classes, why) for c, why in passed]
    for d in dropped:
        print(f"  dropped {d['candidate']}: {d['why']}")
    if not kept:
        fastest = min(figures, key=lambda f: f["int8"]["p50_ms"])
        raise Fm2EdgeError(f"no candidate student meets the budget ({budget_text(job.auto)}); the fastest measured "
                           f"here is {fastest['candidate']} ({fastest['int8']['p50_ms']:.3f} ms as int8); raise the "
                           f"budget or add smaller candidates with --auto.students")
    measured = figures + added + probed
    if out_of_budget := fastest_pretrained(measured, kept):
        out_of_budget["text"] = fastest_pretrained_text(out_of_budget)
        print(f"  note: {out_of_budget['text']}")
    for f in kept:  # timed only for what the budget keeps
        speed = measure_training(Candidate.parse(f["candidate"]), num_classes, job.auto.threads,
                                 latency_cache(job.data))
        f.update(train_images_per_s=speed["train_images_per_s"], train_device=speed["train_device"])
    return measured, kept, dropped, searches, out_of_budget


def make_plan(job: AutoJob, root: Path, data, started: float) -> dict:
    """Measure, screen, choose the teacher and size every student's epochs: written once (plan.json), so a resumed
    run follows the same plan whatever its clock says."""
    from fm2edge.data.splits import balanced_selection_noise, selection_noise
    from fm2edge.device import cpu_features, resolve_device

    train, val, test = data
    if val is None:
        raise Fm2EdgeError("auto chooses on validation images and this data has none; give it a validation split "
                           "(val/ beside train/) or more images per class (--data.val_fraction holds some out)")
    measured, kept, dropped, searches, out_of_budget = screened(job, train.num_classes)
    noise = (balanced_selection_noise(val.labels.bincount(minlength=val.num_classes).tolist(), val.class_names,
                                      "candidates") if job.auto.metric == "balanced_accuracy"
             else selection_noise(len(val), "candidates"))
    chosen = plan_teacher(job, root, train, val, resolve_device(job.auto.device), noise["noisy"])
    teacher = chosen["teacher"]
    teacher_option = teacher_as_candidate(job, teacher, train.num_classes, measured)
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
