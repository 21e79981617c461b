"""Do int8 features cost probe accuracy? fp32 PyTorch vs `--embed.backend onnx_int8`, same backbone and images.

    python benchmarks/int8_features.py RUN_OR_MODEL [--data ../shared/data/cifar10] [--max-train 2000]
                                                    [--max-test 1000]

RUN_OR_MODEL is a run folder of `fm2edge train`, `distill` or `finetune` (a trained backbone) or a registry name
(e.g. `hf:/path/to/dinov2`). Both feature sets come from the same images; the script prints images/s of each path,
the mean cosine similarity of int8 to fp32 features, and the test accuracy of a logistic-regression probe (C chosen
by cross-validation) and a k-NN classifier (DINOv2's protocol) fitted on each. Target: cosine >= 0.99 and probe
accuracy within 0.5 points of fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import default_data

from fm2edge.config import DataConfig, EmbedConfig, ModelConfig
from fm2edge.data import load_data
from fm2edge.device import cpu_features
from fm2edge.features import embed_batches, load_backbone, onnx_runner
from fm2edge.linear import fit_logreg
from fm2edge.probe import knn_predict
from fm2edge.report.metrics import accuracy


def backbone(spec: str, num_classes: int):
    if (Path(spec) / "model.json").exists():
        from fm2edge.models.io import load_classifier

        return load_classifier(spec)
    return load_backbone(ModelConfig(name=spec, pretrained=not spec.startswith("hf:/")), EmbedConfig(), num_classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    train, _, test = load_data(DataConfig(source=args.data, max_train=args.max_train, max_test=args.max_test))
    model = backbone(args.model, train.num_classes).eval()
    cpu = torch.device("cpu")
    runner = onnx_runner(model, EmbedConfig(backend="onnx_int8", cache_dir=tempfile.mkdtemp()))
    feats, rates = {}, {}
    for label, run in (("fp32", None), ("int8", runner)):
        t0 = time.perf_counter()
        feats[label] = {s: embed_batches(model, d.images, args.batch, cpu, None, runner=run)
                        for s, d in (("train", train), ("test", test))}
        rates[label] = (len(train) + len(test)) / (time.perf_counter() - t0)
    cos = torch.nn.functional.cosine_similarity(torch.tensor(feats["fp32"]["test"]),
                                                torch.tensor(feats["int8"]["test"])).mean().item()
    y_train, y_test = train.labels.numpy(), test.labels.numpy()
    acc = {}
    for label, f in feats.items():
        head = fit_logreg(f["train"], y_train, [0.01, 0.1, 1.0, 10.0])
        logreg = accuracy(head.predict_logits(f["test"]), y_test)
        knn = knn_predict(f["train"], y_train, f["test"], train.num_classes)
        acc[label] = (logreg, accuracy(knn, y_test), head.info["C"])
    print(f"\n{model.name} on {args.data}: {len(train)} train / {len(test)} test images, cpu ({cpu_features()})")
    for label in ("fp32", "int8"):
        lr, kn, c = acc[label]
        print(f"  {label}: {rates[label]:7.1f} img/s   logistic regression {100 * lr:6.2f}% (C={c:g})   "
              f"k-NN {100 * kn:6.2f}%")
    d = 100 * (acc["int8"][0] - acc["fp32"][0])
    print(f"  int8 vs fp32: {rates['int8'] / rates['fp32']:.2f}x faster, mean cosine {cos:.5f}, probe "
          f"{d:+.2f} points (target: cosine >= 0.99 {'met' if cos >= 0.99 else 'NOT met'}, |probe change| <= 0.5 "
          f"{'met' if abs(d) <= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
