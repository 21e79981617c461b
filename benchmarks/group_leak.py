"""What holding out by group is worth: the test accuracy of a split made image by image against one made group by group
(``--data.group_column``), on bursts of real photos, in one run.

    python benchmarks/group_leak.py [--photos 120] [--burst 4] [--models student:small_cnn@64@20 ...]

Each of ``--photos`` real photos (the shared cat and dog photos where they exist, else scikit-learn's digits scaled
up) becomes a burst of ``--burst`` shots: random resized crops (60-100% of the area), mirrored at random, brightness
and contrast jittered, as one subject photographed a few times. The folder holds ``bursts/<photo>_<shot>.jpg`` and a
``labels.csv`` (file, label, burst). Each model (``NAME@SIZE@EPOCHS``; pretrained unless a ``student:``) trains
twice with `fm2edge train` on the same folder and settings: the test split held out image by image (shots of one
subject on both sides) and burst by burst (``--data.group_column burst``). The first test accuracy counts shots
whose siblings were trained on; the second is what a new subject gets. Prints, per model, both accuracies, and how
many test shots of the image-by-image split `fm2edge data` names as near-copies (what the perceptual hash catches
without the column); writes docs/results/group_leak-DATE.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import save_results
from PIL import Image

from fm2edge.cli import main as fm2edge
from fm2edge.device import cpu_features

SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "catsdogs128" / "train.parquet"


def subjects(count: int, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``count`` (photo, class) pairs, classes alternating: the shared cat and dog photos where they exist (their
    parquet is sorted by class, so drawn at random), else scikit-learn's digits 0 and 1 at 64 px."""
    rng = np.random.default_rng(seed)
    if SHARED_PHOTOS.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(SHARED_PHOTOS)
        labels = np.asarray(table.column("label").to_pylist())
        picks = [rng.permutation(np.flatnonzero(labels == c))[: (count + 1 - c) // 2] for c in (0, 1)]
        rows = table.column("image").to_pylist()
        return [(Image.open(io.BytesIO(rows[int(picks[i % 2][i // 2])]["bytes"])).convert("RGB"), "cd"[i % 2])
                for i in range(count)]
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=2)
    order = [int(np.flatnonzero(digits.target == i % 2)[i // 2]) for i in range(count)]
    return [(Image.fromarray((digits.images[j] * 15).astype(np.uint8)).convert("RGB").resize((64, 64)),
             str(digits.target[j])) for j in order]


def burst(photo: Image.Image, shots: int, rng: np.random.Generator) -> list[Image.Image]:
    """``shots`` views of ``photo``: a random crop of 60-100% of its area, mirrored half the time, brightness and
    contrast within 20%, resized back to its size (torchvision's transforms, seeded)."""
    from torchvision.transforms import v2

    torch.manual_seed(int(rng.integers(1 << 31)))
    views = v2.Compose([v2.RandomResizedCrop(photo.size[::-1], scale=(0.6, 1.0), antialias=True),
                        v2.RandomHorizontalFlip(), v2.ColorJitter(brightness=0.2, contrast=0.2)])
    return [views(photo) for _ in range(shots)]


def write_folder(root: Path, count: int, shots: int) -> int:
    """The burst folder and its labels.csv; returns the images written."""
    rng = np.random.default_rng(0)
    (root / "bursts").mkdir(parents=True)
    rows = []
    for i, (photo, label) in enumerate(subjects(count)):
        for k, view in enumerate(burst(photo, shots, rng)):
            name = f"bursts/{i:04d}_{k}.jpg"
            view.save(root / name, quality=92)
            rows.append((name, label, f"subject{i:04d}"))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "label", "burst"), *rows])
    return len(rows)


def straddling(root: Path) -> dict:
    """`fm2edge data` image by image: the test shots `fm2edge data` names as near-copies of training shots."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert fm2edge(["data", str(root), "--data.labels", "labels.csv", "--json", "true"]) == 0
    summary = json.loads(out.getvalue())
    return {"test_images": summary["splits"]["test"]["images"], "near_copies_named": summary["near_copies"]["test"]}


def train(root: Path, runs: Path, spec: str, grouped: bool) -> dict:
    name, size, epochs = spec.rsplit("@", 2)
    run = f"{name.replace(':', '-')}-{size}-{'burst' if grouped else 'image'}"
    args = ["train", "--data.source", str(root), "--data.labels", "labels.csv", "--model.name", name,
            "--model.image_size", size, "--train.epochs", epochs, "--train.device", "cpu",
            "--run.root", str(runs), "--run.name", run]
    if not name.startswith("student:"):  # a packaged or hub backbone starts from its pretrained weights
        args += ["--model.pretrained", "true"]
    if grouped:
        args += ["--data.group_column", "burst"]
    assert fm2edge(args) == 0, run
    metrics = json.loads((runs / run / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    return {"model": spec, "held_out_by": "burst" if grouped else "image", "test_acc": metrics["test_acc"],
            "val_acc": metrics["val_acc"], "test_images": test["images"], "near_copies": test.get("near_copies")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--burst", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=["student:small_cnn@64@20", "pypi:efficientnet_lite0@96@5"])
    ap.add_argument("--json", help="file for the raw figures (default docs/results/group_leak-DATE.json)")
    args = ap.parse_args()
    print(f"cpu: {cpu_features()}")
    with tempfile.TemporaryDirectory() as tmp:
        root, runs = Path(tmp) / "photos", Path(tmp) / "runs"
        images = write_folder(root, args.photos, args.burst)
        seen = straddling(root)
        print(f"{args.photos} subjects x {args.burst} shots = {images} images; held out image by image, "
              f"{seen['near_copies_named']} of {seen['test_images']} test shots are named near-copies")
        rows = []
        for spec in args.models:
            pair = [train(root, runs, spec, grouped) for grouped in (False, True)]
            rows += pair
            print(f"{spec}: test accuracy {100 * pair[0]['test_acc']:.2f}% held out image by image "
                  f"({pair[0]['test_images']} shots), {100 * pair[1]['test_acc']:.2f}% burst by burst "
                  f"({pair[1]['test_images']} shots): {100 * (pair[0]['test_acc'] - pair[1]['test_acc']):+.2f} points "
                  f"from shots whose siblings were trained on")
    save_results("group_leak", args, [{"near_copies": seen, "images": images}, *rows], args.json)


if __name__ == "__main__":
    main()
