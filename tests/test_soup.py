from __future__ import annotations

import json

import pytest
import torch

from fm2edge.config import DataConfig, ModelConfig, RunConfig, SoupConfig, SoupJob, TrainConfig, TrainJob
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import create_model
from fm2edge.models.io import load_classifier
from fm2edge.soup import average_weights, check_shapes, recalibrate_batchnorm, soup_job
from fm2edge.train import predict, train_job

DIGITS = DataConfig(source="digits", max_train=400, max_test=150)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs fine-tuned from one start (different learning rates and seeds), and one of another
    architecture."""
    root = tmp_path_factory.mktemp("soup")
    quick = TrainConfig(epochs=3, batch_size=32, lr=3e-3, optimizer="adamw")
    train_job(TrainJob(data=DIGITS, model=ModelConfig(name="student:small_cnn"), train=quick,
                       run=RunConfig(root=str(root), name="start")))
    out = []
    for i, lr in enumerate((1e-3, 2e-3, 5e-4)):
        train_job(TrainJob(data=DIGITS, model=ModelConfig(name="student:small_cnn", init=str(root / "start")),
                           train=TrainConfig(epochs=2, batch_size=32, lr=lr, optimizer="adamw", seed=i),
                           run=RunConfig(root=str(root), name=f"ft{i}")))
        out.append(str(root / f"ft{i}"))
    from fm2edge.models.io import save_classifier

    save_classifier(create_model(ModelConfig(name="student:cifar_resnet18"), 10), root / "other")
    return root, out


def test_average_weights_averages_floats_and_keeps_counters():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    out = average_weights([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].item() == 5 and out["n"].dtype == a["n"].dtype


def test_recalibrated_batchnorm_statistics_are_the_images_own():
    """Statistics wrecked on purpose are estimated again from the images: the first BatchNorm's running mean is
    its input's mean over them (equal batches), its running variance their variance within batches."""
    from fm2edge.data import load_data

    torch.manual_seed(0)
    train = load_data(DIGITS)[0]
    model = create_model(ModelConfig(name="student:small_cnn"), 10).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen = []
    hook = bns[0].register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(model.preprocess(train.images[:200]))  # eval mode: the first BatchNorm's input, nothing updated
    hook.remove()
    for m in bns:
        m.running_mean.add_(5.0)
        m.running_var.mul_(50.0)
    recalibrate_batchnorm(model, train.images[:200], 50, torch.device("cpu"))
    x = seen[0]
    assert not model.training
    assert torch.allclose(bns[0].running_mean, x.mean((0, 2, 3)), atol=1e-5)
    within = torch.stack([x[i:i + 50].var((0, 2, 3)) for i in range(0, 200, 50)]).mean(0)
    assert torch.allclose(bns[0].running_var, within, rtol=1e-3)
    assert all(m.momentum == 0.1 for m in bns)  # update_bn puts the momentum back


def test_a_greedy_soup_never_loses_validation_accuracy_and_reads_test_once(runs, tmp_path, capsys, monkeypatch):
    import fm2edge.train
    from fm2edge.data import load_data

    root, folders = runs
    test_hash = load_data(DIGITS)[2].content_hash
    reads = {"test": 0, "other": 0}
    real_predict = fm2edge.train.predict

    def counting(model, data, *args, **kwargs):
        reads["test" if data.content_hash == test_hash else "other"] += 1
        return real_predict(model, data, *args, **kwargs)

    monkeypatch.setattr(fm2edge.train, "predict", counting)
    r = soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=folders, bn_images=200),
                         run=RunConfig(root=str(tmp_path), name="soup")))
    monkeypatch.setattr(fm2edge.train, "predict", real_predict)
    # the test split is read once, on the finished soup; every choice before it read validation only
    assert reads["test"] == 1 and reads["other"] >= len(folders)
    alone = r["val_acc_alone"]
    assert r["val_acc"] >= max(alone.values())
    assert r["ingredients"][0] == max(alone, key=alone.get)  # the best run starts the soup
    assert [s["run"] for s in r["steps"]] == sorted(folders, key=lambda f: -alone[f])
    assert all(s["kept"] == (s["run"] in r["ingredients"]) for s in r["steps"])
    out = tmp_path / "soup"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_acc"] == r["test_acc"] and (out / "plots" / "soup.png").stat().st_size > 0
    # the saved soup is an ordinary model: loaded again it gives the test predictions written beside it
    import numpy as np

    from fm2edge.data import load_data

    model = load_classifier(out)
    test = load_data(DIGITS)[2]
    with np.load(out / "predictions.npz") as f:
        assert np.allclose(f["logits"], predict(model, test, 64, torch.device("cpu")).numpy(), atol=1e-5)
    assert "test accuracy" in capsys.readouterr().out


def test_a_uniform_soup_averages_every_run(runs, tmp_path):
    root, folders = runs
    r = soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=folders[:2], method="uniform", bn_images=100),
                         run=RunConfig(root=str(tmp_path), name="uniform")))
    assert r["ingredients"] == folders[:2]
    states = [load_classifier(f).state_dict() for f in folders[:2]]
    soup = load_classifier(tmp_path / "uniform").state_dict()
    conv = next(k for k in soup if k.endswith("weight") and soup[k].ndim == 4)
    assert torch.allclose(soup[conv], (states[0][conv] + states[1][conv]) / 2)


def test_a_soup_can_average_batchnorm_statistics_instead_of_estimating_them_again(runs, tmp_path):
    """Runs that kept their pretrained statistics (--train.freeze_bn) share them, and a few dozen photos estimate
    them worse: the soup then averages them with the weights."""
    root, folders = runs
    r = soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=folders[:2], method="uniform", batchnorm="average"),
                         run=RunConfig(root=str(tmp_path), name="averaged")))
    assert r["batchnorm"] == "average" and r["bn_images"] == 0
    states = [load_classifier(f).state_dict() for f in folders[:2]]
    soup = load_classifier(tmp_path / "averaged").state_dict()
    stats = [k for k in soup if k.endswith("running_var")]
    assert stats and not torch.allclose(states[0][stats[0]], states[1][stats[0]])
    for k in stats:
        assert torch.allclose(soup[k], (states[0][k] + states[1][k]) / 2)
    # its validation loss is kept beside its accuracy (what ranks it against a single run where accuracy ties)
    from fm2edge.data import load_data

    val = load_data(DIGITS)[1]
    logits = predict(load_classifier(tmp_path / "averaged"), val, 64, torch.device("cpu"))
    assert r["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, val.labels.long())),
                                          rel=1e-4)


def test_bad_soups_are_clear_errors(runs, tmp_path):
    root, folders = runs
    with pytest.raises(Fm2EdgeError, match="at least two runs"):
        soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=folders[:1]), run=RunConfig(root=str(tmp_path))))
    with pytest.raises(Fm2EdgeError, match="different architectures"):
        soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=[folders[0], str(root / "other")]),
                         run=RunConfig(root=str(tmp_path))))
    with pytest.raises(Fm2EdgeError, match="holds no fm2edge model"):
        soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=[folders[0], str(tmp_path)]),
                         run=RunConfig(root=str(tmp_path))))
    with pytest.raises(Fm2EdgeError, match="validation"):
        soup_job(SoupJob(data=DataConfig(source="digits", max_train=400, max_test=150, val_fraction=0),
                         soup=SoupConfig(runs=folders[:2]), run=RunConfig(root=str(tmp_path))))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("someone else's")
    with pytest.raises(Fm2EdgeError, match="already exists"):  # before any model is averaged
        soup_job(SoupJob(data=DIGITS, soup=SoupConfig(runs=folders[:2]), run=RunConfig(root=str(tmp_path),
                                                                                         name="taken")))
    with pytest.raises(Fm2EdgeError, match="differ in shape"):
        check_shapes({"a": create_model(ModelConfig(name="student:small_cnn"), 10),
                      "b": create_model(ModelConfig(name="student:small_cnn"), 3)})
    with pytest.raises(ValueError, match="twice"):
        SoupConfig(runs=[folders[0], folders[0]])


def test_soup_plot_labels_tell_same_named_runs_apart():
    from fm2edge.report.plots import unique_tails

    assert unique_tails(["/s/t20/teacher/full", "/s/base/teacher/full", "/gpu/c/full", "c"]) == \
        ["t20/teacher/full", "base/teacher/full", "c/full", "c"]


def test_a_uniform_soups_plot_gives_the_soup_of_all_runs_not_a_step_at_the_first():
    """A uniform soup of a student and the teacher's weights scored 76.7% where the student alone scored 86.7%: its
    plot put the soup's 76.7% at the student as "the soup so far (kept)", as if it had been built step by step."""
    from fm2edge.report.plots import soup_steps

    steps = [{"run": "a/student", "alone": 0.867, "soup": 0.767, "kept": True},
             {"run": "a/teacher", "alone": 0.833, "soup": 0.767, "kept": True}]
    ax = soup_steps(steps, "uniform soup", uniform=True).axes[0]
    assert [line.get_label() for line in ax.lines] == ["the soup of all 2 runs"]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([76.7, 76.7])
    assert not ax.collections  # no dot for a step that was never tried
    greedy = soup_steps([{**steps[0], "soup": 0.867}, {**steps[1], "kept": False}], "greedy soup").axes[0]
    assert [line.get_label() for line in greedy.lines] == ["the soup so far"]
    assert len(greedy.collections) == 2  # kept and left out
