"""One KD epoch: the seed's recipe vs `fm2edge distill`, same teacher, student, images and size, one run.

    python benchmarks/distill_speed.py [--n 1024] [--size 112] [--batch 128] [--precision bf16]

The seed (lab task 6, ../shared/bench/seed_baseline.py part C): PIL images through torchvision transforms in a
DataLoader with 2 workers, fp32, the teacher (ResNet-50 with a 10-class head) run online on every batch, ResNet-18
student, Adam 1e-3, T=4, alpha=0.5. fm2edge: `fm2edge distill` with the same models: uint8 images decoded once,
resized and normalised in the loop, bf16 autocast where the CPU supports it, channels_last; (a) the teacher online,
(b) the teacher's logits cached once and reused (the cache's one-off cost is printed too). Random weights (the
compute equals the pretrained models'). On 2 CPU cores the lab's 10,000 images at 224 px take hours, so the default
is 1,024 images at 112 px; the GPU figures use --n 10000 --size 224.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import SHARED_CIFAR10

from fm2edge.device import cpu_features


def seed_epoch(n: int, size: int, batch: int, device: str, source: Path = SHARED_CIFAR10) -> float:
    import pyarrow.parquet as pq
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from torchvision.models import resnet18, resnet50

    t = pq.read_table(source / "train.parquet").slice(0, n).to_pydict()
    imgs = [Image.open(io.BytesIO(d["bytes"])).convert("RGB") for d in t["img"]]
    labels = t["label"]
    tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    class DS(Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return tf(imgs[i]), labels[i]

    teacher = resnet50(weights=None)
    teacher.fc = torch.nn.Linear(2048, 10)
    teacher = teacher.to(device).eval()
    student = resnet18(weights=None)
    student.fc = torch.nn.Linear(512, 10)
    student = student.to(device).train()
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    loader = DataLoader(DS(), batch_size=batch, shuffle=True, num_workers=2)
    t0 = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            tl = teacher(x)
        s = student(x)
        loss = 0.5 * F.cross_entropy(s, y) + 0.5 * F.kl_div(F.log_softmax(s / 4, 1), F.softmax(tl / 4, 1),
                                                            reduction="batchmean") * 16
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def fm2edge_epochs(n: int, size: int, batch: int, precision: str, cache: str, root: Path,
                   source: Path = SHARED_CIFAR10, teacher_model: str = "torchvision:resnet50",
                   student_model: str = "torchvision:resnet18", compile: bool = False) -> dict:
    from fm2edge.config import AugmentConfig, DataConfig, DistillConfig, DistillJob, ModelConfig, RunConfig, TrainConfig
    from fm2edge.distill.task import distill_job
    from fm2edge.models import create_model
    from fm2edge.models.io import save_classifier

    teacher = root / "teacher"
    if not (teacher / "model.json").exists():
        save_classifier(create_model(ModelConfig(name=teacher_model, image_size=size, crop_pct=1.0), 10), teacher)
    name = f"student-{cache}"
    m = distill_job(DistillJob(
        data=DataConfig(source=str(source), max_train=n, max_test=64, val_fraction=0),
        model=ModelConfig(name=student_model, image_size=size, crop_pct=1.0),
        train=TrainConfig(epochs=2, batch_size=batch, lr=1e-3, optimizer="adam", schedule="constant",
                          weight_decay=0.0, augment=AugmentConfig(crop="none", flip=False), precision=precision,
                          channels_last=True, eval_every=100, compile=compile),
        distill=DistillConfig(teacher=str(teacher), losses={"kd": 1.0}, temperature=4.0, alpha=0.5,
                              cache_teacher=cache, views=0, force=True),
        run=RunConfig(root=str(root), name=name)))
    return {"epoch_s": m["history"][-1]["seconds"], "first_epoch_s": m["history"][0]["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--precision", default="auto", help="fm2edge's own choice by default: bf16 on a GPU, fp32 on a CPU")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({cpu_features()})"
    r = {"device": where, "torch": torch.__version__, "images": args.n, "size": args.size, "batch": args.batch}
    r["seed_epoch_s"] = seed_epoch(args.n, args.size, args.batch, device)
    print(json.dumps(r), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        online = fm2edge_epochs(args.n, args.size, args.batch, args.precision, "never", Path(tmp))
        t0 = time.perf_counter()
        cached = fm2edge_epochs(args.n, args.size, args.batch, args.precision, "auto", Path(tmp))
        r["fm2edge_cached_run_s"] = time.perf_counter() - t0
    r["fm2edge_online_epoch_s"] = online["epoch_s"]
    r["fm2edge_cached_epoch_s"] = cached["epoch_s"]
    print(json.dumps(r))
    print(f"\none KD epoch, ResNet-50 -> ResNet-18, {args.n} CIFAR-10 images at {args.size} px, batch {args.batch}, "
          f"{where}, torch {torch.__version__}")
    print(f"seed recipe (PIL + DataLoader, fp32, teacher online): {r['seed_epoch_s']:.1f} s")
    for key, label in (("fm2edge_online_epoch_s", "teacher online"), ("fm2edge_cached_epoch_s", "teacher cached")):
        print(f"fm2edge distill ({args.precision}, channels_last, {label}): {r[key]:.1f} s = "
              f"{r['seed_epoch_s'] / r[key]:.2f}x")


if __name__ == "__main__":
    main()
