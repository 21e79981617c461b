"""Model folders other tools load: huggingface_hub's PyTorchModelHubMixin (save_pretrained / from_pretrained, also
through the hub's own cache, offline), timm's create_model for timm students, and `fm2edge push` with the hub's
upload calls recorded instead of sent."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch

import fm2edge
from fm2edge.cli import main
from fm2edge.config import DataConfig, ModelConfig
from fm2edge.models import Classifier, create_model
from fm2edge.models.io import TIMM_FILE, write_timm_weights

DIGITS = DataConfig(source="digits", max_train=400, max_test=200)


def logits(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def run_with_export(digits_run, tmp_path_factory):
    from fm2edge.config import ExportConfig, ExportJob
    from fm2edge.export import export_job

    run = tmp_path_factory.mktemp("hub") / "cnn"
    shutil.copytree(digits_run, run)
    export_job(ExportJob(model=str(run), data=DIGITS, export=ExportConfig(latency_runs=3, calibration_images=32)))
    return run


def test_a_run_folder_is_a_mixin_folder_and_both_loaders_agree(digits_run, tmp_path):
    config = json.loads((digits_run / "config.json").read_text())
    assert config["library_name"] == "fm2edge" and config["architecture"] == "student:small_cnn"
    assert config["class_names"] == [str(d) for d in range(10)] and config["id2label"]["3"] == "3"
    assert config["num_classes"] == 10 and config["preprocess"]["size"] == 32
    x = torch.rand(4, 3, 32, 32)
    ours, mixin = fm2edge.from_pretrained(digits_run), Classifier.from_pretrained(str(digits_run))
    assert isinstance(mixin, Classifier) and mixin.class_names == config["class_names"]
    assert torch.equal(logits(ours, x), logits(mixin, x))
    # the mixin's own save_pretrained writes a folder the same loaders read back, weights bit for bit
    mixin.save_pretrained(tmp_path / "copy")
    assert {"model.safetensors", "config.json", "model.json", "README.md"} <= {p.name for p in (tmp_path /
                                                                                                 "copy").iterdir()}
    again = Classifier.from_pretrained(str(tmp_path / "copy"))
    assert torch.equal(logits(again, x), logits(ours, x))
    assert fm2edge.load(tmp_path / "copy").class_names == config["class_names"]


def test_from_pretrained_reads_a_hub_repository_through_the_hub_cache(digits_run, tmp_path, monkeypatch):
    """The hub code path end to end, offline: a repository laid out in the hub's cache as snapshot_download leaves
    it, read by repo id with the hub switched off."""
    import huggingface_hub.constants as hub

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--digits-cnn"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "model.json", "config.json", "README.md"):
        shutil.copy(digits_run / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    x = torch.rand(2, 3, 32, 32)
    from_hub = fm2edge.from_pretrained("someone/digits-cnn")
    assert torch.equal(logits(from_hub, x), logits(fm2edge.from_pretrained(digits_run), x))
    mixin = Classifier.from_pretrained("someone/digits-cnn")
    assert torch.equal(logits(mixin, x), logits(from_hub, x))
    with pytest.raises(fm2edge.errors.Fm2EdgeError, match="cannot be reached|give a local run folder"):
        fm2edge.from_pretrained("someone/not-cached")


@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_050", "pypi:efficientnet_lite0"])
def test_timm_students_load_in_timm_itself(name, tmp_path):
    import timm

    model = create_model(ModelConfig(name=name, pretrained=False, image_size=64), 3).eval()
    for p in model.parameters():  # random, not zero-initialised, weights everywhere (BN statistics too)
        p.data.normal_(0, 0.05)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    args = write_timm_weights(model, tmp_path)
    assert args is not None and (tmp_path / TIMM_FILE).exists()
    overlay = {**args["pretrained_cfg_overlay"], "file": str(tmp_path / TIMM_FILE)}
    net = timm.create_model(args["architecture"], pretrained=True, num_classes=args["num_classes"],
                            pretrained_cfg_overlay=overlay).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
    assert tuple(net.pretrained_cfg["mean"]) == tuple(model.preprocess.mean)


def test_other_models_get_no_timm_copy(tmp_path):
    model = create_model(ModelConfig(name="student:small_cnn"), 3)
    assert write_timm_weights(model, tmp_path) is None and not (tmp_path / TIMM_FILE).exists()


class RecordedHub:
    """Stands in for huggingface_hub.HfApi: records what would be created and uploaded (the files matched by the
    same allow patterns the hub applies), sends nothing."""

    calls: list = []

    def __init__(self, token=None) -> None:
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False, **_):
        RecordedHub.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, folder_path, repo_id, allow_patterns=None, commit_message="", **_):
        root = Path(folder_path)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        sent = [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in allow_patterns)]
        RecordedHub.calls.append(("upload_folder", repo_id, sent, {f: (root / f).read_bytes() for f in sent
                                                                      if f == "README.md"}))


def test_push_uploads_model_card_and_onnx_with_the_hub_metadata(run_with_export, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import ModelCard

    RecordedHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordedHub)
    assert main(["push", str(run_with_export), "someone/digits-cnn", "--private", "true"]) == 0
    assert "uploaded" in capsys.readouterr().out
    (create, repo, private), (upload, repo2, sent, card) = RecordedHub.calls
    assert (create, repo, private, upload, repo2) == ("create_repo", "someone/digits-cnn", True, "upload_folder",
                                                      "someone/digits-cnn")
    assert {"model.safetensors", "model.json", "config.json", "README.md", "predictions.npz", "export/model.onnx",
            "export/model.int8.onnx", "export/export.json"} <= set(sent)
    assert not [f for f in sent if f.startswith(("checkpoint", "plots/")) or f.endswith(".yaml")], sent
    meta = ModelCard(card["README.md"].decode()).data
    metrics = json.loads((run_with_export / "metrics.json").read_text())
    assert meta.library_name == "fm2edge" and meta.pipeline_tag == "image-classification"
    assert meta.eval_results[0].metric_type == "accuracy"
    assert meta.eval_results[0].metric_value == pytest.approx(metrics["test_acc"], abs=1e-4)


def test_push_of_auto_best_uploads_the_graph_it_ships(run_with_export, tmp_path, monkeypatch):
    import huggingface_hub

    best = tmp_path / "best"  # as `fm2edge auto` writes it: the chosen graph and its export.json at the top
    shutil.copytree(run_with_export, best, ignore=shutil.ignore_patterns("export"))
    for name in ("model.int8.onnx", "export.json"):
        shutil.copy2(run_with_export / "export" / name, best / name)
    RecordedHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordedHub)
    assert main(["push", str(best), "someone/pets"]) == 0
    sent = RecordedHub.calls[1][2]
    assert {"model.safetensors", "config.json", "README.md", "model.int8.onnx", "export.json"} <= set(sent), sent


def test_push_refuses_a_folder_without_a_model_and_a_bad_repo_name(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    RecordedHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordedHub)
    assert main(["push", str(tmp_path), "someone/x"]) == 2
    assert main(["push", str(tmp_path), "no-slash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "model.json missing" in err[0] and "user/name" in err[1]
    assert RecordedHub.calls == []

