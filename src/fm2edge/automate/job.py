"""`fm2edge auto`: plan, run and prove. The job reads as its steps; each training or export is an ordinary stage
(a run folder) cached like a recipe's, and the plan is written once, so a rerun after a kill resumes to the same
choice."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fm2edge.automate.budget import spent_before
from fm2edge.automate.config import AutoJob
from fm2edge.automate.exports import export_teacher, exported, fidelity_images, judged_with_earlier, with_fallbacks
from fm2edge.automate.heldout import held_out_images, ranking_pool_text
from fm2edge.automate.plan import make_plan, read_plan, rungs_as_run, settings, teacher_alone_text, too_short
from fm2edge.automate.ranking import METRIC_NAMES, choose, graph_score, tie_width
from fm2edge.automate.results import (
    AUTO_FILE,
    earlier_reads_text,
    earlier_test_reads,
    early_finish,
    leaderboard,
    leaderboard_csv,
    minutes_by_step,
    no_budget_text,
    passed_over_text,
    precision_text,
    print_summary,
    read_test_once,
    save_plots,
    write_best,
)
from fm2edge.automate.screen import hedge_text
from fm2edge.automate.soups import average_with_teacher, soup_of_seeds, soup_summary
from fm2edge.automate.students import finalists_of, train_students
from fm2edge.data.summary import class_imbalance, imbalance_text, per_class
from fm2edge.distill.teacher import graph_folder
from fm2edge.errors import Fm2EdgeError
from fm2edge.runs import atomic_write_json, atomic_write_text


def auto_root(job: AutoJob) -> Path:
    """The run's folder: --run.root / --run.name, or auto-<the data folder's name> there."""
    from fm2edge.results import slug

    return Path(job.run.root) / (job.run.name or slug(f"auto-{Path(job.data.source).name or 'data'}"))


def export_finalists(job: AutoJob, root: Path, trained: list[dict], plan: dict, images, held=None,
                     teacher_labels: list[int] | None = None) -> list[dict]:
    """The plan's finalists (:func:`finalists_of`), each with its :func:`exported_options`. A finalist whose export
    fails (its ONNX graph's probabilities stray from PyTorch's beyond the parity tolerance, say) is not a choice: it
    keeps no options and the reason under "export_failed", and the others are still judged."""
    return [exported(job, root, f, images, held, teacher_labels) for f in finalists_of(trained, plan)]


def planned(job: AutoJob, root: Path, data, started: float) -> tuple[dict, float]:
    """(plan, seconds earlier calls spent): the run's plan.json where its settings are this job's (a resumed run,
    its finished stages counted against the budget), else a new plan, written once."""
    plan_path = root / "plan.json"
    plan = read_plan(plan_path, root)
    if plan is not None and plan.get("settings") == settings(job):
        before = spent_before(root)
        atomic_write_json(plan_path, plan)  # where it is now, if the folder was moved
        print(f"resuming {root} with its plan ({len(plan['candidates'])} candidates, {before / 60:.1f} min spent)")
        return plan, before
    if plan is not None:
        print(f"the settings differ from those {root} was planned with: planning again (finished stages with "
              f"unchanged settings are reused)")
    plan = {**make_plan(job, root, data, started), "root": str(root)}
    atomic_write_json(plan_path, plan)
    return plan, 0.0


def print_notes(job: AutoJob, plan: dict, train, held) -> None:
    """What the user should know before the students train: validation too small to rank, imbalanced classes, the
    teacher, no latency budget, and how the candidates are ranked (held-out agreement, or ties on validation)."""
    if plan["selection"]["noisy"]:
        print(f"note: {plan['selection']['warning']}; students train a fixed schedule (their last epoch is kept)")
    if job.auto.metric == "accuracy" and (text := imbalance_text(class_imbalance(per_class(train)))):
        print(f"note: {text}: accuracy, which chooses here, favours the large classes; --auto.metric "
              f"balanced_accuracy chooses on the mean of the classes' accuracies")
    left_out = "".join(f"; {t['teacher']} left out: {t['why']}" for t in plan.get("teachers_left_out", []))
    figure = "validation balanced accuracy" if job.auto.metric == "balanced_accuracy" else "validation"
    print(f"teacher: {plan['teacher']['teacher']} ({100 * graph_score(plan['teacher']):.2f}% {figure}){left_out}")
    if job.auto.latency_ms is None:
        print("note: no latency budget (--auto.latency_ms): the most accurate model wins whatever its latency, the "
              "teacher itself included")
    if held is not None:
        print(f"note: the candidates are ranked by their agreement with the teacher on {len(held):,} unlabelled "
              f"images held out of training")
    elif (within := tie_width(plan)) is not None:
        pool = ranking_pool_text(plan.get("unlabeled_available", 0),
                                 bool(job.auto.unlabeled_source or job.auto.unlabeled_left_out))
        print(f"note: validation scores ({METRIC_NAMES[job.auto.metric]}) within {100 * within:.0f} points of the "
              f"best count as a tie, which goes to the students that start pretrained ({pool})")


def nothing_chosen(job: AutoJob, root: Path, finalists: list[dict]) -> Fm2EdgeError:
    """The error where no finalist is a choice: every export failed (each named with why), or none meets the budget
    once exported."""
    failed = [f"{f['candidate']}: {f['export_failed']}" for f in finalists if "export_failed" in f]
    if len(failed) == len(finalists):
        return Fm2EdgeError(f"no finalist could be exported: {'; '.join(failed)}")
    return Fm2EdgeError(f"no finalist meets the budget once exported (latency {job.auto.latency_ms:.3g} ms); see "
                        f"{root}/plan.json and the export folders; raise --auto.latency_ms or --auto.finalists")


def auto_job(job: AutoJob) -> dict:
    """Plan (measure, screen, teacher, epochs), train the students, export the finalists, choose, test once."""
    from fm2edge.data import load_data
    from fm2edge.device import resolve_device
    from fm2edge.report.job import ReportJob, write_pages

    started = time.perf_counter()
    root = auto_root(job)
    # what earlier runs here chose and read the test split for: read before --run.overwrite empties the folder, as
    # replacing the run does not undo the read
    previous = json.loads((root / AUTO_FILE).read_text()) if (root / AUTO_FILE).exists() else None
    if job.run.overwrite and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    data = load_data(job.data)
    plan, before = planned(job, root, data, started)
    held = (held_out_images(job, data[0], plan["held_out"]["images"]) if plan["held_out"]["images"] else None)
    print_notes(job, plan, data[0], held)
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
        raise nothing_chosen(job, root, finalists)
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
    save_plots(job, root, plan, finalists, chosen, test)
    write_pages(ReportJob(runs=[str(root)], title=f"{root.name}: the choice and every candidate"))
    print_summary(result)
    return result
