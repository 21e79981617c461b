"""Golden values for every distillation loss: independent NumPy implementations on seeded tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fm2edge.distill import DIST, DKD, RKD, FeatureDistillation, KDLoss


def seeded(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(n, c, generator=g) * 2, torch.randn(n, c, generator=g) * 2
    return student, teacher, torch.randint(0, c, (n,), generator=g)


def np_softmax(x, t=1.0):
    z = x / t - (x / t).max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def np_kl(p, q):  # KL(p || q), batch mean
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def test_kd_matches_the_lab_formula():
    s, t, y = seeded()
    T, alpha = 4.0, 0.5
    ps, pt = np_softmax(s.numpy(), T), np_softmax(t.numpy(), T)
    ce = float(-np.log(np_softmax(s.numpy())[np.arange(len(y)), y.numpy()]).mean())
    golden = alpha * ce + (1 - alpha) * T**2 * np_kl(pt, ps)
    assert KDLoss(T, alpha)(s, t, y).item() == pytest.approx(golden, rel=1e-5)
    # the lab's own expression
    lab = alpha * F.cross_entropy(s, y) + (1 - alpha) * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1),
                                                                 reduction="batchmean") * T**2
    assert KDLoss(T, alpha)(s, t, y).item() == pytest.approx(lab.item(), rel=1e-6)


def test_kd_without_labels_is_the_soft_term_and_zero_at_agreement():
    s, t, _ = seeded()
    golden = 4.0 * np_kl(np_softmax(t.numpy(), 2), np_softmax(s.numpy(), 2))
    assert KDLoss(2.0, 0.3)(s, t).item() == pytest.approx(golden, rel=1e-5)
    assert KDLoss(2.0)(t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        KDLoss(0.0)


def test_dkd_golden():
    s, t, y = seeded(8, 6, 1)
    T, a, b = 4.0, 1.0, 8.0
    ps, pt = np_softmax(s.numpy(), T), np_softmax(t.numpy(), T)
    idx = np.arange(len(y))
    bs = np.stack([ps[idx, y], 1 - ps[idx, y]], 1)
    bt = np.stack([pt[idx, y], 1 - pt[idx, y]], 1)
    tckd = np_kl(bt, bs) * T**2
    nckd = 0.0
    for i in idx:  # distributions over non-target classes, renormalised
        keep = np.arange(s.shape[1]) != y[i].item()
        qs, qt = ps[i, keep] / ps[i, keep].sum(), pt[i, keep] / pt[i, keep].sum()
        nckd += (qt * (np.log(qt) - np.log(qs))).sum()
    nckd = nckd / len(idx) * T**2
    assert DKD(a, b, T)(s, t, y).item() == pytest.approx(a * tckd + b * nckd, rel=1e-4)


def test_dist_golden_and_zero_at_agreement():
    s, t, _ = seeded(7, 4, 2)
    ys, yt = np_softmax(s.numpy()), np_softmax(t.numpy())
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(len(ys))])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(ys.shape[1])])
    assert DIST()(s, t).item() == pytest.approx(inter + intra, rel=1e-4)
    assert DIST()(t, t).item() == pytest.approx(0.0, abs=1e-5)


def test_rkd_golden_and_scale_invariance():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 8, generator=g), torch.randn(5, 3, generator=g)

    def np_rkd(xs, xt):
        def dist(x):
            d = np.linalg.norm(x[:, None] - x[None], axis=2)
            return d / d[d > 0].mean()

        def ang(x):
            diff = x[None] - x[:, None]
            n = np.linalg.norm(diff, axis=2, keepdims=True)
            diff = diff / np.maximum(n, 1e-12)
            return np.einsum("ijd,ikd->ijk", diff, diff).reshape(-1)

        def huber(a, b):
            r = np.abs(a - b)
            return float(np.where(r < 1, 0.5 * r**2, r - 0.5).mean())

        return 25 * huber(dist(xs), dist(xt)) + 50 * huber(ang(xs), ang(xt))

    assert RKD()(s, t).item() == pytest.approx(np_rkd(s.numpy().astype(np.float64), t.numpy().astype(np.float64)),
                                               rel=1e-4)
    assert RKD()(t * 3.0, t).item() == pytest.approx(0.0, abs=1e-5)  # relations ignore scale


def test_feature_distillation_vectors_and_maps():
    g = torch.Generator().manual_seed(4)
    fd = FeatureDistillation(4, 6)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 6, generator=g)
    golden = ((t - s @ fd.projector.weight.T) ** 2).mean()
    assert fd(s, t).item() == pytest.approx(golden.item(), rel=1e-6)
    fm = FeatureDistillation(4, 6, maps=True)
    out = fm(torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g))
    assert out.ndim == 0 and out.item() > 0
    out.backward()
    assert fm.projector.weight.grad is not None
