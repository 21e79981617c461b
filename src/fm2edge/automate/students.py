"""The students trained: each rung of successive halving one distillation stage per candidate (the better half going
on), re-sized from what the finished stages recorded, and an extension for the finalists where time is left."""

from __future__ import annotations

import math
from pathlib import Path

from fm2edge.automate.budget import seconds_left
from fm2edge.automate.config import AutoJob
from fm2edge.automate.heldout import agreement
from fm2edge.automate.measure import PRETRAINED_BATCH, Candidate
from fm2edge.automate.plan import respace_rungs
from fm2edge.automate.ranking import hopeless, rank, scored_images, tie_width, val_score
from fm2edge.automate.screen import with_hedge
from fm2edge.automate.stages import run_one_stage
from fm2edge.config import to_dict
from fm2edge.runs import atomic_write_json

# A pretrained student's peak learning rate at PRETRAINED_BATCH images (AdamW, one-cycle). A first rung is a few
# optimiser steps, and AdamW's first steps move every weight by about the rate whatever its gradient: Lite0 at 128 px
# on 180 cat/dog photos, 4 epochs of 3 steps from its probe head (benchmarks/warmup_study.py), scored 88.62 / 91.75%
# on 800 unseen photos at 5e-4 and 95.00 / 93.38% at 2e-4; after 16 epochs 94.50 / 94.88% at 5e-4 and 95.62 / 94.62%
# at 2e-4 (seeds 0 / 1; 2-core VNNI Xeon; docs: auto, "The rate of a pretrained student's first steps").
PRETRAINED_LR = 2e-4
# A continuing rung's peak learning rate, relative to the first rung's (a second, gentler cycle from trained weights).
CONTINUE_LR = 0.5
# Fewest epochs worth a further cycle for the finalists when the planned rungs leave time over.
MIN_EXTENSION = 2


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
