"""How fast does `fm2edge train` run on this CPU, against what its FLOPs allow, and does bf16 autocast pay?

    python benchmarks/train_precision.py [--steps 24] [--models student:small_cnn@32@256 ...]

Each model (NAME@SIZE@BATCH) trains two epochs of ``--steps`` batches on the same CIFAR-10 images (the shared copy,
else random images in its schema: speed does not depend on what they show), in fp32 and, where the CPU has native
bf16 (AMX or AVX-512 BF16), with ``--train.precision bf16``, through `fm2edge train`'s own loop (views rendered on
the device, AdamW, channels-last, random-resized crop and flip). The figure is the second epoch's training images/s
(the first pays one-off start-up: oneDNN kernel selection, allocator warm-up). Beside it, a roofline-style ceiling:
the images/s this CPU's fp32 matrix-multiply rate (a 2048 x 2048 matmul, best of five, the same threads) would give
if a training step cost only its arithmetic, three forward passes' worth of multiply-accumulates (forward, and the
backward's two), counted by PyTorch's FLOP counter; the share of that ceiling reached says how much of a step is
memory traffic and overhead instead. Which models gain from bf16 is an empirical question: convolutions with many
channels map onto AMX tiles, depthwise convolutions mostly do not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import cifar_source, model_spec, save_results

from fm2edge.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.device import bf16_supported_on_cpu, cpu_features
from fm2edge.timing import time_calls
from fm2edge.train import train_job

MODELS = ["student:small_cnn@32@256", "student:small_cnn@64@128", "student:small_cnn@128@64",
          "student:cifar_resnet18@32@128", "timm:mobilenetv3_small_100@64@128", "pypi:efficientnet_lite0@160@64"]


def matmul_gflops(repeats: int = 5, n: int = 2048) -> float:
    """This CPU's fp32 matrix-multiply rate in GFLOP/s at the current thread count: the best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float(time_calls(lambda: torch.mm(a, b), repeats, warmup=1).min())
    return 2 * n**3 / best / 1e9


def forward_macs(name: str, size: int) -> int:
    """Multiply-accumulates of one image's forward pass (fm2edge bench's counter)."""
    from fm2edge.bench import count_macs
    from fm2edge.models import create_model

    model = create_model(ModelConfig(name=name, image_size=size, pretrained=False), 10).eval()
    return count_macs(model, torch.zeros(1, 3, size, size))


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
    gflops = matmul_gflops()
    native = bf16_supported_on_cpu()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, size, batch = model_spec(spec)
            fp32 = images_per_s(name, size, batch, args.steps, "fp32", Path(tmp))
            bf16 = images_per_s(name, size, batch, args.steps, "bf16", Path(tmp)) if native else None
            macs = forward_macs(name, size)
            ceiling = gflops * 1e9 / (3 * 2 * macs)
            rows.append({"model": name, "input": size, "batch": batch, "forward_macs": macs, "fp32_img_s": fp32,
                         "ceiling_img_s": ceiling, "share_of_ceiling": fp32 / ceiling, "bf16_img_s": bf16,
                         "bf16_over_fp32": bf16 / fp32 if bf16 else None})
    print(f"\n`fm2edge train` images/s, second of two {args.steps}-batch epochs; CPU {cpu_features()}, torch "
          f"{torch.__version__}; fp32 matmul {gflops:.0f} GFLOP/s; native bf16: {native}")
    print(f"{'model':<36}{'px':>5}{'batch':>7}{'M MACs':>9}{'fp32 img/s':>12}{'ceiling':>9}{'share':>7}"
          f"{'bf16 img/s':>12}{'bf16/fp32':>11}")
    for r in rows:
        bf16 = f"{r['bf16_img_s']:>12.0f}{r['bf16_over_fp32']:>10.2f}x" if r["bf16_img_s"] else f"{'-':>12}{'-':>11}"
        print(f"{r['model']:<36}{r['input']:>5}{r['batch']:>7}{r['forward_macs'] / 1e6:>9.1f}{r['fp32_img_s']:>12.0f}"
              f"{r['ceiling_img_s']:>9.0f}{r['share_of_ceiling']:>7.0%}{bf16}")
    save_results("train_precision", args, rows, args.json)


if __name__ == "__main__":
    main()
