"""Fit each pretrained backbone's input size to the latency budget: where the budget falls between two listed sizes
of one backbone (or below the smallest), the sizes between them are bisected in steps of SIZE_STEP px, each measured
like any candidate, and the largest within the budget joins the candidates.

Why: a pretrained backbone below the size it was pretrained at scores higher with more pixels (the teacher's own
Lite0 weights on 800 unseen cats/dogs photos: 94.4% at 112 px, 96.5% at 160 px), and the listed sizes are 16-64 px
apart, so a budget between two of them wasted up to a step (1.64 ms on a 2-core AMX Xeon: Lite0 at 96 px, 1.29 ms
as int8, where 104 px measures 1.44 ms); and on a slower CPU a budget below the smallest listed size left only
from-scratch students, 20-25 points behind on small photo folders, where Lite0 at 64-88 px fits."""

from __future__ import annotations

import math
from collections.abc import Callable

from fm2edge.automate.measure import Candidate

SIZE_STEP = 8
SMALLEST_SIZE = 64
MOST_PROBES = 4  # per backbone: bisects 16 steps of SIZE_STEP (measuring one costs about 2 s for Lite0)
# Where the size the search adds is the backbone's only one within the budget and measured within HEDGE_MARGIN of
# it, the next size down joins the candidates too: an exported graph times again, and on a 2-core AVX2 EPYC Lite0 at
# 72 px screened at 2.59 ms under a 2.6 ms budget, timed 2.64-2.68 ms in its export, and the run fell back to a
# small CNN 23 points below it on the Kaggle-style pets folder, where the same backbone at 64 px had fitted.
HEDGE_MARGIN = 0.10


def within_budget(figures: dict, latency_ms: float | None, max_mb: float | None) -> bool:
    """Whether one graph's measured figures (``p50_ms``, ``mb``: a screened precision or an exported option) are
    within a latency (ms) and file-size (MB) bound: the one place that says what "within the budget" means. An
    exported graph timed while the machine ran slower than when its candidate was screened is judged by its figure
    in the screen's state (``state_ms``, :func:`fm2edge.automate.exports.retime_disputed`): figures taken in different
    states are not compared with each other or with the budget."""
    return (latency_ms is None or judged_ms(figures) <= latency_ms) and (max_mb is None or figures["mb"] <= max_mb)


def judged_ms(figures: dict) -> float:
    """The latency (ms) a graph is judged by (:func:`within_budget`): its figure in the screen's machine state where
    it was timed in a slower one, else its measured median."""
    return figures.get("state_ms", figures["p50_ms"])


def precisions_within(f: dict, latency_ms: float | None, max_mb: float | None) -> list[str]:
    """The precisions (fp32, int8) of a measured candidate ``f`` within a latency (ms) and file-size (MB) bound."""
    return [p for p in ("fp32", "int8") if within_budget(f[p], latency_ms, max_mb)]


def next_probe(fits: dict[int, bool]) -> int | None:
    """The next size to measure in a bisection for the largest size within the budget, given the sizes measured so
    far (``fits``: size -> within the budget): the middle multiple of SIZE_STEP between the largest size that fits
    and the smallest larger one that does not (from SMALLEST_SIZE when none fits); None when every size measured
    fits or no size is left between."""
    low = max((s for s, ok in fits.items() if ok), default=None)
    over = [s for s, ok in fits.items() if not ok and (low is None or s > low)]
    if not over:
        return None
    start = SMALLEST_SIZE if low is None else low + 1
    between = [s for s in range(math.ceil(start / SIZE_STEP) * SIZE_STEP, min(over), SIZE_STEP) if s not in fits]
    return between[len(between) // 2] if between else None


def fit_backbone(measured: dict[int, dict], fits: Callable[[dict], bool], measure: Callable[[int], dict],
                 most: int = MOST_PROBES) -> list[dict]:
    """The figures of the sizes measured to find one backbone's largest size within the budget, in the order
    measured (``measured``: its listed sizes' figures; ``measure(size)``: a size's figures)."""
    known = {s: fits(f) for s, f in measured.items()}
    probes = []
    while len(probes) < most and (size := next_probe(known)) is not None:
        probes.append(measure(size))
        known[size] = fits(probes[-1])
    return probes


def fitted_sizes(figures: list[dict], latency_ms: float | None, max_mb: float | None,
                 measure: Callable[[Candidate], dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(added, probed, searches) for the measured candidates ``figures``: for each pretrained backbone, the largest
    size the bisection found within the budget (added to the candidates), the other sizes it measured (each with why
    it is not a candidate: over the budget, or smaller than the one added) and a summary per backbone for the report
    (its ``text`` a line to print). Nothing is searched without a latency budget."""
    if latency_ms is None:
        return [], [], []
    by_name: dict[str, dict[int, dict]] = {}
    for f in figures:
        cand = Candidate.parse(f["candidate"])
        if cand.pretrained:
            by_name.setdefault(cand.name, {})[cand.size] = f

    def fits(f: dict) -> bool:
        return bool(precisions_within(f, latency_ms, max_mb))

    added, probed, searches = [], [], []
    for name, measured in by_name.items():
        probes = fit_backbone(measured, fits, lambda size, n=name: measure(Candidate(n, size)))
        if not probes:
            continue
        within = [f for f in probes if fits(f)]
        best = max(within, key=lambda f: Candidate.parse(f["candidate"]).size, default=None)
        hedge = None
        if best is None and not any(fits(f) for f in measured.values()):
            # no size of it fits: the smallest measured goes to the screen, which keeps it where it is only a little
            # over (as it keeps a listed size), rather than leaving only students from random weights
            best = min(probes, key=lambda f: Candidate.parse(f["candidate"]).size)
        elif best is not None and not any(fits(f) for f in measured.values()) and thin(best, latency_ms, max_mb):
            hedge = next_size_down(best, probes, lambda size, n=name: measure(Candidate(n, size)))
            if hedge is not None and hedge not in probes:
                probes.append(hedge)
            if hedge is not None and not fits(hedge):
                hedge = None
        for f in probes:
            if f is best or f is hedge:
                added.append(f)
            else:  # not left to the screen, which keeps sizes a little over the budget
                why = (f"{best['candidate']} fits the budget too, with more pixels" if fits(f) else
                       f"fp32 {f['fp32']['p50_ms']:.2f} ms / int8 {f['int8']['p50_ms']:.2f} ms, over the budget")
                probed.append({**f, "why": f"measured while fitting the input size to the budget: {why}"})
        search = {"backbone": name, "listed": sorted(measured), "added": None if best is None else
                  Candidate.parse(best["candidate"]).size, "screened": best is not None and not fits(best),
                  "hedge": None if hedge is None else Candidate.parse(hedge["candidate"]).size,
                  "largest_listed_within": max((s for s, f in measured.items() if fits(f)), default=None),
                  "probes": [{"size": Candidate.parse(f["candidate"]).size, "fits": fits(f),
                              "fp32_ms": f["fp32"]["p50_ms"], "int8_ms": f["int8"]["p50_ms"]} for f in probes]}
        searches.append({**search, "text": search_text(search)})
    return added, probed, searches


def thin(f: dict, latency_ms: float, max_mb: float | None) -> bool:
    """Whether every precision of ``f`` within the budget measured within HEDGE_MARGIN of the latency budget."""
    return all(f[p]["p50_ms"] > latency_ms * (1 - HEDGE_MARGIN) for p in precisions_within(f, latency_ms, max_mb))


def next_size_down(best: dict, probes: list[dict], measure: Callable[[int], dict]) -> dict | None:
    """The figures of the size SIZE_STEP px under ``best``'s: a probe's where the search measured it, else measured
    now; None under SMALLEST_SIZE."""
    size = Candidate.parse(best["candidate"]).size - SIZE_STEP
    if size < SMALLEST_SIZE:
        return None
    return next((f for f in probes if Candidate.parse(f["candidate"]).size == size), None) or measure(size)


def search_text(s: dict) -> str:
    """One line on a backbone's size search, for the console and the report."""
    probes = ", ".join(f"{p['size']} px {min(p['fp32_ms'], p['int8_ms']):.2f} ms{'' if p['fits'] else ' (over)'}"
                       for p in s["probes"])
    found = (f"no size down to {SMALLEST_SIZE} px fits the budget, so {s['added']} px is screened like the listed "
             f"sizes" if s.get("screened") else
             f"{s['added']} px added, the largest within the budget" if s["added"] is not None else
             f"none fits, so {s['largest_listed_within']} px (listed) is the largest within the budget"
             if s.get("largest_listed_within") is not None else f"no size down to {SMALLEST_SIZE} px fits the budget")
    hedge = (f"; {s['hedge']} px added too, as {s['added']} px measured within {HEDGE_MARGIN:.0%} of the budget "
             f"(its export is timed again)" if s.get("hedge") else "")
    return f"{s['backbone']} fitted to the budget: measured {probes}; {found}{hedge}"


def fastest_pretrained(measured: list[dict], kept: list[dict]) -> dict | None:
    """Where the budget keeps no student that starts from pretrained weights, the fastest pretrained graph measured
    (``candidate``, ``precision``, ``p50_ms``) and the budget that would let it in; None where one is kept or none
    was measured. Students from random weights trailed the teacher by 20-32 points on photo folders of a few
    hundred images (docs/auto.md), so a user should know what the last few tenths of a millisecond cost."""
    if any(Candidate.parse(f["candidate"]).pretrained for f in kept):
        return None
    graphs = [(f[p]["p50_ms"], p, f["candidate"]) for f in measured if Candidate.parse(f["candidate"]).pretrained
              for p in ("fp32", "int8")]
    if not graphs:
        return None
    ms, precision, candidate = min(graphs)
    return {"candidate": candidate, "precision": precision, "p50_ms": ms,
            "latency_ms": math.ceil(ms * (1 + BUDGET_MARGIN) * 10) / 10}


# what a budget suggested to a user adds to the graph's measured latency: its exported graph is timed again, and one
# graph's timings moved by up to a tenth between runs on a quiet machine
BUDGET_MARGIN = 0.15


def fastest_pretrained_text(f: dict) -> str:
    """One line for the console and the report on :func:`fastest_pretrained`'s answer."""
    return (f"no student that starts from pretrained weights fits the budget here: the fastest, {f['candidate']} as "
            f"{f['precision']}, measured {f['p50_ms']:.2f} ms; students from random weights trail the teacher by "
            f"20-30 points on folders of a few hundred photos; --auto.latency_ms {f['latency_ms']:g} lets it in")
