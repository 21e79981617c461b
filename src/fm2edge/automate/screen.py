"""The candidates measured on this machine and screened against the latency budget: a second look where the
machine ran slower, larger inputs that a smaller one already puts over the budget passed over, each pretrained
backbone's input fitted to the budget, and a hedge one size down."""

from __future__ import annotations

from fm2edge.automate.config import AutoJob
from fm2edge.automate.measure import Candidate, latency_cache, measure
from fm2edge.automate.sizes import HEDGE_MARGIN, fitted_sizes, precisions_within

# A candidate measured up to this much over the latency budget is kept for training: a screen of 30 runs is noisier
# than the finalists' export (100 runs of the shipped graph), which decides.
SCREEN_TOLERANCE = 0.10


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


# A candidate measured over the latency budget while the machine ran slower than it runs once every candidate is
# measured (the reference timing, :func:`fm2edge.timing.reference_ms`, taken again), and that the difference would
# bring within it, is measured again before the screen, keeping the quieter of its two figures. On a shared 2-core
# AVX2 EPYC the reference took 2.13 ms while the candidates were first measured and 1.13 ms minutes later; Lite0 at
# 112 px measured 8.37 ms fp32 then, 4.38 ms on a quiet machine, and was dropped from a 5 ms budget.
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
