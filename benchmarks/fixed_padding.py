"""What fixing TensorFlow-style "same" padding at export buys: batch-1 latency and int8 fidelity, in one run.

    python benchmarks/fixed_padding.py [--sizes 96 104 112 128 224] [--threads 2] [--json OUT]
    python benchmarks/fixed_padding.py --run RUN --source ../shared/data/catsdogs128 --per_class 100 [--json OUT]

EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``, the offline backbone) pads its stride-2 layers by an amount
computed from the input size on every call; `fm2edge export` now fixes it for the graph's one size
(:func:`fm2edge.models.static.with_fixed_padding`). For each size this prints the quiet batch-1 p50 of the fp32 and
int8 (min-max, per-channel) ONNX graphs exported both ways, with random weights (latency is the architecture's).
With ``--run`` (a trained classifier) and images it never trained on (the labelled images that ``--per_class`` leaves
out of the training split), it also prints each graph's accuracy there and the int8 graph's agreement with its fp32
graph, calibrated on the same training images `fm2edge export` uses. The CPU is printed beside the table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import graph_labels

from fm2edge import export
from fm2edge.config import DataConfig, ModelConfig
from fm2edge.device import cpu_features
from fm2edge.models import create_model
from fm2edge.timing import latency_with_noise


def graphs(model, folder: Path, fixed: bool, calibration) -> dict[str, Path]:
    """The fp32 and int8 deployable graphs of ``model`` with its padding fixed or computed."""
    name = "fixed" if fixed else "computed"
    fp32 = export.export_deployable(model, folder / f"{name}.onnx", fixed_padding=fixed)
    int8 = export.quantize_int8(fp32, folder / f"{name}.int8.onnx", calibration(), input_name="images",
                                fp32_layers="none")
    return {"fp32": fp32, "int8": int8}


def quiet_ms(path: Path, size: int, threads: int, runs: int) -> float:
    x1 = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    sess = export.open_session(path, threads)
    return latency_with_noise(lambda: export.run_images(sess, x1), runs, 10)["quiet_p50_ms"]


def latency_rows(sizes: list[int], threads: int, runs: int) -> list[dict]:
    print(f"EfficientNet-Lite0, random weights, batch 1, {threads} threads, quiet p50 ms ({cpu_features()})")
    print("| size | fp32 computed | fp32 fixed | speed-up | int8 computed | int8 fixed | speed-up |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        model = create_model(ModelConfig(name="pypi:efficientnet_lite0", image_size=size, pretrained=False), 2)
        with tempfile.TemporaryDirectory() as tmp:
            ms = {}
            for fixed in (False, True):
                calib = lambda s=size: (rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8) for _ in range(2))  # noqa: E731
                for precision, path in graphs(model, Path(tmp), fixed, calib).items():
                    ms[precision, fixed] = quiet_ms(path, size, threads, runs)
        print(f"| {size} | {ms['fp32', False]:.3f} | {ms['fp32', True]:.3f} | "
              f"{ms['fp32', False] / ms['fp32', True]:.2f}x | {ms['int8', False]:.3f} | {ms['int8', True]:.3f} | "
              f"{ms['int8', False] / ms['int8', True]:.2f}x |", flush=True)
        rows.append({"size": size, **{f"{p}_{'fixed' if f else 'computed'}_ms": v for (p, f), v in ms.items()}})
    return rows


def fidelity_rows(run: str, source: str, per_class: int | None, max_train: int | None) -> list[dict]:
    from fm2edge.data import balanced_indices, load_data, load_left_out
    from fm2edge.models.io import load_classifier

    cfg = DataConfig(source=source, per_class=per_class, max_train=max_train)
    held, train = load_left_out(cfg), load_data(cfg)[0]
    labels = held.labels.numpy()
    calib_images = train.images[torch.from_numpy(balanced_indices(train.labels.numpy(), min(500, len(train))))]
    model = load_classifier(run)

    print(f"\n{run}: {len(held)} labelled images it never trained on ({cpu_features()})")
    print("| padding | fp32 accuracy | int8 accuracy | int8 agrees with fp32 |")
    print("|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fixed in (False, True):
            made = graphs(model, Path(tmp), fixed, lambda: export.calibration_batches(model, calib_images))
            fp32, int8 = (graph_labels(model, made[p], held.images) for p in ("fp32", "int8"))
            print(f"| {'fixed' if fixed else 'computed'} | {100 * (fp32 == labels).mean():.2f}% | "
                  f"{100 * (int8 == labels).mean():.2f}% | {100 * (int8 == fp32).mean():.2f}% |", flush=True)
            rows.append({"padding": "fixed" if fixed else "computed", "images": len(held),
                         "fp32_acc": float((fp32 == labels).mean()), "int8_acc": float((int8 == labels).mean()),
                         "int8_agreement": float((int8 == fp32).mean())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 104, 112, 128, 224])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--run", help="a trained classifier's run folder: int8 fidelity on images it never saw")
    ap.add_argument("--source")
    ap.add_argument("--per_class", type=int)
    ap.add_argument("--max_train", type=int)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    result = {"machine": cpu_features(), "threads": a.threads, "latency": latency_rows(a.sizes, a.threads, a.runs)}
    if a.run:
        result.update(run=a.run, fidelity=fidelity_rows(a.run, a.source, a.per_class, a.max_train))
    if a.json:
        from fm2edge.runs import atomic_write_json

        atomic_write_json(Path(a.json), result)


if __name__ == "__main__":
    main()
