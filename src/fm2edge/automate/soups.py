"""Weight averages after the students train: a pretrained student averaged with its teacher's weights (WiSE-FT), and a
finalist trained again with other seeds and averaged with them where the budget has time left (a model soup)."""

from __future__ import annotations

from pathlib import Path

from fm2edge.automate.budget import seconds_left, seed_seconds, seeds_that_fit
from fm2edge.automate.config import AutoJob
from fm2edge.automate.exports import exported, far_over, over_budget, timing_record
from fm2edge.automate.heldout import agreement
from fm2edge.automate.measure import Candidate
from fm2edge.automate.ranking import METRIC_NAMES, rank, score, val_score
from fm2edge.automate.stages import run_one_stage
from fm2edge.automate.students import finalists_of, kept_epoch, student_args, student_stage
from fm2edge.config import to_dict
from fm2edge.runs import atomic_write_json

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
