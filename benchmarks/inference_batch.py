"""CPU inference speed and memory by batch size: why fm2edge caps a CPU batch at about two million input pixels.

    python benchmarks/inference_batch.py [--model pypi:efficientnet_lite0] [--sizes 224 128] [--batches 32 64 128 512]

Each (size, batch) runs in a fresh process: a forward pass (uint8 in, the model's own preprocessing, inference mode,
freed memory kept as fm2edge runs on a CPU) over ``--images`` random images (512), timed after one warm-up pass,
and the process's peak resident memory. Prints img/s and peak GiB for each, the batch fm2edge uses
(``inference_batch``), and the CPU; writes the raw figures to docs/results/inference_batch-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(model_name: str, size: int, batch: int, images: int) -> dict:
    import torch

    from fm2edge.config import ModelConfig
    from fm2edge.device import freed_memory_kept
    from fm2edge.models.registry import create_model
    from fm2edge.timing import peak_rss

    # random weights: the speed of a forward pass does not depend on them
    model = create_model(ModelConfig(name=model_name, pretrained=False, image_size=size), 2).eval()
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8)

    def run() -> None:
        with torch.inference_mode():
            for s in range(0, images, batch):
                model(model.preprocess(x[s:s + batch]))

    with freed_memory_kept():
        run()
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    return {"model": model_name, "size": size, "batch": batch, "img_s": images / seconds,
            "peak_gib": (peak_rss() or 0) / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pypi:efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # size, batch: the child process
    ap.add_argument("--json", help="file for the raw figures (default docs/results/inference_batch-DATE.json)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.model, *args.one, args.images)))
        return
    import torch
    from common import save_results

    from fm2edge.device import cpu_features, inference_batch

    rows = []
    for size in args.sizes:
        ours = inference_batch(max(args.batches), size, torch.device("cpu"))  # what fm2edge runs for the largest
        for batch in sorted({*args.batches, ours}):
            child = [sys.executable, __file__, "--model", args.model, "--images", str(args.images),
                     "--one", str(size), str(batch)]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            rows.append({**json.loads(out.strip().splitlines()[-1]), "fm2edge": batch == ours})
    print(f"{args.model}, {args.images} images, inference; cpu: {cpu_features()}, torch {torch.__version__}")
    print(f"{'size':>6}{'batch':>7}{'img/s':>9}{'peak GiB':>10}")
    for r in rows:
        mark = f"  <- fm2edge's batch when asked for {max(args.batches)}" if r["fm2edge"] else ""
        print(f"{r['size']:>6}{r['batch']:>7}{r['img_s']:>9.1f}{r['peak_gib']:>10.2f}{mark}")
    save_results("inference_batch", args, rows, args.json)


if __name__ == "__main__":
    main()
