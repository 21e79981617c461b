from __future__ import annotations

import json

import pytest
import torch

from fm2edge.cli import main
from fm2edge.config import DataConfig, FinetuneConfig, FinetuneJob, ModelConfig, RunConfig, TrainConfig
from fm2edge.errors import Fm2EdgeError
from fm2edge.finetune import (
    apply_mode,
    count_parameters,
    expected_lora_parameters,
    finetune_job,
    merged,
    resolve_targets,
)
from fm2edge.models import create_model
from fm2edge.models.io import load_classifier

DIGITS = DataConfig(source="digits", max_train=300, max_test=100)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A tiny transformers ViT (query/key/value projections) saved locally."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="module")
def timm_wrapper_vit(tmp_path_factory):
    """The lab's family: a timm ViT inside transformers' TimmWrapper (fused qkv; its own 'head' module)."""
    from transformers import TimmWrapperConfig, TimmWrapperModel

    path = tmp_path_factory.mktemp("timmwrap")
    torch.manual_seed(0)
    TimmWrapperModel(TimmWrapperConfig(architecture="vit_tiny_patch16_224",
                                       model_args={"img_size": 32, "depth": 2})).save_pretrained(path)
    return f"hf:{path}"


# transformers 5 names the attention projections q_proj/v_proj (query/value before)
MODELS = {"hf": ("hf_vit", [["q_proj", "v_proj"], ["query", "value"]]), "timm-wrapper": ("timm_wrapper_vit", [["qkv"]])}


@pytest.mark.parametrize("family", list(MODELS))
def test_lora_count_matches_formula_and_only_lora_and_head_learn(family, request):
    fixture, preset = MODELS[family]
    model = create_model(ModelConfig(name=request.getfixturevalue(fixture)), 10)
    targets = resolve_targets(model, None)
    assert targets in preset
    head = model.head.weight.numel() + model.head.bias.numel()
    lora = expected_lora_parameters(model, targets, r=4)
    d = model.feature_dim  # per block, r x (in + out): qkv is D -> 3D; q_proj and v_proj are D -> D each
    per_block = d + 3 * d if targets == ["qkv"] else 2 * (d + d)
    assert lora == 4 * 2 * per_block  # r = 4, two blocks
    wrapped = apply_mode(model, "lora", FinetuneConfig(lora_r=4))
    assert count_parameters(wrapped)["trainable"] == lora + head
    loss = wrapped(torch.randn(3, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    got_grad = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    assert got_grad and all("lora_" in n or ".head.modules_to_save." in n for n in got_grad)
    assert any(".head.modules_to_save." in n for n in got_grad)  # the new head is trained, not frozen


def test_lab_modules_to_save_trap_is_avoided(timm_wrapper_vit):
    """The lab asked peft for modules_to_save=['classifier'], which no module of the timm wrapper is called."""
    from peft import LoraConfig, get_peft_model

    lab = get_peft_model(create_model(ModelConfig(name=timm_wrapper_vit), 10),
                         LoraConfig(r=4, target_modules=["qkv"], modules_to_save=["classifier"]))
    assert not any(p.requires_grad for n, p in lab.named_parameters() if n.endswith(("head.weight", "head.bias")))
    ours = apply_mode(create_model(ModelConfig(name=timm_wrapper_vit), 10), "lora", FinetuneConfig(lora_r=4))
    assert all(p.requires_grad for n, p in ours.named_parameters() if ".head.modules_to_save." in n)


def test_merged_model_logits_equal_adapter_logits(hf_vit):
    wrapped = apply_mode(create_model(ModelConfig(name=hf_vit), 10), "lora", FinetuneConfig(lora_r=4))
    torch.manual_seed(1)
    for n, p in wrapped.named_parameters():
        if "lora_B" in n:  # B starts at zero; give the adapters something to merge
            torch.nn.init.normal_(p, std=0.1)
    wrapped.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = wrapped(x)
        plain = merged(wrapped)
        assert not any("lora" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(plain(x), before, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("modes", [["linear"], ["full"]])
def test_linear_and_full_modes_freeze_as_named(modes, hf_vit):
    model = create_model(ModelConfig(name=hf_vit), 10)
    trained = apply_mode(model, modes[0], FinetuneConfig(modes=modes))
    n = count_parameters(trained)
    if modes == ["linear"]:
        assert n["trainable"] == model.head.weight.numel() + model.head.bias.numel()
    else:
        assert n["trainable"] == n["total"]


def test_bad_targets_and_cnns_fail_loudly(hf_vit):
    with pytest.raises(Fm2EdgeError, match=r"\['qkv'\] match no linear"):
        resolve_targets(create_model(ModelConfig(name=hf_vit), 10), ["qkv"])
    with pytest.raises(Fm2EdgeError, match="--finetune.modes"):
        resolve_targets(create_model(ModelConfig(name="student:small_cnn"), 10), None)


def _job(tmp_path, model, modes, epochs, resume=False):
    return FinetuneJob(data=DIGITS, model=ModelConfig(name=model),
                       train=TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, optimizer="adamw", device="cpu"),
                       finetune=FinetuneConfig(modes=modes, lora_r=8),
                       run=RunConfig(root=str(tmp_path), name="ft", resume=resume))


def test_finetune_lifts_accuracy_saves_adapter_and_merged_model(tmp_path, timm_wrapper_vit):
    summary = finetune_job(_job(tmp_path, timm_wrapper_vit, ["lora", "linear"], epochs=4))
    rows = {r["mode"]: r for r in summary["rows"]}
    assert rows["lora"]["test_acc"] > 0.35  # 10 classes: chance is 0.10
    assert rows["lora"]["test_acc"] > rows["lora"]["val_acc_before"] + 0.2
    run = tmp_path / "ft"
    assert (run / "lora" / "adapter" / "adapter_config.json").exists()
    assert (run / "plots" / "comparison.png").stat().st_size > 10_000
    assert json.loads((run / "comparison.json").read_text())["rows"] == summary["rows"]
    # the merged model loads as a plain classifier and reproduces the recorded test predictions
    import numpy as np

    from fm2edge.data import load_data
    from fm2edge.train import predict

    plain = load_classifier(run / "lora")
    _, _, test = load_data(DIGITS)
    logits = predict(plain, test, 64, torch.device("cpu"))
    assert float((logits.argmax(1) == test.labels).float().mean()) == pytest.approx(rows["lora"]["test_acc"])
    recorded = np.load(run / "lora" / "predictions.npz")["logits"]
    assert np.allclose(recorded, logits.numpy(), atol=1e-4)


def test_finetune_resumes_a_longer_run(tmp_path, hf_vit):
    finetune_job(_job(tmp_path, hf_vit, ["lora"], epochs=1))
    summary = finetune_job(_job(tmp_path, hf_vit, ["lora"], epochs=2, resume=True))
    metrics = json.loads((tmp_path / "ft" / "lora" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and len(metrics["history"]) == 2
    assert summary["rows"][0]["test_acc"] == metrics["test_acc"]


def test_finetune_cli_refuses_existing_run_and_bad_mode(tmp_path, hf_vit, capsys):
    finetune_job(_job(tmp_path, hf_vit, ["linear"], epochs=1))
    argv = ["finetune", "--model.name", hf_vit, "--data.source", "digits", "--data.max_train", "100",
            "--finetune.modes", "[linear]", "--run.root", str(tmp_path), "--run.name", "ft"]
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv[:-4], "--finetune.modes", "[qlora]"]) == 2 and "qlora" in capsys.readouterr().err


def test_lora_on_named_convolutions_of_a_cnn():
    """CNN backbones have no attention; LoRA can still adapt their ungrouped convolutions when named."""
    model = create_model(ModelConfig(name="student:small_cnn"), 10)
    expected = expected_lora_parameters(model, ["3"], r=2)  # the second conv of the first stage: 32 -> 32, 3x3
    assert expected == 2 * (32 * 9 + 32)
    wrapped = apply_mode(model, "lora", FinetuneConfig(lora_r=2, target_modules=["3"]))
    head = model.head.weight.numel() + model.head.bias.numel()
    assert count_parameters(wrapped)["trainable"] == expected + head


def test_lora_trains_only_the_classifier_head_not_every_module_named_like_it():
    """peft matches modules_to_save by bare suffix: 'head' would also catch MobileNet's conv_head and train it."""
    model = create_model(ModelConfig(name="timm:mobilenetv3_small_050"), 10)
    assert any(n.endswith("conv_head") for n, _ in model.named_modules())
    targets = resolve_targets(model, None)
    assert targets == ["conv_pw", "conv_pwl"]  # the CNN preset
    lora = expected_lora_parameters(model, targets, 2)
    head = model.head.weight.numel() + model.head.bias.numel()
    wrapped = apply_mode(model, "lora", FinetuneConfig(lora_r=2))
    assert count_parameters(wrapped)["trainable"] == lora + head
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert not any("conv_head" in n for n in trainable)
    x = torch.randn(2, 3, 64, 64)
    wrapped.eval()
    before = wrapped(x)
    assert torch.allclose(merged(wrapped)(x), before, atol=1e-5)  # merging still gives the same logits


def _norm_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers() if "running_" in n or "num_batches" in n}


@pytest.mark.parametrize("mode,norm_stats,moves", [("linear", "update", False), ("lora", "frozen", False),
                                                   ("lora", "update", True), ("full", "update", True)])
def test_frozen_batchnorm_statistics_stay_put(mode, norm_stats, moves, tmp_path):
    """Linear fine-tuning leaves the backbone as it was, BatchNorm running statistics included; LoRA updates them
    or not as --finetune.lora_norm_stats says; full fine-tuning updates them."""
    model_cfg = ModelConfig(name="timm:mobilenetv3_small_050", image_size=32)
    job = FinetuneJob(data=DataConfig(source="digits", max_train=64, max_test=32), model=model_cfg,
                      train=TrainConfig(epochs=1, batch_size=32, lr=1e-3, device="cpu"),
                      finetune=FinetuneConfig(modes=[mode], lora_norm_stats=norm_stats, eval_before=False,
                                              target_modules=["conv_pw"] if mode == "lora" else None),
                      run=RunConfig(root=str(tmp_path), name="ft"))
    torch.manual_seed(0)
    before = _norm_buffers(create_model(model_cfg, 10).backbone)
    assert before
    finetune_job(job)
    after = _norm_buffers(load_classifier(tmp_path / "ft" / mode).backbone)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert bool(changed) == moves, changed
