"""Metrics as pure functions of predictions; nothing here touches disk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def accuracy(preds, labels) -> float:
    """Share of correct predictions: the one definition every stage, the report and the benchmarks use.

    ``preds`` is either class indices (N,) or class scores / logits (N, C), whose argmax is taken; NumPy arrays
    and CPU tensors both work. NaN for an empty set."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.ndim == 2:
        preds = preds.argmax(1)
    return float((preds == labels).mean()) if len(labels) else float("nan")


def confusion(preds: np.ndarray, labels: np.ndarray, num_classes: int, normalize: bool = False) -> np.ndarray:
    """Rows are true classes, columns predicted; ``normalize`` divides each row by its count."""
    m = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    return m


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    m = confusion(preds, labels, num_classes)
    return np.diag(m) / np.maximum(m.sum(axis=1), 1)


# ---------------------------------------------------------------- "smarter mistakes"

CIFAR10_SUPERCLASSES = {"vehicle": ["airplane", "automobile", "ship", "truck"],
                        "animal": ["bird", "cat", "deer", "dog", "frog", "horse"]}

# CIFAR-100's own 20 coarse classes over its 100 fine ones (Krizhevsky 2009, the dataset's coarse_label)
CIFAR100_SUPERCLASSES = {
    "aquatic mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit and vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household electrical devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large man-made outdoor things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large natural outdoor scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large omnivores and herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles 1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles 2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def known_superclasses(class_names: Sequence[str]) -> dict[str, list[str]] | None:
    """The dataset's own class groups when its classes are CIFAR-10's or CIFAR-100's (names as the dataset spells
    them, spaces or underscores), else None."""
    def norm(name: str) -> str:
        return str(name).strip().lower().replace(" ", "_")

    names = {norm(c): str(c) for c in class_names}
    for table in (CIFAR10_SUPERCLASSES, CIFAR100_SUPERCLASSES):
        members = {c for group in table.values() for c in group}
        if set(names) == members:
            return {g: [names[c] for c in group] for g, group in table.items()}
    return None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def group_of(class_names: list[str], groups: dict[str, list[str]]) -> np.ndarray:
    """Index of each class's group (-1 where a class belongs to none)."""
    index = {c: g for g, (_, members) in enumerate(groups.items()) for c in members}
    return np.array([index.get(c, -1) for c in class_names])


def superclass_error_share(preds: np.ndarray, labels: np.ndarray, class_group: np.ndarray) -> float:
    """Of the wrong predictions, the share that stays inside the true class's group (a cat taken for a dog, not
    for a truck). NaN when there are no errors."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    wrong = preds != labels
    if not wrong.any():
        return float("nan")
    g_true, g_pred = class_group[labels[wrong]], class_group[preds[wrong]]
    return float(((g_true == g_pred) & (g_true >= 0)).mean())


def error_agreement(preds: np.ndarray, teacher_preds: np.ndarray, labels: np.ndarray) -> float:
    """Where both student and teacher are wrong, how often they make the same wrong prediction; NaN when they are
    never wrong together."""
    preds, teacher_preds, labels = map(np.asarray, (preds, teacher_preds, labels))
    both = (preds != labels) & (teacher_preds != labels)
    return float((preds[both] == teacher_preds[both]).mean()) if both.any() else float("nan")


def kl_to_teacher(logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Mean KL(teacher || student) over images, in nats, at temperature 1."""
    p, q = softmax(teacher_logits), softmax(logits)
    return float((p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(axis=1).mean())


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidence vs accuracy gap, averaged over equal-width confidence bins weighted by the
    share of images in each bin."""
    probs = softmax(logits)
    conf, preds = probs.max(axis=1), probs.argmax(axis=1)
    correct = preds == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


# ---------------------------------------------------------------- comparisons with their noise


@dataclass(frozen=True)
class Difference:
    """``a - b`` in accuracy (a share), with a 95% confidence interval when one can be had, and how it was had."""

    diff: float
    low: float | None
    high: float | None
    method: str

    @property
    def verdict(self) -> str:
        """"gain" or "loss" when the interval excludes 0, "within noise" when it contains it, "no difference
        measured" when both sides scored exactly alike, else "no noise estimate"."""
        if self.diff == 0.0 and (self.low is None or self.low == self.high == 0.0):
            return "no difference measured"
        if self.low is None or self.high is None:
            return "no noise estimate"
        if self.low <= 0.0 <= self.high:
            return "within noise"
        return "gain" if self.diff > 0 else "loss"

    def line(self, name: str) -> str:
        """``"distilled vs scratch: +0.80 points (95% CI -0.31 to +1.91; Welch's t over seeds, 3 vs 3): within
        noise"``."""
        ci = f"95% CI {100 * self.low:+.2f} to {100 * self.high:+.2f}; " if self.low is not None else ""
        return f"{name}: {100 * self.diff:+.2f} points ({ci}{self.method}): {self.verdict}"


def seed_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Difference of seed means, with Welch's t interval (scipy) when each side has at least two seeds; with one
    seed on one side, a t interval that takes that side's spread to be the other's."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(a.mean() - b.mean())
    seeds = f"{len(a)} vs {len(b)} seeds"
    if len(a) < 2 and len(b) < 2:
        return Difference(diff, None, None, f"{seeds}: too few for an interval")
    if len(a) < 2 or len(b) < 2:
        # one side has a single seed: its spread is taken to be the other side's (pooled t, that side's df)
        from scipy import stats

        other = a if len(a) > 1 else b
        half = stats.t.ppf(0.975, len(other) - 1) * other.std(ddof=1) * np.sqrt(1 / len(a) + 1 / len(b))
        return Difference(diff, diff - half, diff + half, f"t over seeds, {seeds}, equal spread assumed")
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all: the t interval is undefined and says nothing
        return Difference(diff, None, None, f"{seeds}, identical within each: no spread to estimate noise from")
    import warnings

    from scipy import stats

    with warnings.catch_warnings():  # one side without spread: exact for it, and scipy's precision note is moot
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return Difference(diff, float(ci.low), float(ci.high), f"Welch's t over seeds, {seeds}")


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 2000,
                      seed: int = 0, what: str = "test images") -> Difference:
    """Difference in accuracy of two models on the same test images, with a paired bootstrap interval over the
    images (scipy): the noise of the test sample, for single runs."""
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    diff = float(a.mean() - b.mean())
    method = f"paired bootstrap over {len(a):,} {what}"
    if np.array_equal(a, b):  # right on the same images (their answers may still differ where both are wrong)
        return Difference(diff, 0.0, 0.0, method + ", right on the same images")
    from scipy import stats

    res = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True,
                          n_resamples=resamples, method="percentile", rng=seed)
    return Difference(diff, float(res.confidence_interval.low), float(res.confidence_interval.high), method)


def proportion_difference(p_a: float, p_b: float, n_a: int, n_b: int) -> Difference:
    """Difference of two accuracies measured on ``n_a`` and ``n_b`` images, with a normal-approximation (Wald)
    interval that treats them as independent: wider than a paired interval, so a "gain" here is a safe call."""
    diff = p_a - p_b
    se = float(np.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b))
    return Difference(diff, diff - 1.96 * se, diff + 1.96 * se, f"normal approximation, {n_a:,} and {n_b:,} "
                                                                 f"test images")


def balanced_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the per-class accuracies (recall) over the classes present in ``labels`` (scikit-learn's
    definition): on a folder with 500 photos of one class and 30 of another, a model that always answers the first
    scores 94% accuracy and 50% here."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    # a class predicted but absent from the labels, or a split of one class, is no error here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return float(balanced_accuracy_score(np.asarray(labels), np.asarray(preds)))


def imbalance(labels: np.ndarray) -> float:
    """Images of the largest class over images of the smallest present one (1.0: balanced)."""
    counts = np.bincount(np.asarray(labels))
    counts = counts[counts > 0]
    return float(counts.max() / counts.min()) if len(counts) else 1.0


# the gap is the teacher's lead, so the interval's own verdict ("gain": above 0) is named for who is ahead
GAP_VERDICTS = {"gain": "teacher better", "loss": "chosen model better"}


def chosen_against_teacher(chosen: np.ndarray, teacher: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """What the test split says of a smaller model against its teacher, from their predicted classes on the same
    images: both accuracies, the gap in points with a paired bootstrap interval over the images, balanced
    accuracies, how often the two agree, and each class's accuracy (JSON-ready)."""
    chosen, teacher, labels = (np.asarray(a) for a in (chosen, teacher, labels))
    right_c, right_t = chosen == labels, teacher == labels
    gap = paired_difference(right_t, right_c)
    per_c, per_t = (per_class_accuracy(p, labels, len(class_names)) for p in (chosen, teacher))
    counts = np.bincount(labels, minlength=len(class_names))
    return {"chosen_test_acc": float(right_c.mean()), "teacher_test_acc": float(right_t.mean()),
            "test_images": len(labels), "gap_points": 100 * gap.diff,
            "gap_interval_points": None if gap.low is None else [100 * gap.low, 100 * gap.high],
            "gap_interval_method": gap.method, "gap_verdict": GAP_VERDICTS.get(gap.verdict, gap.verdict),
            "chosen_balanced_acc": balanced_accuracy(chosen, labels),
            "teacher_balanced_acc": balanced_accuracy(teacher, labels),
            "class_imbalance": imbalance(labels), "agreement": float((chosen == teacher).mean()),
            "per_class": [{"class": str(name), "images": int(n), "chosen_acc": float(c), "teacher_acc": float(t)}
                          for name, n, c, t in zip(class_names, counts, per_c, per_t, strict=True) if n]}


def gap_text(points: float, interval: Sequence[float] | None = None, itself: bool = False) -> str:
    """The teacher's test accuracy less the chosen model's, in words: what the speed-up cost, or, where the smaller
    model scored higher, by how much it beat its teacher; with its 95% ``interval`` (in points, teacher less
    chosen), how far the test images' noise lets that be trusted. ``itself``: the chosen model is the teacher's own
    fp32 graph, so there is no speed-up to pay for."""
    if itself:
        return "the teacher itself: no speed-up, nothing paid"
    if points >= 0:
        text = f"{points:.2f} points paid for the speed-up"
    else:
        text = f"{-points:.2f} points above the teacher: the speed-up cost nothing here"
    if interval is None:
        return text
    if interval[0] == interval[1] == 0:
        return f"{text} (right and wrong on the same test images)"
    # + 0.0: a bound of zero negated prints as "-0.00"
    low, high = (interval[0] + 0.0, interval[1] + 0.0) if points >= 0 else (-interval[1] + 0.0, -interval[0] + 0.0)
    noise = "; within the test images' noise" if low <= 0 <= high else ""
    return f"{text} (95% interval {low:+.2f} to {high:+.2f}{noise})"
