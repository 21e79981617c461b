"""Fitting a pretrained student's input size to the latency budget (pure pieces, with latencies made up)."""

from __future__ import annotations

from fm2edge.automate.budget import teacher_export_too_long
from fm2edge.automate.measure import Candidate
from fm2edge.automate.ranking import rank
from fm2edge.automate.sizes import (
    fastest_pretrained,
    fastest_pretrained_text,
    fit_backbone,
    fitted_sizes,
    next_probe,
    precisions_within,
    search_text,
)

LITE = "pypi:efficientnet_lite0"


def figures(label: str, ms: float, int8_ms: float | None = None) -> dict:
    return {"candidate": label, "params": 1000, "macs": 1, "fp32": {"p50_ms": ms, "mb": 4.0},
            "int8": {"p50_ms": ms if int8_ms is None else int8_ms, "mb": 1.0}}


def linear_latency(c: Candidate) -> dict:
    """A machine where a size of s px takes s / 64 ms in both precisions."""
    return figures(c.label, c.size / 64)


def test_the_bisection_measures_the_middle_size_between_what_fits_and_what_does_not():
    assert next_probe({96: True, 112: False}) == 104
    assert next_probe({96: True, 128: False}) == 112  # of 104, 112, 120
    assert next_probe({96: True, 104: True, 112: False}) is None  # nothing left between
    assert next_probe({96: False}) == 80  # below the smallest listed: 64, 72, 80, 88
    assert next_probe({64: False, 96: False}) is None  # not even the smallest size tried fits
    assert next_probe({96: True, 224: True}) is None  # everything listed fits: nothing to fit
    assert next_probe({100: True, 120: False}) == 112  # sizes are multiples of 8 (104, 112)


def test_the_largest_size_within_the_budget_is_found_between_two_listed_sizes_and_below_the_smallest():
    fits = lambda f: bool(precisions_within(f, 1.64, None))  # noqa: E731
    listed = {s: linear_latency(Candidate(LITE, s)) for s in (96, 112, 128)}
    probes = fit_backbone(listed, fits, lambda s: linear_latency(Candidate(LITE, s)))
    assert [f["candidate"] for f in probes] == [f"{LITE}@104"]  # 1.625 ms; 112 px takes 1.75
    fits = lambda f: bool(precisions_within(f, 1.2, None))  # noqa: E731
    probes = fit_backbone(listed, fits, lambda s: linear_latency(Candidate(LITE, s)))
    assert [f["candidate"] for f in probes] == [f"{LITE}@80", f"{LITE}@72"]  # 1.25 over, 1.125 within
    assert fit_backbone(listed, fits, lambda s: linear_latency(Candidate(LITE, s)), most=1) == probes[:1]


def test_a_size_fitted_just_within_the_budget_below_every_listed_size_brings_the_next_size_down_as_a_hedge():
    """Lite0 at 72 px screened at 2.59 ms under 2.6, timed over it in its export, and the run fell back to a small
    CNN: where the added size is the backbone's only one within the budget and within HEDGE_MARGIN of it, the next
    size down is measured and added too; with room to spare, or with a listed size within the budget, it is not."""
    listed = [linear_latency(Candidate(LITE, s)) for s in (96, 112, 128)]  # all over 1.15 ms
    measured = []

    def measure(c: Candidate) -> dict:
        measured.append(c.size)
        return linear_latency(c)

    added, probed, (search,) = fitted_sizes(listed, 1.15, None, measure)  # 72 px: 1.125 ms, within 2.2%
    assert measured == [80, 72, 64] and [f["candidate"] for f in added] == [f"{LITE}@72", f"{LITE}@64"]
    assert [p["candidate"] for p in probed] == [f"{LITE}@80"] and search["added"] == 72 and search["hedge"] == 64
    assert "64 px added too, as 72 px measured within 10% of the budget" in search["text"]
    roomy = lambda c: figures(c.label, 0.5 if c.size <= 72 else 2.0)  # noqa: E731 - 72 px far inside the budget
    added, _, (search,) = fitted_sizes(listed, 1.15, None, roomy)
    assert [f["candidate"] for f in added] == [f"{LITE}@72"] and search["hedge"] is None
    with_listed = [linear_latency(Candidate(LITE, s)) for s in (64, 96)]  # 64 px listed, within the budget
    added, _, (search,) = fitted_sizes(with_listed, 1.15, None, linear_latency)
    assert [f["candidate"] for f in added] == [f"{LITE}@72"] and search["hedge"] is None


def test_fitted_sizes_add_the_largest_within_the_budget_and_say_why_the_others_measured_are_not_candidates():
    listed = [linear_latency(Candidate(LITE, s)) for s in (96, 128)] + [figures("student:small_cnn@64", 9.0)]
    measured = []

    def measure(c: Candidate) -> dict:
        measured.append(c)
        return linear_latency(c)

    added, probed, searches = fitted_sizes(listed, 1.9, None, measure)  # 120 px: 1.875 ms
    assert all(c.name == LITE for c in measured)  # a from-scratch CNN's size is not searched
    assert [f["candidate"] for f in added] == [f"{LITE}@120"]
    assert [c.size for c in measured] == [112, 120]
    (smaller,) = probed
    assert smaller["candidate"] == f"{LITE}@112" and f"{LITE}@120 fits the budget too" in smaller["why"]
    (search,) = searches
    assert search["added"] == 120 and search["listed"] == [96, 128]
    assert "120 px added" in search["text"] and "112 px 1.75 ms" in search["text"]
    # over the budget where a size fits: measured, and said to be over (not left to the screen, which keeps what is
    # a little over); where no size fits, the smallest measured is screened like a listed size
    added, probed, (search,) = fitted_sizes(listed, 0.9, None, linear_latency)  # 64 px: 1.0 ms
    assert [f["candidate"] for f in added] == [f"{LITE}@64"] and all("over the budget" in p["why"] for p in probed)
    assert "no size down to 64 px fits the budget, so 64 px is screened like the listed sizes" in search["text"]
    assert [p["candidate"] for p in probed] == [f"{LITE}@80", f"{LITE}@72"]  # 64 px measured too, and screened
    assert "no size down to 64 px fits" in search_text({"backbone": LITE, "added": None, "largest_listed_within": None,
                                                        "probes": []})
    wider = listed + [linear_latency(Candidate(LITE, 160))]
    _, _, (search,) = fitted_sizes(wider, 2.1, None, linear_latency)  # 128 px fits; 136 px: 2.125 ms
    assert search["added"] is None and "none fits, so 128 px (listed) is the largest" in search["text"]
    assert fitted_sizes(listed, None, None, measure) == ([], [], [])  # no latency budget, nothing to fit
    # a size fits when one precision does
    assert precisions_within(figures("x", 2.0, int8_ms=1.0), 1.5, None) == ["int8"]
    assert precisions_within(figures("x", 1.0), 1.5, 2.0) == ["int8"]  # the fp32 file is 4 MB


def test_among_pretrained_students_tied_on_few_validation_images_the_larger_input_ranks_first():
    small = {"candidate": f"{LITE}@96", "val_acc": 0.9, "val_loss": 0.2}
    fitted = {"candidate": f"{LITE}@104", "val_acc": 0.85, "val_loss": 0.3}
    scratch = {"candidate": "student:small_cnn@64", "val_acc": 0.95, "val_loss": 0.1}
    names = lambda ranked: [t["candidate"] for t in ranked]  # noqa: E731
    assert names(rank([small, fitted, scratch], within=0.2)) == [f"{LITE}@104", f"{LITE}@96", "student:small_cnn@64"]
    assert names(rank([small, fitted, scratch])) == ["student:small_cnn@64", f"{LITE}@96", f"{LITE}@104"]


def test_a_candidates_int8_latency_is_its_fastest_int8_layout():
    from fm2edge.automate.measure import INT8_LAYOUTS, latency_and_size

    figures = latency_and_size(Candidate("student:small_cnn", 16), 3, 1)
    int8 = figures["int8"]
    assert set(int8["layouts_ms"]) == set(INT8_LAYOUTS) and int8["recipe"] in INT8_LAYOUTS
    assert int8["p50_ms"] == min(int8["layouts_ms"].values()) == int8["layouts_ms"][int8["recipe"]]
    assert figures["fp32"]["p50_ms"] > 0 and int8["mb"] < figures["fp32"]["mb"]


def test_a_budget_that_keeps_no_pretrained_student_says_what_would_let_the_fastest_in():
    scratch = figures("student:small_cnn@32", 1.1)
    lite = [figures(f"{LITE}@64", 2.6, int8_ms=2.004), figures(f"{LITE}@96", 4.99, int8_ms=4.84)]
    out = fastest_pretrained(lite + [scratch], [scratch])
    assert out == {"candidate": f"{LITE}@64", "precision": "int8", "p50_ms": 2.004, "latency_ms": 2.4}
    text = fastest_pretrained_text(out)
    assert f"the fastest, {LITE}@64 as int8, measured 2.00 ms" in text and "--auto.latency_ms 2.4 lets it in" in text
    assert fastest_pretrained(lite + [scratch], [lite[0], scratch]) is None  # one is kept: nothing to say
    assert fastest_pretrained([scratch], [scratch]) is None  # none measured (only students from random weights)


def test_the_teacher_is_not_exported_where_that_would_take_most_of_the_budget():
    assert teacher_export_too_long(239, 8) is None  # half of 8 minutes is 240 s
    why = teacher_export_too_long(400, 8)
    assert why == "its export would take 6.7 of the 8-minute budget, more than 50%: the students get the time"
    # on photos it is exported wherever it fits the whole budget: students trained in the time it would free trail it
    assert teacher_export_too_long(400, 8, photos=True) is None
    assert teacher_export_too_long(481, 8, photos=True) == ("its export would take 8.0 of the 8-minute budget, more "
                                                             "than 100%: the students get the time")
