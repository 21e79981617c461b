"""Linear classifiers on fixed features: scikit-learn's logistic regression, with its standardisation folded into
one ``logits = x @ W.T + b``, so that a probe is an ordinary linear layer (a probe's head, a teacher's head, the
first step of LP-FT)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearHead:
    """``logits = x @ weight.T + bias`` on raw (unstandardised) features."""

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    info: dict

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias


def fit_logreg(x: np.ndarray, y: np.ndarray, cs: list[float], folds: int = 3, seed: int = 0,
               max_iter: int = 1000) -> LinearHead:
    """Multinomial logistic regression on standardised features, C chosen by stratified cross-validation
    (scikit-learn's ``LogisticRegressionCV``); with fewer than ``folds`` images per class the middle C is used."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float32)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    min_count = np.bincount(y)[np.unique(y)].min()
    if len(cs) > 1 and min_count >= folds:
        # log-loss picks C more stably than accuracy on small folds; the other settings are spelled out because
        # scikit-learn is changing their defaults.
        clf = LogisticRegressionCV(Cs=cs, cv=folds, max_iter=max_iter, random_state=seed, scoring="neg_log_loss",
                                   l1_ratios=(0.0,), use_legacy_attributes=False).fit(xs, y)
        c = float(np.ravel(clf.C_)[0])
    else:
        c = float(sorted(cs)[len(cs) // 2])
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(xs, y)
    coef, intercept = clf.coef_, clf.intercept_
    classes = clf.classes_
    num_classes = int(y.max()) + 1
    w = np.zeros((num_classes, x.shape[1]), dtype=np.float32)
    b = np.full(num_classes, -1e4, dtype=np.float32)  # classes absent from training are never predicted
    if coef.shape[0] == 1:  # binary: scikit-learn keeps one row
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    scale = scaler.scale_.astype(np.float32)
    mean = scaler.mean_.astype(np.float32)
    w[classes] = coef / scale
    b[classes] = intercept - (coef / scale) @ mean
    return LinearHead(w, b, {"C": c, "cv_folds": folds if len(cs) > 1 and min_count >= folds else 0})
