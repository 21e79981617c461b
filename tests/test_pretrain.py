"""`fm2edge pretrain`: label-free feature distillation into a small student, and starting classifiers from it."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch
from conftest import DIGITS_SMALL
from safetensors.torch import load_file

from fm2edge.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    PretrainJob,
    RunConfig,
    TrainConfig,
    TrainJob,
)
from fm2edge.distill.losses import DenseMatch, EmbeddingMatch, embedding_distance, to_grid
from fm2edge.models import create_model
from fm2edge.models.dense import pooled_and_map
from fm2edge.pretrain import PretrainTask, pretrain_job
from fm2edge.train import train_job

DIGITS = DataConfig(**DIGITS_SMALL)


# ---------------------------------------------------------------- losses: golden values


def test_embedding_distances_have_their_golden_values():
    s = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 1.0], [6.0, 8.0]])
    # row 1: cos 45 degrees = 1/sqrt(2); row 2: the same direction, cos 1
    assert embedding_distance(s, t, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    assert embedding_distance(s, t, "l2").item() == pytest.approx((2 - math.sqrt(2)) / 2, abs=1e-6)
    assert embedding_distance(s, -s, "cosine").item() == pytest.approx(2.0)
    assert embedding_distance(s, 5 * s, "l2").item() == pytest.approx(0.0, abs=1e-7), "scale does not matter"


def test_dense_matching_has_its_golden_value_on_one_grid():
    fmap = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(to_grid(fmap, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])), "averaged down"
    assert to_grid(fmap[..., :2, :2], 4).shape == (1, 1, 4, 4), "resized up"
    loss = DenseMatch(2, 2, grid=2)
    with torch.no_grad():
        loss.projector.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        loss.projector.bias.zero_()
    student = torch.zeros(1, 2, 4, 4)
    student[:, 0] = 1.0  # every position points along channel 0
    teacher = torch.zeros(1, 2, 2, 2)
    teacher[:, 0, 0, 0] = 1.0  # one position agrees (cos 1), one is orthogonal (cos 0), two are opposite (cos -1)
    teacher[:, 1, 0, 1] = 1.0
    teacher[:, 0, 1, :] = -1.0
    assert loss(student, teacher).item() == pytest.approx((0 + 1 + 2 + 2) / 4)


def test_the_pooled_projector_maps_student_width_to_teacher_width():
    match = EmbeddingMatch(8, 24, hidden=16)
    assert match(torch.randn(5, 8), torch.randn(5, 24)).shape == ()


@pytest.mark.parametrize("name,size", [("student:small_cnn", 32), ("timm:resnet18", 64),
                                       ("timm:vit_tiny_patch16_224", 64)])
def test_every_kind_of_backbone_shows_pooled_features_and_a_map(name, size):
    model = create_model(ModelConfig(name=name, pretrained=False, image_size=size), 3).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        pooled, fmap = pooled_and_map(model, x)
        assert torch.allclose(pooled, model.features(x), atol=1e-5), "the pooled features are the model's own"
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and fmap.shape[-1] > 1


def test_a_transformers_model_shows_its_patch_tokens_as_a_map(tiny_dinov2):
    model = create_model(ModelConfig(name=f"hf:{tiny_dinov2}"), 3).eval()
    size = model.preprocess.size
    with torch.no_grad():
        pooled, fmap = pooled_and_map(model, torch.randn(2, 3, size, size))
    assert pooled.shape == (2, model.feature_dim) and fmap.shape[-1] == fmap.shape[-2] > 1


# ---------------------------------------------------------------- the stage


def pretrain(tmp_path, teacher, name="pre", epochs=4, **kw):
    train = {"epochs": epochs, "batch_size": 64, "lr": 3e-3, "device": "cpu", "schedule": "cosine",
             **kw.pop("train", {})}
    return pretrain_job(PretrainJob(data=DIGITS, model=ModelConfig(name="student:small_cnn"),
                                    train=TrainConfig(**train), pretrain=PretrainConfig(teacher=str(teacher), **kw),
                                    run=RunConfig(root=str(tmp_path), name=name)))


def knn_accuracy(model, k: int = 5) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    from fm2edge.data import load_data

    train, val, test = load_data(DIGITS)
    model.eval()
    with torch.no_grad():
        a = model.features(model.preprocess(train.images)).numpy()
        b = model.features(model.preprocess(test.images)).numpy()
    return KNeighborsClassifier(k).fit(a, train.labels.numpy()).score(b, test.labels.numpy())


@pytest.mark.slow
def test_pretraining_without_labels_improves_a_knn_probe_and_saves_no_projector(tmp_path, digits_run):
    result = pretrain(tmp_path, digits_run, epochs=6)
    run = tmp_path / "pre"
    saved = load_file(run / "model.safetensors")
    assert saved and all(k.startswith("backbone.") for k in saved), "no projector, no head"
    meta = json.loads((run / "model.json").read_text())
    assert meta["head"] is None and meta["pretrained_from"] == "student:small_cnn"
    assert result["images"] > 400, "the training split's images beyond the labelled ones are used too"
    history = result["history"]
    assert history[-1]["loss_pooled"] < history[0]["loss_pooled"]
    assert history[-1]["loss_dense"] < history[0]["loss_dense"]
    assert (run / "plots" / "learning_curves.png").exists()

    torch.manual_seed(0)
    scratch = create_model(ModelConfig(name="student:small_cnn"), 10)
    started = create_model(ModelConfig(name="student:small_cnn", init=str(run)), 10)
    assert all(torch.equal(started.backbone.state_dict()[k[len("backbone."):]], v) for k, v in saved.items())
    before, after = knn_accuracy(scratch), knn_accuracy(started)
    assert after > before + 0.05, (before, after)


def test_a_pretrained_student_starts_train_and_probe(tmp_path, digits_run):
    from fm2edge.config import ProbeConfig, ProbeJob
    from fm2edge.probe import probe_job

    pretrain(tmp_path, digits_run, epochs=1, pooled=1.0, dense=0.0)
    model = ModelConfig(name="student:small_cnn", init=str(tmp_path / "pre"))
    quick = TrainConfig(epochs=1, batch_size=64, lr=1e-3, optimizer="adam", schedule="constant", weight_decay=0.0,
                        device="cpu")
    trained = train_job(TrainJob(data=DIGITS, model=model, train=quick, run=RunConfig(root=str(tmp_path), name="ft")))
    scratch = train_job(TrainJob(data=DIGITS, model=ModelConfig(name="student:small_cnn"), train=quick,
                                 run=RunConfig(root=str(tmp_path), name="scratch")))
    # the same one epoch from the pretrained start ends well above the random start (chance is 10%)
    assert trained["test_acc"] > scratch["test_acc"] + 0.1, (trained["test_acc"], scratch["test_acc"])
    from fm2edge.report.job import ReportJob, report_job

    report_job(ReportJob(runs=[str(tmp_path / "pre"), str(tmp_path / "ft")], output=str(tmp_path / "report")))
    page = (tmp_path / "report" / "report.html").read_text()
    assert "(pretrain)" in page, "listed as a pretraining run"
    assert "teacher: student:small_cnn" not in page, "its teacher is not scored as if it had distilled a classifier"
    probed = probe_job(ProbeJob(data=DIGITS, model=model, probe=ProbeConfig(label_counts=[]),
                                run=RunConfig(root=str(tmp_path), name="probe")))
    assert probed


def test_stored_views_replay_the_teachers_features(tmp_path, digits_run):
    from fm2edge.augment import StoredViews, draw_stored_views
    from fm2edge.data import load_data
    from fm2edge.distill.teacher import build_teacher_cache, load_teacher_cache
    from fm2edge.models.io import load_classifier

    train, _, _ = load_data(DIGITS)
    augment = AugmentConfig(crop="resized", flip=True, mixup=0.2)
    task = PretrainTask(create_model(ModelConfig(name="student:small_cnn"), 1), load_classifier(digits_run),
                        PretrainConfig(teacher=str(digits_run), views=2))
    views = draw_stored_views(len(train), 2, augment, 0, train.image_size[0])
    build_teacher_cache(task, train.images, views, tmp_path / "cache", 64, torch.device("cpu"))
    cache = load_teacher_cache(tmp_path / "cache", len(train), ("pooled", "map"), torch.device("cpu"))
    idx = torch.tensor([0, 7, len(train) - 1])
    v = StoredViews(views)(idx, 3)
    partners = train.images[v.col("partner").long().clamp_min(0)]
    online = task.teacher_arrays(train.images[idx], v, partners)
    slot = v.col("slot").long()
    for name in ("pooled", "map"):
        assert torch.allclose(cache[name][idx, slot].float(), online[name].float(), atol=1e-3), name
    task.cache = cache
    replayed = task(train.images[idx], train.labels[idx], idx, v, partners)
    task.cache = None
    live = task(train.images[idx], train.labels[idx], idx, v, partners)
    assert torch.allclose(replayed["loss"], live["loss"], atol=1e-4)


def test_a_convolutional_teachers_embeddings_and_maps_come_from_its_graph_on_a_cpu(tmp_path, digits_run, capsys):
    """On a CPU a CNN teacher's pooled features and last map (what the cache stores and the losses compare) come
    from one exported graph, equal to PyTorch's; pooled matching alone exports the features-only graph, and the
    stage runs its teacher that way."""
    from fm2edge.data import load_data
    from fm2edge.distill.teacher import graph_folder, teacher_graph
    from fm2edge.errors import Fm2EdgeError
    from fm2edge.models.io import load_classifier

    train, _, _ = load_data(DIGITS)
    cpu, images = torch.device("cpu"), train.images[:24]
    for dense in (1.0, 0.0):
        teacher = load_classifier(digits_run)
        task = PretrainTask(create_model(ModelConfig(name="student:small_cnn"), 1), teacher,
                            PretrainConfig(teacher=str(digits_run), dense=dense))
        expected = task.teacher_arrays(images)
        task.teacher_graph = teacher_graph(teacher, "auto", cpu, None, tmp_path / "graphs",
                                           with_map=task.dense is not None, stage="pretrain")
        assert task.teacher_graph is not None
        got = task.teacher_arrays(images)
        assert set(got) == set(expected) == ({"pooled", "map"} if dense else {"pooled"})
        for name in got:
            assert got[name].shape == expected[name].shape
            # stored in fp16: a float's last bit of difference can round to one fp16 step (2^-10 of the value)
            assert torch.allclose(got[name].float(), expected[name].float(), rtol=2e-3, atol=2e-3), (dense, name)
    assert len(list((tmp_path / "graphs").glob("*/backbone.onnx"))) == 2  # with the map, and without
    with pytest.raises(Fm2EdgeError, match="--pretrain.teacher_backend onnx runs the teacher in fp32 on a CPU"):
        teacher_graph(teacher, "onnx", cpu, torch.bfloat16, tmp_path / "graphs", stage="pretrain")
    result = pretrain(tmp_path, digits_run, epochs=1, views=2, teacher_backend="onnx",
                      train={"augment": AugmentConfig(crop="resized", flip=True)})
    assert result["teacher_cache"] and list(graph_folder(DIGITS).glob("*/backbone.onnx"))
    assert "the teacher run in ONNX Runtime" in capsys.readouterr().out


def test_a_file_teacher_without_a_map_says_to_match_pooled_features_only(tmp_path, parquet_dir):
    from fm2edge.errors import Fm2EdgeError

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "t.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    teacher = create_model(ModelConfig(name=f"onnx:{path}", image_size=32), 1)
    student = create_model(ModelConfig(name="student:small_cnn"), 1)
    with pytest.raises(Fm2EdgeError, match="--pretrain.dense 0"):
        PretrainTask(student, teacher, PretrainConfig(teacher="t"))
    task = PretrainTask(student, teacher, PretrainConfig(teacher="t", dense=0.0))
    out = task(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.full((4,), -1))
    assert set(out) == {"loss", "loss_pooled"}


@pytest.mark.slow
def test_a_killed_pretrain_resumes_to_the_uninterrupted_result(tmp_path, digits_run):
    from test_reliability import fm2edge, leftovers, signal_when

    common = ["pretrain", "--data.source", "digits", "--data.max_train", "400", "--pretrain.teacher", str(digits_run),
              "--train.epochs", "3", "--train.batch_size", "64", "--train.device", "cpu",
              "--train.augment.crop", "resized", "--train.augment.flip", "true", "--pretrain.views", "2",
              "--run.root", str(tmp_path)]
    first = tmp_path / "killed" / "checkpoints" / "epoch-001" / "state.json"
    rc, err = signal_when([*common, "--run.name", "killed"], first.exists, signal.SIGKILL)
    assert rc == -signal.SIGKILL, err
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = fm2edge(*common, "--run.name", "killed", "--run.resume", "true")
    assert resumed.returncode == 0, resumed.stderr
    assert fm2edge(*common, "--run.name", "straight").returncode == 0
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["resumed_from_epoch"] is not None
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"], rel=1e-4)
    wa = load_file(tmp_path / "straight" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "model.safetensors")
    assert all(np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5) for k in wa)
    assert leftovers(tmp_path) == []
