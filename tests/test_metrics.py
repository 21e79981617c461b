from __future__ import annotations

import numpy as np
import pytest

from fm2edge.report.metrics import (
    CIFAR10_SUPERCLASSES,
    error_agreement,
    expected_calibration_error,
    group_of,
    groups_from_confusion,
    kl_to_teacher,
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


def test_groups_from_confusion_recovers_two_blocks():
    m = np.eye(4) * 50
    m[0, 1] = m[1, 0] = 10  # classes a and b are confused with each other, c and d with each other
    m[2, 3] = m[3, 2] = 8
    m[0, 2] = 1
    groups = groups_from_confusion(m, ["a", "b", "c", "d"])
    assert sorted(map(sorted, groups.values())) == [["a", "b"], ["c", "d"]]
