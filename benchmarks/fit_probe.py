"""Centre crop or letterbox? How a folder's photos are made square, judged by a linear probe on pretrained features.

    python benchmarks/fit_probe.py /tmp/photo-folders/tuxpaint-fine /tmp/photo-folders/gcompris-categories

fm2edge centre-crops non-square photos (the shortest side resized to the input, as ImageNet models are evaluated),
so a wide object loses its ends; letterboxing (the longest side resized, the rest padded with grey 114, as YOLO
does) keeps all of it at fewer pixels. Each folder's photos (every split together) are made square both ways at
``--size``, embedded by the pretrained EfficientNet-Lite0 (the offline ImageNet backbone), and scored by a
logistic regression in stratified 5-fold cross-validation at each ``--C``: the same features, labels and folds for
both. No test split is read on its own; the figure is a cross-validated probe, a proxy for what fine-tuning would
see, not a model's test accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fm2edge.config import ModelConfig
from fm2edge.data.folders import scan_folder
from fm2edge.data.images import open_image, resize_center_crop, to_rgb, upright
from fm2edge.device import cpu_features
from fm2edge.models import create_model

PAD_GREY = 114


def letterbox(img: Image.Image, size: int) -> Image.Image:
    """The longest side resized to ``size`` (bicubic), centred on a ``size`` x ``size`` grey square. What Pillow's
    ``ImageOps.pad`` does, written out so that the size and offset round as fm2edge's centre crop does (``pad``
    rounds them otherwise: one row apart on a 300 x 84 stamp), the two fits differing only in the fit."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = Image.new("RGB", (size, size), (PAD_GREY,) * 3)
    out.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    return out


def square(path: str, size: int, fit: str) -> np.ndarray:
    img = to_rgb(upright(open_image(path)))
    return np.asarray(resize_center_crop(img, size) if fit == "crop" else letterbox(img, size))


def probe_scores(features: np.ndarray, labels: np.ndarray, cs: list[float]) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return [float(cross_val_score(LogisticRegression(max_iter=3000, C=c), features, labels, cv=folds).mean())
            for c in cs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="image folders (<class>/ or <split>/<class>/)")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--C", type=float, nargs="+", default=[0.1, 1.0], help="inverse regularisation strengths")
    args = ap.parse_args()
    print(f"CPU: {cpu_features()} | EfficientNet-Lite0 (ImageNet) features at {args.size} px, logistic regression, "
          f"stratified 5-fold CV accuracy (%) at C = {args.C}")
    print(f"{'folder':<24}{'images':>8}{'classes':>9}  {'centre crop':<18}{'letterbox':<18}")
    for folder in args.folders:
        scan = scan_folder(folder)
        files = [str(f) for split in scan.splits.values() for f in split.files]
        labels = np.array([y for split in scan.splits.values() for y in split.labels])
        model = create_model(ModelConfig(name="pypi:efficientnet_lite0", pretrained=True, image_size=args.size),
                             len(scan.class_names)).eval()
        cells = []
        for fit in ("crop", "pad"):
            images = torch.from_numpy(np.stack([square(f, args.size, fit) for f in files])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                feats = torch.cat([model.features(model.preprocess(images[i:i + 64].contiguous()))
                                   for i in range(0, len(images), 64)]).numpy()
            cells.append(" / ".join(f"{100 * s:.2f}" for s in probe_scores(feats, labels, args.C)))
        print(f"{folder.name:<24}{len(files):>8}{len(scan.class_names):>9}  {cells[0]:<18}{cells[1]:<18}")


if __name__ == "__main__":
    main()
