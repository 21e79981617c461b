"""How often a teacher names the label on the views it teaches from, rendered bilinearly and with its own
interpolation, against the images resized as it was trained (its preprocessing), in one run.

    python benchmarks/view_interpolation.py TEACHER_RUN --data.source SOURCE [--images 400] [--data.* ...]

TEACHER_RUN is a run folder (a probe's, say: `fm2edge probe --model.name pypi:efficientnet_lite0 ...`), SOURCE the
data it was trained on; the first ``--images`` training images are shown as whole-image views and as the students'
random-resized crops with flips, each rendered with the bilinear kernel (what views were before each model's own
interpolation was used) and with the teacher's own. The gap grows with the upscale from stored pixels to the
teacher's input: none to speak of for photos stored at 128 px, several points for CIFAR's 32 px, most of the labels
for 8 x 8 digits. Prints the table; writes docs/results/view_interpolation-DATE.json.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from common import save_results

from fm2edge.augment import draw_views, model_views
from fm2edge.config import AugmentConfig, DataConfig
from fm2edge.data import load_data
from fm2edge.models.io import load_classifier
from fm2edge.report.metrics import accuracy

VIEWS = {"whole image": AugmentConfig(crop="none", flip=False),
         "resized crop + flip": AugmentConfig(crop="resized", flip=True)}


def named(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> float:
    """The share of ``images`` (normalised model inputs) on which ``model`` names the label."""
    with torch.no_grad():
        logits = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
    return accuracy(logits, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher")
    ap.add_argument("--data.source", dest="source", required=True)
    ap.add_argument("--data.labels", dest="labels", default=None)
    ap.add_argument("--data.max_train", dest="max_train", type=int, default=None)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--json", default=None, help="where the figures go (default docs/results/...)")
    args = ap.parse_args()
    train, _, _ = load_data(DataConfig(source=args.source, labels=args.labels, max_train=args.max_train))
    model = load_classifier(args.teacher).eval()
    n = min(args.images, len(train))
    images, labels = train.images[:n], train.labels[:n]
    own = model.preprocess
    bilinear = dataclasses.replace(own, interpolation="bilinear")
    rows = [{"views": "preprocessing (as trained)", "stored_px": int(images.shape[-1]), "images": n,
             "bilinear": None, "own": named(model, own(images), labels)}]
    for name, augment in VIEWS.items():
        views = draw_views(n, augment, torch.Generator().manual_seed(0), n, int(images.shape[-1]))
        rows.append({"views": name, "stored_px": int(images.shape[-1]), "images": n,
                     "bilinear": named(model, model_views(bilinear, images, views), labels),
                     "own": named(model, model_views(own, images, views), labels)})
    print(f"teacher {args.teacher} ({own.interpolation}, {own.size} px) on {n} training images stored at "
          f"{images.shape[-1]} px: share naming the label")
    print(f"{'views':<28} {'bilinear':>9} {own.interpolation:>9}")
    for r in rows:
        shown = "-" if r["bilinear"] is None else f"{100 * r['bilinear']:.2f}%"
        print(f"{r['views']:<28} {shown:>9} {100 * r['own']:>8.2f}%")
    save_results("view_interpolation", args, rows, args.json)


if __name__ == "__main__":
    main()
