"""Probes on cached features: logistic regression, k-NN, a torch linear head.

Extract once, fit many: every probe here reads the feature cache of :mod:`fm2edge.features`. The logistic
regression's standardisation is folded into one ``nn.Linear`` so backbone + head is an ordinary
:class:`~fm2edge.models.Classifier` that later stages (distillation) use as a teacher.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from fm2edge.config import EmbedJob, ModelConfig, ProbeConfig, ProbeJob, RunConfig
from fm2edge.features import Features, embed_data, load_backbone
from fm2edge.linear import LinearHead, fit_logreg
from fm2edge.report.metrics import accuracy

# ---------------------------------------------------------------- probes as pure functions


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024, leave_one_out: bool = False) -> np.ndarray:
    """Weighted k-NN on cosine similarity, DINOv2's protocol: the k nearest training images vote with weight
    exp(similarity / temperature). Returns class scores (N_test, C).

    ``leave_one_out``: ``test_x`` is the training set itself, and no image votes for itself (an honest training
    accuracy; otherwise every image's nearest neighbour is its own copy)."""
    tr = F.normalize(torch.tensor(np.asarray(train_x), dtype=torch.float32), dim=1)
    ty = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    k = min(k, len(tr) - 1 if leave_one_out else len(tr))
    out = []
    for start in range(0, len(test_x), chunk):
        q = F.normalize(torch.tensor(np.asarray(test_x[start:start + chunk]), dtype=torch.float32), dim=1)
        sim = q @ tr.T
        if leave_one_out:
            rows = torch.arange(len(q))
            sim[rows, rows + start] = float("-inf")
        sim, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, ty[idx], (sim / temperature).exp())
        out.append(votes)
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), dtype=np.float32)


def fit_linear_torch(x: np.ndarray, y: np.ndarray, num_classes: int, epochs: int = 100, lr: float = 1e-3,
                     weight_decay: float = 1e-4, batch_size: int = 1024, seed: int = 0,
                     device: str = "cpu") -> LinearHead:
    """A linear head trained with AdamW and a cosine schedule on standardised features; for feature sets where
    scikit-learn's solvers get slow (hundreds of thousands of images, or a GPU at hand)."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.tensor(np.asarray(x), dtype=torch.float32)
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xt = ((xt - mean) / std).to(device)
    yt = torch.as_tensor(y, dtype=torch.long).to(device)
    torch.manual_seed(seed)
    head = torch.nn.Linear(xt.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(xt) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g).to(device)
        for start in range(0, len(xt), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    w = (head.weight.detach() / std.to(device)).cpu()
    b = (head.bias.detach() - (head.weight.detach() / std.to(device)) @ mean.to(device)).cpu()
    return LinearHead(w.numpy(), b.numpy(), {"epochs": epochs, "lr": lr, "weight_decay": weight_decay})


def probe_scores(method: str, train: Features, test_x: np.ndarray, cfg: ProbeConfig,
                 train_idx: np.ndarray | None = None) -> tuple[np.ndarray, LinearHead | None]:
    """Test-set class scores of one probe fitted on ``train`` (optionally a subset of it)."""
    x = np.asarray(train.features if train_idx is None else train.features[train_idx])
    y = train.labels if train_idx is None else train.labels[train_idx]
    c = len(train.class_names)
    if method == "logreg":
        head = fit_logreg(x, y, cfg.cs, cfg.cv_folds, cfg.seed)
        return head.predict_logits(test_x), head
    if method == "linear":
        head = fit_linear_torch(x, y, c, cfg.linear_epochs, seed=cfg.seed)
        return head.predict_logits(test_x), head
    return knn_predict(x, y, test_x, c, cfg.knn_k, cfg.knn_temperature), None


# ---------------------------------------------------------------- the `fm2edge probe` stage


def fit_probes(job: ProbeJob, train: Features, scored: Features | None,
               split: str) -> tuple[dict, LinearHead, np.ndarray | None]:
    """Every probe of ``probe.methods`` fitted on the training features and scored on ``scored`` (the ``split``
    split; None scores on training only): ({method: row}, the teacher probe's head, its scores on ``scored``)."""
    from tqdm.auto import tqdm

    # k-NN and the heads predict for some features: the training ones stand in where nothing else is scored
    scored_x = np.asarray((scored or train).features)
    rows, teacher = {}, None
    bar = tqdm(job.probe.methods, desc="fitting probes", unit="probe", leave=False)
    for method in bar:
        bar.set_postfix_str(method)
        t0 = time.perf_counter()
        scores, head = probe_scores(method, train, scored_x, job.probe)
        if head is not None:
            train_scores = head.predict_logits(np.asarray(train.features))
        else:
            train_scores = knn_predict(train.features, train.labels, train.features, len(train.class_names),
                                       job.probe.knn_k, job.probe.knn_temperature, leave_one_out=True)
        rows[method] = {"train_acc": accuracy(train_scores, train.labels), "seconds": time.perf_counter() - t0,
                        **(head.info if head is not None else {"k": job.probe.knn_k})}
        if scored is not None:
            rows[method][f"{split}_acc"] = accuracy(scores, scored.labels)
        shown = f"  {split} {100 * rows[method][f'{split}_acc']:.2f}%" if scored is not None else ""
        tqdm.write(f"{method:>7}: train {100 * rows[method]['train_acc']:.2f}%{shown}  "
                   f"({rows[method]['seconds']:.1f} s)")
        if method == job.probe.teacher:
            teacher = (head, scores if scored is not None else None)
    return rows, teacher[0], teacher[1]


def save_teacher(job: ProbeJob, run, head: LinearHead, class_names: list[str],
                 test: tuple[Features, np.ndarray] | None) -> None:
    """Backbone + fitted head as a classifier that later stages (distillation) load as a teacher, with its test
    predictions where ``test`` (the test features and the head's scores on them) is given."""
    from fm2edge.models.io import save_classifier

    model = load_backbone(job.model, job.embed, len(class_names))
    model.head.weight.data = torch.as_tensor(head.weight)
    model.head.bias.data = torch.as_tensor(head.bias)
    model.class_names = list(class_names)
    save_classifier(model, run.path)
    if test is not None:
        run.write_predictions(test[1], test[0].labels, test[0].class_names)


def pooling_study(job: ProbeJob, session, run) -> dict:
    """Logistic-regression test accuracy for each pooling of ``probe.poolings``, with a bar plot."""
    from tqdm.auto import tqdm

    from fm2edge.report import plots
    from fm2edge.report.write import save_figure

    out = {}
    for pooling in tqdm(job.probe.poolings, desc="pooling study", unit="pooling", leave=False):
        cfg = dataclasses.replace(job.embed, pooling=pooling, splits=["train", "test"])
        pf = embed_data(EmbedJob(data=job.data, model=job.model, embed=cfg), session.train, session.test,
                        session.accelerator)
        scores, _ = probe_scores("logreg", pf["train"], np.asarray(pf["test"].features), job.probe)
        out[pooling] = {"test_acc": accuracy(scores, pf["test"].labels), "dim": pf["train"].meta["dim"]}
        tqdm.write(f"pooling {pooling:>4}: {100 * out[pooling]['test_acc']:.2f}% ({pf['train'].meta['dim']} dims)")
    fig = plots.bars({k: 100 * v["test_acc"] for k, v in out.items()}, "pooling", "test accuracy (%)",
                     f"{job.model.name}: pooling vs linear-probe accuracy")
    save_figure(fig, run.file("plots", "pooling.png"))
    return out


def label_efficiency(job: ProbeJob, feats: dict[str, Features], run) -> dict:
    """Test accuracy against labelled images per class, for the probe and for a CNN trained from scratch."""
    from fm2edge.config import AugmentConfig, TrainConfig, TrainJob
    from fm2edge.data import balanced_indices
    from fm2edge.train import train_job

    train, test = feats["train"], feats["test"]
    from tqdm.auto import tqdm

    curves: dict[str, dict[int, float]] = {"probe": {}, "scratch": {}}
    max_per_class = int(np.bincount(train.labels).max())
    counts = sorted({min(n, max_per_class) for n in job.probe.label_counts})
    for n in tqdm(counts, desc="label efficiency", unit="count", leave=False):
        idx = balanced_indices(train.labels, per_class=n)
        scores, _ = probe_scores(job.probe.teacher, train, np.asarray(test.features), job.probe, idx)
        curves["probe"][n] = accuracy(scores, test.labels)
        line = f"  {n:>5} labels/class: probe {100 * curves['probe'][n]:.2f}%"
        if job.probe.scratch_model:
            size = n * len(train.class_names)
            batch = min(128, size)
            epochs = int(min(300, max(1, math.ceil(job.probe.scratch_steps * batch / size))))
            sub = TrainJob(data=dataclasses.replace(job.data, per_class=n),
                           model=ModelConfig(name=job.probe.scratch_model),
                           train=TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, optimizer="adamw",
                                             schedule="onecycle", weight_decay=5e-4,
                                             augment=AugmentConfig(crop="none", flip=True),
                                             seed=job.probe.seed, keep_checkpoints=1,
                                             eval_every=max(1, epochs // 10), checkpoint_every=max(1, epochs // 4)),
                           run=RunConfig(root=str(run.path / "scratch"), name=f"per-class-{n}", resume=True))
            m = _quiet(train_job, sub)
            curves["scratch"][n] = m["test_acc"]
            line += f" | scratch {100 * m['test_acc']:.2f}% ({epochs} epochs)"
        tqdm.write(line)
    return {k: {str(n): v for n, v in c.items()} for k, c in curves.items() if c}


def _quiet(fn, *args):
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def label_efficiency_study(job: ProbeJob, feats: dict[str, Features], run) -> dict:
    """The label-efficiency curves with their plot."""
    from fm2edge.report import plots
    from fm2edge.report.write import save_figure

    print("label efficiency (test accuracy):")
    result = label_efficiency(job, feats, run)
    curves = {("linear probe on " + job.model.name if k == "probe" else f"{job.probe.scratch_model} from scratch"):
              {int(n): 100 * a for n, a in v.items()} for k, v in result.items()}
    save_figure(plots.label_efficiency(curves, "Which needs more labels?"), run.file("plots", "label_efficiency.png"))
    return result


def probe_job(job: ProbeJob) -> dict:
    """`fm2edge probe`: features, the probes, the teacher they make, then the optional studies."""
    from fm2edge.config import to_dict
    from fm2edge.results import slug, start_stage

    session = start_stage(job.data, job.embed.device, "fp32")
    with session.open(job.run, slug(f"probe-{job.model.name}")) as run:
        run.write_config(to_dict(job))
        split = "test" if job.probe.score_test else "val"  # what the probes are scored on
        splits = ["train", split] if split == "test" or session.val is not None else ["train"]
        embed = dataclasses.replace(job.embed, splits=splits)
        feats = embed_data(EmbedJob(data=job.data, model=job.model, embed=embed, run=job.run), session.train,
                           session.test, session.accelerator, session.val)
        train, scored = feats["train"], feats.get(split)
        results: dict = {"model": job.model.name, "pretrained": job.model.pretrained, "data": job.data.source,
                         "n_train": len(train.labels), f"n_{split}": len(scored.labels) if scored else 0,
                         "dim": train.meta["dim"], "pooling": job.embed.pooling,
                         "embed_images_per_s": train.meta["images_per_s"]}
        results["probes"], head, scores = fit_probes(job, train, scored, split)
        save_teacher(job, run, head, train.class_names, (scored, scores) if split == "test" else None)
        results["test_acc"] = results["probes"][job.probe.teacher].get("test_acc")
        if split == "val" and scored is not None:
            results["val_acc"] = results["probes"][job.probe.teacher]["val_acc"]
        if job.probe.poolings:
            results["pooling"] = pooling_study(job, session, run)
        if job.probe.label_counts:
            results["label_efficiency"] = label_efficiency_study(job, feats, run)
        run.write_metrics("probe", results)
        run.log_summary(results)
        print(f"results in {run.path}")
    return results
