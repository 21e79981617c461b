"""Probes on cached features: the fitting functions and the `fm2edge probe` stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fm2edge.config import DataConfig, EmbedConfig, ModelConfig, ProbeConfig, ProbeJob, RunConfig
from fm2edge.data import load_data
from fm2edge.linear import fit_logreg
from fm2edge.probe import fit_linear_torch, knn_predict, probe_job


def _separable(n=300, d=16, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centres = rng.normal(0, 4, (c, d))
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32) + 5.0, y


def test_probes_on_separable_features():
    x, y = _separable()
    xt, yt = _separable(seed=1)
    xt = xt - _separable(seed=1)[0] + _separable(seed=0)[0][: len(xt)] * 0 + xt  # same centres, new noise
    x_tr, y_tr, x_te, y_te = x[:200], y[:200], x[200:], y[200:]
    head = fit_logreg(x_tr, y_tr, [0.1, 1.0])
    assert (head.predict_logits(x_te).argmax(1) == y_te).mean() > 0.95
    assert (knn_predict(x_tr, y_tr, x_te, 3, k=10).argmax(1) == y_te).mean() > 0.95
    lin = fit_linear_torch(x_tr, y_tr, 3, epochs=50, lr=1e-2)
    assert (lin.predict_logits(x_te).argmax(1) == y_te).mean() > 0.95


def test_logreg_folds_standardisation_into_the_head():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _separable()
    head = fit_logreg(x, y, [1.0])
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(x, y)
    assert np.allclose(head.predict_logits(x), ref.decision_function(x), atol=1e-3)


def test_knn_votes_are_weighted_by_similarity():
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = np.array([0, 0, 1])
    scores = knn_predict(train_x, train_y, np.array([[0.1, 1.0]]), 2, k=3, temperature=0.1)
    assert scores.argmax(1).tolist() == [1]
    assert scores[0, 1] == pytest.approx(np.exp((0.1 * 0 + 1.0) / np.hypot(0.1, 1.0) / 0.1), rel=1e-4)


def test_probe_job_saves_a_usable_teacher(tiny_dinov2, parquet_dir, tmp_path):
    from fm2edge.models.io import load_classifier

    job = ProbeJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"),
                   embed=EmbedConfig(pooling="both"),
                   probe=ProbeConfig(methods=["logreg", "knn", "linear"], label_counts=[1, 4], scratch_steps=20,
                                     poolings=["cls", "mean"]),
                   run=RunConfig(root=str(tmp_path), name="probe"))
    results = probe_job(job)
    assert results["probes"]["logreg"]["test_acc"] > 0.8  # colour classes, random tiny ViT features
    assert set(results["pooling"]) == {"cls", "mean"}
    assert set(results["label_efficiency"]["probe"]) == {"1", "4"}
    assert set(results["label_efficiency"]["scratch"]) == {"1", "4"}
    run = tmp_path / "probe"
    for f in ("plots/pooling.png", "plots/label_efficiency.png", "metrics.json", "config.yaml"):
        assert (run / f).exists()
    teacher = load_classifier(run)
    assert teacher.feature_dim == 64  # pooling "both" restored
    _, _, test = load_data(DataConfig(source=str(parquet_dir)))
    with torch.no_grad():
        preds = teacher(teacher.preprocess(test.images)).argmax(1).numpy()
    saved = np.load(run / "predictions.npz")
    assert (preds == saved["preds"]).mean() > 0.95


def test_a_candidate_probe_is_scored_on_validation_and_leaves_the_test_split_unread(tiny_dinov2, parquet_dir, tmp_path,
                                                                                    capsys):
    """--probe.score_test false (how `auto` probes its teachers): scored on validation, the test split neither
    embedded nor read, no test predictions; the saved teacher is the same classifier."""
    from fm2edge.features import feature_root
    from fm2edge.models.io import load_classifier

    cache = feature_root(EmbedConfig())

    def entries() -> set:
        return {p for p in cache.iterdir() if not p.name.startswith(".")} if cache.exists() else set()

    before = entries()
    data = DataConfig(source=str(parquet_dir), val_fraction=0.25)
    job = ProbeJob(data=data, model=ModelConfig(name=f"hf:{tiny_dinov2}"),
                   probe=ProbeConfig(methods=["logreg", "knn"], score_test=False),
                   run=RunConfig(root=str(tmp_path), name="probe"))
    results = probe_job(job)
    _, val, _ = load_data(data)
    assert results["test_acc"] is None and "n_test" not in results and results["n_val"] == len(val)
    assert results["val_acc"] == results["probes"]["logreg"]["val_acc"] and "test_acc" not in results["probes"]["knn"]
    assert "logreg: train" in capsys.readouterr().out
    assert not (tmp_path / "probe" / "predictions.npz").exists()
    assert len(entries() - before) == 2  # train and validation features: no test ones
    assert load_classifier(tmp_path / "probe").num_classes == val.num_classes
    with pytest.raises(ValueError, match="score on the test split"):
        ProbeConfig(score_test=False, label_counts=[1])


def test_knn_training_accuracy_is_leave_one_out():
    """Each training image's own copy would always win its vote; left out, a lone outlier is misclassified."""
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, 0.2], [0.97, 0.25], [0.0, 1.0], [0.1, 0.99], [0.95, 0.3]])
    y = np.array([0, 0, 0, 0, 1, 1, 1])  # the last image sits among class 0
    with_self = knn_predict(x, y, x, 2, k=1).argmax(1)
    left_out = knn_predict(x, y, x, 2, k=1, leave_one_out=True).argmax(1)
    assert (with_self == y).all()
    assert left_out[-1] == 0 and (left_out[:-1] == y[:-1]).all()
    chunked = knn_predict(x, y, x, 2, k=3, leave_one_out=True, chunk=2)
    assert np.allclose(chunked, knn_predict(x, y, x, 2, k=3, leave_one_out=True))
