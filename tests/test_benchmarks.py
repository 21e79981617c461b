"""Benchmark scripts rehearsed on the CPU at toy size: the GPU suite's profiler pass (what it counts and what it
leaves behind) and the augmentation benchmark's table."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gpu_suite(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_suite

    return gpu_suite


def test_device_busy_time_is_the_union_of_kernel_intervals(gpu_suite):
    assert gpu_suite.busy_microseconds([]) == 0
    assert gpu_suite.busy_microseconds([(0, 10), (5, 15), (20, 25)]) == 20  # overlap counted once, gap not at all
    assert gpu_suite.busy_microseconds([(20, 25), (0, 30)]) == 30  # one kernel inside another's span


def test_a_profiled_part_leaves_a_trace_and_a_table_that_count_its_steps(gpu_suite, tmp_path):
    def part():
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            torch.nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.zeros(8, dtype=torch.long)).backward()
            opt.step()
            opt.zero_grad()
        return {"figures": {"steps": 3}, "notes": "toy"}

    result, summary = gpu_suite.profiled(part, tmp_path / "profile", "toy")
    assert result["figures"] == {"steps": 3}
    assert summary["optimizer_steps"] == 3 and summary["span_ms"] > 0 and summary["host_op_ms"] > 0
    ops = [t["op"] for t in summary["top"]]
    assert 0 < len(ops) <= gpu_suite.TOP and "aten::addmm" in ops
    assert summary["device_idle_share"] is None if not torch.cuda.is_available() else 0 <= summary[
        "device_idle_share"] <= 1
    table = (tmp_path / "profile" / "toy.md").read_text()
    assert "3 optimiser steps" in table and "`aten::addmm`" in table
    trace = json.loads(gzip.open(tmp_path / "profile" / "toy.trace.json.gz").read())
    assert any(e.get("name") == "aten::addmm" for e in trace["traceEvents"])
    assert not (tmp_path / "profile" / "toy.trace.json").exists()  # only the compressed trace stays


def test_the_augmentation_benchmark_times_both_pipelines_and_the_crop(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import augment_speed

    out = tmp_path / "augment.json"
    monkeypatch.setattr("sys.argv", ["augment_speed.py", "--batch", "6", "--sizes", "48", "32", "--repeats", "1",
                                     "--json", str(out)])
    augment_speed.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["stored"]) for r in rows] == [(48, 256), (32, 32)]
    for r in rows:
        assert min(r["batched_img_s"], r["per_image_img_s"], r["crop_img_s"], r["resample_img_s"]) > 0
        assert r["ratio"] == pytest.approx(r["batched_img_s"] / r["per_image_img_s"])
    assert "per-image img/s" in capsys.readouterr().out


def test_the_decode_benchmark_times_both_decodes_of_the_same_photos(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import decode_speed

    out = tmp_path / "decode.json"
    monkeypatch.setattr("sys.argv", ["decode_speed.py", "--count", "2", "--width", "1200", "--height", "900",
                                     "--size", "128", "--json", str(out)])
    decode_speed.main()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["reduced_img_s"] > 0 and row["full_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["reduced_img_s"] / row["full_img_s"])
    assert row["mean_abs_diff"] < 2  # the same photos, decoded to nearly the same pixels
    assert "full decode" in capsys.readouterr().out


def test_the_fixed_padding_benchmark_times_both_graphs_of_each_size(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import fixed_padding

    out = tmp_path / "padding.json"
    monkeypatch.setattr("sys.argv", ["fixed_padding.py", "--sizes", "64", "--runs", "5", "--json", str(out)])
    fixed_padding.main()
    (row,) = json.loads(out.read_text())["latency"]
    assert row["size"] == 64
    assert all(row[f"{p}_{f}_ms"] > 0 for p in ("fp32", "int8") for f in ("computed", "fixed"))
    assert "| 64 |" in capsys.readouterr().out


def test_the_inference_batch_benchmark_runs_each_batch_and_fm2edges_own(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import inference_batch

    out = tmp_path / "batches.json"
    monkeypatch.setattr("sys.argv", ["inference_batch.py", "--model", "student:small_cnn", "--sizes", "512",
                                     "--batches", "4", "16", "--images", "16", "--json", str(out)])
    inference_batch.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["batch"], r["fm2edge"]) for r in rows] == [(512, 4, False), (512, 8, True), (512, 16, False)]
    assert all(r["img_s"] > 0 and r["peak_gib"] > 0 for r in rows)
    assert "fm2edge's batch when asked for 16" in capsys.readouterr().out


def test_the_teacher_size_benchmark_fine_tunes_each_size_once_and_prints_its_row(monkeypatch, tmp_path, capsys,
                                                                                 parquet_dir, tiny_hf_resnet):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import teacher_sizes

    argv = ["teacher_sizes.py", "--source", str(parquet_dir), "--model", f"hf:{tiny_hf_resnet}", "--runs", "16:1",
            "24:2", "--device", "cpu", "--root", str(tmp_path / "runs")]
    monkeypatch.setattr("sys.argv", argv)
    teacher_sizes.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 16 |") or line.startswith("| 24 |")]
    assert [r.split(" | ")[:2] for r in rows] == [["| 16", "1"], ["| 24", "2"]]
    for size, epochs in ((16, 1), (24, 2)):
        metrics = json.loads((tmp_path / "runs" / f"{size}px-{epochs}ep" / "full" / "metrics.json").read_text())
        assert len(metrics["history"]) == epochs and metrics["test_acc"] is None  # the test split stays unread
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/full/metrics.json")}
    teacher_sizes.main()  # finished runs are reused, not trained again
    assert capsys.readouterr().out.count("| 24 | 2 |") == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/full/metrics.json")} == written
