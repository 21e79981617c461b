"""LoRA training speed: the lab's recipe vs `fm2edge finetune`, same model, images and LoRA settings, one run.

    python benchmarks/lora_speed.py [--arch vit_tiny_patch16_224] [--n 320] [--batches 32 128] [--precision auto]

The lab's recipe (and ../shared/bench/lora_baseline.py): transformers' TimmWrapperForImageClassification, peft LoRA
r=16 on qkv, timm's eval transform applied per image on the CPU inside a Dataset, Hugging Face ``Trainer`` with its
defaults (fp32, no data workers), batch 32, one epoch. fm2edge: `fm2edge finetune --finetune.modes [lora]` on the
same images (decoded once to uint8, resized and normalised on the device), at each batch size, one epoch.
Random weights (the compute equals the pretrained model's). On the CPU the default is ViT-Tiny, a smaller ViT than
the lab's ViT-S, to keep the run short; pass --arch vit_small_patch16_224 for the lab's. Prints images/s, the ratio
to the lab recipe, device, precision and batch size.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import torch
from common import SHARED_CIFAR10

from fm2edge.config import AugmentConfig, DataConfig, FinetuneConfig, FinetuneJob, ModelConfig, RunConfig, TrainConfig
from fm2edge.device import cpu_features
from fm2edge.finetune import finetune_job


def lab_recipe(arch: str, n: int, images, labels, out: str) -> float:
    """Images/s of the lab's Trainer recipe for one epoch."""
    import timm
    from peft import LoraConfig, get_peft_model
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, Trainer, TrainingArguments

    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture=arch, num_labels=10))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=["qkv"], lora_dropout=0.1,
                                             bias="none", modules_to_save=["classifier"]))
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.base_model.model.timm_model))

    class PerImage(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"pixel_values": tf(images[i]), "labels": labels[i]}

    args = TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=32, learning_rate=5e-4,
                             logging_steps=50, save_strategy="no", report_to=[], remove_unused_columns=False,
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    return float(Trainer(model=model, args=args, train_dataset=PerImage()).train().metrics["train_samples_per_second"])


def measure(arch: str, n: int, batches: list[int], precision: str = "auto", source: Path = SHARED_CIFAR10) -> dict:
    """Images/s of the lab's Trainer recipe and of `fm2edge finetune` (LoRA) at each batch size, one epoch each."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(source / "train.parquet").slice(0, n).to_pydict()
    images = [Image.open(io.BytesIO(d["bytes"])).convert("RGB") for d in table["img"]]
    labels = table["label"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({cpu_features()})"
    result = {"device": device, "torch": torch.__version__, "arch": arch, "images": n, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        result["lab_trainer_fp32_bs32_img_s"] = lab_recipe(arch, n, images, labels, f"{tmp}/lab")
        for bs in batches:
            job = FinetuneJob(data=DataConfig(source=str(source), max_train=n, max_test=10, val_fraction=0),
                              model=ModelConfig(name=f"timm:{arch}"),
                              train=TrainConfig(epochs=1, batch_size=bs, lr=5e-4, optimizer="adamw",
                                                schedule="constant", weight_decay=0.0,
                                                augment=AugmentConfig(crop="none", flip=False),
                                                precision=precision, checkpoint_every=1000),
                              finetune=FinetuneConfig(modes=["lora"], eval_before=False),
                              run=RunConfig(root=tmp, name=f"bs{bs}"))
            row = finetune_job(job)["rows"][0]
            result[f"fm2edge_bs{bs}_img_s"] = row["images_per_s"]
            result[f"ratio_bs{bs}"] = row["images_per_s"] / result["lab_trainer_fp32_bs32_img_s"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_small_patch16_224" if torch.cuda.is_available() else "vit_tiny_patch16_224")
    ap.add_argument("--n", type=int, default=5000 if torch.cuda.is_available() else 320)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--precision", default="auto", help="fm2edge's: auto (bf16 on GPU, fp32 on CPU), bf16 or fp32")
    args = ap.parse_args()
    if not (SHARED_CIFAR10 / "train.parquet").exists():
        raise SystemExit(f"needs CIFAR-10 at {SHARED_CIFAR10}")
    result = measure(args.arch, args.n, args.batches, args.precision)
    print(json.dumps(result))
    lab = result["lab_trainer_fp32_bs32_img_s"]
    print(f"\n{args.arch}, {args.n} images, LoRA r=16 on qkv, one epoch, {result['device']}, torch {torch.__version__}")
    print(f"lab recipe (Trainer, per-image CPU transform, fp32, batch 32): {lab:.1f} img/s")
    for bs in args.batches:
        print(f"fm2edge finetune, batch {bs}, precision {args.precision}: {result[f'fm2edge_bs{bs}_img_s']:.1f} img/s "
              f"= {result[f'ratio_bs{bs}']:.2f}x")


if __name__ == "__main__":
    main()
