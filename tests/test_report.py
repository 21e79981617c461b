from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from fm2edge.bench import BenchConfig, BenchJob, bench_job
from fm2edge.cli import main
from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
from fm2edge.distill.task import DistillConfig, DistillJob, distill_job
from fm2edge.report.job import ReportJob, report_job
from fm2edge.train import train_job

DIGITS = DataConfig(source="digits", max_train=400, max_test=150)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher, a student from scratch, a distilled student (2 seeds) and a bench of teacher vs student."""
    root = tmp_path_factory.mktemp("runs")
    train = TrainConfig(epochs=2, batch_size=32, lr=3e-3, device="cpu")
    cnn = ModelConfig(name="student:small_cnn")
    train_job(TrainJob(data=DIGITS, model=ModelConfig(name="student:cifar_resnet18"),
                       train=TrainConfig(epochs=2, batch_size=32, lr=1e-3, device="cpu"),
                       run=RunConfig(root=str(root), name="teacher")))
    train_job(TrainJob(data=DIGITS, model=cnn, train=train, run=RunConfig(root=str(root), name="scratch")))
    distill_job(DistillJob(data=DIGITS, model=cnn, train=train, run=RunConfig(root=str(root), name="kd"),
                           distill=DistillConfig(teacher=str(root / "teacher"), force=True), seeds=[0, 1]))
    bench_job(BenchJob(models=[str(root / "teacher"), str(root / "scratch")], output=str(root / "bench.json"),
                       bench=BenchConfig(runs=5, warmup=1, throughput_batch=4, throughput_runs=1)))
    return root


def test_report_tables_hold_the_runs_numbers(runs, tmp_path):
    result = report_job(ReportJob(runs=[str(runs)], output=str(tmp_path)))
    acc = {r["label"]: r for r in result["accuracy"]}
    assert acc["scratch"]["test_acc"] == json.loads((runs / "scratch" / "metrics.json").read_text())["test_acc"]
    seeds = json.loads((runs / "kd" / "seeds.json").read_text())
    assert acc["kd"]["test_acc"] == pytest.approx(seeds["mean"]) and acc["kd"]["n"] == 2
    assert acc["kd"]["std"] == pytest.approx(seeds["std"])
    assert next(r for r in result["accuracy"] if r["kind"] == "teacher")["test_acc"] > 0
    kinds = {m["label"]: m for m in result["mistakes"]}
    assert kinds["scratch"]["kl_to_teacher"] >= 0 and 0 <= kinds["scratch"]["ece"] <= 1
    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: opens from disk offline
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) >= 5
    assert "Confusion matrices: from scratch vs distilled" in page and "Accuracy vs latency" in page
    assert (tmp_path / "report.md").read_text().startswith("# fm2edge report")


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)")
def test_report_in_a_real_browser(runs, tmp_path):
    """Headless Chromium opens the page from disk: every image decodes, the console stays clean, and the accuracy
    table shows the numbers of the runs' JSON."""
    report_job(ReportJob(runs=[str(runs)], output=str(tmp_path)))
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    bad = int(re.search(r'data-bad-images="(\d+)"', dom).group(1))
    assert images >= 5 and bad == 0
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    table = re.search(r'<table id="accuracy">(.*?)</table>', dom, re.S).group(1)
    shown = {float(v) for v in re.findall(r'data-value="([0-9.]+)"', table)}
    scratch = json.loads((runs / "scratch" / "metrics.json").read_text())["test_acc"]
    kd = json.loads((runs / "kd" / "seeds.json").read_text())["mean"]
    assert any(abs(v - scratch) < 1e-6 for v in shown) and any(abs(v - kd) < 1e-6 for v in shown)
    assert f"{100 * scratch:.2f}%" in table
