from __future__ import annotations

import numpy as np
import pytest

from fm2edge.report.metrics import (
    CIFAR10_SUPERCLASSES,
    error_agreement,
    expected_calibration_error,
    group_of,
    kl_to_teacher,
    known_superclasses,
    paired_difference,
    proportion_difference,
    seed_difference,
    superclass_error_share,
)

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_superclass_error_share_on_hand_made_predictions():
    g = group_of(CIFAR, CIFAR10_SUPERCLASSES)
    assert list(g) == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    labels = np.array([3, 3, 0, 9, 2])  # cat, cat, airplane, truck, bird
    preds = np.array([5, 9, 8, 9, 0])   # dog (same group), truck (other), ship (same), right, airplane (other)
    assert superclass_error_share(preds, labels, g) == pytest.approx(2 / 4)
    assert np.isnan(superclass_error_share(labels, labels, g))


def test_error_agreement_counts_only_shared_errors():
    labels = np.array([0, 1, 2, 3])
    student = np.array([1, 2, 2, 0])
    teacher = np.array([1, 0, 0, 3])  # both wrong on images 0 and 1; same wrong answer on image 0 only
    assert error_agreement(student, teacher, labels) == pytest.approx(0.5)


def test_kl_to_teacher_is_zero_for_equal_logits_and_positive_otherwise():
    a = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert kl_to_teacher(a, a) == pytest.approx(0.0, abs=1e-12)
    assert kl_to_teacher(a, a + 5.0) == pytest.approx(0.0, abs=1e-12)  # softmax ignores shifts
    b = np.array([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    p = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    q = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    assert kl_to_teacher(a, b) == pytest.approx(float((p * np.log(p / q)).sum(1).mean()))


def test_ece_hand_computed():
    # two images at confidence 0.9 (one right), two at 0.6 (both right): bins hold |0.5-0.9| and |1.0-0.6|
    logits = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]))
    labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(logits, labels, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    perfect = np.log(np.array([[1.0 - 1e-9, 1e-9]] * 3))
    assert expected_calibration_error(perfect, np.zeros(3, int)) == pytest.approx(0.0, abs=1e-6)


def test_groups_come_from_the_dataset_only():
    assert known_superclasses(list(reversed(CIFAR))) == CIFAR10_SUPERCLASSES
    fine = [c for group in __import__("fm2edge.report.metrics", fromlist=["x"]).CIFAR100_SUPERCLASSES.values()
            for c in group]
    spaced = [c.replace("_", " ") for c in fine]  # as some copies spell them
    groups = known_superclasses(spaced)
    assert len(groups) == 20 and groups["people"] == ["baby", "boy", "girl", "man", "woman"]
    assert "maple tree" in groups["trees"]
    assert known_superclasses(["0", "1", "2"]) is None
    assert known_superclasses(CIFAR[:9]) is None


def test_seed_difference_knows_noise_from_a_gain():
    """Welch's interval on hand-built seed accuracies: a known gap far outside the spread, one inside it."""
    from scipy import stats

    base = [0.700, 0.710, 0.705]
    gain = seed_difference([0.750, 0.760, 0.755], base)
    assert gain.diff == pytest.approx(0.05) and gain.verdict == "gain" and gain.low > 0
    noise = seed_difference([0.702, 0.712, 0.701], base)
    assert noise.verdict == "within noise" and noise.low < 0 < noise.high
    # the interval is Welch's: mean difference +- t(0.975, df) x standard error
    a, b = np.array([0.702, 0.712, 0.701]), np.array(base)
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert (noise.low, noise.high) == pytest.approx((noise.diff - half, noise.diff + half))
    assert seed_difference([0.9], [0.8]).verdict == "no noise estimate"
    one = seed_difference([0.80], [0.70, 0.72, 0.71])  # one seed against three: the three's spread for both
    half = stats.t.ppf(0.975, 2) * np.std([0.70, 0.72, 0.71], ddof=1) * np.sqrt(1 + 1 / 3)
    assert (one.low, one.high) == pytest.approx((0.09 - half, 0.09 + half)) and one.verdict == "gain"
    # seeds that agree exactly within each group give no spread to judge noise by: no verdict of gain
    assert seed_difference([0.75, 0.75], [0.7, 0.7]).verdict == "no noise estimate"
    assert seed_difference([0.7, 0.7], [0.7, 0.7]).verdict == "no difference measured"
    line = noise.line("kd vs scratch")
    assert line.startswith("kd vs scratch: +0.00 points (95% CI ") and line.endswith("): within noise")


def test_paired_and_unpaired_intervals_on_test_images():
    rng = np.random.default_rng(0)
    correct = rng.random(1000) < 0.8
    worse = correct.copy()
    worse[np.flatnonzero(correct)[:60]] = False  # 60 of 1,000 images go wrong: -6 points, far outside the noise
    d = paired_difference(worse, correct)
    assert d.diff == pytest.approx(-0.06) and d.verdict == "loss" and d.high < 0
    few = correct.copy()
    few[np.flatnonzero(correct)[:2]] = False  # 2 images: within the noise of 1,000
    assert paired_difference(few, correct).verdict == "within noise"
    same = paired_difference(correct, correct)  # right on the same images
    assert same.verdict == "no difference measured" and "right on the same images" in same.method
    p = proportion_difference(0.9, 0.8, 450, 450)
    se = np.sqrt(0.9 * 0.1 / 450 + 0.8 * 0.2 / 450)
    assert (p.low, p.high) == pytest.approx((0.1 - 1.96 * se, 0.1 + 1.96 * se)) and p.verdict == "gain"
