"""What an `fm2edge auto` run hands back: the test split read once for the chosen graph and for the teacher,
``best/`` with its model card, the leaderboard, where the minutes went, and the summary it prints."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from fm2edge.automate.budget import budget_sentence
from fm2edge.automate.config import AutoJob
from fm2edge.automate.exports import graph_probabilities, screened_ms
from fm2edge.automate.heldout import predicted_labels
from fm2edge.automate.ranking import METRIC_NAMES, choose, graph_score, option_score
from fm2edge.automate.sizes import within_budget
from fm2edge.automate.soups import AVERAGE_STAGE, SEED_STAGE, SOUP_STAGE
from fm2edge.automate.teachers import TEACHER_STAGE
from fm2edge.config import to_dict
from fm2edge.data.summary import IMBALANCED
from fm2edge.runs import METRICS_FILE, atomic_dir, atomic_write_json, atomic_write_text, read_metrics
from fm2edge.timing import timings_text

BEST_SETTINGS = "auto.yaml"  # RUN/best/auto.yaml: the settings of the run that chose it
AUTO_FILE = "auto.json"  # RUN/auto.json: the choice, its test figures and the leaderboard (read again by a rerun)
# A run whose finalists reached --auto.max_epochs within this share of --auto.minutes says where the rest could go
# (the offline default, `fm2edge auto --auto.minutes 8` on digits, stopped so at 4.9 minutes and had said nothing,
# the note then waiting for a run that used under half).
EARLY_FINISH_SHARE = 0.75


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


def save_plots(job: AutoJob, root: Path, plan: dict, finalists: list[dict], chosen: dict, test: dict) -> None:
    """ROOT/plots: every finalist's graphs by latency against the score that chose (agreement with the teacher on the
    held-out images, or validation), the budget and the choice marked; and the test split read once, class by
    class, the chosen graph beside the teacher."""
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure

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
