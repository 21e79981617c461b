from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fm2edge.config import DataConfig, EmbedConfig, EmbedJob, ModelConfig, RunConfig
from fm2edge.data import load_data
from fm2edge.errors import Fm2EdgeError
from fm2edge.features import embed_data, embed_job, load_backbone
from fm2edge.models import create_model


def test_preprocessing_matches_the_models_image_processor(tiny_dinov2, parquet_dir):
    from PIL import Image
    from transformers import AutoImageProcessor

    train, _, _ = load_data(DataConfig(source=str(parquet_dir), max_train=16))
    model = load_backbone(ModelConfig(name=f"hf:{tiny_dinov2}"), EmbedConfig(), 4).eval()
    proc = AutoImageProcessor.from_pretrained(tiny_dinov2)
    pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in train.images]
    ref = proc(images=pil, return_tensors="pt")["pixel_values"]
    ours = model.preprocess(train.images)
    assert ours.shape == ref.shape
    # normalised units: both round the resized image to uint8; the resampling kernels differ slightly
    assert (ours - ref).abs().mean() < 0.01
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model.features(ours), model.features(ref)).min()
    assert cos > 0.999


def test_embed_cache_hit_and_miss(tiny_dinov2, parquet_dir, monkeypatch):
    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"))
    first = embed_data(job, train, test)
    # 64 training images less 7 held out for validation
    assert first["train"].features.shape == (57, 32) and first["test"].features.shape == (32, 32)

    import fm2edge.features as feats

    def fail(*a, **k):
        raise AssertionError("recomputed although the cache holds these features")

    monkeypatch.setattr(feats, "embed_batches", fail)
    again = embed_data(job, train, test)
    assert np.array_equal(first["train"].features, again["train"].features)
    job.embed.pooling = "both"  # another key: must recompute
    with pytest.raises(AssertionError, match="recomputed"):
        embed_data(job, train, test)


def test_interrupted_extraction_resumes_from_its_last_chunk(tiny_dinov2, parquet_dir, tmp_path, monkeypatch):
    import fm2edge.features as feats

    train, _, test = load_data(DataConfig(source=str(parquet_dir), val_fraction=0))  # 64 = 4 chunks of 16
    job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"),
                   embed=EmbedConfig(chunk_size=16, batch_size=8, splits=["train"], cache_dir=str(tmp_path / "c")))
    straight = embed_data(EmbedJob(data=job.data, model=job.model,
                                   embed=EmbedConfig(splits=["train"], cache_dir=str(tmp_path / "ref"))), train, test)
    real, calls = feats.embed_batches, []

    def interrupt_third(model, images, *a, **k):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third of four chunks is being extracted
        return real(model, images, *a, **k)

    monkeypatch.setattr(feats, "embed_batches", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        embed_data(job, train, test)
    entries = list((tmp_path / "c").iterdir())
    assert not [p for p in entries if not p.name.startswith(".")], "no cache entry before the extraction finished"
    partial = next(p for p in entries if p.name.endswith(".partial"))
    assert sorted(p.name for p in partial.iterdir()) == ["000000000-000000016.npz", "000000016-000000032.npz"]
    calls.clear()
    resumed = embed_data(job, train, test)["train"]
    assert calls == [16, 16], "only the two missing chunks are extracted again"
    assert np.allclose(resumed.features, straight["train"].features, atol=1e-6)
    assert not partial.exists() and resumed.meta["n"] == 64


def test_chunks_of_another_size_are_dropped(tiny_dinov2, parquet_dir, tmp_path, monkeypatch):
    import fm2edge.features as feats

    train, _, test = load_data(DataConfig(source=str(parquet_dir), val_fraction=0))  # 64 = 4 chunks of 16
    cfg = EmbedConfig(chunk_size=16, splits=["train"], cache_dir=str(tmp_path))
    job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"), embed=cfg)
    real, calls = feats.embed_batches, []

    def stop_second(model, images, *a, **k):
        calls.append(len(images))
        if calls == [16, 16]:
            raise KeyboardInterrupt
        return real(model, images, *a, **k)

    monkeypatch.setattr(feats, "embed_batches", stop_second)
    with pytest.raises(KeyboardInterrupt):
        embed_data(job, train, test)
    calls.clear()
    cfg.chunk_size = 32  # the saved 16-image chunk does not fit the new plan
    out = embed_data(job, train, test)["train"]
    assert calls == [32, 32] and out.features.shape == (64, 32)


@pytest.mark.parametrize("backend,min_cos", [("onnx", 0.99999), ("onnx_int8", 0.99)])
def test_onnx_backends_match_pytorch(backend, min_cos, tiny_dinov2, parquet_dir, tmp_path):
    train, _, test = load_data(DataConfig(source=str(parquet_dir)))

    def features(**kw):
        job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"),
                       embed=EmbedConfig(splits=["train"], pooling="both", cache_dir=str(tmp_path), **kw))
        return embed_data(job, train, test)["train"]

    ref, got = features(), features(backend=backend)
    assert got.path != ref.path and got.meta["backend"] == backend  # a cache entry of its own
    cos = torch.nn.functional.cosine_similarity(torch.tensor(ref.features), torch.tensor(got.features))
    assert cos.min() > min_cos, cos.min()
    assert list((tmp_path / ".onnx").glob("*/backbone*.onnx"))  # the exported backbone is kept for the next run


def test_the_auto_backend_is_onnx_runtime_for_a_cnn_on_a_cpu_and_pytorch_for_a_vit(tiny_dinov2, parquet_dir,
                                                                                   tmp_path):
    from fm2edge.features import resolve_backend

    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    cpu = torch.device("cpu")
    cnn = create_model(ModelConfig(name="student:small_cnn"), 4)
    vit = create_model(ModelConfig(name=f"hf:{tiny_dinov2}"), 4)
    auto = EmbedConfig(cache_dir=str(tmp_path))
    assert resolve_backend(cnn, auto, cpu) == "onnx" and resolve_backend(vit, auto, cpu) == "torch"
    assert resolve_backend(cnn, auto, torch.device("cuda")) == "torch"
    assert resolve_backend(cnn, EmbedConfig(backend="torch"), cpu) == "torch"

    def features(**kw):
        job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name="student:small_cnn"),
                       embed=EmbedConfig(splits=["train"], cache_dir=str(tmp_path), **kw))
        return embed_data(job, train, test)["train"]

    got, ref = features(), features(backend="torch")
    assert got.meta["backend"] == "onnx" and ref.meta["backend"] == "torch"
    assert np.abs(got.features - ref.features).max() < 1e-4
    assert features(precision="bf16").meta["backend"] == "torch"  # bf16 asked for: PyTorch's autocast


def test_onnx_backend_refuses_the_gpu(tiny_dinov2, parquet_dir):
    from types import SimpleNamespace

    from fm2edge.errors import Fm2EdgeError
    from fm2edge.features import embed_split

    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    model = load_backbone(ModelConfig(name=f"hf:{tiny_dinov2}"), EmbedConfig(), 4)
    fake = SimpleNamespace(device=torch.device("cuda"), num_processes=1, process_index=0)
    with pytest.raises(Fm2EdgeError, match="runs on the CPU"):
        embed_split(model, train, "train", EmbedConfig(backend="onnx_int8"), fake)


def test_random_weights_are_the_same_in_every_process():
    cfg = ModelConfig(name="timm:resnet18", pretrained=False)
    a, b = (load_backbone(cfg, EmbedConfig(), 10) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    from fm2edge.features import weights_digest

    assert weights_digest(a) == weights_digest(b)  # so a random baseline's features are cached once


@pytest.mark.parametrize("pooling,last_n,dim", [("cls", 1, 32), ("mean", 1, 32), ("both", 1, 64), ("cls", 2, 64),
                                                 ("both", 3, 192)])
def test_pooling_widths(tiny_dinov2, pooling, last_n, dim):
    model = load_backbone(ModelConfig(name=f"hf:{tiny_dinov2}"), EmbedConfig(pooling=pooling, last_n=last_n), 4)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        f = model.features(model.preprocess(x))
    assert f.shape == (2, dim) and model.feature_dim == dim
    if (pooling, last_n) == ("cls", 1):
        out = model.backbone.model(pixel_values=model.preprocess(x))
        assert torch.allclose(f, out.last_hidden_state[:, 0])


def test_cnn_backbone_refuses_token_pooling():
    from fm2edge.errors import Fm2EdgeError

    with pytest.raises(Fm2EdgeError, match="does not support pooling"):
        load_backbone(ModelConfig(name="student:small_cnn"), EmbedConfig(pooling="mean"), 4)


def test_siglip_pools_with_its_own_head_not_a_patch(tiny_siglip):
    """SigLIP's vision tower has no class token: "cls" is its attention-pooling head, "mean" averages every token."""
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    feats = {}
    for pooling in ("cls", "mean", "both"):
        model = load_backbone(ModelConfig(name=f"hf:{tiny_siglip}"), EmbedConfig(pooling=pooling), 4).eval()
        with torch.no_grad():
            feats[pooling] = model.features(model.preprocess(x))
            out = model.backbone.model(pixel_values=model.preprocess(x))
        assert model.feature_dim == feats[pooling].shape[1]
    assert out.last_hidden_state.shape[1] == 16  # 4 x 4 patches, nothing else
    assert torch.allclose(feats["cls"], out.pooler_output, atol=1e-6)
    assert not torch.allclose(feats["cls"], out.last_hidden_state[:, 0])
    assert torch.allclose(feats["mean"], out.last_hidden_state.mean(1), atol=1e-6)  # patch 0 included
    assert torch.allclose(feats["both"], torch.cat([feats["cls"], feats["mean"]], 1), atol=1e-6)


def test_hf_cnn_refuses_a_pooling_it_cannot_do(tiny_hf_resnet):
    from fm2edge.errors import Fm2EdgeError

    model = load_backbone(ModelConfig(name=f"hf:{tiny_hf_resnet}"), EmbedConfig(pooling="cls"), 4).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        f = model.features(model.preprocess(x))
        pooled = model.backbone.model(pixel_values=model.preprocess(x)).pooler_output.flatten(1)
    assert torch.equal(f, pooled) and model.feature_dim == 16
    for pooling, last_n in (("mean", 1), ("both", 1), ("cls", 2)):
        with pytest.raises(Fm2EdgeError, match="convolutional: its features are its own global pool"):
            load_backbone(ModelConfig(name=f"hf:{tiny_hf_resnet}"), EmbedConfig(pooling=pooling, last_n=last_n), 4)


def test_embed_job_writes_tsne_plots(tiny_dinov2, parquet_dir, tmp_path):
    summary = embed_job(EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"),
                                 run=RunConfig(root=str(tmp_path), name="emb"), tsne_samples=60))
    assert summary["train"]["dim"] == 32
    for split in ("train", "test"):
        png = (tmp_path / "emb" / "plots" / f"tsne_{split}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000


@pytest.mark.skipif(not __import__("fm2edge.device", fromlist=["x"]).bf16_supported_on_cpu(),
                    reason="this CPU has no native bf16")
def test_cpu_bf16_embeddings_stay_close_to_fp32(tiny_dinov2, parquet_dir):
    from fm2edge.features import embed_batches

    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    model = load_backbone(ModelConfig(name=f"hf:{tiny_dinov2}"), EmbedConfig(), 4)
    fp32 = embed_batches(model, train.images, 16, torch.device("cpu"), None)
    bf16 = embed_batches(model, train.images, 16, torch.device("cpu"), torch.bfloat16)
    cos = torch.nn.functional.cosine_similarity(torch.tensor(fp32), torch.tensor(bf16))
    assert cos.mean() > 0.99


def test_two_process_embedding_equals_one(tiny_dinov2, parquet_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off",
           "FM2EDGE_CACHE": str(tmp_path / "cache2")}
    args = ["-m", "fm2edge", "embed", "--data.source", str(parquet_dir), "--model.name", f"hf:{tiny_dinov2}",
            "--embed.device", "cpu", "--embed.chunk_size", "8", "--tsne_samples", "0", "--run.root", str(tmp_path)]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29533", *args, "--run.name", "two"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "embed.json").read_text())
    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    one = embed_data(EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"),
                              embed=EmbedConfig(cache_dir=str(tmp_path / "cache1"))), train, test)
    for split in ("train", "test"):
        assert np.allclose(np.load(f"{two[split]['cache']}/features.npy"), one[split].features, atol=1e-5)


# ---------------------------------------------------------------- zero-shot


def test_a_backbone_onnx_cannot_export_is_one_clear_error(tiny_dinov2, monkeypatch, tmp_path):
    import fm2edge.export as export
    from fm2edge.errors import Fm2EdgeError
    from fm2edge.features import onnx_runner

    def unsupported(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(export, "export_onnx", unsupported)
    model = load_backbone(ModelConfig(name=f"hf:{tiny_dinov2}"), EmbedConfig(), 4)
    with pytest.raises(Fm2EdgeError, match=r"could not be exported to ONNX .*aten::weird.*--embed.backend torch"):
        onnx_runner(model, EmbedConfig(backend="onnx", cache_dir=str(tmp_path)))
    assert [p.name for p in (tmp_path / ".onnx").iterdir()] == [".lock"]  # nothing half-written, only the lock


def test_a_read_only_feature_cache_serves_its_entries(tiny_dinov2, parquet_dir, tmp_path, monkeypatch):
    """Under torchrun even a cache hit takes the entry's lock; where no lock file can be made (a cache mounted
    read-only) nobody can write either, so the entry is read without one."""
    import errno
    from types import SimpleNamespace

    import fm2edge.runs as runs
    from fm2edge.features import embed_split

    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    cfg = EmbedConfig(cache_dir=str(tmp_path), splits=["train"])
    job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"hf:{tiny_dinov2}"), embed=cfg)
    first = embed_data(job, train, test)["train"]
    real_open = os.open

    def read_only(path, flags, *a):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(runs.os, "open", read_only)
    rank0 = SimpleNamespace(device=torch.device("cpu"), num_processes=2, process_index=0,
                            wait_for_everyone=lambda: None)
    again = embed_split(load_backbone(job.model, cfg, train.num_classes), train, "train", cfg, rank0)
    assert np.array_equal(again.features, first.features)


def test_int8_on_a_cnn_says_there_is_nothing_to_quantise(tmp_path, caplog):
    from fm2edge.features import onnx_runner

    model = load_backbone(ModelConfig(name="student:small_cnn"), EmbedConfig(), 10)
    with caplog.at_level("WARNING"):
        run = onnx_runner(model, EmbedConfig(backend="onnx_int8", cache_dir=str(tmp_path)))
    assert "no matrix multiplies" in caplog.text and "--embed.backend onnx" in caplog.text
    x = model.preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        assert np.allclose(run(x), model.features(x).numpy(), atol=1e-4)  # and the features are still right


def test_an_onnx_file_is_a_backbone_for_embed(tmp_path, parquet_dir):
    """A feature extractor exported from a plain module (its output is not one value per class): embed and probe
    use it with a new head, and another file at the same path is another cache entry."""
    from fm2edge.features import weights_digest

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "backbone.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    model = load_backbone(ModelConfig(name=f"onnx:{path}", image_size=32), EmbedConfig(), 4)
    assert model.feature_dim == 8 and isinstance(model.head, torch.nn.Linear)
    train, _, test = load_data(DataConfig(source=str(parquet_dir)))
    job = EmbedJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"onnx:{path}", image_size=32),
                   embed=EmbedConfig(cache_dir=str(tmp_path / "cache")))
    feats = embed_data(job, train, test)["train"].features
    with torch.no_grad():
        expected = net(model.preprocess(train.images[:5])).numpy()
    assert np.allclose(feats[:5], expected, atol=1e-5)
    before = weights_digest(model)
    torch.nn.init.zeros_(net[0].weight)
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["x"], dynamo=False)
    again = load_backbone(ModelConfig(name=f"onnx:{path}", image_size=32), EmbedConfig(), 4)
    assert weights_digest(again) != before
    with pytest.raises(Fm2EdgeError, match="holds no preprocessing"):
        load_backbone(ModelConfig(name=f"onnx:{path}"), EmbedConfig(), 4)


def test_a_torch_export_program_is_a_backbone_and_a_fixed_batch_one_is_refused(tmp_path, parquet_dir):
    from fm2edge.features import weights_digest

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.zeros(2, 3, 32, 32)
    path = tmp_path / "backbone.pt2"
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    model = load_backbone(ModelConfig(name=f"export:{path}", image_size=32), EmbedConfig(), 4)
    assert model.feature_dim == 8 and isinstance(model.head, torch.nn.Linear)
    model.eval()  # the program itself refuses eval(); the wrapper takes it
    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    with torch.no_grad():
        inputs = model.preprocess(train.images[:5])
        assert torch.allclose(model.features(inputs), net(inputs), atol=1e-5)
    digest = weights_digest(model)
    torch.nn.init.zeros_(net[0].weight)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    assert weights_digest(load_backbone(ModelConfig(name=f"export:{path}", image_size=32), EmbedConfig(), 4)) != digest
    torch.export.save(torch.export.export(net, (x,)), str(tmp_path / "fixed.pt2"))
    with pytest.raises(Fm2EdgeError, match="dynamic batch dimension"):
        load_backbone(ModelConfig(name=f"export:{tmp_path / 'fixed.pt2'}", image_size=32), EmbedConfig(), 4)
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    with pytest.raises(Fm2EdgeError, match="not a torch.export program"):
        load_backbone(ModelConfig(name=f"export:{tmp_path / 'junk.pt2'}", image_size=32), EmbedConfig(), 4)
