"""`fm2edge auto`: the plan's pure pieces, and the whole path on scikit-learn's digits at toy size (a small trained
teacher, two small students): choice on validation, budget kept, test read once, best/ ready to use, resume."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fm2edge.automate.budget import (
    budget_sentence,
    budget_text,
    export_reserve,
    read_once_seconds,
    seed_seconds,
    seeds_that_fit,
    spent_before,
)
from fm2edge.automate.config import AutoConfig, AutoJob
from fm2edge.automate.exports import (
    RETIMES,
    SLOW_RETIMES,
    disputed,
    export_seconds,
    far_over,
    int8_recipes,
    judged_with_earlier,
    over_budget,
    probability_gap,
    retime_disputed,
    screened_ms,
    with_earlier,
    with_fallbacks,
)
from fm2edge.automate.heldout import HELD_OUT_FEWEST, HELD_OUT_MOST, held_out_count
from fm2edge.automate.measure import Candidate
from fm2edge.automate.plan import (
    MIN_UNLABELED,
    finalists_wanted,
    ladder_sets,
    plan_pool,
    plan_rungs,
    respace_rungs,
    rungs_as_run,
    size_candidates,
    size_epochs,
    teacher_as_candidate,
    too_short,
    views_and_unlabeled,
)
from fm2edge.automate.ranking import choose, hopeless, rank, score, tie_width, val_score
from fm2edge.automate.results import (
    earlier_test_reads,
    early_finish,
    leaderboard,
    no_budget_text,
    passed_over_text,
    precision_text,
)
from fm2edge.automate.screen import (
    hedge_text,
    in_screen_state,
    latency_hedge,
    measure_candidates,
    over_at_a_smaller_size,
    screen,
    second_look,
    unmeasured,
    with_hedge,
    worth_a_second_look,
)
from fm2edge.automate.soups import average_with_teacher, averages_with_teacher, seeds_bought, soup_summary
from fm2edge.automate.students import extension, last_rung_best, student_args, train_students
from fm2edge.automate.teachers import FINETUNE_SIZES, finetune_choice, finetune_seconds, finetune_sizes, usable_teachers
from fm2edge.cli import main
from fm2edge.config import DataConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.report.metrics import chosen_against_teacher, gap_text
from fm2edge.timing import timings_text


def figures(name, fp32_ms, int8_ms, params=1000, mb=1.0):
    return {"candidate": name, "params": params, "macs": 1, "fp32": {"p50_ms": fp32_ms, "mb": mb},
            "int8": {"p50_ms": int8_ms, "mb": mb / 4}, "train_images_per_s": 100.0}


def test_screen_drops_what_is_over_budget_in_both_precisions_and_says_why():
    cfg = AutoConfig(latency_ms=2.0, max_params=5000)
    kept, dropped = screen([figures("fast", 1.0, 0.5), figures("int8 only", 3.0, 1.5), figures("slow", 5.0, 4.0),
                            figures("big", 1.0, 0.5, params=10_000)], cfg)
    assert [k["candidate"] for k in kept] == ["fast", "int8 only"]
    assert kept[0]["fits"] == ["fp32", "int8"] and kept[1]["fits"] == ["int8"]
    why = {d["candidate"]: d["why"] for d in dropped}
    assert "over the budget" in why["slow"] and "max_params" in why["big"]


def test_one_finalist_where_every_candidate_is_far_inside_the_budget_else_two_as_a_hedge():
    near = [figures("fast", 0.4, 0.3), figures("near", 1.9, 1.3)]  # near: within the budget, not within 60% of it
    far = [figures("fast", 0.4, 0.3), figures("int8 far inside", 1.9, 1.1)]  # one graph of each within 60%
    assert finalists_wanted(near, AutoConfig(latency_ms=2.0)) == 2
    assert finalists_wanted(far, AutoConfig(latency_ms=2.0)) == 1
    assert finalists_wanted(near, AutoConfig()) == 1  # no latency budget: no timing to hedge against
    assert finalists_wanted(far, AutoConfig(latency_ms=2.0, finalists=3)) == 3  # as the user said
    # one finalist: the ladder halves down to it, and the survivor trains half as many epochs again as with two
    speeds = {"a": 100.0, "b": 100.0}
    two, one = (plan_rungs(speeds, images=100, seconds=120.0, lo=1, hi=100, keep=k) for k in (2, 1))
    assert [(r["candidates"], r["epochs"]) for r in two] == [(2, 60)]
    assert [(r["candidates"], r["epochs"]) for r in one] == [(2, 30), (1, 60)]


def test_a_candidate_far_behind_the_leader_is_left_behind_and_its_place_goes_to_the_others(tmp_path, monkeypatch):
    import fm2edge.automate.students as students

    def trained(name, val_acc, agreement=None):
        return {"candidate": name, "val_acc": val_acc, "val_loss": 0.5,
                **({} if agreement is None else {"teacher_agreement": agreement})}

    # held-out agreement on 1,000 images: a small CNN 24 points under Lite0 is hopeless, one 4 points under is not
    ranked = [trained("lite0@112", 1.0, 0.95), trained("lite0@96", 1.0, 0.91), trained("cnn@64", 0.75, 0.71)]
    assert set(hopeless(ranked, 1000)) == {"cnn@64"} and hopeless(ranked, 1000)["cnn@64"] == pytest.approx(0.24)
    # 20 validation images: 25 points is within what their noise explains (+-25 at 99%) plus the 10-point margin
    assert hopeless([trained("a", 1.0), trained("b", 0.75)], 20) == {}
    assert set(hopeless([trained("a", 1.0), trained("b", 0.35)], 20)) == {"b"}

    # in the search: planned 3 -> 2, but the small CNN is left after rung 0 and Lite0 at 96 px trains on alone
    scores = {"lite0@96": 0.93, "cnn@64": 0.70, "cnn@32": 0.68}
    calls = []

    def fake_rung(job, root, plan, alive, r, epochs, select, done, held=None):
        calls.append((r, [f["candidate"] for f in alive]))
        for f in alive:
            f.update(rung=r, val_acc=scores[f["candidate"]], val_loss=0.1, trained_epochs=5 * (r + 1),
                     stage_minutes=1.0, folder=str(tmp_path / f["candidate"]))
            done[f["candidate"]] = {**done.get(f["candidate"], {}), **f}

    monkeypatch.setattr(students, "train_rung", fake_rung)
    monkeypatch.setattr(students, "respaced", lambda job, root, plan, r, alive: plan["rungs"][r:])
    monkeypatch.setattr(students, "extension", lambda *a: 0)
    plan = {"candidates": [{"candidate": c, "epochs": 5} for c in scores], "finalists": 2,
            "selection": {"noisy": False}, "held_out": {"images": 0}, "val_images": 500,
            "rungs": [{"candidates": 3, "epochs": 5}, {"candidates": 2, "epochs": 10}]}
    out = {t["candidate"]: t for t in students.train_students(AutoJob(), tmp_path, plan)}
    assert calls == [(0, ["lite0@96", "cnn@64", "cnn@32"]), (1, ["lite0@96"])]
    assert out["lite0@96"]["rung"] == 1 and "left_behind" not in out["lite0@96"]
    assert out["cnn@64"]["left_behind"] == "left after rung 0, 23.0 points under the leader"


def test_pretrained_students_keep_their_batchnorm_statistics_and_start_from_a_probe_head():
    plan = {"views": 4, "unlabeled_images": 0}
    pretrained = student_args(AutoJob(), Candidate.parse("pypi:efficientnet_lite0@112"), 5, "t", "last", plan)
    scratch = student_args(AutoJob(), Candidate.parse("student:small_cnn@32"), 5, "t", "last", plan)
    assert (pretrained["train"]["freeze_bn"], pretrained["train"]["head_init"]) == (True, "probe")
    assert (scratch["train"]["freeze_bn"], scratch["train"]["head_init"]) == (False, "random")
    assert pretrained["train"]["lr"] < scratch["train"]["lr"]


def test_photos_are_taught_on_cropped_views_and_tiny_images_on_themselves():
    """Students of photos train on random-resized crops and flips, the teacher's outputs cached on up to
    --auto.views of them; images too small to crop (8 x 8 digits) on the plain images, one output each."""
    from fm2edge.automate.plan import most_views
    from fm2edge.config import AugmentConfig, TrainConfig, proven_recipe

    job = AutoJob()
    assert most_views(job, 128) == most_views(job, 32) == job.auto.views > 1 and most_views(job, 8) == 1
    args = student_args(job, Candidate.parse("student:small_cnn@32"), 5, "t", "last", {"views": 4,
                                                                                     "unlabeled_images": 0})
    train = TrainConfig(augment=AugmentConfig(**args["train"]["augment"]))
    photos, digits = (proven_recipe(train, 100, px, False).augment for px in (128, 8))
    assert (photos.crop, photos.flip) == ("resized", True)
    assert (digits.crop, digits.flip, digits.active) == ("none", False, False)


def test_large_inputs_train_at_smaller_batches_and_a_rate_scaled_with_them():
    """A pretrained student's batch holds at most 64 images of 128 px (memory grows with a batch's pixels), its rate
    scaled by the square root of the batch; students from random weights keep theirs."""
    plan = {"views": 4, "unlabeled_images": 0}
    train = {size: student_args(AutoJob(), Candidate("pypi:efficientnet_lite0", size), 5, "t", "last", plan)["train"]
             for size in (96, 128, 160, 224)}
    assert [train[s]["batch_size"] for s in (96, 128, 160, 224)] == [64, 64, 32, 16]
    assert train[128]["lr"] == 2e-4 and train[224]["lr"] == pytest.approx(1e-4)
    assert Candidate("student:small_cnn", 128).batch_size == 128
    for size in (64, 160, 224, 320, 518, 4096):
        batch = Candidate("hf:x", size).batch_size
        assert batch >= 1 and batch & (batch - 1) == 0 and (batch == 1 or batch * size ** 2 <= 64 * 128 ** 2)


def test_the_teacher_is_a_leaderboard_row_within_the_budget_or_over_it_with_the_reason():
    cfg = AutoConfig(latency_ms=2.0)
    student = {**screen([figures("student:small_cnn@32", 1.0, 0.5)], cfg)[0][0], "epochs": 3}
    trained = [{"candidate": "student:small_cnn@32", "trained_epochs": 3, "rung": 0, "val_acc": 0.8, "minutes": 1.0}]
    for latency, status in ((1.5, "the teacher: screened within the budget, not retrained"), (5.0, "over the budget")):
        kept, dropped = screen([figures("teacher x@224", latency, latency)], cfg)
        teacher = {**(kept or dropped)[0], "val_acc": 0.9}
        rows = leaderboard({"candidates": [student], "dropped": [], "teacher_option": teacher}, trained, [])
        assert [r["candidate"] for r in rows] == ["teacher x@224", "student:small_cnn@32"]  # by validation
        assert status in rows[0]["status"] and rows[0]["epochs"] is None and rows[0]["val_acc"] == 0.9


def test_epochs_fill_the_time_and_a_capped_candidate_hands_its_time_on():
    speeds = {"fast": 1000.0, "slow": 100.0}  # images per second
    epochs = size_epochs(speeds, images=100, seconds=20.0, lo=2, hi=30)
    # equal shares would give fast 100 epochs (capped at 30: 3 s used) and slow 10; the 7 s fast left go to slow
    assert epochs == {"fast": 30, "slow": 17}
    assert 30 * 100 / 1000 + 17 * 100 / 100 <= 20.0
    assert size_epochs({"a": 10.0}, images=100, seconds=15.0, lo=2, hi=30) == {"a": 0}  # 1.5 epochs: too few


def test_successive_halving_fits_the_budget_whoever_survives():
    speeds = {"a": 100.0, "b": 50.0, "c": 30.0, "d": 20.0, "e": 10.0}  # training images per second
    rungs = plan_rungs(speeds, images=1000, seconds=3600.0, lo=3, hi=30, keep=2)
    # 5 candidates x 3 epochs, the better 3 x 6 more, the final 2 x 12 more: 21 epochs for each finalist
    assert [(r["candidates"], r["epochs"]) for r in rungs] == [(5, 3), (3, 6), (2, 12)]
    # priced as if the slowest survived (e, d, c then e, d): within the budget, and one epoch more would not be
    slowest = [1 / 10 + 1 / 20 + 1 / 30 + 1 / 50 + 1 / 100, 1 / 10 + 1 / 20 + 1 / 30, 1 / 10 + 1 / 20]
    assert sum(r["seconds"] for r in rungs) == pytest.approx(1000 * (3 * slowest[0] + 6 * slowest[1]
                                                                     + 12 * slowest[2]))
    assert sum(r["seconds"] for r in rungs) <= 3600 < 1000 * 4 * (slowest[0] + 2 * slowest[1] + 4 * slowest[2])
    # a finalist's total stays within hi; too little time for lo epochs each: no ladder (equal shares instead)
    assert plan_rungs({"a": 100.0, "b": 50.0}, 1000, 3600.0, 3, 30, 2) == [
        {"candidates": 2, "epochs": 30, "seconds": 900.0}]
    assert plan_rungs({"a": 10.0}, 1000, 100.0, 3, 30, 1) == []


def test_a_short_budget_leaves_the_slowest_out_of_the_search_and_keeps_one_of_each_start():
    speeds = {"pypi:efficientnet_lite0@224": 23.0, "pypi:efficientnet_lite0@128": 69.0,
              "pypi:efficientnet_lite0@96": 116.0, "student:small_cnn@64": 797.0, "student:small_cnn@32": 822.0}
    sets = ladder_sets(speeds)
    assert sets[0] == sorted(speeds, key=speeds.get)  # all of them first
    assert [len(s) for s in sets] == [5, 4, 3, 2, 1, 1]
    # the slowest whose start another one shares goes first: the large Lite0 sizes, then the slower small CNN
    assert sets[3] == ["pypi:efficientnet_lite0@96", "student:small_cnn@32"]
    assert sets[4] == ["pypi:efficientnet_lite0@96"]  # then the fastest pretrained one alone
    assert sets[5] == ["student:small_cnn@32"]  # last the fastest of all, where not even that fits
    assert ladder_sets({"student:small_cnn@32": 800.0, "student:small_cnn@64": 700.0}) == [
        ["student:small_cnn@64", "student:small_cnn@32"], ["student:small_cnn@32"]]
    assert ladder_sets({"pypi:efficientnet_lite0@96": 116.0}) == [["pypi:efficientnet_lite0@96"]]
    # photos: the students from random weights are left out first (they trail the pretrained ones there), slowest
    # first within each start, and one of each start stays
    photo_sets = ladder_sets(speeds, photos=True)
    assert photo_sets[0] == sets[0]
    assert photo_sets[1] == ["pypi:efficientnet_lite0@224", "pypi:efficientnet_lite0@128", "pypi:efficientnet_lite0@96",
                             "student:small_cnn@32"]
    assert photo_sets[2:4] == [["pypi:efficientnet_lite0@128", "pypi:efficientnet_lite0@96", "student:small_cnn@32"],
                               ["pypi:efficientnet_lite0@96", "student:small_cnn@32"]]
    assert photo_sets[4:] == sets[4:]


def test_where_ties_go_to_the_larger_input_the_smaller_inputs_leave_the_search_first():
    """Validation too small to rank: a tie goes to the pretrained student with the larger input, so the short
    budget's search keeps the larger inputs and gives up the smaller ones first, then tries each smaller one alone
    beside the student from random weights before the fastest pretrained one alone."""
    speeds = {"pypi:efficientnet_lite0@160": 47.0, "pypi:efficientnet_lite0@128": 72.0,
              "pypi:efficientnet_lite0@96": 126.0, "student:small_cnn@64": 800.0, "student:small_cnn@32": 900.0}
    lite = [f"pypi:efficientnet_lite0@{s}" for s in (160, 128, 96)]
    sets = ladder_sets(speeds, photos=True, larger_first=True)
    assert sets[:4] == [[*lite, "student:small_cnn@64", "student:small_cnn@32"],
                        [*lite, "student:small_cnn@32"],  # from random weights first, the slower one
                        [lite[0], lite[1], "student:small_cnn@32"],  # then the smallest input, not the slowest
                        [lite[0], "student:small_cnn@32"]]
    assert sets[4:] == [[lite[1], "student:small_cnn@32"], [lite[2], "student:small_cnn@32"], [lite[2]],
                        ["student:small_cnn@32"]]
    # every set holds the largest inputs that fit in it: a ladder that fits the first of them trains no smaller input
    # where a larger one could have had its place
    for s in sets:
        kept = sorted(Candidate.parse(c).size for c in s if c.startswith("pypi:"))
        assert len(kept) <= 1 or kept == sorted(Candidate.parse(c).size for c in lite)[-len(kept):]
    assert ladder_sets(speeds, photos=True, larger_first=False)[2] == [lite[1], lite[2], "student:small_cnn@32"]
    # a hedge well inside the latency budget stays to the last beside the largest input, which sits at its edge
    hedged = ladder_sets(speeds, photos=True, larger_first=True, hedge=lite[2])
    assert hedged[2:5] == [[lite[0], lite[2], "student:small_cnn@32"],  # 128 px leaves, not the 96 px hedge
                           [lite[2], "student:small_cnn@32"],  # then the largest: the hedge is the last one left
                           [lite[2]]]
    # screened over the budget (kept for a noisy screen's sake): it leaves before any input within the budget
    assert ladder_sets(speeds, photos=True, larger_first=True, over=frozenset({lite[0]}))[2] == [
        lite[1], lite[2], "student:small_cnn@32"]


def test_the_hedge_is_the_largest_pretrained_input_well_inside_the_budget_and_goes_on_to_the_finalists():
    def measured(name: str, ms: float) -> dict:
        return {"candidate": name, "fp32": {"p50_ms": 2 * ms}, "int8": {"p50_ms": ms}}

    kept = [measured("pypi:efficientnet_lite0@160", 1.49), measured("pypi:efficientnet_lite0@144", 1.50),
            measured("pypi:efficientnet_lite0@128", 1.07), measured("pypi:efficientnet_lite0@112", 0.94),
            measured("student:small_cnn@32", 0.16)]
    assert latency_hedge(kept, 1.5) == "pypi:efficientnet_lite0@128"  # 144 px is within 10% of the budget
    assert latency_hedge(kept, 2.0) is None  # the largest input is well inside: no hedge needed
    assert latency_hedge(kept, None) is None and latency_hedge(kept[-1:], 1.5) is None
    assert latency_hedge(kept, 1.05) == "pypi:efficientnet_lite0@112" and latency_hedge(kept, 1.0) is None
    ranked = [{"candidate": c} for c in ("a@160", "a@144", "a@128", "a@112")]
    assert with_hedge(ranked, 2, "a@128") == [ranked[0], ranked[2]]  # the leader and the hedge go on
    assert with_hedge(ranked, 2, "a@144") == ranked[:2] and with_hedge(ranked, 2, None) == ranked[:2]
    assert with_hedge(ranked, 1, "a@128") == ranked[:1]  # one finalist: the leader alone
    assert [t["candidate"] for t in last_rung_best([{**t, "rung": 1, "val_acc": 0.8, "val_loss": 0.5}
                                                    for t in ranked], 2, 0.2, "a@112")] == ["a@160", "a@112"]


def test_candidates_the_ladder_leaves_out_are_dropped_with_the_reason(capsys):
    kept = [{"candidate": "pypi:efficientnet_lite0@224"}, {"candidate": "student:small_cnn@32"}]
    rungs = [{"candidates": 1, "epochs": 5, "seconds": 10.0, "trained": ["student:small_cnn@32"]}]
    speeds = {"pypi:efficientnet_lite0@224": 20.0, "student:small_cnn@32": 800.0}
    assert size_candidates(kept, rungs, speeds, 100, 60.0, AutoConfig()) == rungs
    assert [f["epochs"] for f in kept] == [0, 5]
    assert kept[0]["why"].startswith("left out of the search: the budget fits 1 of the 2 candidates at 3 epochs")
    assert "at 3 epochs or more each (the slowest left out): pypi:efficientnet_lite0@224\n" in capsys.readouterr().out
    kept = [{"candidate": c} for c in ("pypi:efficientnet_lite0@224", "pypi:efficientnet_lite0@96",
                                       "student:small_cnn@32")]
    rungs = [{"candidates": 2, "epochs": 5, "seconds": 10.0,
              "trained": ["pypi:efficientnet_lite0@96", "student:small_cnn@32"]}]
    size_candidates(kept, rungs, {**speeds, "pypi:efficientnet_lite0@96": 100.0}, 100, 60.0, AutoConfig())
    assert ("(the slowest left out, one of each start, pretrained or random weights, kept): "
            "pypi:efficientnet_lite0@224\n") in capsys.readouterr().out
    rungs[0]["trained"] = ["pypi:efficientnet_lite0@224", "student:small_cnn@32"]
    size_candidates(kept, rungs, {**speeds, "pypi:efficientnet_lite0@96": 100.0}, 100, 60.0, AutoConfig(), True, True)
    assert ("(those from random weights first, then the pretrained ones screened over the latency budget, then "
            "those with the smallest inputs (validation ties go to the larger) left out, one of each start, pretrained "
            "or random weights, kept): "
            "pypi:efficientnet_lite0@96\n") in capsys.readouterr().out


def test_later_rungs_are_resized_to_the_time_left_at_the_loops_measured_speed():
    # the next rung's 3 survivors take 2, 4 and 6 s per epoch; then the final 2 (priced as the slowest: 6 and 4 s);
    # each stage costs 5 s besides its epochs
    per_epoch = {"a": 2.0, "b": 4.0, "c": 6.0}
    epochs = respace_rungs(per_epoch, [3, 2], seconds=300.0, overhead=5.0, hi=30)
    cost = lambda m: m * 12.0 + 3 * 5.0 + 2 * m * 10.0 + 2 * 5.0  # noqa: E731
    assert epochs == [8, 16] and cost(8) <= 300 < cost(9)  # the halving shape kept, the time spent
    # a faster loop than planned buys more epochs, up to a survivor's cap; no time for one epoch ends the search
    assert respace_rungs(per_epoch, [3, 2], seconds=10_000.0, overhead=5.0, hi=12) == [4, 8]
    assert respace_rungs(per_epoch, [3, 2], seconds=40.0, overhead=5.0, hi=30) == []


def test_time_the_planned_rungs_leave_goes_to_the_finalists_once(tmp_path):
    from fm2edge.automate.config import AutoJob

    job = AutoJob(auto=AutoConfig(minutes=10, max_epochs=60))
    fast = {"fp32": {"p50_ms": 1.0}, "params": 1_000_000}
    # the plan reserved 300 s for the costliest candidate's exports; the finalist is a fast one: its own are reserved
    plan = {"planning_seconds": 60.0, "export_seconds": 300.0, "held_out": {"images": 0, "seconds": 0.0},
            "train_images": 100, "val_images": 20, "finalists": 1, "teacher_option": {"why": "over the budget"},
            "test_read_seconds": 0.0}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    alive = [{"candidate": "a", "epoch_seconds": 10.0, "overhead_seconds": 5.0, "trained_epochs": 6, **fast},
             {"candidate": "b", "epoch_seconds": 5.0, "overhead_seconds": 9.0, "trained_epochs": 6, **fast}]
    reserve = export_seconds(fast, 100, 20, agreement=100)  # 100 training images to measure int8's fidelity on
    assert 6 < reserve < 20
    # 600 s less 3% for unrecorded work, planning and those exports: 507 s; each epoch of both 15 s, 5 s per stage
    # each: 33 epochs (14 with the plan's 300 s)
    assert extension(job, tmp_path, plan, alive) == 33
    saved = json.loads((tmp_path / "plan.json").read_text())["respaced"]["extension"]
    assert saved["epochs"] == 33 and saved["seconds_left"] == pytest.approx(582 - 60 - reserve)
    alive[0]["trained_epochs"] = 99  # written once: a resumed run follows it whatever has changed since
    assert extension(job, tmp_path, plan, alive) == 33
    tight = {**{k: v for k, v in plan.items() if k != "respaced"}, "planning_seconds": 550.0}
    (tmp_path / "plan.json").write_text(json.dumps(tight))
    assert extension(job, tmp_path, tight, alive[1:]) == 0  # 17 s left: one epoch, not worth a further cycle
    # the test read's reserve is the finalists' no more: 150 s of it leave 10 epochs fewer
    read = {**{k: v for k, v in plan.items() if k != "respaced"}, "test_read_seconds": 150.0}
    (tmp_path / "plan.json").write_text(json.dumps(read))
    alive[0]["trained_epochs"] = 6
    assert extension(job, tmp_path, read, alive) == 23
    saved = json.loads((tmp_path / "plan.json").read_text())["respaced"]["extension"]
    assert saved["seconds_left"] == pytest.approx(582 - 60 - reserve - 150)


def test_the_test_read_is_reserved_at_the_teachers_speed_and_the_slowest_graph_that_may_be_chosen():
    """The teacher reads the test split at its measured speed, the chosen graph at its batch-1 latency: reserved for
    the slowest graph that can be chosen (the teacher's own, where it is a candidate)."""
    teacher = {"images_per_s": 200.0}
    options = [{"fp32": {"p50_ms": 1.0}}, {"fp32": {"p50_ms": 4.0}}]
    assert read_once_seconds(2000, teacher, options) == pytest.approx(2000 / 200 + 2000 * 4e-3)
    assert read_once_seconds(2000, teacher, []) == pytest.approx(10.0)
    assert read_once_seconds(0, teacher, options) == 0.0


def test_the_time_spent_counts_the_teachers_labels_after_its_export(tmp_path):
    """The teacher is exported before the students train; its graphs' labels for the fidelity and held-out images
    take time no stage records, which the later rungs must not spend again."""
    assert spent_before(tmp_path) == 0.0  # nothing planned yet
    (tmp_path / "plan.json").write_text(json.dumps({"planning_seconds": 60.0}))
    assert spent_before(tmp_path) == 60.0
    (tmp_path / "plan.json").write_text(json.dumps({"planning_seconds": 60.0,
                                                    "teacher_exported": {"unrecorded_seconds": 12.5}}))
    assert spent_before(tmp_path) == 72.5


def test_the_exports_reserved_are_the_costliest_finalists_and_the_teacher_where_it_fits():
    plan = {"train_images": 800, "val_images": 100, "held_out": {"images": 0}, "finalists": 2,
            "teacher_option": {"why": "over the budget", "fp32": {"p50_ms": 9.0}, "params": 5_000_000}}
    times = [{"fp32": {"p50_ms": ms}, "params": 1_000_000} for ms in (0.2, 3.0, 1.0)]
    costs = [export_seconds(f, 500, 100) for f in times]  # calibration: at most 500 training images
    assert export_reserve(plan, times) == pytest.approx(costs[1] + costs[2])
    assert export_reserve({**plan, "finalists": 1}, times) == pytest.approx(costs[1])
    # a teacher within the budget is exported beside the finalists: its export is reserved too
    teacher = {"fp32": {"p50_ms": 9.0}, "params": 5_000_000}
    fits = {**plan, "finalists": 1, "teacher_option": teacher}
    assert export_reserve(fits, times) == pytest.approx(costs[1] + export_seconds(teacher, 500, 100))
    # once exported (before the students train) its time is spent, not reserved
    assert export_reserve({**fits, "teacher_exported": {"unrecorded_seconds": 0.4}}, times) == pytest.approx(costs[1])
    # held-out images are labelled by every graph: they cost each finalist more
    held = {**plan, "held_out": {"images": 1000}}
    assert export_reserve(held, times) > export_reserve(plan, times)
    # int8's fidelity is measured on up to 500 training (then unlabelled) images: a small folder's fewer cost less
    small = {**plan, "train_images": 80}
    assert export_reserve(small, times) == pytest.approx(sum(export_seconds(f, 80, 100, agreement=80)
                                                             for f in times[1:]))
    assert export_reserve({**small, "unlabeled_images": 2000}, times) == pytest.approx(
        sum(export_seconds(f, 80, 100, agreement=500) for f in times[1:]))
    # no percentile stage is reserved where the layout it would calibrate screened over the latency budget
    screened = [{**f, "int8": {"recipe": "first-last-fp32", "layouts_ms": {"first-last-fp32": 0.8 * ms}}}
                for f, ms in zip(times, (0.2, 3.0, 1.0), strict=True)]
    assert export_reserve(plan, screened, latency_ms=1.0) < export_reserve(plan, screened) == pytest.approx(
        export_reserve(plan, times))
    assert export_seconds(screened[1], 500, 100, latency_ms=1.0) < export_seconds(screened[1], 500, 100)
    assert export_seconds(screened[2], 500, 100, latency_ms=1.0) == pytest.approx(export_seconds(screened[2], 500, 100))


def test_the_teachers_time_buys_distinct_images_before_views():
    # all 1,000 unlabelled images fit at the most views
    assert views_and_unlabeled(200, 1000, 4, 10_000) == (4, 1000)
    # not at 4 views: fewer views of every image (3 x 1,200 = 3,600 <= 4,000)
    assert views_and_unlabeled(200, 1000, 4, 4000) == (3, 1000)
    # not even one view of each: one view, and as many unlabelled images as are afforded
    assert views_and_unlabeled(200, 8000, 4, 5000) == (1, 4800)
    # too few to be worth their passes, or none at all: the labelled images alone, at the most views
    assert views_and_unlabeled(200, 8000, 4, 250) == (4, 0)
    assert views_and_unlabeled(200, 0, 4, 10_000) == (4, 0)


def test_the_chosen_precision_is_explained_by_what_the_other_one_measured():
    """fp32 chosen where int8 scored the same and ran slower on an AVX2-only CPU (the pets run: 2.09 against 2.39
    ms) says so, and where int8 pays; int8 chosen for its speed gives both figures; an int8 graph over the budget is
    named as the reason; a model with one precision has nothing to explain."""
    fp32 = {"candidate": "a", "precision": "fp32", "val_acc": 0.87, "p50_ms": 2.09, "mb": 13.5}
    int8 = {"candidate": "a", "precision": "int8", "int8_recipe": "minmax", "val_acc": 0.87, "p50_ms": 2.39,
            "mb": 3.8, "agreement_with_fp32": 1.0}
    text = precision_text(fp32, [{"candidate": "a", "options": [fp32, int8]}], 2.6, None, "x86_64, AVX2, 2 threads")
    assert text.startswith("fp32 rather than int8 (minmax): validation 87.00% against 87.00%; 2.09 ms against 2.39 ms")
    assert "lacks VNNI and AMX int8 instructions" in text
    amx = precision_text(fp32, [{"candidate": "a", "options": [fp32, int8]}], 2.6, None, "x86_64, AVX2, AMX")
    assert "VNNI" not in amx  # there int8's slowness is not the CPU's
    fast = {**int8, "p50_ms": 1.0}
    text = precision_text(fast, [{"candidate": "a", "options": [fp32, fast]}], 2.6, None, "x86_64, AVX2")
    assert text.startswith("int8 rather than fp32: validation 87.00% against 87.00%; 1.00 ms against 2.09 ms, "
                           "3.8 MB against 13.5 MB; the int8 graph (minmax) answers as the fp32 graph on 100.0%")
    assert "VNNI" not in text
    # validation too small to rank (13 images): the int8 graph's higher figure there is not what chose, fidelity is
    luckier = {**int8, "val_acc": 0.9231, "agreement_with_fp32": 0.923}
    text = precision_text({**fp32, "val_acc": 0.8462}, [{"candidate": "a", "options": [fp32, luckier]}], 5.0, None,
                          "", noisy=True)
    assert text.startswith("fp32 rather than int8 (minmax): validation 84.62% against 92.31%, too few images to tell "
                           "one model's graphs apart, so the graph most faithful to the model is kept; ")
    assert "answers as the fp32 graph on 92.3%" in text
    # held-out unlabelled images: their agreement with the teacher chose
    agreed = [{**fp32, "teacher_agreement": 0.95}, {**fast, "teacher_agreement": 0.96}]
    text = precision_text(agreed[1], [{"candidate": "a", "options": agreed}], 5.0, None, "", noisy=True)
    assert text.startswith("int8 rather than fp32: agreement with the teacher on the held-out images 96.00% against "
                           "95.00%; 1.00 ms")
    slow = {**fp32, "p50_ms": 3.0}
    assert precision_text(fast, [{"candidate": "a", "options": [slow, fast]}], 2.6, None, "") == \
        "int8: its fp32 graph is over the budget (3.00 ms, 13.5 MB)"
    assert precision_text(fp32, [{"candidate": "a", "options": [fp32]}], None, None, "") is None


def test_with_balanced_accuracy_the_choice_and_the_ranking_read_it():
    """--auto.metric balanced_accuracy: each entry's ``val_score`` (its balanced accuracy) chooses and ranks, where
    plain accuracy would have picked the model that favours the large class; an entry without the figure (a stage
    cached before it was recorded) counts its accuracy."""
    majority = {"candidate": "a", "precision": "fp32", "val_acc": 0.94, "val_score": 0.50, "p50_ms": 1.0, "mb": 1.0}
    fair = {"candidate": "b", "precision": "fp32", "val_acc": 0.90, "val_score": 0.88, "p50_ms": 1.0, "mb": 1.0}
    assert choose([{"options": [majority]}, {"options": [fair]}], None, None) == fair
    plain = [{**o, "val_score": None} for o in (majority, fair)]
    assert choose([{"options": plain[:1]}, {"options": plain[1:]}], None, None)["candidate"] == "a"
    ranked = rank([{**majority, "val_loss": 0.1}, {**fair, "val_loss": 0.2}])
    assert [t["candidate"] for t in ranked] == ["b", "a"]
    assert score({"val_acc": 0.9, "val_score": 0.7}) == 0.7 and score({"val_acc": 0.9}) == 0.9
    assert score({"val_acc": 0.9, "val_score": 0.7, "teacher_agreement": 0.95}) == 0.95
    assert val_score({"val_acc": 0.9, "val_balanced_acc": 0.7}, "balanced_accuracy") == 0.7
    assert val_score({"val_acc": 0.9, "val_balanced_acc": 0.7}, "accuracy") == 0.9


def test_the_choice_is_the_most_accurate_option_within_budget_and_ties_go_to_the_faster():
    options = [{"candidate": "a", "precision": "fp32", "val_acc": 0.9, "p50_ms": 3.0, "mb": 4.0},
               {"candidate": "a", "precision": "int8", "val_acc": 0.88, "p50_ms": 1.0, "mb": 1.0},
               {"candidate": "b", "precision": "fp32", "val_acc": 0.88, "p50_ms": 1.5, "mb": 2.0}]
    finalists = [{"options": options[:2]}, {"options": options[2:]}]
    assert choose(finalists, None, None)["precision"] == "fp32"  # no budget: the most accurate
    assert choose(finalists, 2.0, None) == options[1]  # a tie at 88%: the faster int8
    assert choose(finalists, 0.5, None) is None
    # a validation split too small to rank: one model's graphs count its fp32 accuracy, and the int8 recipe most
    # faithful to the fp32 graph (on hundreds of images) wins over one that scored higher on a dozen images
    recipes = [{"candidate": "a", "precision": "fp32", "val_acc": 0.9, "p50_ms": 3.0, "mb": 4.0},
               {"candidate": "a", "precision": "int8", "val_acc": 1.0, "p50_ms": 1.0, "mb": 1.0,
                "agreement_with_fp32": 0.91},
               {"candidate": "a", "precision": "int8", "val_acc": 0.9, "p50_ms": 1.1, "mb": 1.0,
                "agreement_with_fp32": 0.96}]
    assert choose([{"options": recipes}], 2.0, None) == recipes[1]
    assert choose([{"options": recipes}], 2.0, None, noisy=True) == recipes[2]
    assert choose([{"options": recipes}], None, None, noisy=True) == recipes[0]  # fp32 is its own graph
    # equally faithful on the training images, and validation too small to tell: the graph whose probabilities
    # stay closest to the fp32 graph's (the fp32 graph itself where it fits), not the faster
    tie = [{**recipes[0], "p50_ms": 1.9, "fp32_gap": 0.0},
           {**recipes[1], "agreement_with_fp32": 1.0, "fp32_gap": 0.04},
           {**recipes[2], "agreement_with_fp32": 1.0, "fp32_gap": 0.01}]
    assert choose([{"options": tie}], 2.0, None, noisy=True) == tie[0]
    assert choose([{"options": tie}], 1.5, None, noisy=True) == tie[2]  # fp32 over the budget: the closer int8
    assert choose([{"options": [{**o, "val_acc": 0.9} for o in tie]}], 2.0, None)["p50_ms"] == 1.0  # validation
    # ranks them (and found no loss): the faster
    # two models tied on few images: the one with the lower validation loss, though slower
    tied = [{"candidate": "small", "precision": "fp32", "val_acc": 0.95, "val_loss": 0.30, "p50_ms": 1.0, "mb": 1.0},
            {"candidate": "large", "precision": "fp32", "val_acc": 0.95, "val_loss": 0.12, "p50_ms": 1.8, "mb": 1.0}]
    assert choose([{"options": tied[:1]}, {"options": tied[1:]}], 2.0, None, noisy=True) == tied[1]
    # one model's only graph within the budget changes its predictions on 2.8% of the training images: the other
    # model's fp32 graph wins the tie on validation accuracy, whatever the first model's validation loss
    faithful = {"candidate": "a", "precision": "fp32", "val_acc": 1.0, "val_loss": 0.3, "p50_ms": 1.4, "mb": 13.5}
    models = [{"options": [faithful]},
              {"options": [{"candidate": "b", "precision": "fp32", "val_acc": 1.0, "val_loss": 0.005, "p50_ms": 1.8,
                            "mb": 13.5},
                           {"candidate": "b", "precision": "int8", "val_acc": 0.95, "val_loss": 0.005, "p50_ms": 1.5,
                            "mb": 4.0, "agreement_with_fp32": 0.972}]}]
    assert choose(models, 1.64, None, noisy=True) == faithful
    assert choose(models, 2.0, None, noisy=True)["candidate"] == "b"  # its fp32 graph fits: the lower loss
    # with images held out of training, each graph counts its agreement with the teacher there instead: a finer
    # signal than a tie on a dozen validation images, whatever the validation loss says, and int8's losses count
    agreed = [{**tied[0], "teacher_agreement": 0.95}, {**tied[1], "teacher_agreement": 0.93},
              {**tied[1], "precision": "int8", "p50_ms": 0.9, "teacher_agreement": 0.96}]
    assert choose([{"options": agreed[:1]}, {"options": agreed[1:2]}], 2.0, None, noisy=True) == agreed[0]
    assert choose([{"options": agreed[:1]}, {"options": agreed[1:2]}], 2.0, None) == agreed[1]  # validation ranks
    assert choose([{"options": agreed[:1]}, {"options": agreed[1:]}], 2.0, None, noisy=True) == agreed[2]


def test_where_no_finalist_meets_the_budget_once_exported_the_next_students_within_it_are_exported(monkeypatch):
    """Found with a 2 ms budget: the 208 and 224 px finalists screened at 2.00 and 2.14 ms timed 2.07 and 2.14 ms
    once exported, and the run stopped with no model while a 160 px student (1.33 ms) had trained."""
    from fm2edge.automate import exports

    def student(size: int, rung: int, ms: float) -> dict:
        return {"candidate": f"pypi:efficientnet_lite0@{size}", "rung": rung, "val_acc": 1.0, "val_loss": 0.1,
                "fp32": {"p50_ms": ms * 1.4, "mb": 13.5}, "int8": {"p50_ms": ms, "mb": 3.8}, "params": 1, "macs": 1}

    exported_ms = {208: 2.07, 224: 2.14, 192: 2.03, 160: 1.35, 128: 1.0}
    calls = []

    def fake_export(job, root, f, images, held=None, teacher_labels=None):
        calls.append(f["candidate"])
        size = int(f["candidate"].split("@")[1])
        return {**f, "options": [{"candidate": f["candidate"], "precision": p, "p50_ms": exported_ms[size] * k,
                                  "mb": 3.8, "val_acc": 1.0} for p, k in (("fp32", 1.4), ("int8", 1.0))]}

    monkeypatch.setattr(exports, "exported", fake_export)
    job = AutoJob(auto=AutoConfig(latency_ms=2.0))
    trained = [student(208, 2, 2.0), student(224, 2, 2.14), student(192, 1, 1.9), student(160, 1, 1.33),
               student(128, 0, 1.0)]
    finalists = [fake_export(job, None, t, None) for t in trained[:2]]
    calls.clear()
    out = with_fallbacks(job, None, trained, finalists, None, within=0.3)
    # in rank order (the larger input first among the tied): 192 px screened within but exported over, then 160
    assert calls == ["pypi:efficientnet_lite0@192", "pypi:efficientnet_lite0@160"]
    assert choose(out, 2.0, None, noisy=True, within=0.3)["candidate"] == "pypi:efficientnet_lite0@160"
    teacher = {"candidate": "teacher", "params": 1, "macs": 1, "fp32": {"p50_ms": 3.0}, "int8": {"p50_ms": 2.0},
               "val_acc": 1.0}
    rows = {r["candidate"]: r["status"] for r in leaderboard(
        {"candidates": trained, "dropped": [], "teacher_option": teacher}, trained, out)}
    assert rows["pypi:efficientnet_lite0@160"].endswith("exported because no finalist's graph met the budget")
    assert "exported because" not in rows["pypi:efficientnet_lite0@208"]
    calls.clear()
    assert with_fallbacks(job, None, trained, out, None, within=0.3) == out and calls == []  # one already meets it
    # a student screened over the budget is never exported as a fallback
    assert with_fallbacks(job, None, trained[:2] + [student(176, 1, 2.2)], finalists, None) == finalists


def test_a_run_that_ends_early_because_its_epochs_are_capped_says_where_the_rest_could_go():
    note = early_finish(2.9, 30, 30, 30, 0)
    assert "2.9 of 30 minutes" in note and "--auto.max_epochs (30 epochs)" in note
    assert "--auto.unlabeled_source" in note
    assert "--auto.max_epochs above 30" in early_finish(2.9, 30, 30, 30, 5000)
    assert early_finish(25.0, 30, 30, 30, 0) is None  # most of the budget used
    # the offline default on digits: 4.9 of 8 minutes, its one finalist at --auto.max_epochs
    assert early_finish(4.9, 8, 30, 30, 0).startswith("finished in 4.9 of 8 minutes")
    assert early_finish(2.9, 30, 12, 30, 0) is None  # not capped: something else ended it


def test_a_budget_that_buys_no_student_an_epoch_says_where_the_minutes_went_and_what_would_do(tmp_path):
    """Found on a 30-photo folder with --auto.minutes 3 on a busy machine: measuring and the teacher took 2.2 of the 3
    minutes, no candidate got an epoch, and the run stopped on a Python error."""
    plan = {"train_images": 10, "unlabeled_images": 0, "planning_seconds": 120.0, "teaching_seconds": 30.0,
            "export_seconds": 45.0, "test_read_seconds": 20.0, "selection": {"noisy": True},
            "candidates": [{"candidate": "a", "epochs": 0, "train_images_per_s": 100.0},
                           {"candidate": "b", "epochs": 0, "train_images_per_s": 50.0}]}
    assert train_students(AutoJob(auto=AutoConfig(minutes=3)), tmp_path, plan) == []
    text = too_short(plan, AutoConfig(minutes=3, min_epochs=3))
    assert text.startswith("the 3-minute budget leaves no time to train a student")
    assert "took 120 s" in text and "outputs need 30 s" in text and "exports 45 s" in text
    assert "test read 20 s" in text
    # (120 + 30 + 45 + 20 + 3 epochs of 10 images at 80 img/s) x 1.25 = 4.49 minutes
    assert text.endswith("give --auto.minutes 5 or more")


def test_the_gap_to_the_teacher_reads_right_whichever_side_the_student_is_on():
    assert gap_text(1.3) == "1.30 points paid for the speed-up"
    assert gap_text(0.0, [0.0, 0.0], itself=True) == "the teacher itself: no speed-up, nothing paid"
    assert gap_text(-7.78) == "7.78 points above the teacher: the speed-up cost nothing here"
    # with its interval (teacher less chosen), turned to read the same way as the sentence
    assert gap_text(1.3, [0.2, 2.4]) == "1.30 points paid for the speed-up (95% interval +0.20 to +2.40)"
    assert gap_text(-1.0, [-3.0, 0.5]) == ("1.00 points above the teacher: the speed-up cost nothing here "
                                           "(95% interval -0.50 to +3.00; within the test images' noise)")
    assert gap_text(0.0, [0.0, 0.0]) == "0.00 points paid for the speed-up (right and wrong on the same test images)"
    assert gap_text(-25.0, [-75.0, 0.0]).endswith("(95% interval +0.00 to +75.00; within the test images' noise)")


def test_the_test_split_compares_the_chosen_model_and_the_teacher_image_by_image():
    """Both accuracies, the gap with a paired interval, balanced accuracy, agreement and each class's accuracy; a
    model that always answers the large class is found out by balanced accuracy."""
    labels = np.array([0] * 90 + [1] * 10)
    always_zero = np.zeros(100, dtype=int)
    teacher = labels.copy()
    teacher[:5] = 1  # five mistakes on the large class
    t = chosen_against_teacher(always_zero, teacher, labels, ["ok", "defect", "unused"])
    assert (t["chosen_test_acc"], t["teacher_test_acc"], t["test_images"]) == (0.90, 0.95, 100)
    assert t["gap_points"] == pytest.approx(5.0) and t["gap_interval_points"][0] <= 5.0 <= t["gap_interval_points"][1]
    assert t["chosen_balanced_acc"] == pytest.approx(0.5) and t["teacher_balanced_acc"] == pytest.approx(
        (85 / 90 + 1) / 2)
    assert t["class_imbalance"] == 9.0 and t["agreement"] == pytest.approx(0.85)
    assert t["per_class"] == [{"class": "ok", "images": 90, "chosen_acc": 1.0, "teacher_acc": pytest.approx(85 / 90)},
                              {"class": "defect", "images": 10, "chosen_acc": 0.0, "teacher_acc": 1.0}]
    json.dumps(t)  # JSON-ready
    same = chosen_against_teacher(labels, labels, labels, ["ok", "defect"])
    assert same["gap_points"] == 0 and same["gap_interval_points"] == [0.0, 0.0]
    # the verdict names who is ahead (the gap is the teacher's lead, whose interval's own word would be "gain")
    ahead = np.r_[np.ones(60, int), np.zeros(40, int)]
    assert chosen_against_teacher(ahead * 0, ahead, ahead, ["a", "b"])["gap_verdict"] == "teacher better"
    assert chosen_against_teacher(ahead, ahead * 0, ahead, ["a", "b"])["gap_verdict"] == "chosen model better"
    assert same["gap_verdict"] == "no difference measured"


def test_an_earlier_choice_counts_where_it_read_the_same_test_split(tmp_path, image_folder, monkeypatch):
    # a rerun (overwritten or not) keeps the earlier test read when it reads the same test split: the split's
    # fingerprint follows the images, not the cache folder or how the source is spelled; another source under the
    # same --run.name, or another test_fraction, read another split
    from fm2edge.data import load_data

    def test_split(**data) -> str:
        return load_data(DataConfig(**data))[2].fingerprint

    monkeypatch.chdir(image_folder.parent)
    mine = test_split(source=str(image_folder) + "/")
    assert test_split(source=f"./{image_folder.name}", cache_dir=str(tmp_path / "b")) == mine
    copy = tmp_path / "copy"
    shutil.copytree(image_folder, copy)
    assert test_split(source=str(copy)) == mine
    assert test_split(source=str(image_folder), test_fraction=0.3) != mine
    assert test_split(source="digits") != mine
    chosen = {"candidate": "y", "precision": "fp32"}
    earlier = {"chosen": {"candidate": "x", "precision": "int8"}, "test": {"chosen_test_acc": 0.9}}
    read = [{"candidate": "x", "precision": "int8", "test_acc": 0.9}]
    assert earlier_test_reads(None, chosen, mine) == []
    assert earlier_test_reads(earlier, chosen, mine) == read  # written before the split was recorded
    assert earlier_test_reads({**earlier, "test_split": mine}, chosen, mine) == read
    assert earlier_test_reads({**earlier, "test_split": "another"}, chosen, mine) == []


def test_the_probability_gap_is_the_mean_total_variation_distance():
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    assert probability_gap(p, p) == 0.0
    assert probability_gap(p, np.array([[0.7, 0.3], [0.5, 0.5]])) == pytest.approx(0.1)
    assert probability_gap(np.eye(3), np.eye(3)[::-1]) == pytest.approx(2 / 3)


def test_candidates_rank_by_agreement_with_the_teacher_where_validation_cannot_rank_them():
    a = {"candidate": "a", "val_acc": 1.0, "val_loss": 0.1, "teacher_agreement": 0.93}
    b = {"candidate": "b", "val_acc": 0.95, "val_loss": 0.3, "teacher_agreement": 0.96}
    assert [t["candidate"] for t in rank([a, b])] == ["b", "a"]
    no_held = [{k: v for k, v in t.items() if k != "teacher_agreement"} for t in (a, b)]
    assert [t["candidate"] for t in rank(no_held)] == ["a", "b"]
    # held out only when validation cannot rank, and only a share of a pool large enough to spare it
    assert held_out_count(8000, noisy=False) == 0
    assert held_out_count(8000, noisy=True) == HELD_OUT_MOST
    assert held_out_count(2000, noisy=True) == 400
    assert held_out_count(HELD_OUT_FEWEST * 5 - 5, noisy=True) == 0


def test_where_nothing_can_rank_them_a_tie_on_few_validation_images_goes_to_the_pretrained_students():
    scratch = {"candidate": "student:small_cnn@64", "val_acc": 1.0, "val_loss": 0.2}
    lite = {"candidate": "pypi:efficientnet_lite0@112", "val_acc": 5 / 6, "val_loss": 0.3}
    far = {"candidate": "pypi:efficientnet_lite0@96", "val_acc": 0.5, "val_loss": 0.1}
    names = lambda ranked: [t["candidate"] for t in ranked]  # noqa: E731
    assert names(rank([scratch, far, lite])) == ["student:small_cnn@64", "pypi:efficientnet_lite0@112",
                                                 "pypi:efficientnet_lite0@96"]
    # six images: +-31 points; 6 of 6 against 5 of 6 is a tie, 3 of 6 is not
    assert names(rank([scratch, far, lite], within=0.31)) == ["pypi:efficientnet_lite0@112", "student:small_cnn@64",
                                                              "pypi:efficientnet_lite0@96"]
    assert names(rank([scratch, lite], within=0.1)) == ["student:small_cnn@64", "pypi:efficientnet_lite0@112"]
    options = [{**t, "precision": "fp32", "p50_ms": 1.0, "mb": 1.0} for t in (scratch, lite)]
    finalists = [{"candidate": o["candidate"], "options": [o]} for o in options]
    assert choose(finalists, 2.0, None, noisy=True) == options[0]
    assert choose(finalists, 2.0, None, noisy=True, within=0.31) == options[1]
    # pretrained graphs that score the same: the larger input, not the lower loss of a few validation images
    small = {"candidate": "pypi:efficientnet_lite0@112", "precision": "fp32", "val_acc": 1.0, "val_loss": 0.01,
             "p50_ms": 1.14, "mb": 13.5}
    large = {"candidate": "pypi:efficientnet_lite0@128", "precision": "int8", "val_acc": 1.0, "val_loss": 0.05,
             "p50_ms": 0.97, "mb": 3.8, "agreement_with_fp32": 1.0}
    sizes = [{"options": [small]}, {"options": [{**large, "precision": "fp32", "p50_ms": 1.3}, large]}]
    assert choose(sizes, 1.16, None, noisy=True, within=0.3) == large
    assert choose(sizes, 1.16, None, noisy=True) == small  # no tie width: the loss orders them
    unfaithful = [{"options": [small]}, {"options": [sizes[1]["options"][0], {**large, "agreement_with_fp32": 0.98}]}]
    assert choose(unfaithful, 1.16, None, noisy=True, within=0.3) == small  # it loses 2 of 100: ordered by score
    # a tie on 46 validation images: the larger input's faithful graph, one image lower, before the smaller's
    lower = {**large, "candidate": "pypi:efficientnet_lite0@160", "val_acc": 40 / 46, "agreement_with_fp32": 0.998}
    higher = {**large, "val_acc": 41 / 46}

    def models(a: dict, b: dict) -> list[dict]:  # each with its fp32 graph, over the budget
        return [{"options": [{**o, "precision": "fp32", "p50_ms": 2.0, "agreement_with_fp32": 1.0}, o]} for o in (a, b)]

    assert choose(models(higher, lower), 1.5, None, noisy=True, within=0.14) == lower
    assert choose(models(higher, lower), 1.5, None, noisy=True) == higher  # no tie width: the scores rank
    assert choose(models(higher, {**lower, "agreement_with_fp32": 0.97}), 1.5, None, noisy=True,
                  within=0.14) == higher
    # the leaderboard shows a model's int8 graph within the budget before a more faithful one over it
    over = {**large, "int8_recipe": "percentile", "p50_ms": 1.29, "fp32_gap": 0.0}
    within_budget = {**large, "int8_recipe": "first-last-fp32", "fp32_gap": 0.01}
    teacher = {"candidate": "teacher", "params": 1, "macs": 1, "fp32": {"p50_ms": 3.0}, "int8": {"p50_ms": 2.0},
               "val_acc": 1.0}
    student = {"candidate": large["candidate"], "params": 1, "macs": 1, "fp32": {"p50_ms": 1.3},
               "int8": {"p50_ms": 0.97}}
    plan = {"settings": {"auto": {"latency_ms": 1.16, "max_mb": None}}, "candidates": [student], "dropped": [],
            "teacher_option": teacher}
    row = next(r for r in leaderboard(plan, [], [{"options": [over, within_budget]}])
               if r["candidate"] == large["candidate"])
    assert row["int8_recipe"] == "first-last-fp32" and row["int8_ms"] == 0.97
    assert "not a choice" not in row["status"]
    # a finalist whose every exported graph timed over the budget says so (its validation may lead the board)
    row = next(r for r in leaderboard(plan, [], [{"options": [over, {**small, "candidate": large["candidate"],
                                                                      "p50_ms": 1.3}]}])
               if r["candidate"] == large["candidate"])
    assert row["status"].endswith("not a choice: over the budget as exported (fp32 1.30 ms, 13.5 MB, int8 1.29 ms, "
                                  "3.8 MB)"), row["status"]
    # its recipes as faithful as each other, all over the budget: the row quotes the fastest (the closest to it)
    faster = {**over, "int8_recipe": "first-last-fp32", "p50_ms": 1.21}
    row = next(r for r in leaderboard(plan, [], [{"options": [over, faster]}]) if r["candidate"] == large["candidate"])
    assert row["int8_recipe"] == "first-last-fp32" and "int8 1.21 ms" in row["status"], row["status"]
    # the width applies only where validation is too small and no held-out images rank the candidates instead
    plan = {"selection": {"noisy": True, "half_width": 0.31}, "held_out": {"images": 0}}
    assert tie_width(plan) == 0.31
    assert tie_width({**plan, "held_out": {"images": 400}}) is None
    assert tie_width({**plan, "selection": {"noisy": False, "half_width": 0.05}}) is None


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--data.source", "digits", "--model.name", "student:small_cnn", "--train.epochs", "4",
                 "--train.lr", "3e-3", "--train.device", "cpu", "--run.root", str(root), "--run.name", "t"]) == 0
    return root / "t"


def auto_argv(root, teacher, *extra):
    return ["auto", "--data.source", "digits", "--auto.teachers", f"[{teacher}]", "--auto.students",
            "[student:small_cnn@16, student:small_cnn@32]", "--auto.views", "2", "--auto.minutes", "6",
            "--auto.latency_ms", "50", "--auto.min_epochs", "1", "--auto.max_epochs", "3", "--auto.device", "cpu",
            "--auto.finalists", "1",
            "--run.root", str(root),
            "--run.name", "a", *extra]


def test_auto_on_digits_chooses_on_validation_within_budget_and_reads_test_once(tmp_path, teacher, capsys):
    import fm2edge

    # a second teacher from the hub, not in the (offline) cache: left out with the reason, the run goes on
    argv = auto_argv(tmp_path, f"{teacher}, hf:nobody/not-in-any-cache")
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    result = json.loads((run / "auto.json").read_text())
    assert result["teachers_left_out"] == [{"teacher": "hf:nobody/not-in-any-cache", "why": "HF_HUB_OFFLINE is set "
                                            "and it is not in the local Hugging Face cache"}]
    assert "hf:nobody/not-in-any-cache left out: HF_HUB_OFFLINE is set" in out
    assert [t["teacher"] for t in result["teachers"]] == [str(teacher)]
    chosen = result["chosen"]
    assert chosen["p50_ms"] <= 50 and chosen["precision"] in ("fp32", "int8")
    # the choice is the most accurate exported option on validation
    rows = list(csv.DictReader((run / "leaderboard.csv").open()))
    assert {r["candidate"] for r in rows} == {"student:small_cnn@16", "student:small_cnn@32",
                                              "teacher student:small_cnn@32"}
    scored = [float(r[f"val_acc_onnx_{p}"]) for r in rows for p in ("fp32", "int8") if r[f"val_acc_onnx_{p}"]]
    assert chosen["val_acc"] == max(scored)
    # the teacher fits the 50 ms budget: it is a candidate as it is (exported, judged on validation, not retrained)
    teacher_row = next(r for r in rows if r["candidate"].startswith("teacher "))
    assert teacher_row["status"] == "the teacher: screened within the budget, not retrained"
    assert teacher_row["epochs"] == ""
    assert teacher_row["val_acc_onnx_fp32"] and (run / "export-teacher" / "export.json").exists()
    rows = [r for r in rows if r is not teacher_row]
    assert 0 <= result["test"]["chosen_test_acc"] <= 1 and result["test"]["test_images"] == 450
    # the plan fits the budget: measuring and probing, the teacher's outputs, every student's planned epochs and
    # the finalists' exports (how long they then take is the machine's: benchmarks time it, tests do not)
    plan = json.loads((run / "plan.json").read_text())
    planned = (plan["planning_seconds"] + plan["teaching_seconds"] + plan["export_seconds"]
               + plan["test_read_seconds"] + sum(r["seconds"] for r in plan["rungs"]))
    assert planned <= 6 * 60 and result["minutes"] > 0
    # successive halving: both candidates for one epoch, the better on validation two more from its weights
    assert [(r["candidates"], r["epochs"]) for r in plan["rungs"]] == [(2, 1), (1, 2)]
    by_rung = {r["candidate"]: (int(r["rung"]), int(r["epochs"])) for r in rows}
    assert sorted(by_rung.values()) == [(0, 1), (1, 3)]
    # the epochs behind the kept weights: each stage's selected epoch (0: the weights it started from), added up
    for r in rows:
        stages = [f"student-small_cnn-{r['candidate'].split('@')[1]}"] + (
            [f"student-small_cnn-{r['candidate'].split('@')[1]}-rung1"] if r["rung"] == "1" else [])
        kept = sum(json.loads((run / s / "metrics.json").read_text())["selected"]["epoch"] for s in stages)
        assert int(r["kept_epochs"]) == kept <= int(r["epochs"])
    winner = next(c for c, (rung, _) in by_rung.items() if rung == 1)
    first = {c: json.loads((run / f"student-small_cnn-{c.split('@')[1]}" / "metrics.json").read_text())["val_acc"]
             for c in by_rung}
    assert first[winner] == max(first.values()) and chosen["candidate"] in (winner, teacher_row["candidate"])
    test = result["test"]
    assert "test (read once)" in out and gap_text(test["gap_points"], test["gap_interval_points"]) in out
    assert f"next: fm2edge predict {run / 'best'} PHOTOS" in out
    # why fp32 or int8: said beside the choice, kept in auto.json and shown in the report
    assert result["precision_why"].startswith(chosen["precision"]) and f"precision: {result['precision_why']}" in out
    assert 'id="auto-precision"' in (run / "report.html").read_text()
    # the test split compared image by image: the gap's interval contains the gap, each class is accounted for
    low, high = test["gap_interval_points"]
    assert low <= test["gap_points"] <= high and 0 <= test["agreement"] <= 1
    # the finalist starts from random weights: no seeds of it are trained to be averaged (no shared basin)
    assert not list(run.glob("seed*")) and not list(run.glob("soup-*")) and "seeds" not in plan.get("respaced", {})
    assert sum(c["images"] for c in test["per_class"]) == 450
    for key in ("chosen", "teacher"):
        assert test[f"{key}_balanced_acc"] == pytest.approx(np.mean([c[f"{key}_acc"] for c in test["per_class"]]))
    for plot in ("accuracy_vs_latency.png", "test_per_class.png"):
        assert (run / "plots" / plot).stat().st_size > 0
    # best/ is an ordinary run folder with its ONNX graph: it loads and predicts; its metrics carry the test figures
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert (best["test_acc"], best["test_balanced_acc"]) == (test["chosen_test_acc"], test["chosen_balanced_acc"])
    assert (best["teacher_test_acc"], best["teacher_test_balanced_acc"]) == (test["teacher_test_acc"],
                                                                             test["teacher_balanced_acc"])
    model = fm2edge.load(str(run / "best"))
    assert (run / "best" / ("model.int8.onnx" if chosen["precision"] == "int8" else "model.onnx")).exists()
    labels = model.predict([np.full((8, 8, 3), 255, np.uint8)]).labels
    assert len(labels) == 1
    # its model card says how auto made it, the graph it ships and how ONNX Runtime runs that graph without fm2edge
    card = (run / "best" / "README.md").read_text()
    made = ("the teacher itself" if chosen["candidate"].startswith("teacher ") else
            f"distilled from {teacher} for {by_rung[chosen['candidate']][1]} epochs")
    assert f"chosen by `fm2edge auto` within a 50 ms batch-1 latency budget: {made}" in card
    assert "epoch None" not in card and "unrecorded device" not in card and "fm2edge train" not in card
    assert "fm2edge auto --config auto.yaml" in card and "read once, through model" in card
    graph = Path(chosen["onnx"]).name
    code = card.split("```python\n")[2].split("```")[0]
    from sklearn.datasets import load_digits

    # a digit drawn wider than tall and larger than the input: resized, then cropped
    digit = Image.fromarray((load_digits().images[0] * 255 / 16).astype(np.uint8)).convert("RGB")
    photo = tmp_path / "photo.png"
    digit.resize((41, 30), Image.Resampling.NEAREST).save(photo)
    ran: dict = {}
    exec(code.replace('"image.jpg"', repr(str(photo))).replace(f'"{graph}"', repr(str(run / "best" / graph))), ran)
    expected = model.predict([photo]).probabilities[0]
    # PIL rounds to pixels between its two resize passes, the model's resize once: a few levels apart at most
    assert ran["probabilities"].argmax() == expected.argmax()
    np.testing.assert_allclose(ran["probabilities"], expected, atol=0.1)
    # the students are candidates: their runs leave the test split unread (it is read once, for the choice)
    students = list(run.glob("student-*/metrics.json"))
    assert len(students) == 3 and all(json.loads(m.read_text())["test_acc"] is None for m in students)
    assert not any((m.parent / name).exists() for m in students for name in ("predictions.npz",
                                                                              "teacher_predictions.npz"))
    # the candidates' exports were scored on validation: export.json says so, and holds no test accuracy
    exports = list(run.glob("export-*/export.json"))
    assert exports and all(json.loads(e.read_text())["scored_on"] == "validation" for e in exports)
    # each int8 recipe's export times the same fp32 graph again: the leaderboard's fp32 figure is the quietest
    finalist = next(r for r in csv.DictReader((run / "leaderboard.csv").open()) if r["rung"] == "1")
    size = finalist["candidate"].split("@")[1]
    finalist_exports = {e.parent.name: json.loads(e.read_text())
                        for e in run.glob(f"export-student-small_cnn-{size}-rung1*/export.json")}
    timings = [e["latency_batch1"]["onnx_fp32"]["quiet_p50_ms"] for e in finalist_exports.values()]
    assert float(finalist["fp32_ms"]) == pytest.approx(min(timings))
    # percentile calibration, the slow recipe, runs in the layout exported first (the fastest screened), and is left
    # out where that layout's min-max graph answers as the fp32 graph
    faithful = finalist_exports[f"export-student-small_cnn-{size}-rung1"]["int8_agreement_with_fp32"] >= 1.0
    assert any("-percentile" in name for name in finalist_exports) != faithful
    assert (f"  {finalist['candidate']}: percentile calibration skipped" in out) == faithful
    assert all("test_acc" not in json.loads(e.read_text()) for e in exports)
    # auto writes its report: its own section with the choice, the search's rungs, the leaderboard, the minutes
    assert "report.html" in out
    page = (run / "report.html").read_text()
    for part in ('id="auto-choice"', 'id="auto-rungs"', 'id="auto-teaching"', 'id="auto-leaderboard"',
                 'id="auto-minutes"', "students, rung 1", 'id="auto-test"', "each class&#x27;s test accuracy",
                 gap_text(test["gap_points"], test["gap_interval_points"]), 'id="auto-selection"',
                 "enough to rank", 'id="auto-teacher"', "used as they are", 'id="auto-teachers"',
                 'id="auto-teachers-left-out"', "outputs cached once for each"):  # 8 px digits: plain images
        assert part in page, part
    # digits (8 px) are too small to look for near-copies; where a folder has some, the page gives the accuracies
    # without them beside
    from fm2edge.report.job import auto_section

    assert test["near_copies"] is None and 'id="auto-near-copies"' not in page
    result["test"].update(near_copies=3, chosen_test_acc_without_near_copies=0.9,
                          teacher_test_acc_without_near_copies=1, class_imbalance=1.0)
    section = auto_section(str(run), result)
    assert "the classes are the same size" in section
    assert 'id="auto-near-copies">3 test image(s) look like a training image' in section
    assert "without them, 90.00% against the teacher's 100.00%" in section
    # only students from random weights were candidates here, and none from pretrained weights was measured: no
    # note on the budget; where the budget shut them out, the page says what it cost
    assert result["pretrained_out_of_budget"] is None and 'id="auto-pretrained-out"' not in page
    result["pretrained_out_of_budget"] = {"text": "no student that starts from pretrained weights fits"}
    assert 'id="auto-pretrained-out"><b>The budget:</b> no student that starts' in auto_section(str(run), result)
    # digits' validation ranks: no hedge was needed; where one went on beside the larger inputs, the page names it
    assert result["hedge"] is None and 'id="auto-hedge"' not in page
    result["hedge"] = {"candidate": "pypi:efficientnet_lite0@128", "text": hedge_text("pypi:efficientnet_lite0@128")}
    assert ('id="auto-hedge">Hedge: pypi:efficientnet_lite0@128 goes on to the finalists beside the larger inputs'
            in auto_section(str(run), result))
    # a run without a latency budget whose choice is the teacher says so and gives a budget to start from
    assert result["no_budget"] is None and 'id="auto-no-budget"' not in page  # this one had a 50 ms budget
    result["no_budget"] = "with no latency budget the most accurate model won"
    assert ('id="auto-no-budget"><b>The budget:</b> With no latency budget the most accurate model won.</p>'
            in auto_section(str(run), result))
    # a finalist left without seeds because its graphs are over the budget: the page says why
    result["soups"] = [{"candidate": "pypi:efficientnet_lite0@152", "seeds": 0, "kept": False,
                        "why": "its exported graphs are over the 1.88 ms budget"}]
    assert ("<b>pypi:efficientnet_lite0@152</b> not trained again with seeds: its exported graphs are over the 1.88 "
            "ms budget") in auto_section(str(run), result)
    # the finalist reached --auto.max_epochs (3): a run that left a quarter of its 6 minutes says where the rest goes
    assert (result["finished_early"] is not None) == (result["minutes"] <= 4.5)
    assert ('id="auto-finished-early"' in page) == (result["minutes"] <= 4.5)
    steps = result["minutes_by_step"]
    assert steps["students, rung 0"] > 0 and steps["exports"] > 0
    assert sum(steps.values()) == pytest.approx(result["minutes"])
    students = [f"students, rung {i}" for i in range(len([s for s in steps if s.startswith("students")]))]
    assert list(steps) == ["measuring and planning", *students, "exports", "other"]  # in the order the run took them
    # run again with the settings best/ keeps (its card's command): every stage is reused, the same choice comes out
    assert main(["auto", "--config", str(run / "best" / "auto.yaml")]) == 0
    again = capsys.readouterr().out
    assert "resuming" in again and "unchanged, skipped" in again
    rerun = json.loads((run / "auto.json").read_text())
    assert rerun["chosen"]["candidate"] == chosen["candidate"]
    assert rerun["earlier_test_reads"] == [] and "read the test split for" not in again  # the same choice: no new look
    # an earlier run that chose another graph (a graph timed again on an idle machine can fit where it did not): its
    # test read is kept and said beside the new one, in the output, auto.json and the page
    earlier = {**rerun, "chosen": {**rerun["chosen"], "candidate": "student:small_cnn@99"},
               "test": {**rerun["test"], "chosen_test_acc": 0.5}}
    (run / "auto.json").write_text(json.dumps(earlier))
    assert main(argv) == 0
    out = capsys.readouterr().out
    rerun = json.loads((run / "auto.json").read_text())
    assert rerun["earlier_test_reads"] == [{"candidate": "student:small_cnn@99", "precision": chosen["precision"],
                                            "test_acc": 0.5}]
    assert f"note: earlier runs in this folder read the test split for 1 other choice(s) (student:small_cnn@99 as " \
           f"{chosen['precision']}, 50.00%)" in out
    assert 'id="auto-test-read-before"><b>Read before:</b> earlier runs' in (run / "report.html").read_text()
    assert main(argv) == 0  # and kept by the next rerun, which chose as the last one did
    assert json.loads((run / "auto.json").read_text())["earlier_test_reads"] == rerun["earlier_test_reads"]


@pytest.mark.slow
def test_auto_with_balanced_accuracy_judges_every_step_on_it(tmp_path, teacher, capsys):
    """--auto.metric balanced_accuracy: the teacher, the students (trained the fixed schedule) and the graphs carry
    their balanced accuracy on validation, as their stages recorded it, and the choice is judged and reported on it."""
    assert main(auto_argv(tmp_path, teacher, "--auto.metric", "balanced_accuracy")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    result = json.loads((run / "auto.json").read_text())
    assert result["metric"] == "balanced_accuracy"
    chosen = result["chosen"]
    export = json.loads((Path(chosen["onnx"]).parent / "export.json").read_text())
    key = {"fp32": "onnx_fp32", "int8": "onnx_int8"}[chosen["precision"]]
    assert chosen["val_score"] == export["validation_balanced_acc"][key]
    assert f"validation balanced accuracy {100 * chosen['val_score']:.2f}%" in out
    students = list(run.glob("student-*/metrics.json"))
    assert students
    for m in students:
        metrics = json.loads(m.read_text())
        assert metrics["selected"]["on"] == "last epoch" and 0 <= metrics["val_balanced_acc"] <= 1
    plan = json.loads((run / "plan.json").read_text())
    assert plan["teacher"]["val_score"] == plan["teacher"]["val_balanced_acc"]
    # validation's noise is balanced accuracy's, which its smallest class decides
    assert 0 < plan["selection"]["effective_images"] <= plan["selection"]["val_images"] == plan["val_images"]
    assert "% validation balanced accuracy)" in out
    page = (run / "report.html").read_text()
    assert "(what chose it)" in page and "<th>validation balanced</th>" in page and "ONNX int8 val balanced" in page
    # the leaderboard ranks on it and shows each graph's figure: the chosen candidate's row holds its graph's
    rows = result["leaderboard"]
    ranked = [r["val_score"] for r in rows[1:] if r["val_score"] is not None and not r["teacher_agreement"]]
    assert ranked == sorted(ranked, reverse=True)
    row = rows[0]  # the choice heads it, whatever tie it won
    assert row["candidate"] == chosen["candidate"]
    assert row[f"val_balanced_acc_onnx_{chosen['precision']}"] == chosen["val_score"]
    assert row["val_score"] == row["val_balanced_acc"] is not None
    assert "val_balanced_acc_onnx_int8" in next(csv.DictReader((run / "leaderboard.csv").open()))


@pytest.mark.slow
def test_auto_distils_on_the_training_images_its_labels_leave_out(tmp_path, teacher, capsys):
    """A fully labelled dataset used as few labels and many unlabelled images: the plan takes the left-out training
    images (never the validation or test ones), and every student distils on as many as it planned, at its views."""
    argv = auto_argv(tmp_path, teacher, "--data.per_class", "15", "--auto.unlabeled_left_out", "true",
                     "--auto.students", "[student:small_cnn@16]")
    assert main(argv) == 0
    assert "unlabelled images:" in capsys.readouterr().out
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["unlabeled_images"] >= 100 and plan["unlabeled_available"] >= plan["unlabeled_images"]
    assert plan["views"] == 1, "8 x 8 digits are not cropped: one output per plain image, whatever --auto.views"
    # the finalist trains the recipe's fewest epochs (here --auto.max_epochs 3), or the pool was cut to get them
    assert sum(r["epochs"] for r in plan["rungs"]) >= 3 or plan["unlabeled_images"] < 200
    students = [json.loads(m.read_text()) for m in (tmp_path / "a").glob("student-*/metrics.json")]
    assert students and all(m["unlabelled_images"] == plan["unlabeled_images"] for m in students)
    assert all(m["stored_views"] == 0 and m["teaching"] == "plain images"
               and m["labelled_images"] == plan["train_images"] for m in students)
    # 15 labels per class leave a validation split too small to rank: a share of the left-out images is held out of
    # training, labelled by the teacher, and the students are ranked by their agreement with it
    held = plan["held_out"]
    assert plan["selection"]["noisy"] and held["images"] >= HELD_OUT_FEWEST
    assert len(held["teacher_labels"]) == held["images"] and held["seconds"] > 0
    left_out = 1797 - 450 - plan["train_images"] - plan["val_images"]
    assert plan["unlabeled_available"] + held["images"] == left_out  # the students' pool is the rest
    assert plan["unlabeled_images"] <= plan["unlabeled_available"]
    rows = list(csv.DictReader((tmp_path / "a" / "leaderboard.csv").open()))
    student = next(r for r in rows if r["status"] == "trained")
    assert 0 <= float(student["teacher_agreement"]) <= 1
    result = json.loads((tmp_path / "a" / "auto.json").read_text())
    assert result["held_out_images"] == held["images"]
    assert main(["report", str(tmp_path / "a")]) == 0
    page = (tmp_path / "a" / "report.html").read_text()
    assert f"agrees with the teacher ({held['images']:,} held out)" in page and "ranked by their agreement" in page


@pytest.mark.slow
def test_time_the_students_leave_over_buys_more_unlabelled_images(tmp_path, teacher, capsys, monkeypatch):
    """A teacher's share of the budget too small for even MIN_UNLABELED images, and students that get their epochs
    with time to spare: the plan gives the teacher more of the budget (one view each) instead of leaving it idle."""
    import fm2edge.automate.plan as plan_module

    monkeypatch.setattr(plan_module, "TEACHING_SHARE", 1e-6)
    argv = auto_argv(tmp_path, teacher, "--data.per_class", "15", "--auto.unlabeled_left_out", "true",
                     "--auto.students", "[student:small_cnn@16]")
    assert main(argv) == 0
    assert "the students' epochs leave time over" in capsys.readouterr().out
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["unlabeled_images"] >= plan_module.MIN_UNLABELED and plan["views"] == 1
    planned = (plan["planning_seconds"] + plan["teaching_seconds"] + plan["export_seconds"]
               + plan["test_read_seconds"] + sum(r["seconds"] for r in plan["rungs"]))
    assert planned <= 6 * 60


def test_one_unlabelled_pool_at_a_time(tmp_path, capsys):
    assert main(["auto", "--auto.unlabeled_source", str(tmp_path), "--auto.unlabeled_left_out", "true",
                 "--run.root", str(tmp_path)]) == 2
    assert "--auto.unlabeled_source or --auto.unlabeled_left_out, not both" in capsys.readouterr().err


def test_a_budget_nothing_meets_is_one_clear_error(tmp_path, teacher, capsys, monkeypatch):
    import fm2edge.automate.measure as measure_mod

    timed = []  # training speed is timed only for candidates the budget keeps: here none
    monkeypatch.setattr(measure_mod, "training_speed", lambda c, n: timed.append(c) or {})
    assert main(auto_argv(tmp_path, teacher, "--auto.latency_ms", "0.0001")) == 2
    assert not timed
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if line.startswith("fm2edge: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert "no candidate student meets the budget (0.0001 ms batch-1 latency)" in errors[0]
    assert "the fastest measured here is" in errors[0]
    assert not (tmp_path / "a" / "plan.json").exists()


@pytest.mark.slow
def test_a_budget_that_trains_no_student_ships_the_teacher_where_it_is_a_choice(tmp_path, teacher, capsys,
                                                                               monkeypatch):
    """Found with no latency budget and --auto.minutes 4 on a busy machine: measuring took the time, no student got an
    epoch, and the run stopped with an error although the teacher, within (no) budget, could be shipped. Here the
    students train too slowly for one epoch: the teacher is exported, judged alone and shipped, and the run says
    why and what budget would train a student; where the teacher is not a choice either, one clear error."""
    from fm2edge.automate import plan as plan_module

    monkeypatch.setattr(plan_module, "measure_training", lambda *a, **k: {"train_images_per_s": 0.01,
                                                                        "train_device": "cpu"})
    assert main(auto_argv(tmp_path, teacher)) == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    result = json.loads((run / "auto.json").read_text())
    assert result["chosen"]["candidate"] == "teacher student:small_cnn@32"
    skipped = result["students_skipped"]
    assert skipped.startswith("the teacher itself, within the budget, is the model, judged alone, as the 6-minute "
                              "budget leaves no time to train a student")
    assert "give --auto.minutes" in skipped and f"note: {skipped}" in out
    assert 'id="auto-students-skipped"' in (run / "report.html").read_text()
    rows = {r["candidate"]: r for r in result["leaderboard"]}
    assert rows["student:small_cnn@16"]["status"].startswith("dropped: fewer than 1 epochs fit")
    assert rows["student:small_cnn@16"]["val_acc"] is None
    assert not [s for s in result["minutes_by_step"] if s.startswith("students")]
    assert (run / "best" / Path(result["chosen"]["onnx"]).name).exists()
    assert "the teacher itself" in (run / "best" / "README.md").read_text()
    assert result["teacher_itself"] == (result["chosen"]["precision"] == "fp32")
    # exported before the (here absent) students: its time is spent, not reserved, from then on
    assert json.loads((run / "plan.json").read_text())["teacher_exported"]["unrecorded_seconds"] >= 0
    assert 0 <= result["test"]["chosen_test_acc"] <= 1

    # the teacher not a choice either (its export would take too much of the budget): nothing to ship
    monkeypatch.setattr(plan_module, "teacher_export_too_long", lambda *args: "its export is too long")
    assert main(auto_argv(tmp_path, teacher, "--run.name", "b")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fm2edge: error:")]
    assert len(errors) == 1 and "leaves no time to train a student" in errors[0]


@pytest.mark.slow
def test_a_finalist_whose_export_fails_is_not_a_choice_and_the_others_are_still_judged(tmp_path, teacher, capsys,
                                                                                        monkeypatch):
    """The teacher fits the budget, but its graph fails the parity check (a random tiny network at 224 px strayed
    1.8e-4 from PyTorch against a 1e-4 tolerance): the students are still exported and one is chosen, the
    leaderboard says why the teacher is not; when every finalist's export fails, one clear error names them."""
    from fm2edge.automate import exports

    real = exports.run_one_stage
    parity = ("the ONNX model's probabilities differ from PyTorch's by 0.000178, above --export.parity_tolerance "
              "0.0001; nothing was written")

    def teacher_fails(root, name, command, args):
        if name.startswith("export-teacher"):
            raise Fm2EdgeError(parity)
        return real(root, name, command, args)

    monkeypatch.setattr(exports, "run_one_stage", teacher_fails)
    assert main(auto_argv(tmp_path, teacher)) == 0
    assert "is not a choice: its export failed" in capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "auto.json").read_text())
    assert not result["chosen"]["candidate"].startswith("teacher ")
    row = next(r for r in result["leaderboard"] if r["candidate"].startswith("teacher "))
    assert "not a choice: its export failed" in row["status"] and "parity_tolerance" in row["status"]

    def every_export_fails(root, name, command, args):
        if command == "export":
            raise Fm2EdgeError(parity)
        return real(root, name, command, args)

    monkeypatch.setattr(exports, "run_one_stage", every_export_fails)
    assert main(auto_argv(tmp_path, teacher, "--run.name", "b")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fm2edge: error:")]
    assert len(errors) == 1 and "no finalist could be exported" in errors[0] and "parity_tolerance" in errors[0]


@pytest.mark.slow
def test_auto_is_a_recipe_stage_whose_rerun_is_skipped(tmp_path, teacher, capsys):
    """`command: auto` in a recipe: its folder is the stage's, a later stage reads it, and an unchanged rerun skips
    it (the recipe's record); --run.resume, which the recipe sets on a new stage, changes nothing for auto."""
    from fm2edge.recipe import run_recipe

    recipe = {"name": "r", "stages": [
        {"name": "choose", "command": "auto", "args": {
            "data": {"source": "digits"},
            "auto": {"teachers": [str(teacher)], "students": ["student:small_cnn@16"], "views": 2, "minutes": 6,
                     "latency_ms": 50, "min_epochs": 1, "max_epochs": 2, "device": "cpu", "finalists": 1}}},
        {"name": "page", "command": "report", "args": {"runs": ["${choose}"]}}]}
    results = run_recipe(recipe, tmp_path / "r")
    # the student, or the teacher as it is (it fits the 50 ms budget): whichever validation prefers
    assert results["choose"]["chosen"]["candidate"] in ("student:small_cnn@16", "teacher student:small_cnn@32")
    assert (tmp_path / "r" / "choose" / "best" / "metrics.json").exists()
    assert 'id="auto-choice"' in (tmp_path / "r" / "page" / "report.html").read_text()
    capsys.readouterr()
    again = run_recipe(recipe, tmp_path / "r")
    assert "choose (auto): unchanged, skipped" in capsys.readouterr().out
    assert again["choose"]["chosen"] == results["choose"]["chosen"]


@pytest.mark.slow
def test_auto_killed_midway_resumes_to_the_same_choice(tmp_path, teacher, capsys):
    """A kill while the students train, then the same command again: the leaderboard and the choice of an
    uninterrupted run. Moved elsewhere, the finished run folder reads back whole: no stage runs again."""
    import shutil

    whole = tmp_path / "whole"
    assert main(auto_argv(whole, teacher)) == 0
    ref = json.loads((whole / "a" / "auto.json").read_text())
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fm2edge", *auto_argv(killed, teacher)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "a").glob("student-*/checkpoints/epoch-*")):
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert not (killed / "a" / "auto.json").exists()
    assert main(auto_argv(killed, teacher)) == 0
    got = json.loads((killed / "a" / "auto.json").read_text())
    assert got["chosen"]["candidate"] == ref["chosen"]["candidate"]
    # the same graph where validation decided; where fp32 and int8 tie on every figure but latency, each run's own
    # timing of its exports decides (a tiny CNN's two graphs time within the machine's noise of each other)
    if got["chosen"]["precision"] != ref["chosen"]["precision"]:
        assert got["chosen"]["val_acc"] == ref["chosen"]["val_acc"]
        assert got["chosen"].get("agreement_with_fp32", 1.0) == ref["chosen"].get("agreement_with_fp32", 1.0) == 1.0
    assert [(r["candidate"], r["val_acc"]) for r in got["leaderboard"]] == \
        [(r["candidate"], r["val_acc"]) for r in ref["leaderboard"]]
    capsys.readouterr()
    shutil.move(str(killed), str(tmp_path / "moved"))
    assert main(auto_argv(tmp_path / "moved", teacher)) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "unchanged, skipped" in out and "rerunning" not in out, out
    moved = json.loads((tmp_path / "moved" / "a" / "auto.json").read_text())
    assert moved["chosen"]["candidate"] == got["chosen"]["candidate"]
    plan = (tmp_path / "moved" / "a" / "plan.json").read_text()
    assert str(killed) not in json.dumps(moved) and str(killed) not in plan


def test_cached_latencies_are_reused_only_while_the_machine_runs_as_fast_as_when_they_were_measured(tmp_path,
                                                                                                    monkeypatch):
    import fm2edge.automate.measure as measure_mod
    import fm2edge.timing as timing

    calls = []
    monkeypatch.setattr(measure_mod, "latency_and_size", lambda c, n, t: calls.append(c) or figures(c.label, 2.0, 1.0))
    trained = []
    monkeypatch.setattr(measure_mod, "training_speed",
                        lambda c, n: trained.append(c) or {"train_images_per_s": 10.0, "train_device": "cpu"})
    speed = {"ms": 1.0}
    monkeypatch.setattr(timing, "reference_ms", lambda threads=None: speed["ms"])
    cand = measure_mod.Candidate("student:small_cnn", 32)
    first = measure_mod.measure(cand, 2, 1, tmp_path)
    assert first["reference_ms"] == 1.0 and len(calls) == 1
    speed["ms"] = 1.1  # within the tolerance: the cached figures stand
    assert measure_mod.measure(cand, 2, 1, tmp_path) == first and len(calls) == 1
    speed["ms"] = 2.0  # the machine runs at half speed now: measured again, and the cache says so
    again = measure_mod.measure(cand, 2, 1, tmp_path)
    assert len(calls) == 2 and again["reference_ms"] == 2.0
    assert measure_mod.measure(cand, 2, 1, tmp_path, reference=2.1) == again and len(calls) == 2
    # latency alone: training is timed apart, only for what the budget keeps, without an export, cached the same way
    assert not trained
    alone = measure_mod.measure_training(cand, 2, 1, tmp_path)
    assert len(calls) == 2 and len(trained) == 1 and alone["train_images_per_s"] == 10.0 and "fp32" not in alone
    assert measure_mod.measure_training(cand, 2, 1, tmp_path) == alone and len(trained) == 1
    speed["ms"] = 4.0
    assert measure_mod.measure_training(cand, 2, 1, tmp_path)["reference_ms"] == 4.0 and len(trained) == 2


def test_a_candidate_a_slower_machine_put_over_the_budget_is_measured_again(tmp_path, monkeypatch, capsys):
    """Lite0 at 112 px measured 8.37 ms while the reference took 2.13 ms, and 4.38 ms on a quiet machine: a candidate
    over a 5 ms budget that the machine's state then explains is measured again, the quieter figure kept; one far
    over, one measured in today's state, and any without a latency budget are not."""
    import fm2edge.automate.measure as measure_mod
    import fm2edge.timing as timing

    slow = {**figures("pypi:efficientnet_lite0@112", 8.37, 8.65), "reference_ms": 2.13}
    far = {**figures("pypi:efficientnet_lite0@224", 26.4, 21.4), "reference_ms": 2.13}
    steady = {**figures("pypi:efficientnet_lite0@128", 6.0, 7.0), "reference_ms": 1.13}
    assert worth_a_second_look(slow, 1.13, 5.0)
    assert not worth_a_second_look(far, 1.13, 5.0) and not worth_a_second_look(steady, 1.13, 5.0)
    assert not worth_a_second_look(slow, 1.13, None) and not worth_a_second_look(slow, 2.13, 5.0)
    calls = []
    monkeypatch.setattr(measure_mod, "latency_and_size",
                        lambda c, n, t: calls.append(c.label) or figures(c.label, 4.38, 4.74))
    monkeypatch.setattr(timing, "reference_ms", lambda threads=None: 1.13)
    job = AutoJob(data=DataConfig(source="digits", cache_dir=str(tmp_path)), auto=AutoConfig(latency_ms=5.0))
    out = second_look(job, [slow, far, steady], 2)
    assert calls == ["pypi:efficientnet_lite0@112"]
    assert out[0]["fp32"]["p50_ms"] == 4.38 and out[1:] == [far, steady]
    assert ("pypi:efficientnet_lite0@112: 8.37 ms, measured while the machine ran 1.9x slower than now; measured "
            "again: 4.38 ms") in capsys.readouterr().out
    # measured again and slower still (the machine busy again): the first figure stands
    monkeypatch.setattr(measure_mod, "latency_and_size", lambda c, n, t: figures(c.label, 9.0, 9.5))
    fresh = AutoJob(data=DataConfig(source="digits", cache_dir=str(tmp_path / "b")), auto=AutoConfig(latency_ms=5.0))
    assert second_look(fresh, [slow], 2) == [slow]


def test_the_tie_note_says_what_pool_would_let_the_students_be_ranked_on_held_out_images():
    """A pool the user gave that is too small to spare HELD_OUT_FEWEST images is named with the size that would;
    without one, the note asks for one of that size."""
    from fm2edge.automate.heldout import HELD_OUT_FEWEST, ranking_pool_text

    given = ranking_pool_text(60, given=True)
    assert given.startswith("the unlabelled pool holds 60 images; with 1,000 or more")
    assert f"{HELD_OUT_FEWEST} of them are held out" in given and held_out_count(1000, True) == HELD_OUT_FEWEST
    assert held_out_count(999, True) == 0
    assert ranking_pool_text(0, given=False).startswith("add unlabelled images, --auto.unlabeled_source DIR (1,000 or")


def test_a_larger_input_of_a_network_a_smaller_one_puts_over_the_budget_is_not_measured(tmp_path, monkeypatch):
    """Each network's inputs are measured smallest first; once one is over the budget, its larger inputs are passed
    over with the reason (their parameters still counted), other networks measured as before; a second look that
    brings the smaller input within the budget lets the next one be measured; the teacher of a network a student
    was over with is not measured either."""
    import fm2edge.automate.measure as measure_mod
    import fm2edge.timing as timing

    ms = {32: 1.0, 48: 6.0, 64: 9.0, 96: 20.0}
    calls = []
    monkeypatch.setattr(measure_mod, "latency_and_size",
                        lambda c, n, t: calls.append(c.label) or figures(c.label, ms[c.size], ms[c.size]))
    monkeypatch.setattr(timing, "reference_ms", lambda threads=None: 1.0)
    students = ["student:small_cnn@96", "student:small_cnn@32", "student:small_cnn@64", "student:small_cnn@48",
                "student:cifar_resnet18@64"]
    job = AutoJob(data=DataConfig(source="digits", cache_dir=str(tmp_path)),
                  auto=AutoConfig(latency_ms=5.0, students=students))
    measured, passed = measure_candidates(job, 10)
    assert calls == ["student:cifar_resnet18@64", "student:small_cnn@32", "student:small_cnn@48"]
    assert [f["candidate"] for f in measured] == ["student:small_cnn@32", "student:small_cnn@48",
                                                  "student:cifar_resnet18@64"]  # in the order listed
    assert [c.label for c, _ in passed] == ["student:small_cnn@96", "student:small_cnn@64"]
    assert passed[0][1].startswith("not measured: student:small_cnn@48 is over the budget already (fp32 6.00 ms")
    entry = unmeasured(passed[0][0], 10, passed[0][1])
    assert entry["fp32"]["p50_ms"] is None and entry["params"] > 0 and entry["macs"] > 0
    assert over_at_a_smaller_size(Candidate("student:small_cnn", 40), measured, job.auto) is None  # 32 px fits
    # measured again at 4 ms (a quieter machine): 64 px is measured now, and 96 px stays passed over behind it
    quieter = [{**f, "fp32": {"p50_ms": 4.0, "mb": 1.0}} if f["candidate"].endswith("@48") else f for f in measured]
    measured, passed = measure_candidates(job, 10, quieter)
    assert calls[3:] == ["student:small_cnn@64"] and [c.label for c, _ in passed] == ["student:small_cnn@96"]
    assert "student:small_cnn@64 is over the budget already" in passed[0][1]
    assert "parameters" in over_at_a_smaller_size(Candidate("student:cifar_resnet18", 96), measured,
                                                  AutoConfig(latency_ms=50.0, max_params=10))
    # the teacher as the model: its network at 96 px, where a student of it at 64 px is over already
    import fm2edge.models.io as io_mod

    monkeypatch.setattr(io_mod, "model_meta", lambda folder: {"name": "student:small_cnn",
                                                              "preprocess": {"size": 96}})
    option = teacher_as_candidate(job, {"folder": str(tmp_path), "val_acc": 0.9}, 10, measured)
    assert option["candidate"] == "teacher student:small_cnn@96" and option["fp32"]["p50_ms"] is None
    assert "student:small_cnn@64 is over the budget already" in option["why"] and len(calls) == 4


def test_training_speed_is_timed_under_the_allocator_setting_the_training_loop_runs_under(monkeypatch):
    import contextlib

    import fm2edge.automate.measure as measure_mod
    import fm2edge.device as device_mod

    state = {"kept": False, "seen": []}

    @contextlib.contextmanager
    def recorder():
        state["kept"] = True
        try:
            yield True
        finally:
            state["kept"] = False

    real = measure_mod.timed_steps
    monkeypatch.setattr(device_mod, "freed_memory_kept", recorder)
    monkeypatch.setattr(measure_mod, "timed_steps", lambda *a: state["seen"].append(state["kept"]) or real(*a))
    figures = measure_mod.training_speed(measure_mod.Candidate("student:small_cnn", 16), 2)
    assert state["seen"] == [True] and not state["kept"]  # timed inside the setting, left outside it
    assert figures["train_images_per_s"] > 0 and figures["train_device"] == "cpu"


def test_the_reference_timing_is_positive_and_states_compare_within_a_tolerance():
    from fm2edge.timing import reference_ms, same_state

    a, b = reference_ms(1), reference_ms(1)
    assert a > 0 and b > 0
    assert same_state(1.0, 1.1) and not same_state(1.0, 1.5) and not same_state(None, 1.0)


def test_a_graph_timed_over_the_budget_where_it_screened_within_is_timed_again(monkeypatch, capsys):
    """Two timings of one graph that disagree about the budget (the screen's within, the export's over: a busy
    minute) are settled by timing it again, keeping the quietest figure; graphs whose own int8 layout screened over
    the budget, or that are within it, are not timed again."""
    import fm2edge.export

    quiet = iter([1.41, 3.3, 3.2])  # the int8 graph's second timing is within 2 ms; the fp32 graph's stay over
    timed = []

    def graph_latency(path, threads, runs):
        timed.append(path.name)
        return {"quiet_p50_ms": next(quiet)}

    monkeypatch.setattr(fm2edge.export, "graph_latency", graph_latency)
    options = [{"candidate": "m@160", "precision": "int8", "int8_recipe": "first-last-fp32", "p50_ms": 4.38,
                "onnx": "a.onnx"},
               {"candidate": "m@160", "precision": "fp32", "int8_recipe": None, "p50_ms": 3.07, "onnx": "b.onnx"},
               {"candidate": "m@160", "precision": "int8", "int8_recipe": "percentile", "p50_ms": 2.6,
                "onnx": "c.onnx"},
               {"candidate": "m@160", "precision": "int8", "int8_recipe": "minmax", "p50_ms": 1.5, "onnx": "d.onnx"}]
    # the screen's int8 figure is its fastest layout's; each layout's own is kept beside it
    f = {"candidate": "m@160", "fp32": {"p50_ms": 1.9},
         "int8": {"p50_ms": 1.33, "layouts_ms": {"minmax": 2.5, "first-last-fp32": 1.33}}, "options": options}
    assert [screened_ms(f, o) for o in options] == [1.33, 1.9, 2.5, 2.5]
    assert [disputed(f, o, 2.0) for o in options] == [True, True, False, False]
    assert not disputed(f, options[0], None) and screened_ms({"options": options}, options[0]) is None
    retime_disputed(AutoJob(auto=AutoConfig(latency_ms=2.0)), f)
    assert timed == ["a.onnx", "b.onnx", "b.onnx"]  # until within the budget, or RETIMES (2) more timings
    assert options[0]["p50_ms"] == 1.41 and options[0]["retimed_ms"] == [1.41]
    assert options[1]["p50_ms"] == 3.07 and options[1]["retimed_ms"] == [3.3, 3.2]
    assert not any("retimed_ms" in o for o in options[2:])
    out = capsys.readouterr().out
    assert ("m@160 int8 (first-last-fp32): 4.38 ms in its export where it screened at 1.33 ms; timed again: 1.41 ms, "
            "within the budget") in out
    assert ("still over the budget (still far from its screened figure: if the machine is busy, rerun the same "
            "command when it is idle") in out


def test_a_graph_timed_while_the_machine_ran_slower_than_at_its_screen_is_judged_in_the_screens_state(monkeypatch,
                                                                                                      capsys):
    """Lite0 at 80 px screened at 3.42 ms (reference 2.14 ms), its export timed 5.3 ms against a 5 ms budget: with the
    reference at 2.7 ms now (the machine slower), it is judged at 5.3 x 2.14 / 2.7 = 4.2 ms, within, and chosen over
    a small CNN far less accurate; within the cache's tolerance, or faster now, the figure stands as timed. A more
    accurate finalist still over the budget is named in a note with what to do."""
    import fm2edge.export
    import fm2edge.timing as timing

    assert in_screen_state(5.3, 2.14, 2.7) == pytest.approx(5.3 * 2.14 / 2.7)
    assert in_screen_state(5.3, 2.14, 2.3) is None and in_screen_state(5.3, 2.14, 1.5) is None
    timed = []
    monkeypatch.setattr(fm2edge.export, "graph_latency",
                        lambda path, threads, runs: timed.append(path) or {"quiet_p50_ms": 5.4})
    monkeypatch.setattr(timing, "reference_ms", lambda threads=None: 2.7)
    lite = {"candidate": "m@80", "fp32": {"p50_ms": 4.03}, "int8": {"p50_ms": 3.42}, "reference_ms": 2.14,
            "options": [{"candidate": "m@80", "precision": "fp32", "p50_ms": 5.28, "mb": 13.5, "val_acc": 0.92,
                         "onnx": "a.onnx"}]}
    cnn = {"candidate": "c@32", "options": [{"candidate": "c@32", "precision": "fp32", "p50_ms": 2.5, "mb": 1.2,
                                             "val_acc": 0.62, "onnx": "b.onnx"}]}
    job = AutoJob(auto=AutoConfig(latency_ms=5.0))
    retime_disputed(job, lite)
    o = lite["options"][0]
    assert len(timed) == RETIMES + SLOW_RETIMES  # every timing with the machine slower: more tries for a quiet minute
    # scaled from a timing taken beside its reference (the export's own 5.28 ms had none)
    assert o["p50_ms"] == 5.28 and o["state_ms"] == pytest.approx(5.4 * 2.14 / 2.7) and o["reference_ms"] == 2.7
    assert ("over the budget as timed, but the machine ran 1.3x slower than when it screened (reference timing 2.14 "
            "-> 2.70 ms) at every timing: 4.28 ms in that state, within the budget") in capsys.readouterr().out
    assert choose([lite, cnn], 5.0, None) is o
    assert passed_over_text([lite, cnn], o, 5.0) is None
    # the same machine state as at the screen: the figure stands, the small CNN is chosen, and the note says why
    monkeypatch.setattr(timing, "reference_ms", lambda threads=None: 2.2)
    lite["options"] = [{k: v for k, v in o.items() if k not in ("state_ms", "reference_ms", "retimed_ms")}]
    timed.clear()
    retime_disputed(job, lite)
    assert "state_ms" not in lite["options"][0] and choose([lite, cnn], 5.0, None) is cnn["options"][0]
    assert lite["options"][0]["reference_ms"] == 2.2 and len(timed) == RETIMES  # the state it was timed in is kept
    assert "over the budget, timed with the machine in the state it screened in" in capsys.readouterr().out
    note = passed_over_text([lite, cnn], cnn["options"][0], 5.0)
    assert note.startswith("m@80 as fp32 scored 92.00% on validation against the chosen model's 62.00%, and timed "
                           "5.28 ms in its export, over the 5 ms budget, where it screened at 4.03 ms")
    assert note.endswith("or allow it with --auto.latency_ms 5.28")
    # a validation tie that the larger input wins: the smaller model's graph over the budget was no loss
    at128, at160 = "pypi:efficientnet_lite0@128", "pypi:efficientnet_lite0@160"
    small = {"candidate": at128, "options": [{"candidate": at128, "precision": "fp32", "p50_ms": 1.55, "mb": 13.6,
                                              "val_acc": 41 / 46, "retimed_ms": [1.56, 1.56]}]}
    large = {"candidate": at160, "options": [
        {"candidate": at160, "precision": "fp32", "p50_ms": 2.1, "mb": 13.6, "val_acc": 40 / 46},
        {"candidate": at160, "precision": "int8", "p50_ms": 1.45, "mb": 3.9, "val_acc": 40 / 46,
         "agreement_with_fp32": 1.0}]}
    chosen = choose([small, large], 1.5, None, True, 0.14)
    assert chosen is large["options"][1]
    assert passed_over_text([small, large], chosen, 1.5, True, 0.14) is None
    assert passed_over_text([small, large], chosen, 1.5, True).startswith("pypi:efficientnet_lite0@128 as fp32 scored")


def test_without_a_latency_budget_a_teacher_that_wins_is_named_with_a_budget_to_start_from():
    teacher = {"candidate": "teacher pypi:efficientnet_lite0@224", "fp32": {"p50_ms": 7.31}, "int8": {"p50_ms": 3.9}}
    chosen = {"candidate": teacher["candidate"], "precision": "int8", "p50_ms": 3.94}
    note = no_budget_text(chosen, teacher, None)
    assert note == ("with no latency budget the most accurate model won whatever its latency: the teacher itself, "
                    "3.94 ms here; for a smaller, faster student give the device's budget, e.g. --auto.latency_ms "
                    "2.44 (a third of the teacher's fp32 latency)")
    assert no_budget_text(chosen, teacher, 10.0) is None  # a budget was given: the teacher met it
    student = {"candidate": "pypi:efficientnet_lite0@128", "precision": "int8", "p50_ms": 1.2}
    assert no_budget_text(student, teacher, None) is None  # a student won on its own
    assert "--auto.latency_ms 1.32 " in no_budget_text(chosen, {"candidate": chosen["candidate"]}, None)  # 3.94 / 3


def test_a_graph_timed_once_in_the_screens_state_is_judged_by_that_timing_not_a_scaled_one(monkeypatch):
    """A cat/dog run screened Lite0 at 144 px at 1.49 ms (reference 0.50 ms) under a 1.53 ms budget; its export timed
    2.16 ms and 2.49-2.51 ms again with the reference at 0.82 ms, a minute apart, and the scaled 1.30 ms chose it,
    where it timed 1.75 ms beside a reference in the screen's state. Each timing now has its own reference, and a
    third try in the screen's state settles it: over the budget."""
    import fm2edge.export
    import fm2edge.timing as timing

    timings, references = iter([2.49, 2.51, 1.75]), iter([0.82, 0.79, 0.52])
    monkeypatch.setattr(fm2edge.export, "graph_latency", lambda path, threads, runs: {"quiet_p50_ms": next(timings)})
    monkeypatch.setattr(timing, "reference_ms", lambda threads=None: next(references))
    graph = {"candidate": "m@144", "precision": "int8", "int8_recipe": "first-last-fp32", "p50_ms": 2.16, "mb": 3.8,
             "val_acc": 1.0, "onnx": "a.onnx"}
    f = {"candidate": "m@144", "fp32": {"p50_ms": 2.4}, "reference_ms": 0.50,
         "int8": {"p50_ms": 1.49, "layouts_ms": {"first-last-fp32": 1.49}}, "options": [graph]}
    retime_disputed(AutoJob(auto=AutoConfig(latency_ms=1.53)), f)
    assert graph["retimed_ms"] == [2.49, 2.51, 1.75] and graph["p50_ms"] == 1.75 and graph["reference_ms"] == 0.52
    assert graph["timings_ms"] == [2.16, 2.49, 2.51, 1.75]
    assert timings_text(graph["timings_ms"]) == " (the quietest of 4 timings, 1.75-2.51 ms)"
    assert timings_text([1.50, 1.52]) == "" and timings_text([1.5]) == "" and timings_text(None) == ""
    # judged with its timings before the seeds too: every timing of the network's graph is kept
    judged = with_earlier(graph, {**graph, "p50_ms": 1.49, "timings_ms": [1.49]}, 1.53)
    assert judged["p50_ms"] == 1.49 and judged["timings_ms"] == [2.16, 2.49, 2.51, 1.75, 1.49]
    assert "state_ms" not in graph and choose([f], 1.53, None) is None


def test_a_candidate_with_no_time_left_says_so_and_not_a_negative_share(capsys):
    for seconds, why in ((-12.0, "no time is left for students after measuring, the teacher's outputs and the exports"),
                         (6.0, "fewer than 3 epochs fit in its share of the budget (0.1 min)")):
        kept = [{"candidate": "student:small_cnn@32"}]
        assert size_candidates(kept, [], {"student:small_cnn@32": 10.0}, 100, seconds, AutoConfig()) == []
        assert kept[0]["epochs"] == 0 and kept[0]["why"] == why
        assert f"dropped student:small_cnn@32: {why}" in capsys.readouterr().out


def test_teachers_that_cannot_be_loaded_are_left_out_and_none_left_is_one_clear_error():
    usable, left_out = usable_teachers(["pypi:efficientnet_lite0", "hf:nobody/not-cached"])
    assert usable == ["pypi:efficientnet_lite0"]
    assert left_out == [{"teacher": "hf:nobody/not-cached",
                         "why": "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"}]
    with pytest.raises(Fm2EdgeError, match="no teacher can be loaded here: hf:nobody/not-cached: HF_HUB_OFFLINE.*"
                                           "--auto.teachers"):
        usable_teachers(["hf:nobody/not-cached"])
    assert "hf:facebook/dinov2-small" in AutoConfig().teachers and AutoConfig().teachers[0] == "pypi:efficientnet_lite0"


@pytest.mark.network
def test_with_the_hub_in_reach_both_default_teachers_are_probed(tmp_path):
    """Needs the Hugging Face Hub: ``HF_HUB_OFFLINE=0 pytest -m network`` (the tests set it to 1 otherwise). Offline,
    the stand-ins are the cached-copy test of `hub_unavailable` and the tiny DINOv2 that auto probes and fine-tunes
    as its teacher in this module."""
    from fm2edge.automate.config import DEFAULT_TEACHERS
    from fm2edge.config import DataConfig, ModelConfig, ProbeConfig, ProbeJob, RunConfig
    from fm2edge.models.sources import hub_offline
    from fm2edge.probe import probe_job

    if hub_offline():
        pytest.skip("HF_HUB_OFFLINE is set: run with HF_HUB_OFFLINE=0")
    assert usable_teachers(DEFAULT_TEACHERS) == (DEFAULT_TEACHERS, [])
    results = probe_job(ProbeJob(data=DataConfig(source="digits"), model=ModelConfig(name=DEFAULT_TEACHERS[1]),
                                 probe=ProbeConfig(methods=["logreg"], score_test=False),
                                 run=RunConfig(root=str(tmp_path), name="p")))
    assert results["val_acc"] > 0.8 and results["test_acc"] is None


def test_the_teacher_is_fine_tuned_at_the_largest_size_its_share_of_the_budget_affords():
    speeds = {96: 60.0, 128: 40.0, 160: 24.0, 224: 10.0}  # training images/s measured at each size
    # 1,000 images x 10 epochs at 80% of the measured speed: 224 px would take 1,250 s, 160 px 521 s, 96 px 208 s
    chosen = finetune_choice(speeds, 1000, 10, 600.0, noisy=False, val_images=500)
    assert chosen == {"size": 160, "seeds": 1, "seconds": finetune_seconds(1000, 10, 24.0), "epochs": 10}
    assert finetune_choice(speeds, 1000, 10, 1100.0, False, 500)["seeds"] == 2  # two fine-tunes fit: a soup
    assert finetune_choice(speeds, 1000, 10, 2 * 1250.0, False, 500) == {
        "size": 224, "seeds": 2, "seconds": 1250.0, "epochs": 10}
    # too slow at every size, too few validation images, or told not to: the probe teaches, and the reason says so
    assert "at 96 px would take 3.5 min" in finetune_choice(speeds, 1000, 10, 60.0, False, 500)["why"]
    assert "validation holds 20 images" in finetune_choice(speeds, 1000, 10, 1e9, True, 20)["why"]
    assert "0" in finetune_choice(speeds, 1000, 0, 1e9, False, 500)["why"]
    # never above the size the model was pretrained at
    assert finetune_sizes(224) == sorted(FINETUNE_SIZES) and finetune_sizes(160) == [96, 128, 160]
    assert finetune_sizes(32) == [32]


@pytest.mark.slow
def test_auto_fine_tunes_a_foundation_teacher_soups_two_and_chooses_on_validation(tmp_path, tiny_dinov2, capsys):
    """A probed foundation model the budget can fine-tune twice: two fine-tunes and their soup join the probe as
    teacher candidates, none of them reads the test split, and validation chooses the teacher."""
    argv = auto_argv(tmp_path, f"hf:{tiny_dinov2}", "--auto.teacher_epochs", "1",
                     "--auto.students", "[student:small_cnn@16]")
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["teacher_finetune"]["size"] == 32 and plan["teacher_finetune"]["seeds"] == 2
    assert "teacher fine-tuning" in out
    kinds = [t["teacher"] for t in plan["teachers"]]
    assert len(kinds) == 4 and "fine-tuned at 32 px (seed 0)" in kinds[1] and "soup of 2" in kinds[3]
    assert plan["teacher"]["val_acc"] == max(t["val_acc"] for t in plan["teachers"])
    for t in plan["teachers"][1:]:  # fine-tunes and soup: candidates, their test split left unread
        metrics = json.loads((Path(t["folder"]) / "metrics.json").read_text())
        assert metrics["test_acc"] is None and not (Path(t["folder"]) / "predictions.npz").exists()
    result = json.loads((run / "auto.json").read_text())
    assert result["teacher_finetune"] == plan["teacher_finetune"] and len(result["teachers"]) == 4
    assert "teachers" in result["minutes_by_step"]


@pytest.fixture(scope="module")
def hub_cnn(tmp_path_factory):
    """A random transformers ResNet saved like a hub model, wide enough to train at 224 px (the two-channel
    bottleneck of conftest's tiny one crashes torch 2.14.1's channels-last backward pass there on an AMX CPU)."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    path = tmp_path_factory.mktemp("hub_cnn")
    torch.manual_seed(0)
    # image_size: the input its preprocessing names (without a saved image processor), so a 32 px student is at
    # least half the teacher's and is averaged with it
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], image_size=64)).save_pretrained(
        path)
    return path


def test_a_pretrained_student_of_the_teachers_architecture_is_averaged_with_the_teacher(tmp_path, hub_cnn, capsys):
    """WiSE-FT: a pretrained student of the teacher's architecture (here a hub-style CNN probed as the teacher and
    distilled into at 32 px) is averaged with the teacher's weights in a cached soup stage; the average replaces
    the student where it scores at least as well, and the leaderboard says so."""
    import torch

    from fm2edge.models.io import load_classifier

    model = f"hf:{hub_cnn}"
    # a budget the 32 px student meets (0.04 ms measured); the teacher at 64 px is exported beside it when it does too
    argv = auto_argv(tmp_path, model, "--auto.students", f"[{model}@32]", "--auto.max_epochs", "2",
                     "--auto.teacher_epochs", "0", "--auto.latency_ms", "0.2", "--auto.soup_seeds", "0")
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    (student,) = [p for p in run.glob("student-*") if p.is_dir()]
    assert "/" not in student.name[len("student-"):] and student.name.endswith("-32")  # a hub name or path, slugged
    averaged = run / f"average-{student.name}"
    soup = json.loads((averaged / "metrics.json").read_text())
    assert soup["batchnorm"] == "average" and soup["test_acc"] is None  # the test split stays unread
    plan = json.loads((run / "plan.json").read_text())
    states = [load_classifier(f).state_dict() for f in (student, plan["teacher"]["folder"])]
    weights = load_classifier(averaged).state_dict()
    conv = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 4)
    assert torch.allclose(weights[conv], (states[0][conv] + states[1][conv]) / 2)
    assert "averaged with the teacher's weights" in out
    result = json.loads((run / "auto.json").read_text())
    kept = soup["val_acc"] >= metrics_of(student)["val_acc"]
    row = next(r for r in result["leaderboard"] if r["candidate"] == f"{model}@32")
    assert ("WiSE-FT" in row["status"]) == kept
    assert row["val_acc"] == (soup["val_acc"] if kept else metrics_of(student)["val_acc"])
    assert "weight averages" in result["minutes_by_step"]
    # the finalist exported is the one kept
    exported = [json.loads(e.read_text())["model"] for e in run.glob("export-*/export.json")
                if not e.parent.name.startswith("export-teacher")]
    assert exported and all(("average-" in m) == kept for m in exported)


def test_time_left_over_trains_seeds_of_a_pretrained_finalist_and_averages_them_into_a_soup(tmp_path, hub_cnn,
                                                                                                capsys):
    """A run whose finalist reached --auto.max_epochs with time left trains the pretrained finalist again with
    --auto.soup_seeds other seeds (each its own views and order, the same epochs; cached stages), averages the three
    into a uniform soup (test split unread), and keeps the soup where it ranks at least as high; the decision is
    written into plan.json, and a rerun with another --auto.soup_seeds keeps the plan."""
    import torch

    from fm2edge.models.io import load_classifier

    model = f"hf:{hub_cnn}"
    argv = auto_argv(tmp_path, model, "--auto.students", f"[{model}@32]", "--auto.max_epochs", "2",
                     "--auto.teacher_epochs", "0", "--auto.latency_ms", "0.2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "a"
    (student,) = [p for p in run.glob("student-*") if p.is_dir()]
    seeds = [run / f"seed{k}-{student.name}" for k in (1, 2)]
    configs = [yaml.safe_load((f / "config.yaml").read_text()) for f in [student, *seeds]]
    assert [c["train"]["seed"] for c in configs] == [0, 1, 2]
    assert [c["distill"]["view_seed"] for c in configs] == [0, 1, 2]  # each seed its own views
    assert {c["train"]["epochs"] for c in configs} == {2}  # the finalist's epochs
    plan = json.loads((run / "plan.json").read_text())
    assert plan["respaced"]["seeds"]["seeds"] == {f"{model}@32": 2}
    assert "trained again with 2 more seeds" in out
    soup = json.loads((run / f"soup-{student.name}" / "metrics.json").read_text())
    assert soup["method"] == "uniform" and soup["test_acc"] is None and len(soup["ingredients"]) == 3
    states = [load_classifier(f).state_dict() for f in [student, *seeds]]
    weights = load_classifier(run / f"soup-{student.name}").state_dict()
    conv = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 4)
    assert torch.allclose(weights[conv], sum(s[conv] for s in states) / 3, atol=1e-6)
    result = json.loads((run / "auto.json").read_text())
    row = next(r for r in result["leaderboard"] if r["candidate"] == f"{model}@32")
    trained = metrics_of(student)
    loss = next(h["val_loss"] for h in trained["history"] if h["epoch"] == trained["selected"]["epoch"])
    # ranked as students are: validation accuracy, then the lower validation loss; an exact tie to the soup
    kept = (soup["val_acc"], -soup["val_loss"]) >= (trained["val_acc"], -loss)
    assert ("a soup" in row["status"]) == kept and ("the soup is kept" in out) == kept
    assert "averaged with 2 more seeds (a soup)" in out
    assert "seeds and their soup" in result["minutes_by_step"]
    assert result["soups"] == [{"candidate": f"{model}@32", "seeds": 2, "kept": kept}]
    # exported before its seeds were bought, to time its graphs (the budget is met: no finalist is left unseeded)
    assert (run / f"export-{student.name}" / "export.json").exists() and plan["respaced"]["seeds"]["over_budget"] == {}
    timed = plan["respaced"]["seeds"]["timings"][f"{model}@32"]  # kept to judge the soup's graphs with (same network)
    assert {(t["precision"], t["int8_recipe"]) for t in timed} >= {("fp32", None), ("int8", "first-last-fp32")}
    assert row["fp32_ms"] <= next(t["p50_ms"] for t in timed if t["precision"] == "fp32")  # the quieter timing
    assert 'id="auto-soups"' in (run / "report.html").read_text()
    steps = list(result["minutes_by_step"])
    assert steps.index("seeds and their soup") < steps.index("weight averages") < steps.index("exports")
    # a rerun asking for no seeds keeps the plan and every finished stage
    assert main([*argv, "--auto.soup_seeds", "0"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_seeds_are_bought_for_the_leader_first_within_the_time_left():
    assert seeds_that_fit([("a", 10.0), ("b", 5.0)], 100.0, 2) == {"a": 2, "b": 2}
    assert seeds_that_fit([("a", 10.0), ("b", 5.0)], 25.0, 2) == {"a": 2, "b": 1}  # the leader's first
    assert seeds_that_fit([("a", 10.0), ("b", 5.0)], 9.0, 3) == {"a": 0, "b": 1}  # what is left goes on
    assert seeds_that_fit([("a", 10.0)], -5.0, 2) == {"a": 0}  # over the budget already
    assert seeds_that_fit([("a", 10.0)], 100.0, 0) == {"a": 0}
    plan = {"train_images": 100, "unlabeled_images": 50, "views": 2, "val_images": 30,
            "teacher": {"images_per_s": 30.0}, "held_out": {"images": 0}}
    f = {"trained_epochs": 10, "epoch_seconds": 4.0, "overhead_seconds": 3.0, "train_images_per_s": 20.0}
    # the teacher's outputs on 2 new views of 150 images, 10 epochs, the stage's overhead, two validation passes
    assert seed_seconds(f, plan) == pytest.approx(300 / (0.9 * 30) + 40 + 3 + 60 / 60)


def test_seeds_go_to_the_finalists_whose_exported_graphs_meet_the_budget_first(monkeypatch):
    """Two cat/dog runs each spent 4-5 minutes on seeds of a finalist whose graphs then timed over the budget once
    exported (Lite0's int8 graph at 152 px: 2.66 ms against 1.88). Each finalist is exported before the seeds are
    bought: one whose quickest graph is over by more than SCREEN_TOLERANCE gets none, and one just over the budget
    has its seeds after those of the finalists within it, from the time the exports left."""
    from fm2edge.automate import soups

    exported_ms = {152: 2.66, 160: 1.62, 144: 1.95}  # 144 px: 4% over, as one timing of a graph at the budget can be
    calls = []

    def fake_export(job, root, f, images, held=None, teacher_labels=None):
        assert images is None and held is None  # timed for the verdict: no agreement is measured
        calls.append(f["candidate"])
        ms = exported_ms[Candidate.parse(f["candidate"]).size]
        return {**f, "options": [{"candidate": f["candidate"], "precision": p, "int8_recipe": r, "p50_ms": ms * k,
                                  "mb": 3.8} for p, r, k in (("fp32", None, 1.6), ("int8", "first-last-fp32", 1.0))]}

    left = []
    monkeypatch.setattr(soups, "exported", fake_export)
    monkeypatch.setattr(soups, "seconds_left", lambda job, root, plan, alive: left.pop(0))
    monkeypatch.setattr(soups, "seed_seconds", lambda t, plan: 100.0)  # 115 s with SEED_MARGIN
    job = AutoJob(auto=AutoConfig(latency_ms=1.88, soup_seeds=2))
    lite = {s: {"candidate": f"pypi:efficientnet_lite0@{s}"} for s in (152, 160, 144)}
    name = {s: f["candidate"] for s, f in lite.items()}
    finalists = [lite[152], lite[144], lite[160]]  # in rank order: the leader far over, the next just over
    left[:] = [300.0, 250.0]  # 300 s buy the leader's two seeds; 250 s are left once the finalists were exported
    bought = seeds_bought(job, None, {}, finalists, finalists)
    assert calls == [name[152], name[144], name[160]]  # every finalist is timed first
    assert bought["seeds"] == {name[160]: 2, name[144]: 0} and bought["seconds_left"] == 250.0
    assert list(bought["seconds_per_seed"]) == [name[160], name[144]]  # within the budget first, 152 px left out
    assert "over the 1.88 ms budget (the quickest, int8 (first-last-fp32), 2.66 ms)" in bought["over_budget"][name[152]]
    assert "just over the 1.88 ms budget" in bought["over_budget"][name[144]]
    assert bought["far_over"] == [name[152]]  # no seeds, and no average with the teacher (far_over)
    assert far_over({"respaced": {"seeds": bought}}, name[152]) == bought["over_budget"][name[152]]
    assert far_over({"respaced": {"seeds": bought}}, name[144]) is None
    assert "options" not in lite[152]  # the trained entries themselves stay unexported
    # what the exports timed is kept (plan.json), to judge each network's graphs once its weights change
    assert bought["timings"][name[152]] == [{"precision": "fp32", "int8_recipe": None, "p50_ms": 2.66 * 1.6, "mb": 3.8},
                                            {"precision": "int8", "int8_recipe": "first-last-fp32", "p50_ms": 2.66,
                                             "mb": 3.8}]
    calls.clear()
    left[:] = [400.0, 400.0]  # time for the one just over too, after the one within
    bought = seeds_bought(job, None, {}, finalists[1:], finalists[1:])
    assert bought["seeds"] == {name[160]: 2, name[144]: 1}
    calls.clear()
    left[:] = [100.0]  # not one seed fits: nothing is exported for it
    assert seeds_bought(job, None, {}, finalists, finalists)["seeds"] == {n: 0 for n in name.values()}
    assert calls == []
    left[:] = [400.0]  # no latency budget: nothing to time first
    bought = seeds_bought(AutoJob(auto=AutoConfig(latency_ms=None, soup_seeds=2)), None, {}, finalists[:1],
                          finalists[:1])
    assert calls == [] and bought["seeds"] == {name[152]: 2}
    why = "its exported graphs are over the 1.88 ms budget"
    assert soup_summary({"candidate": name[152], "unsouped": why}) == {"candidate": name[152], "seeds": 0,
                                                                       "kept": False, "why": why}


def test_why_an_exported_finalist_is_over_the_budget():
    graph = {"precision": "int8", "int8_recipe": "minmax", "p50_ms": 2.5, "mb": 3.8}
    assert over_budget({"options": [graph]}, 3.0, None) is None
    near, why = over_budget({"options": [graph]}, 2.4, None)  # 4% over: within SCREEN_TOLERANCE
    assert near and "just over the 2.4 ms budget (the quickest, int8 (minmax), 2.50 ms, within the 10%" in why
    assert over_budget({"options": [graph]}, 2.0, None)[0] is False  # 25% over
    assert over_budget({"options": [graph]}, 2.4, 3.0)[0] is False  # just over in time, but over the file size
    # judged in the screen's machine state where the export timed it in a slower one
    assert over_budget({"options": [{**graph, "state_ms": 1.9}]}, 2.0, None) is None
    assert over_budget({"options": [], "export_failed": "parity"}, 2.0, None) == (False, "its export failed (parity)")


def test_a_graph_is_judged_with_its_networks_timing_before_the_seeds(capsys):
    """Seeds and weight averages change a network's weights, not its latency: the timing of its graph before the
    seeds and the one after are two timings of one graph. A cat/dog run timed Lite0 at 144 px 1.56-1.60 ms in the
    screen's machine state before its seeds (1.53 ms budget), then 2.32 ms with the machine 1.6x slower, and chose
    it at that timing scaled (1.43 ms): the figure timed in the screen's state now decides."""
    from fm2edge.automate.sizes import within_budget

    int8 = {"candidate": "m@144", "precision": "int8", "int8_recipe": "first-last-fp32", "mb": 3.8}
    in_state = {**int8, "p50_ms": 1.56, "reference_ms": 2.2}  # timed in the screen's state (reference unchanged)
    scaled = {**int8, "p50_ms": 2.32, "reference_ms": 3.5, "state_ms": 1.43}
    judged = with_earlier(scaled, in_state, 1.53)
    assert judged["p50_ms"] == 1.56 and judged["earlier_ms"] == 1.56 and "state_ms" not in judged
    assert not within_budget(judged, 1.53, None) and within_budget(scaled, 1.53, None)
    # the quieter of the two timings stands, within the budget or not
    assert with_earlier({**int8, "p50_ms": 1.7}, {**int8, "p50_ms": 1.5}, 1.53)["p50_ms"] == 1.5
    assert with_earlier({**int8, "p50_ms": 1.5}, {**int8, "p50_ms": 1.7}, None) == {
        **int8, "p50_ms": 1.5, "earlier_ms": 1.7, "timings_ms": [1.5, 1.7]}
    # both timed in slower states: the figure scaled from the one nearer the screen's state
    nearer = {**int8, "p50_ms": 1.9, "reference_ms": 2.6, "state_ms": 1.6}
    assert with_earlier(scaled, nearer, 1.53)["state_ms"] == 1.6
    assert with_earlier(nearer, scaled, 1.53)["reference_ms"] == 2.6
    # the final graph timed in the screen's state and over: a scaled figure from before does not overrule it
    assert "state_ms" not in with_earlier({**int8, "p50_ms": 1.6, "reference_ms": 2.2}, nearer, 1.53)
    finalist = {"candidate": "m@144", "options": [scaled, {**int8, "precision": "fp32", "int8_recipe": None,
                                                           "p50_ms": 3.0}]}
    plan = {"respaced": {"seeds": {"timings": {"m@144": [in_state]}}}}
    (out,) = judged_with_earlier(AutoJob(auto=AutoConfig(latency_ms=1.53)), plan, [finalist])
    assert out["options"][0]["p50_ms"] == 1.56 and "earlier_ms" not in out["options"][1]  # fp32 had no timing before
    assert ("m@144 int8 (first-last-fp32): judged 1.56 ms with its timing before the seeds (1.56 ms), not 1.43 ms: "
            "over it") in capsys.readouterr().out
    assert choose([out], 1.53, None) is None
    # a finalist exported only once keeps its options
    assert judged_with_earlier(AutoJob(auto=AutoConfig(latency_ms=1.53)), {}, [dict(finalist)])[0]["options"][0] \
        == out["options"][0]


def test_a_finalist_far_over_the_budget_before_its_seeds_is_not_averaged_with_the_teacher(monkeypatch, capsys):
    """Its average with the teacher's weights is the same network, as slow: not worth its soup stage and export."""
    import fm2edge.models.io
    from fm2edge.automate import soups

    # the verdicts seeds_bought gave: 152 px 41% over a 1.88 ms budget, 144 px 4% over (timings move by that much),
    # 128 px's export failed
    over = {"pypi:efficientnet_lite0@152": "its exported graphs are over the 1.88 ms budget",
            "pypi:efficientnet_lite0@144": "its exported graphs are just over the 1.88 ms budget",
            "pypi:efficientnet_lite0@128": "its export failed (parity)"}
    plan = {"teacher": {"folder": "teacher"}, "respaced": {"seeds": {
        "over_budget": over, "far_over": ["pypi:efficientnet_lite0@152", "pypi:efficientnet_lite0@128"]}}}
    job = AutoJob(auto=AutoConfig(latency_ms=1.88))
    assert far_over(plan, "pypi:efficientnet_lite0@152").startswith("its exported graphs are over the 1.88 ms")
    assert far_over(plan, "pypi:efficientnet_lite0@128") == "its export failed (parity)"
    assert far_over(plan, "pypi:efficientnet_lite0@144") is None
    assert far_over(plan, "pypi:efficientnet_lite0@160") is None  # not exported before its seeds
    assert far_over({}, "pypi:efficientnet_lite0@152") is None  # no seeds were bought
    averaged = []
    monkeypatch.setattr(fm2edge.models.io, "model_meta",
                        lambda folder: {"name": "pypi:efficientnet_lite0", "preprocess": {"size": 224}})
    monkeypatch.setattr(soups, "run_one_stage", lambda root, name, kind, args: averaged.append(name) or {})
    monkeypatch.setattr(soups, "averaged_entry", lambda job, plan, folder, result, held=None: {})
    monkeypatch.setattr(soups, "replace_if_as_good", lambda *args: False)
    trained = [{"candidate": f"pypi:efficientnet_lite0@{s}", "rung": 2, "folder": f"/r/student-{s}"}
               for s in (152, 144, 128)]
    average_with_teacher(job, Path("/r"), plan, trained)
    assert averaged == ["average-student-144"]
    assert "pypi:efficientnet_lite0@152 is not averaged with the teacher's weights: its exported graphs are over" in \
        capsys.readouterr().out


def test_the_budget_is_said_with_every_limit_that_was_set():
    every = AutoConfig(latency_ms=2.0, max_mb=5.0, max_params=100_000)
    assert budget_text(every) == "2 ms batch-1 latency, 5 MB, 100,000 parameters"
    assert budget_sentence(every) == "2 ms batch-1 latency, 5 MB and 100,000 parameters"
    assert budget_sentence(AutoConfig(latency_ms=2.6)) == "2.6 ms batch-1 latency"
    unbounded = AutoConfig(latency_ms=None)
    assert budget_text(unbounded) == "no limits" and budget_sentence(unbounded) == ""


def test_only_students_of_the_teachers_architecture_at_half_its_input_or_more_are_averaged_with_it():
    assert averages_with_teacher("pypi:efficientnet_lite0@112", "pypi:efficientnet_lite0", 224)
    assert not averages_with_teacher("pypi:efficientnet_lite0@96", "pypi:efficientnet_lite0", 224)  # -1.1 points
    assert not averages_with_teacher("student:small_cnn@128", "student:small_cnn", 128)  # from random weights
    assert not averages_with_teacher("timm:mobilenetv3_small_100@224", "pypi:efficientnet_lite0", 224)


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def fake_ladder(passes: float):
    """A budget of ``passes`` student image-passes; each teacher view costs three of them; one rung."""
    def ladder(extra: int, views: int):
        images = 200 + extra
        left = passes - 3 * views * images
        epochs = min(30, int(left // images))
        return ([{"candidates": 1, "epochs": epochs}] if epochs >= 1 else []), 3 * views * images, left
    return ladder


def test_the_unlabelled_pool_is_cut_until_the_finalists_get_their_epochs_and_grown_when_they_have_time_over():
    # the teacher's share buys one view of all 8,000: the finalist would see each image once; halved until it
    # trains at least 10 epochs
    cut = plan_pool(200, 8000, 4, 8200, 10, lambda n: 30, fake_ladder(40_000))
    assert cut["reason"] == "cut" and cut["wanted"] == 8000
    assert MIN_UNLABELED <= cut["extra"] < 8000 and sum(r["epochs"] for r in cut["rungs"]) >= 10
    # plenty of time: everything the share buys, at every view
    bought = plan_pool(200, 8000, 4, 4 * 8200, 10, lambda n: 30, fake_ladder(10_000_000))
    assert (bought["reason"], bought["extra"], bought["views"]) == ("bought", 8000, 4)
    # a share that buys 100 images, students with time over: one view each of the most images that keep 10 epochs
    # (passes >= 13 x images: 200 + extra <= 3,076), found by bisection to within 1% of the pool
    grown = plan_pool(200, 8000, 4, 300, 10, lambda n: 10, fake_ladder(40_000))
    assert grown["reason"] == "grown" and grown["views"] == 1
    assert 2876 - 80 <= grown["extra"] <= 2876 and grown["rungs"][0]["epochs"] >= 10


def test_the_rungs_as_run_are_the_plans_re_sized_then_the_extension():
    plan = {"finalists": 2,
            "rungs": [{"candidates": 4, "epochs": 1, "seconds": 300.0},
                      {"candidates": 2, "epochs": 2, "seconds": 600.0}],
            "respaced": {"1": {"epochs": [3]}, "extension": {"epochs": 7}}}
    rungs = rungs_as_run(plan)
    assert [(r["candidates"], r["epochs"], r["planned"]) for r in rungs] == [(4, 1, 1), (2, 3, 2), (2, 7, None)]
    assert rungs[-1]["extension"] and not rungs[0].get("extension")
    assert rungs_as_run({**plan, "respaced": {"1": {"epochs": []}}}) == rungs[:1]  # the search ended at rung 0


FL_FASTEST = {"recipe": "first-last-fp32", "layouts_ms": {"minmax": 1.9, "first-last-fp32": 1.45}}


@pytest.mark.parametrize("agreements,screened,latency_ms,recipes", [
    # not screened: percentile in the all-int8 layout, skipped where min-max's graph of that layout answers as fp32
    ((1.0, 0.9), None, None, ["minmax", "first-last-fp32"]),
    ((0.9, 1.0), None, None, ["minmax", "first-last-fp32", "percentile"]),
    ((0.9, 0.95), None, None, ["minmax", "first-last-fp32", "percentile"]),
    # screened fastest with the first and last layers in fp32: that layout first, percentile in it
    ((1.0, 0.95), FL_FASTEST, 2.0, ["first-last-fp32", "minmax", "percentile-first-last-fp32"]),
    ((0.95, 1.0), FL_FASTEST, 2.0, ["first-last-fp32", "minmax"]),
    ((0.95, 0.95), FL_FASTEST, None, ["first-last-fp32", "minmax", "percentile-first-last-fp32"]),
    # the all-int8 layout screened over the budget (beyond the screen's tolerance): no calibration makes it faster
    ((1.0, 0.95), FL_FASTEST, 1.5, ["first-last-fp32", "percentile-first-last-fp32"]),
    # both over: the first export still writes the fp32 graph
    ((0.95, 0.95), FL_FASTEST, 1.2, ["first-last-fp32"]),
])
def test_int8_recipes_run_fastest_layout_first_and_percentile_in_it_where_min_max_strays(
        agreements, screened, latency_ms, recipes, monkeypatch, tmp_path, capsys):
    """The layout the screen timed fastest is exported first (with the fp32 graph), a layout screened over the
    latency budget is left out, and the slow int8 recipe (histograms) runs in the fastest layout only where that
    layout's min-max graph disagrees with the fp32 graph on some validation image; each export is a stand-in
    recording its recipe."""
    import numpy as np

    import fm2edge.automate.exports as exports
    import fm2edge.models.io

    ran = []
    agreement = {"minmax": agreements[0], "first-last-fp32": agreements[1], "percentile": 1.0,
                 "percentile-first-last-fp32": 1.0}

    def export_stage(root, name, command, cfg):
        recipe = ("percentile" if cfg["export"].get("calibration_method") == "percentile" else "minmax") + (
            "-first-last-fp32" if cfg["export"]["fp32_layers"] == "first_last" else "")
        recipe = {"minmax-first-last-fp32": "first-last-fp32"}.get(recipe, recipe)
        ran.append(recipe)
        timing = {"quiet_p50_ms": 1.0, "p50_ms": 1.0, "p90_ms": 1.1, "spread": 1.1}
        return {"latency_batch1": {"onnx_fp32": timing, "onnx_int8": timing},
                "validation_acc": {"onnx_fp32": 0.9, "onnx_int8": 0.9},
                "size_bytes": {"onnx_fp32": 4e6, "onnx_int8": 1e6},
                "files": {"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"},
                "int8_agreement_with_fp32": agreement[recipe]}

    monkeypatch.setattr(exports, "run_one_stage", export_stage)
    monkeypatch.setattr(exports, "graph_probabilities", lambda model, onnx, images: np.eye(2)[[0, 1, 1]])
    monkeypatch.setattr(fm2edge.models.io, "load_classifier", lambda folder: None)
    f = {"candidate": "m@128", "folder": str(tmp_path / "m"), "params": 10, **({"int8": screened} if screened else {})}
    options = exports.exported_options(AutoJob(auto=AutoConfig(latency_ms=latency_ms)), tmp_path, f, images=[0, 1, 2])
    assert ran == recipes
    assert [o["int8_recipe"] for o in options if o["precision"] == "int8"] == recipes
    assert [o["precision"] for o in options].count("fp32") == 1
    percentile = {"minmax": "percentile", "first-last-fp32": "percentile-first-last-fp32"}[
        (screened or {}).get("recipe", "minmax")]
    skipped = percentile not in recipes and latency_ms in (None, 2.0)
    assert ("percentile calibration skipped" in capsys.readouterr().out) == skipped
    assert list(int8_recipes(f, latency_ms)) == [*(r for r in recipes if r != percentile), *(
        [] if latency_ms == 1.2 else [percentile])]


def test_the_teachers_labels_for_held_out_images_are_the_same_through_its_graph(teacher, tmp_path):
    """The teacher labels the held-out images through its ONNX Runtime graph, as its cached outputs are made, and
    gives the labels PyTorch gives."""
    import torch

    from fm2edge.automate.heldout import predicted_labels
    from fm2edge.config import DataConfig
    from fm2edge.data import load_data

    images = load_data(DataConfig(source="digits"))[2]
    cpu = torch.device("cpu")
    through_graph = predicted_labels(str(teacher), images, cpu, tmp_path / "graphs")
    assert list((tmp_path / "graphs").glob("*/backbone.onnx"))
    assert (through_graph == predicted_labels(str(teacher), images, cpu)).all()


def test_a_teachers_speed_is_its_fastest_of_repeated_timings(teacher, monkeypatch, tmp_path):
    """A busy moment during one timing pass priced a teacher's cached outputs at over twice their cost: the pass
    is repeated and the fastest counts."""
    import torch

    import fm2edge.automate.teachers as teachers
    from fm2edge.config import DataConfig
    from fm2edge.data import load_data

    val = load_data(DataConfig(source="digits"))[1]
    passes = iter([2.0, 0.5, 4.0])
    monkeypatch.setattr(teachers, "seconds_to_predict", lambda model, data, device, graph: next(passes))
    scored = teachers.score_teachers([{"teacher": "t", "folder": str(teacher)}], val, torch.device("cpu"),
                                     tmp_path / "graphs")[0]
    assert scored["images_per_s"] == max(len(val), teachers.SPEED_IMAGES) / 0.5
    assert scored["forward"] == "onnxruntime"  # a CNN teacher on a CPU is timed as its cache build runs it
    assert 0 <= scored["val_acc"] <= 1


def test_the_test_split_is_also_scored_without_its_near_copies(monkeypatch):
    """A test image that looks like a training image (the same photo, re-saved) flatters both models: read once, the
    test split is also scored without such images."""
    import torch

    import fm2edge.models.io
    import fm2edge.train
    from fm2edge.automate import results as auto
    from fm2edge.data.dataset import ImageData

    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.integers(0, 256, (16, 3, 4, 4), dtype=np.uint8))
    images = torch.nn.functional.interpolate(small.float(), size=32, mode="bicubic").clamp(0, 255).to(torch.uint8)
    train = ImageData(images[:10], torch.arange(10) % 2, ["a", "b"], "train")
    held = images[10:].clone()
    held[0] = (images[3].int() + 1).clamp(0, 255).to(torch.uint8)  # training image 3, one level brighter
    test = ImageData(held, torch.tensor([1, 0, 1, 0, 1, 0]), ["a", "b"], "test")
    chosen = np.array([1, 1, 1, 0, 1, 0])  # right but on image 1
    teacher = np.array([1, 0, 1, 0, 0, 0])  # right but on image 4
    monkeypatch.setattr(fm2edge.models.io, "load_classifier", lambda folder: torch.nn.Identity())
    monkeypatch.setattr(auto, "graph_probabilities", lambda model, path, x: np.eye(2)[chosen])
    monkeypatch.setattr(fm2edge.train, "predict", lambda model, data, batch, device, **kw: torch.eye(2)[teacher])
    out = auto.read_test_once({"folder": "c", "onnx": "c/model.onnx"}, {"folder": "t"}, test, train, "cpu")
    assert out["near_copies"] == 1
    assert out["chosen_test_acc"] == pytest.approx(5 / 6) and out["teacher_test_acc"] == pytest.approx(5 / 6)
    assert out["chosen_test_acc_without_near_copies"] == pytest.approx(4 / 5)
    assert out["teacher_test_acc_without_near_copies"] == pytest.approx(4 / 5)
    # the teacher's own fp32 graph chosen: its answers are the teacher's, the split is not read twice
    monkeypatch.setattr(fm2edge.train, "predict", lambda *a, **kw: pytest.fail("the teacher read the split again"))
    itself = auto.read_test_once({"folder": "c", "onnx": "c/model.onnx"}, {"folder": "t"}, test, train, "cpu",
                                 teacher_itself=True)
    assert itself["teacher_test_acc"] == itself["chosen_test_acc"] == pytest.approx(5 / 6)


def test_the_teacher_reads_the_test_split_through_its_graph(teacher, tmp_path):
    """The teacher reads the test split as its cached outputs are made (its ONNX Runtime graph on a CPU: 2,000
    photos took 54 s in PyTorch's default layout), and its answers are those PyTorch gives."""
    import torch

    from fm2edge.automate import results as auto
    from fm2edge.config import DataConfig
    from fm2edge.data import load_data
    from fm2edge.export import export_deployable
    from fm2edge.models.io import load_classifier

    train, _, test = load_data(DataConfig(source="digits"))
    onnx = export_deployable(load_classifier(str(teacher)), tmp_path / "model.onnx")
    cpu = torch.device("cpu")
    through_graph = auto.read_test_once({"folder": str(teacher), "onnx": str(onnx)}, {"folder": str(teacher)}, test,
                                        train, cpu, tmp_path / "graphs")
    assert list((tmp_path / "graphs").glob("*/backbone.onnx"))
    in_torch = auto.read_test_once({"folder": str(teacher), "onnx": str(onnx)}, {"folder": str(teacher)}, test,
                                   train, cpu)
    assert through_graph["teacher_test_acc"] == in_torch["teacher_test_acc"]
    assert through_graph["chosen_test_acc"] == pytest.approx(through_graph["teacher_test_acc"], abs=1 / len(test))
