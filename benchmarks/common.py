"""What the benchmark scripts share: where the real CIFAR-10 copy lives, the default data it implies, and the classes
an exported graph predicts.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and ``from common import ...``
works from each of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# ../shared/data/cifar10 beside the project: CIFAR-10 in the Hugging Face schema (train/test parquet)
SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def default_data() -> str:
    """The shared CIFAR-10 copy where it exists, else scikit-learn's digits (offline everywhere)."""
    return str(SHARED_CIFAR10) if SHARED_CIFAR10.exists() else "digits"


def cifar_source(n: int) -> Path:
    """A CIFAR-10 folder in the hub's schema with at least ``n`` training images: the shared copy where it exists,
    else random 32 x 32 images written once to a temporary folder (speed does not depend on what images show; the
    GPU machine does not carry ../shared)."""
    import io
    import tempfile

    import numpy as np

    if (SHARED_CIFAR10 / "train.parquet").exists():
        return SHARED_CIFAR10
    folder = Path(tempfile.gettempdir()) / f"fm2edge-synthetic-cifar-{n}"
    if not (folder / "test.parquet").exists():
        from datasets import ClassLabel, Dataset, Features
        from datasets import Image as ImageFeature
        from PIL import Image

        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        rng = np.random.default_rng(0)

        def split(count: int) -> Dataset:
            rows = []
            for _ in range(count):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                rows.append({"bytes": buf.getvalue(), "path": None})
            return Dataset.from_dict({"img": rows, "label": [i % 10 for i in range(count)]},
                                     features=Features({"img": ImageFeature(), "label": ClassLabel(names=names)}))

        folder.mkdir(parents=True, exist_ok=True)
        split(n).to_parquet(str(folder / "train.parquet"))
        split(max(64, n // 10)).to_parquet(str(folder / "test.parquet"))
    return folder


def model_spec(spec: str) -> tuple[str, int, int]:
    """``"timm:mobilenetv3_small_100@64@128"`` -> (name, input size, batch size): the --models format of the
    training-speed scripts."""
    name, size, batch = spec.rsplit("@", 2)
    return name, int(size), int(batch)


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def save_results(script: str, args, rows: list[dict], out: str | None = None) -> Path:
    """A benchmark's raw figures as JSON, with what they depend on (date, CPU model and instruction sets, threads,
    torch, the script's arguments): ``docs/results/SCRIPT-DATE.json`` unless ``out`` names a file, so the table in
    the docs that a run feeds has its numbers committed beside it."""
    import datetime
    import json
    import platform
    import sys

    import torch

    from fm2edge.device import cpu_features

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    today = datetime.date.today().isoformat()
    path = Path(out) if out else RESULTS / f"{script}-{today}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"script": f"benchmarks/{script}.py", "argv": sys.argv[1:], "args": vars(args), "date": today,
               "cpu": model, "cpu_features": cpu_features(), "torch": torch.__version__, "rows": rows}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"raw figures in {path}")
    return path


def graph_labels(model, onnx: Path, images) -> np.ndarray:
    """The classes an exported graph of ``model`` predicts for uint8 ``images`` (N x 3 x H x W), resized as
    ``model`` expects, 256 at a time."""
    import numpy as np

    from fm2edge import export

    sess = export.open_session(onnx)
    return np.concatenate([export.run_images(sess, b) for b in export.image_batches(model, images, 256)]).argmax(1)


def model_labels(folder, data) -> np.ndarray:
    """The classes the model in run folder ``folder`` predicts for ``data`` (an ImageData), in PyTorch on the CPU."""
    import torch

    from fm2edge.models.io import load_classifier
    from fm2edge.train import predict

    return predict(load_classifier(folder), data, 64, torch.device("cpu")).argmax(1).numpy()
