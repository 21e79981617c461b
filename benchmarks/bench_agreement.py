"""Does `fm2edge bench` agree with `torch.utils.benchmark`? Same model, input, threads and dtype, one run.

    python benchmarks/bench_agreement.py [--models torchvision:resnet18 student:small_cnn] [--threads 2]

For each model, the batch-1 p50 latency from fm2edge's eager backend is compared with the median of
``torch.utils.benchmark.Timer(...).blocked_autorange`` on the same module and input. The target is agreement within
10%. The two are interleaved (fm2edge, reference, fm2edge, reference) so a machine-wide slowdown hits both.
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as tb

from fm2edge.bench import bench_model, load_for_bench
from fm2edge.config import BenchConfig
from fm2edge.device import cpu_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["torchvision:resnet18", "student:small_cnn"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runs", type=int, default=BenchConfig.runs)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu ({cpu_features()}), torch {torch.__version__}, fp32, batch 1, eager")
    print(f"{'model':<24} {'fm2edge p50 ms':>15} {'torch.utils.benchmark median ms':>32} {'ratio':>7} "
          f"{'within 10%':>11}")
    for name in args.models:
        model = load_for_bench(name, 10)
        x = torch.randn(1, 3, model.preprocess.size, model.preprocess.size)

        def forward(model=model, x=x):
            with torch.inference_mode():
                model(x)

        ours, ref = [], []
        for _ in range(args.rounds):
            # the tool itself, as `fm2edge bench NAME --bench.threads T` runs it
            cfg = BenchConfig(threads=args.threads, runs=args.runs, throughput_batch=1, throughput_runs=1)
            ours.append(bench_model(name, cfg, [torch.device("cpu")])[0]["p50_ms"])
            timer = tb.Timer("forward()", globals={"forward": forward}, num_threads=args.threads)
            ref.append(timer.blocked_autorange(min_run_time=2.0).median * 1e3)
        a, b = sorted(ours)[len(ours) // 2], sorted(ref)[len(ref) // 2]
        print(f"{name:<24} {a:>15.3f} {b:>32.3f} {a / b:>7.3f} {'yes' if abs(a / b - 1) <= 0.10 else 'NO':>11}")


if __name__ == "__main__":
    main()
