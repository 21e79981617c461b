"""How much faster does bf16 autocast train on this CPU? `fm2edge train` epochs in fp32 and in bf16, per model.

    python benchmarks/train_precision.py [--steps 24] [--models student:small_cnn@32@256 ...]

Each model (NAME@SIZE@BATCH) trains two epochs of ``--steps`` batches on the same CIFAR-10 images (the shared copy,
else random images in its schema: speed does not depend on what they show), once with ``--train.precision fp32``
and once with ``bf16``, through `fm2edge train`'s own loop (views rendered on the device, AdamW, channels-last,
random-resized crop and flip). The figure is the second epoch's training images/s (the first pays one-off
start-up: oneDNN kernel selection, allocator warm-up); the table gives both and bf16 / fp32. bf16 autocast needs
native bf16 on the CPU (AMX or AVX-512 BF16); elsewhere fm2edge trains in fp32 and says so, and the ratio is ~1.
Which models gain is an empirical question: convolutions with many channels map onto AMX tiles, depthwise
convolutions mostly do not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import cifar_source, model_spec, save_results

from fm2edge.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.device import bf16_supported_on_cpu, cpu_features
from fm2edge.train import train_job

MODELS = ["student:small_cnn@32@256", "student:cifar_resnet18@32@128", "timm:mobilenetv3_small_100@64@128",
          "pypi:efficientnet_lite0@160@64"]


def images_per_s(name: str, size: int, batch: int, steps: int, precision: str, root: Path) -> float:
    """Training images/s of the second of two epochs of ``steps`` batches each."""
    n = steps * batch
    result = train_job(TrainJob(
        data=DataConfig(source=str(cifar_source(n)), max_train=n, max_test=64, val_fraction=0.0),
        model=ModelConfig(name=name, image_size=size, pretrained=name.startswith("pypi:")),
        train=TrainConfig(epochs=2, batch_size=batch, lr=1e-3, optimizer="adamw", precision=precision,
                          schedule="constant", weight_decay=0.0,
                          channels_last=True, select="last", keep_checkpoints=1,
                          augment=AugmentConfig(crop="resized", scale=(0.35, 1.0), flip=True)),
        run=RunConfig(root=str(root), name=f"{name.replace(':', '-')}-{precision}", overwrite=True)))
    return float(result["history"][-1]["images_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help="NAME@INPUT_SIZE@BATCH_SIZE")
    ap.add_argument("--steps", type=int, default=24, help="batches per epoch")
    ap.add_argument("--json", help="file for the raw figures (default docs/results/train_precision-DATE.json)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, size, batch = model_spec(spec)
            fp32, bf16 = (images_per_s(name, size, batch, args.steps, p, Path(tmp)) for p in ("fp32", "bf16"))
            rows.append((name, size, batch, fp32, bf16))
    print(f"\n`fm2edge train` images/s, second of two {args.steps}-batch epochs; CPU {cpu_features()}, torch "
          f"{torch.__version__}; native bf16: {bf16_supported_on_cpu()}")
    print(f"{'model':<36}{'px':>5}{'batch':>7}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16/fp32':>11}")
    for name, size, batch, fp32, bf16 in rows:
        print(f"{name:<36}{size:>5}{batch:>7}{fp32:>12.0f}{bf16:>12.0f}{bf16 / fp32:>10.2f}x")
    save_results("train_precision", args, [{"model": n, "input": s, "batch": b, "fp32_img_s": f, "bf16_img_s": h,
                                            "bf16_over_fp32": h / f} for n, s, b, f, h in rows], args.json)


if __name__ == "__main__":
    main()
