from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import hub_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from fm2edge.config import (
    LOSS_NAMES,
    DataConfig,
    DistillConfig,
    DistillJob,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainJob,
)
from fm2edge.distill.task import LOSSES, DistillTask, distill_job
from fm2edge.distill.teacher import build_teacher_cache, load_teacher_cache
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import create_model
from fm2edge.train import train_job


@pytest.fixture(scope="module")
def noisy_labels(tmp_path_factory):
    """Same kind of images, but most 'red' training images are labelled 'green': the labels hide the truth."""
    root = tmp_path_factory.mktemp("noisy")
    ds = hub_dataset(64, seed=0)
    labels = list(ds["label"])
    red = [i for i, y in enumerate(labels) if y == 0]
    for i in red[: int(0.75 * len(red))]:
        labels[i] = 1
    ds = ds.remove_columns("label").add_column("label", labels).cast(hub_dataset(1, 0).features)
    ds.to_parquet(str(root / "train.parquet"))
    hub_dataset(32, seed=1).to_parquet(str(root / "test.parquet"))  # clean test labels
    return root


def student_job(tmp_path, source, name, epochs=6):
    return TrainJob(data=DataConfig(source=str(source)), model=ModelConfig(name="student:small_cnn"),
                    train=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, device="cpu", seed=1),
                    run=RunConfig(root=str(tmp_path), name=name))


def test_gate_refuses_a_teacher_with_an_untrained_head(tmp_path):
    # digits, not the 4-colour fixture: random conv features separate colours well enough to pass a gate by luck
    job = DistillJob(data=DataConfig(source="digits"), model=ModelConfig(name="student:small_cnn"),
                     train=TrainConfig(epochs=1, device="cpu"),
                     distill=DistillConfig(teacher="student:cifar_resnet18", teacher_pretrained=False),
                     run=RunConfig(root=str(tmp_path)))
    with pytest.raises(Fm2EdgeError, match=r"near chance \(10.0%\).*fm2edge probe"):
        distill_job(job)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing written


def test_the_gate_reads_validation_or_training_images_where_validation_is_too_small():
    import torch

    from fm2edge.data import load_data
    from fm2edge.distill.task import gate_images

    train, val, _ = load_data(DataConfig(source="digits"))
    assert gate_images(train, val) == (val, "the validation split")
    assert gate_images(train, val.subset(torch.arange(30)))[1] == "the validation split"
    images, split = gate_images(train, val.subset(torch.arange(2)), most=50)
    assert split == "50 training images (validation holds 2, too few to judge it)" and len(images) == 50
    assert torch.equal(images.images, train.images[:50])
    images, split = gate_images(train, None)
    assert split == "200 training images (no validation split)" and len(images) == 200


def test_teacher_with_other_classes_is_refused(tmp_path, clean_teacher):
    job = DistillJob(data=DataConfig(source="digits"), distill=DistillConfig(teacher=str(clean_teacher)),
                     train=TrainConfig(device="cpu"), run=RunConfig(root=str(tmp_path)))
    with pytest.raises(Fm2EdgeError, match="predicts 4 classes but the dataset has 10"):
        distill_job(job)


def test_cached_and_online_teacher_give_the_same_loss(tmp_path, clean_teacher, parquet_dir):
    from fm2edge.data import load_data
    from fm2edge.models.io import load_classifier

    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    teacher = load_classifier(clean_teacher)
    torch.manual_seed(0)
    student = create_model(ModelConfig(name="student:small_cnn"), 4)
    cfg = DistillConfig(teacher=str(clean_teacher), losses={"kd": 1.0, "feature": 0.5, "rkd": 0.1})
    task = DistillTask(student, teacher, cfg)
    idx = torch.tensor([3, 7, 11, 20, 42])
    online = task(train.images[idx], train.labels[idx], idx)
    build_teacher_cache(task, train.images, None, tmp_path / "cache", 16, torch.device("cpu"))
    task.cache = load_teacher_cache(tmp_path / "cache", len(train), True, torch.device("cpu"))
    cached = task(train.images[idx], train.labels[idx], idx)
    for key in ("loss", "loss_kd", "loss_feature", "loss_rkd"):
        assert torch.allclose(online[key], cached[key], atol=1e-5), key
    assert (tmp_path / "cache" / "logits.npy").exists() and (tmp_path / "cache" / "features.npy").exists()


def test_distilled_student_beats_the_student_trained_alone(tmp_path, clean_teacher, noisy_labels):
    alone = train_job(student_job(tmp_path, noisy_labels, "alone"))
    job = student_job(tmp_path, noisy_labels, "distilled")
    distilled = distill_job(DistillJob(data=job.data, model=job.model, train=job.train, run=job.run,
                                       distill=DistillConfig(teacher=str(clean_teacher), alpha=0.1,
                                                             temperature=2.0)))
    assert distilled["teacher_test_acc"] >= 0.9
    assert distilled["test_acc"] >= alone["test_acc"] + 0.1, (distilled["test_acc"], alone["test_acc"])
    run = tmp_path / "distilled"
    for f in ("model.safetensors", "predictions.npz", "teacher_predictions.npz"):
        assert (run / f).exists(), f
    assert (Path(distilled["teacher_cache"]) / "logits.npy").exists()
    saved = np.load(run / "teacher_predictions.npz")
    assert (saved["preds"] == saved["labels"]).mean() == pytest.approx(distilled["teacher_test_acc"])
    recalls = [(saved["preds"][saved["labels"] == c] == c).mean() for c in np.unique(saved["labels"])]
    assert distilled["teacher_test_balanced_acc"] == pytest.approx(np.mean(recalls))


def test_the_teachers_accuracy_on_its_views_counts_labelled_images_only():
    from fm2edge.distill.teacher import views_accuracy

    logits = torch.zeros(3, 2, 4)
    logits[0, :, 1] = 1  # image 0: right on both views
    logits[1, 0, 2], logits[1, 1, 0] = 1, 1  # image 1 (label 2): right on one view of two
    logits[2, :, 3] = 1  # image 2: unlabelled
    assert views_accuracy(logits, torch.tensor([1, 2, -1])) == pytest.approx(0.75)
    assert views_accuracy(logits, torch.tensor([-1, -1, -1])) is None


def test_a_bicubic_teacher_sees_a_whole_image_view_as_it_sees_the_image(clean_teacher, parquet_dir):
    """Consistent teaching renders the teacher's views with its own interpolation: a bicubic model shown the whole
    image as a view gives the outputs it gives the image through its own preprocessing."""
    import dataclasses

    from fm2edge.augment import Views, draw_views
    from fm2edge.config import AugmentConfig
    from fm2edge.data import load_data
    from fm2edge.models.io import load_classifier

    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    teacher = load_classifier(clean_teacher)
    teacher.preprocess = dataclasses.replace(teacher.preprocess, size=96, crop_pct=1.0, interpolation="bicubic")
    task = DistillTask(create_model(ModelConfig(name="student:small_cnn"), 4), teacher,
                       DistillConfig(teacher=str(clean_teacher)))
    images = train.images[:16]
    params = draw_views(16, AugmentConfig(crop="none", flip=False), torch.Generator().manual_seed(0), 16,
                        images.shape[-1]).params
    whole, _ = task.teacher_outputs(images, Views(params))
    plain, _ = task.teacher_outputs(images)
    assert float((whole - plain).abs().max()) <= 0.05 * float(plain.abs().max())
    assert torch.equal(whole.argmax(1), plain.argmax(1))


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown distillation losses"):
        DistillConfig(teacher="x", losses={"crd": 1.0})


def test_the_config_names_every_loss_the_task_builds():
    # the config checks names without importing torch; the task's table builds them: the two must agree
    assert set(LOSS_NAMES) == set(LOSSES) and len(LOSS_NAMES) == len(LOSSES)


def test_unlabeled_images_are_the_training_images_left_out():
    from fm2edge.data import load_data, load_unlabeled

    cfg = DataConfig(source="digits", max_train=200, max_test=50)
    train, val, test = load_data(cfg)
    extra = load_unlabeled(cfg, 300)
    assert len(extra) == 300 and bool((extra.labels == -1).all())
    flat = {bytes(x.numpy().tobytes()) for split in (train, val, test) for x in split.images}
    overlap = sum(bytes(x.numpy().tobytes()) in flat for x in extra.images)
    assert overlap <= 5  # digits holds a few exact duplicate images; the selections themselves are disjoint
    # the same images with their labels (for checks that read neither validation nor test): digits' own labels
    from fm2edge.data import load_left_out

    held = load_left_out(cfg, 300)
    assert torch.equal(held.images, extra.images) and held.labels.min() >= 0 and len(held.labels.unique()) == 10
    everything = load_unlabeled(cfg, None)
    # the last ones (held out of training by `fm2edge auto` to rank students) are the tail of the same order
    tail = load_unlabeled(cfg, 100, last=True)
    assert torch.equal(tail.images, everything.images[-100:]) and not torch.equal(tail.images, extra.images[:100])
    # labelled (training + validation) and unlabelled together: every training-split image that is not test data
    assert len(train) + len(val) == 200
    assert len(everything) + len(train) + len(val) == 1797 - 450  # digits holds out 25% (450) as test data
    with pytest.raises(Fm2EdgeError, match="no training images beyond"):
        load_unlabeled(DataConfig(source="digits"), None)


def test_kd_with_unlabelled_rows_uses_soft_targets_only():
    from fm2edge.distill.losses import KDLoss, _kl_rows

    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, -1, -1, 4])
    kd = KDLoss(temperature=3.0, alpha=0.3)
    soft = _kl_rows(t, s, 3.0)
    hard = torch.nn.functional.cross_entropy(s, y.clamp_min(0), reduction="none")
    rows = torch.where(y >= 0, 0.3 * hard + 0.7 * soft, soft)
    assert torch.allclose(kd(s, t, y), rows.mean())
    assert torch.allclose(kd(s, t, torch.full((6,), -1)), soft.mean())


def test_distill_with_unlabeled_and_seeds(tmp_path, clean_teacher, parquet_dir):
    job = DistillJob(data=DataConfig(source=str(parquet_dir), max_train=24),
                     model=ModelConfig(name="student:small_cnn"),
                     train=TrainConfig(epochs=1, batch_size=32, lr=3e-3, device="cpu"),
                     distill=DistillConfig(teacher=str(clean_teacher), unlabeled=100),
                     run=RunConfig(root=str(tmp_path), name="kd"), seeds=[0, 1])
    summary = distill_job(job)
    assert summary["seeds"] == [0, 1] and len(summary["test_acc"]) == 2
    assert summary["mean"] == pytest.approx(np.mean(summary["test_acc"]))
    for seed in (0, 1):
        run = tmp_path / "kd" / f"seed-{seed}"
        cache = json.loads((run / "metrics.json").read_text())["teacher_cache"]
        # 24 labelled less 4 for validation, + the other 40, unlabelled (validation images are never among them)
        assert len(np.load(f"{cache}/logits.npy")) == 60
        assert (run / "model.safetensors").exists()
    assert (tmp_path / "kd" / "seeds.json").exists()


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "export"])
def test_a_teacher_from_a_file_of_a_plain_module_distils_a_student(kind, tmp_path, clean_teacher, parquet_dir):
    """A teacher trained elsewhere, exported from a plain nn.Module (normalised float NCHW in, logits out), with its
    preprocessing in a side-car JSON: it passes the gate and teaches, on stored consistent views too."""
    from fm2edge.config import AugmentConfig
    from fm2edge.models.io import load_classifier

    trained = load_classifier(clean_teacher)
    plain = torch.nn.Sequential(trained.backbone, trained.head).eval()  # no fm2edge types inside
    path = tmp_path / f"teacher.{ {'onnx': 'onnx', 'torchscript': 'pt', 'export': 'pt2'}[kind]}"
    x = torch.zeros(2, 3, 32, 32)
    if kind == "onnx":
        torch.onnx.export(plain, (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    elif kind == "export":
        torch.export.save(torch.export.export(plain, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                          str(path))
    else:
        torch.jit.trace(plain, x).save(str(path))
    p = trained.preprocess
    (tmp_path / f"{path.name}.json").write_text(json.dumps({"size": p.size, "mean": list(p.mean),
                                                            "std": list(p.std)}))
    result = distill_job(DistillJob(
        data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name="student:small_cnn"),
        train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu",
                          augment=AugmentConfig(crop="resized", flip=True)),
        distill=DistillConfig(teacher=f"{kind}:{path}", views=2), run=RunConfig(root=str(tmp_path), name="s")))
    assert result["teacher"] == f"{kind}:{path}" and result["teacher_gate_acc"] >= 0.9
    assert result["teacher_cached"] and result["stored_views"] == 2
    # how often it names the label on the views it taught from: the whole of its cache, checked against the labels
    cached = np.load(Path(result["teacher_cache"]) / "logits.npy")
    assert cached.shape[1] == 2 and 0.5 <= result["teacher_views_acc"] <= 1
    assert result["teacher_views_acc"] <= result["teacher_gate_acc"] + 0.2
    assert result["teacher_test_acc"] == pytest.approx(
        json.loads((clean_teacher / "metrics.json").read_text())["test_acc"], abs=1e-6)


def test_a_convolutional_teacher_runs_in_onnx_runtime_on_a_cpu_with_pytorchs_outputs(tmp_path, clean_teacher,
                                                                                     parquet_dir, capsys):
    """On a CPU a CNN teacher's forward passes (cache builds, online teaching) run through its exported features
    graph, flip average included, with the outputs PyTorch gives; bf16, "torch" or a GPU keep PyTorch, and asking
    for the graph where it cannot run is one error."""
    from fm2edge.data import load_data
    from fm2edge.distill.teacher import graph_folder, load_teacher, teacher_graph, teacher_logits
    from fm2edge.train import predict

    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    cpu = torch.device("cpu")
    for flip in (False, True):
        teacher = load_teacher(str(clean_teacher), 4, flip=flip)
        task = DistillTask(create_model(ModelConfig(name="student:small_cnn"), 4), teacher,
                           DistillConfig(teacher=str(clean_teacher), losses={"kd": 1.0, "feature": 0.5}))
        expected = task.teacher_arrays(train.images[:20])
        task.teacher_graph = teacher_graph(teacher, "auto", cpu, None, tmp_path / "graphs")
        assert task.teacher_graph is not None
        got = task.teacher_arrays(train.images[:20])
        for name in ("logits", "features"):
            assert torch.allclose(expected[name], got[name], atol=1e-4), (flip, name)
    assert len(list((tmp_path / "graphs").glob("*/backbone.onnx"))) == 2  # one graph per flip setting
    one_process = SimpleNamespace(num_processes=1, device=cpu)
    assert torch.allclose(teacher_logits(teacher, test, cpu, task.teacher_graph, 16, one_process),
                          predict(teacher, test, 16, cpu), atol=1e-4)
    # without its graph, or where several processes share the images out, PyTorch channels-last gives the same
    assert torch.allclose(teacher_logits(teacher, test, cpu, None, 16), predict(teacher, test, 16, cpu), atol=1e-4)
    assert teacher_graph(teacher, "torch", cpu, None, tmp_path / "graphs") is None
    assert teacher_graph(teacher, "auto", cpu, torch.bfloat16, tmp_path / "graphs") is None
    assert teacher_graph(teacher, "auto", torch.device("cuda"), None, tmp_path / "graphs") is None
    with pytest.raises(Fm2EdgeError, match="fp32 on a CPU, not in bfloat16.*teacher_backend torch"):
        teacher_graph(teacher, "onnx", cpu, torch.bfloat16, tmp_path / "graphs")
    job = DistillJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name="student:small_cnn"),
                     train=TrainConfig(epochs=1, batch_size=32, device="cpu"),
                     distill=DistillConfig(teacher=str(clean_teacher)), run=RunConfig(root=str(tmp_path), name="kd"))
    distill_job(job)
    assert list(graph_folder(job.data).glob("*/backbone.onnx"))  # the distillation's teacher ran as a graph
    assert "(its forward passes in ONNX Runtime)" in capsys.readouterr().out  # and said so


def test_a_teacher_the_exporter_cannot_trace_runs_in_pytorch_unless_the_graph_was_asked_for(
        clean_teacher, monkeypatch, tmp_path, caplog):
    import fm2edge.export as export
    from fm2edge.config import EmbedConfig
    from fm2edge.distill.teacher import load_teacher, teacher_graph
    from fm2edge.features import resolve_backend

    def unsupported(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(export, "export_onnx", unsupported)
    teacher, cpu = load_teacher(str(clean_teacher), 4), torch.device("cpu")
    assert teacher_graph(teacher, "auto", cpu, None, tmp_path) is None
    assert "aten::weird" in caplog.text and "the teacher runs in PyTorch instead" in caplog.text
    with pytest.raises(Fm2EdgeError, match=r"could not be exported to ONNX .*--distill.teacher_backend torch"):
        teacher_graph(teacher, "onnx", cpu, None, tmp_path)
    assert resolve_backend(teacher, EmbedConfig(cache_dir=str(tmp_path)), cpu) == "torch"  # embed, likewise
    assert "embedding in PyTorch instead" in caplog.text


def test_the_teacher_runs_at_the_size_it_is_given(clean_teacher):
    from fm2edge.distill.teacher import load_teacher

    assert load_teacher(str(clean_teacher), 4).preprocess.size == 32
    assert load_teacher(str(clean_teacher), 4, image_size=48).preprocess.size == 48


def test_a_flip_averaged_teacher_gives_the_mean_over_each_image_and_its_mirror(clean_teacher):
    from fm2edge.distill.teacher import load_teacher

    plain = load_teacher(str(clean_teacher), 4)
    flipped = load_teacher(str(clean_teacher), 4, flip=True)
    assert not plain.flip_average and flipped.flip_average
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        assert torch.allclose(flipped(x), expected, atol=1e-5)
        assert torch.allclose(flipped.head(flipped.features(x)), expected, atol=1e-5)
        assert torch.allclose(flipped(x), flipped(x.flip(-1)), atol=1e-5), "a mirror-invariant teacher"
        assert not torch.allclose(plain(x), expected, atol=1e-5)


def test_a_distilled_student_keeps_its_weight_average_and_not_the_teachers(tmp_path, clean_teacher, parquet_dir):
    """--train.ema in distillation averages the student alone: the kept student is the average of the last
    checkpoint, and the average holds no teacher weights."""
    from safetensors.torch import load_file

    job = DistillJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name="student:small_cnn"),
                     train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu", ema=0.9, select="last"),
                     distill=DistillConfig(teacher=str(clean_teacher)), run=RunConfig(root=str(tmp_path), name="kd"))
    metrics = distill_job(job)
    assert all(h["val_acc_raw"] is not None for h in metrics["history"])
    run = tmp_path / "kd"
    kept = load_file(run / "model.safetensors")
    average = load_file(run / "checkpoints" / "epoch-001" / "ema.safetensors")
    assert set(average) == set(kept) and all(torch.equal(kept[k], average[k]) for k in kept)
    assert not any(k.startswith("teacher") for k in average)


def test_dkd_warm_up_spans_the_epochs_asked_for_with_gradient_accumulation(tmp_path, clean_teacher, parquet_dir,
                                                                          monkeypatch):
    """--distill.dkd_warmup 2 with --train.grad_accum 2: the ramp reaches 1 at the end of epoch 2, not of epoch 1
    (it counted forward calls against a length in optimiser steps, so it ramped twice as fast)."""
    import fm2edge.distill.task as task_module
    from fm2edge.distill.losses import DKD

    ramps = []

    class Recording(DKD):
        def forward(self, *args):
            if self.training:
                ramps.append(float((self.step.float() + 1).clamp(max=self.warmup_steps) / self.warmup_steps))
            return super().forward(*args)

    monkeypatch.setattr(task_module, "DKD", Recording)
    job = DistillJob(data=DataConfig(source=str(parquet_dir), val_fraction=0),
                     model=ModelConfig(name="student:small_cnn"),
                     train=TrainConfig(epochs=3, batch_size=16, grad_accum=2, device="cpu"),
                     distill=DistillConfig(teacher=str(clean_teacher), losses={"dkd": 1.0}, dkd_warmup=2),
                     run=RunConfig(root=str(tmp_path), name="dkd"))
    distill_job(job)
    per_epoch = len(ramps) // 3  # 64 images, batches of 16: 4 calls (2 optimiser steps) an epoch
    assert per_epoch == 4 and ramps == sorted(ramps)
    assert ramps[per_epoch - 1] == pytest.approx(0.5) and ramps[2 * per_epoch - 1] == 1.0
    assert ramps[2 * per_epoch - 2] < 1.0


def test_a_limited_unlabelled_source_is_the_same_seeded_sample_every_time():
    from fm2edge.data import ImageData
    from fm2edge.distill.teacher import limited

    labels = torch.full((100,), -1)
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    extra = ImageData(images, labels, [], "x")
    a, b = limited(extra, 30), limited(extra, 30)
    assert len(a) == 30 and torch.equal(a.images, b.images)
    order = a.images[:, 0, 0, 0].tolist()
    assert order == sorted(order) and order != list(range(30))  # a spread sample in source order, not the first 30
    assert limited(extra, None) is extra and limited(extra, 500) is extra


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 300), data=st.data())
def test_the_images_held_back_are_never_among_a_limited_sample_that_leaves_room_for_them(total, data):
    """`fm2edge auto` ranks students on unlabelled images held back from training: whatever the pool's size, the
    held-back images and any sample of at most the rest are disjoint, and together they can cover the pool."""
    from fm2edge.data import ImageData
    from fm2edge.distill.teacher import held_back, limited

    n = data.draw(st.integers(0, total))
    limit = data.draw(st.integers(0, total - n))
    ids = torch.arange(total, dtype=torch.int32)
    images = ids.view(total, 1, 1, 1).expand(total, 3, 1, 1).contiguous()
    extra = ImageData(images, torch.full((total,), -1), [], "x")
    picked = set(limited(extra, limit).images[:, 0, 0, 0].tolist()) if limit else set()
    held = held_back(extra, n).images[:, 0, 0, 0].tolist()
    assert len(held) == n and len(set(held)) == n and not picked & set(held)
    assert len(picked | set(held)) == limit + n
    if limit == total - n:
        assert picked | set(held) == set(range(total))
