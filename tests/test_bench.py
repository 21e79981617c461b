from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm2edge.bench import BenchConfig, BenchJob, bench_job, count_macs, summarise, time_calls
from fm2edge.cli import main
from fm2edge.errors import Fm2EdgeError

FIELDS = {"model", "backend", "dtype", "batch", "params", "macs", "size_bytes", "image_size", "device", "torch",
          "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "runs", "first_call_s",
          "throughput_batch", "throughput_img_s", "peak_memory_bytes", "peak_memory_kind", "speedup_vs_first"}


def test_summary_percentiles_are_ordered():
    s = summarise(np.array([0.001, 0.002, 0.003, 0.010]))
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["p50_ms"] == pytest.approx(2.5) and s["runs"] == 4


def test_time_calls_counts_and_warms_up():
    calls = []
    times = time_calls(lambda: calls.append(1), runs=7, warmup=3)
    assert len(times) == 7 and len(calls) == 10 and (times >= 0).all()


def test_macs_of_a_linear_layer():
    assert count_macs(torch.nn.Linear(10, 4), torch.randn(1, 10)) == 40


def test_bench_two_models_every_field(tmp_path):
    out = tmp_path / "b.json"
    job = BenchJob(models=["student:small_cnn", "student:cifar_resnet18"], output=str(out),
                   bench=BenchConfig(runs=10, warmup=2, throughput_batch=4, throughput_runs=2,
                                     backends=["eager", "onnx"]))
    result = bench_job(job)
    rows = result["rows"]
    assert len(rows) == 4
    for r in rows:
        assert set(r) == FIELDS
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput_img_s"] > 0 and r["params"] > 0 and r["macs"] > 0 and r["size_bytes"] > 4 * r["params"]
    assert rows[0]["speedup_vs_first"] == pytest.approx(1.0)
    assert json.loads(out.read_text())["rows"][0].keys() == rows[0].keys()  # JSON schema = the rows


def test_bench_cli_positional_models(tmp_path):
    out = tmp_path / "b.json"
    rc = main(["bench", "student:small_cnn", "--bench.runs", "5", "--bench.warmup", "1", "--bench.throughput_batch",
               "2", "--bench.throughput_runs", "1", "--output", str(out)])
    assert rc == 0 and json.loads(out.read_text())["rows"][0]["model"] == "student:small_cnn"


@pytest.mark.parametrize("job,match", [
    (BenchJob(models=["nosuch:model"]), "unknown model"),
    (BenchJob(models=["student:small_cnn"], bench=BenchConfig(dtypes=["fp16"])), "fp16 is only timed on CUDA"),
    (BenchJob(models=["student:small_cnn"], bench=BenchConfig(backends=["onnx"], dtypes=["bf16"])), "onnx backend"),
    (BenchJob(models=["student:small_cnn"], bench=BenchConfig(backends=["onnx_int8"], dtypes=["bf16"])),
     "onnx_int8 backend"),
])
def test_bench_bad_input(job, match, tmp_path):
    job.output = str(tmp_path / "b.json")
    with pytest.raises(Fm2EdgeError, match=match):
        bench_job(job)


def test_bench_cli_unsupported_backend_is_one_line(capsys):
    assert main(["bench", "student:small_cnn", "--bench.backends", "[tensorrt]"]) == 2
    assert "tensorrt" in capsys.readouterr().err


def test_bench_int8_backend_and_cpu_peak_memory(tmp_path):
    job = BenchJob(models=["student:small_cnn"], output=str(tmp_path / "b.json"),
                   bench=BenchConfig(runs=5, warmup=1, throughput_batch=32, throughput_runs=1,
                                     backends=["eager", "onnx_int8"]))
    rows = bench_job(job)["rows"]
    assert [r["backend"] for r in rows] == ["eager", "onnx_int8"]
    for r in rows:
        assert r["peak_memory_kind"] == "process RSS rise"
        assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] >= 0
        assert r["p50_ms"] > 0


def test_peak_rss_sees_a_large_temporary_allocation():
    from fm2edge.timing import peak_rss_during

    peak = peak_rss_during(lambda: np.ones(64 * 2**20 // 8).sum())  # 64 MiB touched, then freed
    if peak is None:
        pytest.skip("no /proc/self/clear_refs on this system")
    assert peak >= 48 * 2**20
