"""Embedding speed: the seed's per-image loop vs fm2edge's batched path, same model and images, one run.

    python benchmarks/embed_speed.py [--model small|base] [--n 256] [--batch 64]

The seed (lab task 1) calls the image processor and the model once per PIL image. fm2edge moves uint8 batches to
the device, preprocesses there and runs the model batched (fp32 on CPU by default, bf16 autocast on CUDA, and bf16
on CPUs with native support when asked; on CPU also ONNX Runtime fp32 and int8, `--embed.backend onnx|onnx_int8`).
Random weights: the compute equals the pretrained model's. Prints images/s, the ratio to the seed loop, device,
dtype, batch size, and each variant's mean cosine similarity to the first (fp32 on CPU) embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SHARED_CIFAR10

from fm2edge.config import EmbedConfig
from fm2edge.device import bf16_supported_on_cpu, cpu_features
from fm2edge.features import embed_batches, onnx_runner
from fm2edge.models import Classifier
from fm2edge.models.preprocess import Preprocess
from fm2edge.models.sources import HFBackbone

SIZES = {"small": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
         "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)}


def images(n: int) -> torch.Tensor:
    """The first n CIFAR-10 test images from ../shared when present, else seeded random 32x32 images."""
    if (SHARED_CIFAR10 / "test.parquet").exists():
        from fm2edge.config import DataConfig
        from fm2edge.data import load_data

        _, _, test = load_data(DataConfig(source=str(SHARED_CIFAR10), max_train=10, max_test=n))
        return test.images.clone()
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def measure(size: str = "small", n: int = 256, n_seed: int = 64, batch: int = 64, onnx: bool = True,
            config: dict | None = None) -> dict:
    """The seed's per-image loop and fm2edge's batched variants on one random DINOv2 (``size``, or ``config`` for
    a DINOv2Config of one's own), on CUDA when present: images/s, ratios and cosine similarities."""
    from PIL import Image
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    arch = config or SIZES[size]
    net = Dinov2Model(Dinov2Config(**arch, attn_implementation="sdpa")).to(dev).eval()
    proc = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    u8 = images(n)
    pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u8[: n_seed]]

    # -- the seed's loop (DINOv2_feature_extraction.py), with a warm-up
    def seed_loop(imgs):
        out = []
        for img in imgs:
            inputs = {k: v.to(dev) for k, v in proc(images=img.convert("RGB"), return_tensors="pt").items()}
            with torch.no_grad():
                out.append(net(**inputs).last_hidden_state[:, 0].cpu().numpy())
        return np.concatenate(out)

    seed_loop(pil[:3])
    sync()
    t0 = time.perf_counter()
    seed_feats = seed_loop(pil)
    sync()
    seed_rate = len(pil) / (time.perf_counter() - t0)

    # -- fm2edge: the same model behind its registry wrapper and on-device preprocessing
    model = Classifier(HFBackbone(net, 224, "cls"), arch["hidden_size"], 10,
                       Preprocess(224, 224 / 256, interpolation="bicubic"), f"dinov2-{size} (random)")
    variants = [("bf16", torch.bfloat16, None)] if dev.type == "cuda" else \
        [("fp32", None, None)] + ([("bf16", torch.bfloat16, None)] if bf16_supported_on_cpu() else [])
    if dev.type == "cpu" and onnx:
        cache = tempfile.mkdtemp()
        for label, backend in (("onnx fp32", "onnx"), ("onnx int8", "onnx_int8")):
            variants.append((label, None, onnx_runner(model, EmbedConfig(backend=backend, cache_dir=cache))))
    results = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({cpu_features()})",
               "threads": torch.get_num_threads(), "torch": torch.__version__, "model": f"DINOv2-{size}",
               "resolution": 224, "seed_loop_img_s": seed_rate, "seed_loop_images": len(pil), "runs": []}
    feats = {}
    for label, dtype, runner in variants:
        embed_batches(model, u8[: batch], batch, dev, dtype, runner=runner)  # warm-up
        sync()
        t0 = time.perf_counter()
        feats[label] = embed_batches(model, u8, batch, dev, dtype, runner=runner)
        sync()
        rate = len(u8) / (time.perf_counter() - t0)
        results["runs"].append({"variant": label, "batch": batch, "images": len(u8), "img_s": rate,
                                "ratio_vs_seed": rate / seed_rate})
    first = variants[0][0]
    ref = torch.tensor(feats[first][: len(seed_feats)])
    results["cosine_fm2edge_vs_seed"] = float(torch.nn.functional.cosine_similarity(ref, torch.tensor(seed_feats))
                                              .mean())
    for r in results["runs"][1:]:
        r["cosine_vs_" + first] = float(torch.nn.functional.cosine_similarity(
            torch.tensor(feats[first]), torch.tensor(feats[r["variant"]])).mean())
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=list(SIZES), default="small")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--n_seed", type=int, default=64, help="images timed through the seed's per-image loop")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime variants (CPU only)")
    args = ap.parse_args()
    results = measure(args.model, args.n, args.n_seed, args.batch, not args.no_onnx)
    first = results["runs"][0]["variant"]
    print(json.dumps(results, indent=1))
    print(f"\n{results['model']} at 224 px on {results['device']} ({results['threads']} threads):")
    print(f"  seed per-image loop (fp32, batch 1):   {results['seed_loop_img_s']:8.1f} img/s")
    for r in results["runs"]:
        cos = r.get("cosine_vs_" + first)
        print(f"  fm2edge batched ({r['variant']:>9}, batch {r['batch']}): {r['img_s']:8.1f} img/s  "
              f"= {r['ratio_vs_seed']:.1f}x the seed loop" + (f"  (cosine to {first}: {cos:.5f})" if cos else ""))
    print(f"  mean cosine similarity fm2edge vs seed-loop embeddings: {results['cosine_fm2edge_vs_seed']:.5f}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "embed_speed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
