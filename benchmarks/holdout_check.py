"""Where an `fm2edge auto` run's points went, on images it never used: every student and every exported graph of
RUN scored on the labelled training-split images that `--per_class` / `--max_train` left out (never the validation or
the test split, so nothing here can leak into a choice), beside the teacher, with each one's agreement with the
teacher's labels there (what `auto` ranks students by where validation is too small); and, with --requantise, the chosen
student's int8 graph with 8-bit and 7-bit weights (``reduce_range``), min-max calibration on its training images.

    python benchmarks/holdout_check.py /tmp/auto-study/catsdogs100sh6 --source ../shared/data/catsdogs128 \\
        --per_class 100 [--requantise]

A diagnostic: it explains a run after the fact. Prints a table with the CPU beside it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import graph_labels, model_labels

from fm2edge import export
from fm2edge.config import DataConfig
from fm2edge.data import balanced_indices, load_data, load_left_out
from fm2edge.device import cpu_features
from fm2edge.models.io import is_model_folder, load_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--source", required=True)
    ap.add_argument("--per_class", type=int)
    ap.add_argument("--max_train", type=int)
    ap.add_argument("--requantise", action="store_true")
    a = ap.parse_args()
    cfg = DataConfig(source=a.source, per_class=a.per_class, max_train=a.max_train)
    held = load_left_out(cfg)
    labels = held.labels.numpy()
    root = Path(a.run)
    print(f"{root}: {len(held)} labelled training-split images the run left out; CPU {cpu_features()}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and is_model_folder(p) and p.name != "best")
    # how `auto` ranks students where validation is too small: agreement with the teacher's labels (here on these
    # images, whose true labels say whether that ranking is the accuracy's)
    import json

    teacher = json.loads((root / "plan.json").read_text())["teacher"]["folder"]
    taught = model_labels(teacher, held)
    for folder in folders:
        got = model_labels(folder, held)
        print(f"  {folder.name:<58} PyTorch fp32 {100 * (got == labels).mean():6.2f}%, agreement with the teacher "
              f"{100 * (got == taught).mean():6.2f}%")
    for onnx in sorted(root.glob("export-*/*.onnx")):
        exported = Path(json.loads((onnx.parent / "export.json").read_text())["model"])  # the folder it exported
        acc = float((graph_labels(load_classifier(exported), onnx, held.images) == labels).mean())
        print(f"  {onnx.parent.name + '/' + onnx.name:<58} ONNX {100 * acc:6.2f}%")
    if a.requantise:
        chosen = Path(json.loads((root / "auto.json").read_text())["chosen"]["folder"])
        model = load_classifier(chosen)
        train = load_data(cfg)[0]
        calib = train.images[torch.from_numpy(balanced_indices(train.labels.numpy(), min(500, len(train))))]
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export.export_deployable(model, Path(tmp) / "model.onnx")
            ref = graph_labels(model, fp32, held.images)
            print(f"  {chosen.name} requantised (min-max, per-channel): fp32 {100 * (ref == labels).mean():.2f}%")
            for seven in (False, True):
                path = export.quantize_int8(fp32, Path(tmp) / f"int8-{seven}.onnx",
                                            export.calibration_batches(model, calib), input_name="images",
                                            reduce_range=seven, fp32_layers="none")
                got = graph_labels(model, path, held.images)
                print(f"    int8 weights in {7 if seven else 8} bits: {100 * (got == labels).mean():.2f}%, agreement "
                      f"with fp32 {100 * (got == ref).mean():.2f}%")


if __name__ == "__main__":
    main()
