"""`fm2edge auto` on a dataset with a budget, and the row of the docs' table it makes: the chosen model, its
validation and test accuracy, its latency measured in the run against the budget, the teacher's test accuracy, and
the minutes against the time budget, with the machine.

    python benchmarks/auto_study.py --source ../shared/data/catsdogs128 --per_class 100 \\
        --teacher_factor 3 --minutes 30 --root /tmp/auto-study [--unlabeled ../shared/data/catsdogs128-unlabeled]
    python benchmarks/auto_study.py --source ../shared/data/cifar10 --per_class 500 --left_out \
        --latency_ms 1 --minutes 60 --root /tmp/auto-study --name cifar5000

``--teacher_factor F`` sets the latency budget to the teacher's own fp32 ONNX batch-1 latency at 224 px on this
machine divided by F (measured here first, the same way auto measures its students); ``--latency_ms`` sets it
directly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def latency_text(budget_ms: float | None) -> str:
    """The latency budget as the table's row says it."""
    return "no latency bound" if budget_ms is None else f"{budget_ms:.2f} ms"


def teacher_latency(job, teacher: str, num_classes: int) -> float:
    """The teacher's fp32 ONNX batch-1 latency at 224 px, measured (and cached) exactly as auto measures its
    candidates, so the budget and the candidates' figures come from the machine in one state."""
    from fm2edge.automate.measure import Candidate, latency_cache, measure
    from fm2edge.timing import reference_ms

    # a cached figure only while the machine runs the reference timing as fast as when it was taken (as auto does)
    return measure(Candidate(teacher, 224), num_classes, job.auto.threads, latency_cache(job.data),
                   reference_ms(job.auto.threads))["fp32"]["p50_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--per_class", type=int)
    ap.add_argument("--max_test", type=int)
    ap.add_argument("--unlabeled")
    ap.add_argument("--left_out", action="store_true",
                    help="distil on the training images --per_class leaves out, without their labels")
    ap.add_argument("--teacher", default="pypi:efficientnet_lite0")
    ap.add_argument("--teacher_factor", type=float)
    ap.add_argument("--latency_ms", type=float)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--students", nargs="*")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--root", default="/tmp/auto-study")
    ap.add_argument("--name", default="study")
    ap.add_argument("--seed", type=int, default=0, help="--auto.seed: the students' and teachers' training seed")
    a = ap.parse_args()

    from fm2edge.automate import AutoJob, auto_job
    from fm2edge.data import load_data
    from fm2edge.device import cpu_features
    from fm2edge.parsing import job_from_class

    data = {"source": a.source, **({"per_class": a.per_class} if a.per_class else {}),
            **({"max_test": a.max_test} if a.max_test else {})}
    budget = a.latency_ms
    if a.teacher_factor:
        probe_job = job_from_class(AutoJob, "auto", {"data": data, "auto": {"threads": a.threads}})
        measured = teacher_latency(probe_job, a.teacher, load_data(probe_job.data)[0].num_classes)
        budget = measured / a.teacher_factor
        print(f"teacher {a.teacher} at 224 px: {measured:.2f} ms fp32 ONNX batch 1; budget {budget:.2f} ms")
    auto = {"latency_ms": budget, "minutes": a.minutes, "teachers": [a.teacher],
            **({"unlabeled_source": a.unlabeled} if a.unlabeled else {}),
            **({"unlabeled_left_out": True} if a.left_out else {}),
            **({"students": a.students} if a.students else {}), **({"threads": a.threads} if a.threads else {}),
            "seed": a.seed}
    t0 = time.perf_counter()
    result = auto_job(job_from_class(AutoJob, "auto", {"data": data, "auto": auto,
                                                       "run": {"root": a.root, "name": a.name}}))
    wall = (time.perf_counter() - t0) / 60
    c, t = result["chosen"], result["test"]
    unlabeled = a.unlabeled or ("the training images left out" if a.left_out else None)
    row = {"data": a.source, "per_class": a.per_class, "unlabeled": unlabeled, "budget_ms": budget,
           "minutes_budget": a.minutes, "chosen": f"{c['candidate']} {c['precision']}", "val_acc": c["val_acc"],
           "p50_ms": c["p50_ms"], "test_acc": t["chosen_test_acc"], "teacher_test_acc": t["teacher_test_acc"],
           "teacher_val_acc": result["teacher"]["val_acc"], "minutes": result["minutes"], "wall_minutes": wall,
           "unlabeled_images": result["unlabeled_images"], "views": result["views"], "seed": a.seed,
           "held_out_images": result["held_out_images"],
           "machine": cpu_features(), "date": time.strftime("%Y-%m-%d")}
    Path(a.root, a.name, "study_row.json").write_text(json.dumps(row, indent=2))
    print("\n| data | budget | chosen | validation | latency (p50) | test | teacher test | minutes | machine |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.source}{f', {a.per_class}/class' if a.per_class else ''}"
          f"{f', + {unlabeled}' if unlabeled else ''} | {latency_text(budget)}, {a.minutes:g} min | {row['chosen']} | "
          f"{100 * c['val_acc']:.2f}% | {c['p50_ms']:.2f} ms | {100 * t['chosen_test_acc']:.2f}% | "
          f"{100 * t['teacher_test_acc']:.2f}% | {result['minutes']:.1f} | {row['machine']} |")


if __name__ == "__main__":
    main()
