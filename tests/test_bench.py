from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fm2edge.bench import bench_job, count_macs, summarise, time_calls
from fm2edge.cli import main
from fm2edge.config import BenchConfig, BenchJob
from fm2edge.errors import Fm2EdgeError

FIELDS = {"model", "backend", "dtype", "batch", "params", "macs", "size_bytes", "image_size", "device", "torch",
          "threads", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "runs", "first_call_s",
          "throughput_batch", "throughput_img_s", "peak_memory_bytes", "peak_memory_kind", "speedup_vs_first",
          "device_type", "skipped"}


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
        assert set(r) == FIELDS and r["skipped"] is None
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput_img_s"] > 0 and r["params"] > 0 and r["macs"] > 0 and r["size_bytes"] > 4 * r["params"]
    assert rows[0]["speedup_vs_first"] == pytest.approx(1.0)
    assert json.loads(out.read_text())["rows"][0].keys() == rows[0].keys()  # JSON schema = the rows


def test_bench_cli_positional_models(tmp_path):
    out = tmp_path / "b.json"
    rc = main(["bench", "student:small_cnn", "--bench.runs", "5", "--bench.warmup", "1", "--bench.throughput_batch",
               "2", "--bench.throughput_runs", "1", "--output", str(out)])
    assert rc == 0 and json.loads(out.read_text())["rows"][0]["model"] == "student:small_cnn"


def test_combinations_that_do_not_apply_are_skipped_rows_not_errors(tmp_path):
    """fp16 on a CPU, ONNX Runtime from bf16 weights, CUDA on a machine without it: rows that say why."""
    job = BenchJob(models=["student:small_cnn"], output=str(tmp_path / "b.json"),
                   bench=BenchConfig(devices=["cpu", "cuda"], dtypes=["fp32", "fp16"], backends=["eager", "onnx"],
                                     runs=3, warmup=1, throughput_batch=2, throughput_runs=1))
    rows = {(r["device_type"], r["backend"], r["dtype"]): r for r in bench_job(job)["rows"]}
    assert len(rows) == 8
    assert rows[("cpu", "eager", "fp32")]["skipped"] is None and rows[("cpu", "eager", "fp32")]["p50_ms"] > 0
    assert rows[("cpu", "onnx", "fp32")]["skipped"] is None
    assert rows[("cpu", "eager", "fp16")]["skipped"] == "fp16 is timed on CUDA only"
    assert rows[("cpu", "onnx", "fp16")]["skipped"] == "fp16 is timed on CUDA only"  # the first reason that applies
    from fm2edge.bench import skip_reason

    assert skip_reason("onnx", "bf16", torch.device("cpu")) == "ONNX Runtime is timed from fp32 weights"
    if not torch.cuda.is_available():
        assert all(r["skipped"] == "no CUDA device on this machine" for k, r in rows.items() if k[0] == "cuda")


def test_on_a_cuda_machine_onnx_without_its_cuda_provider_is_skipped(monkeypatch):
    """What broke the seed-lab recipe's bench stage on a GPU: ONNX on CUDA. A CUDA machine is faked here."""
    import fm2edge.bench as bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "onnx_providers", lambda: ["CPUExecutionProvider"])
    cuda = torch.device("cuda")
    assert bench.skip_reason("eager", "fp32", cuda) is None and bench.skip_reason("eager", "fp16", cuda) is None
    assert "no CUDA provider" in bench.skip_reason("onnx", "fp32", cuda)
    assert "CPU" in bench.skip_reason("onnx_int8", "fp32", cuda)
    monkeypatch.setattr(bench, "onnx_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert bench.skip_reason("onnx", "fp32", cuda) is None


def test_the_seed_lab_bench_stage_runs_where_cuda_is_absent(tmp_path):
    from fm2edge.recipe import load_recipe
    from fm2edge.stages import job_from_dict

    recipe = load_recipe(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "seed-lab.yaml")
    stage = next(s for s in recipe["stages"] if s["command"] == "bench")
    args = {**stage["args"], "models": ["student:small_cnn"], "output": str(tmp_path / "b.json"),
            "bench": {**stage["args"]["bench"], "runs": 3, "warmup": 1, "throughput_batch": 2, "throughput_runs": 1}}
    job = job_from_dict("bench", args)
    assert job.bench.devices == ["cpu", "cuda"]
    rows = bench_job(job)["rows"]
    measured = [r for r in rows if not r["skipped"]]
    assert {(r["device_type"], r["backend"]) for r in measured} >= {("cpu", "eager"), ("cpu", "onnx")}
    if not torch.cuda.is_available():
        assert {r["skipped"] for r in rows if r["device_type"] == "cuda"} == {"no CUDA device on this machine"}


@pytest.mark.slow
def test_the_compiled_backend_runs_on_the_cpu(tmp_path):
    """torch.compile (inductor) on the CPU: the path the GPU suite takes on CUDA."""
    job = BenchJob(models=["student:small_cnn"], output=str(tmp_path / "b.json"),
                   bench=BenchConfig(backends=["eager", "compile"], runs=5, warmup=2, throughput_batch=4,
                                     throughput_runs=1))
    rows = {r["backend"]: r for r in bench_job(job)["rows"]}
    assert rows["compile"]["skipped"] is None and rows["compile"]["p50_ms"] > 0
    assert rows["compile"]["first_call_s"] > rows["eager"]["first_call_s"]  # the compilation happens there


def test_bench_unknown_model(tmp_path):
    with pytest.raises(Fm2EdgeError, match="unknown model"):
        bench_job(BenchJob(models=["nosuch:model"], output=str(tmp_path / "b.json")))


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
    """In a fresh process: in this one, memory freed by earlier tests may still be resident and be reused, so a new
    allocation need not raise the resident set at all."""
    import subprocess
    import sys

    code = ("import numpy as np; from fm2edge.timing import peak_rss_during; "
            "print(peak_rss_during(lambda: np.ones(64 * 2**20 // 8).sum()))")  # 64 MiB touched, then freed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if out == "None":
        pytest.skip("no /proc/self/clear_refs on this system")
    assert int(out) >= 48 * 2**20


def test_garbage_released_during_the_call_does_not_hide_its_memory():
    """64 MiB left in a reference cycle by earlier work, freed by a collection while the call runs (Python's
    collector may run at any allocation), would cancel the call's own 64 MiB; it is collected before the
    measurement starts instead."""
    import subprocess
    import sys

    code = ("import gc, numpy as np; from fm2edge.timing import peak_rss_during; "
            "cycle = [np.ones(64 * 2**20 // 8)]; cycle.append(cycle); del cycle; "
            "print(peak_rss_during(lambda: (gc.collect(), np.ones(64 * 2**20 // 8).sum())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if out == "None":
        pytest.skip("no /proc/self/clear_refs on this system")
    assert int(out) >= 48 * 2**20


def test_latency_knows_when_the_machine_was_busy():
    """Repeated medians that disagree mark a figure as measured on a busy machine; the quiet figure is the lowest
    block median (what the model takes when nothing else runs)."""
    import time as clock

    from fm2edge.timing import latency_with_noise

    calls = {"n": 0}

    def contended():  # the last two of five blocks run while "other work" doubles each call
        calls["n"] += 1
        clock.sleep(0.004 if calls["n"] > 4 + 3 * 4 else 0.002)  # warm-up 4, then blocks of 4

    busy = latency_with_noise(contended, runs=20, warmup=4)
    assert busy["busy"] and busy["spread"] > 1.5
    assert busy["quiet_p50_ms"] == pytest.approx(min(busy["block_medians_ms"])) and busy["quiet_p50_ms"] < 3.5
    quiet = latency_with_noise(lambda: clock.sleep(0.002), runs=20, warmup=2)
    assert quiet["spread"] < 1.5 and quiet["quiet_p50_ms"] == pytest.approx(2.0, rel=0.5)


def test_an_exported_graph_is_timed_as_shipped_and_a_folder_that_ships_one_gets_its_row(digits_run, tmp_path):
    """`fm2edge bench model.int8.onnx` (a graph copied to a device, timed there) and `fm2edge bench best/` (auto's
    folder: its PyTorch model and the graph it ships); the report's speed table takes both."""
    import shutil

    from fm2edge.config import DataConfig, ExportConfig, ExportJob
    from fm2edge.export import export_job
    from fm2edge.report.job import bench_cells

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    export_job(ExportJob(model=str(run), data=DataConfig(source="digits", max_train=200, max_test=100),
                         export=ExportConfig(latency_runs=3, calibration_images=32)))
    best = tmp_path / "best"
    shutil.copytree(run, best, ignore=shutil.ignore_patterns("export"))
    shutil.copy2(run / "export" / "model.int8.onnx", best / "model.int8.onnx")
    quick = BenchConfig(runs=5, warmup=1, throughput_batch=4, throughput_runs=2)
    rows = bench_job(BenchJob(models=[str(best), str(run / "export" / "model.onnx")], output=str(tmp_path / "b.json"),
                              bench=quick))["rows"]
    assert [(r["backend"], r["dtype"]) for r in rows] == [("eager", "fp32"), ("graph", "int8"), ("graph", "fp32")]
    eager, shipped, fp32 = rows
    assert shipped["model"] == f"{best}/model.int8.onnx" and shipped["image_size"] == eager["image_size"]
    assert shipped["size_bytes"] == (best / "model.int8.onnx").stat().st_size
    for r in (shipped, fp32):
        assert set(r) == FIELDS | {"graph"} and r["skipped"] is None and r["params"] is None and r["macs"] is None
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput_img_s"] > 0
    assert shipped["speedup_vs_first"] == pytest.approx(1.0) and fp32["speedup_vs_first"] is None  # no int8 peer
    assert bench_cells(shipped)[4:6] == ["-", "-"]


def test_bench_refuses_an_onnx_file_it_did_not_write(tmp_path, capsys):
    graph = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), str(graph), dynamo=False)
    assert main(["bench", str(graph)]) == 2
    assert "was not written by `fm2edge export`" in capsys.readouterr().err
