"""Offline fixtures: tiny datasets in every supported layout and tiny models, written to temporary folders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

CLASSES = ["red", "green", "blue", "grey"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]])
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def coloured_images(n: int, size: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Images whose class is their dominant colour (plus noise): separable, so training must learn them."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    imgs = [np.clip(COLOURS[y] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8) for y in labels]
    return imgs, labels


def image_folder_with_a_truncated_png(root: Path) -> Path:
    """root/<class>/<i>.png for 8 coloured images, with red/0.png cut in half (an image that cannot be decoded)."""
    imgs, labels = coloured_images(8, 12, 0)
    for i, (a, y) in enumerate(zip(imgs, labels, strict=True)):
        (root / CLASSES[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / CLASSES[y] / f"{i}.png")
    data = (root / "red" / "0.png").read_bytes()
    (root / "red" / "0.png").write_bytes(data[: len(data) // 2])
    return root


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(buf, format="PNG")
    return buf.getvalue()


def hub_dataset(n: int, seed: int, size: int = 16, image_column: str = "img", label_column: str = "label"):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    imgs, labels = coloured_images(n, size, seed)
    features = Features({image_column: ImageFeature(), label_column: ClassLabel(names=CLASSES)})
    return Dataset.from_dict({image_column: [{"bytes": png_bytes(a), "path": None} for a in imgs],
                              label_column: labels}, features=features)


def save_dinov2(path: Path, hidden: int, layers: int, heads: int, size: int, patch: int, shortest: int) -> Path:
    """A random DINOv2 with its image processor (DINOv2's settings scaled to ``size``), saved like a hub copy."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=2 * hidden, image_size=size, patch_size=patch)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": shortest}, crop_size={"height": size, "width": size}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FM2EDGE_CACHE", str(tmp_path_factory.getbasetemp() / "fm2edge-cache"))


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory) -> Path:
    """A folder with train.parquet / test.parquet in the hub's schema (Image + ClassLabel), like the CIFAR-10 copy."""
    root = tmp_path_factory.mktemp("parquet")
    hub_dataset(64, seed=0).to_parquet(str(root / "train.parquet"))
    hub_dataset(32, seed=1).to_parquet(str(root / "test.parquet"))
    return root


@pytest.fixture(scope="session")
def arrow_dir(tmp_path_factory) -> Path:
    """A DatasetDict saved with save_to_disk (arrow files), with non-standard column names."""
    from datasets import DatasetDict

    root = tmp_path_factory.mktemp("arrow") / "ds"
    DatasetDict({"train": hub_dataset(40, 2, image_column="picture", label_column="category"),
                 "test": hub_dataset(20, 3, image_column="picture", label_column="category")}).save_to_disk(str(root))
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """root/<class>/<image> with mixed modes (RGB, L, RGBA, P) and sizes, PNG and JPEG."""
    root = tmp_path_factory.mktemp("folder")
    imgs, labels = coloured_images(24, size=20, seed=4)
    modes = ["RGB", "L", "RGBA", "P"]
    for i, (a, y) in enumerate(zip(imgs, labels, strict=True)):
        d = root / CLASSES[y]
        d.mkdir(exist_ok=True)
        img = Image.fromarray(a).resize((20 + (i % 3) * 6, 20 + (i % 2) * 4)).convert(modes[i % 4])
        img.save(d / f"{i}.{'jpg' if img.mode in ('RGB', 'L') and i % 5 == 0 else 'png'}")
    return root


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A random DINOv2 with its processor. DINOv2's own processor settings, scaled down: shortest edge 36 (256 for
    224), bicubic, centre crop 32."""
    # DINOv2's own processor settings, scaled down: shortest edge 36 (256 for 224), bicubic, centre crop 32
    return save_dinov2(tmp_path_factory.mktemp("dinov2"), hidden=32, layers=3, heads=2, size=32, patch=8,
                       shortest=36)


def _byte_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random CLIP with a character-level tokenizer and image processor, saved like a hub model."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip")
    chars = _byte_unicode()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(__import__("json").dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    import torch

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 64, "vocab_size": len(vocab), "max_position_embeddings": 32,
                                  "bos_token_id": len(vocab) - 2, "eos_token_id": len(vocab) - 1},
                     vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 64, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory):
    """A random SigLIP (image tower with its attention-pooling head, no class token), saved like a hub model."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    path = tmp_path_factory.mktemp("siglip")
    torch.manual_seed(0)
    cfg = SiglipConfig(text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 64, "vocab_size": 64, "max_position_embeddings": 16},
                       vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                      "intermediate_size": 64, "image_size": 32, "patch_size": 8})
    SiglipModel(cfg).save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hf_resnet(tmp_path_factory):
    """A random transformers ResNet (a convolutional backbone), saved like a hub model."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    path = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def clean_teacher(tmp_path_factory, parquet_dir):
    """A small_cnn teacher trained on the parquet fixture's clean labels (it knows the truth)."""
    from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
    from fm2edge.train import train_job

    root = tmp_path_factory.mktemp("teacher")
    train_job(TrainJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name="student:small_cnn"),
                       train=TrainConfig(epochs=4, batch_size=16, lr=3e-3, device="cpu"),
                       run=RunConfig(root=str(root), name="teacher")))
    return root / "teacher"


DIGITS_SMALL = {"source": "digits", "max_train": 400, "max_test": 120}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A small_cnn trained for 3 epochs on 400 digits: a run folder to export and predict with."""
    from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
    from fm2edge.train import train_job

    root = tmp_path_factory.mktemp("runs")
    train_job(TrainJob(data=DataConfig(**DIGITS_SMALL), model=ModelConfig(name="student:small_cnn"),
                       train=TrainConfig(epochs=3, batch_size=32, lr=3e-3, device="cpu"),
                       run=RunConfig(root=str(root), name="cnn")))
    return root / "cnn"
