from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from fm2edge.bench import bench_job
from fm2edge.cli import main
from fm2edge.config import (
    BenchConfig,
    BenchJob,
    DataConfig,
    DistillConfig,
    DistillJob,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainJob,
)
from fm2edge.distill.task import distill_job
from fm2edge.report.job import ReportJob, report_job
from fm2edge.train import train_job

DIGITS = DataConfig(source="digits", max_train=400, max_test=150)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher, a student from scratch, a distilled student (2 seeds) and a bench of teacher vs student."""
    root = tmp_path_factory.mktemp("runs")
    train = TrainConfig(epochs=2, batch_size=32, lr=3e-3, device="cpu")
    cnn = ModelConfig(name="student:small_cnn")
    # the teacher is a small CNN trained longer: what the report reads of it is its outputs, not its size
    train_job(TrainJob(data=DIGITS, model=cnn, train=TrainConfig(epochs=4, batch_size=32, lr=3e-3, device="cpu"),
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
    teacher = next(r for r in result["accuracy"] if r["kind"] == "teacher")
    assert teacher["test_acc"] > 0 and 0 < teacher["balanced_acc"] <= 1  # its balanced accuracy beside the others'
    kinds = {m["label"]: m for m in result["mistakes"]}
    assert kinds["scratch (seed 0)"]["kl_to_teacher"] >= 0 and 0 <= kinds["scratch (seed 0)"]["ece"] <= 1
    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: opens from disk offline
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) >= 5
    assert "Confusion matrices: from scratch vs distilled" in page and "Accuracy vs latency" in page
    assert (tmp_path / "report.md").read_text().startswith("# fm2edge report")
    assert "test accuracy (mean ± std over seeds)" in page and "<th>seeds</th>" in page  # kd ran 2 seeds


def test_a_report_of_single_runs_claims_no_spread_over_seeds(runs, tmp_path):
    report_job(ReportJob(runs=[str(runs / "scratch"), str(runs / "teacher")], output=str(tmp_path)))
    page = (tmp_path / "report.html").read_text()
    assert "<th>test accuracy</th>" in page and "over seeds" not in page
    # each row's one seed under "seed": a "0" under "seeds" read as no seeds at all
    assert "<th>seed</th>" in page and "<th>seeds</th>" not in page
    assert "| run | kind | test accuracy | seed |" in (tmp_path / "report.md").read_text()


def test_each_run_folder_says_which_stage_wrote_it(runs):
    from fm2edge.runs import read_metrics, run_stage

    stages = {name: read_metrics(runs / name)["stage"] for name in ("teacher", "scratch", "kd/seed-0")}
    assert stages == {"teacher": "train", "scratch": "train", "kd/seed-0": "distill"}
    # folders written before the stage was recorded are still told apart by their keys
    assert run_stage({"history": [], "teacher": "t"}) == "distill" and run_stage({"probes": {}}) == "probe"
    assert run_stage({"history": []}) == "train" and run_stage({}) == "other"


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


def fake_run(folder, kind, acc, seed, epochs=10, classes=("a", "b", "c"), n=300, teacher_preds=None, rng_seed=0):
    """A run folder written by hand: config, metrics and test predictions with accuracy ``acc``."""
    import numpy as np
    import yaml

    folder.mkdir(parents=True)
    rng = np.random.default_rng(rng_seed)
    labels = np.arange(n) % len(classes)
    preds = labels.copy()
    wrong = rng.choice(n, int(round((1 - acc) * n)), replace=False)
    preds[wrong] = (labels[wrong] + 1) % len(classes)
    logits = np.eye(len(classes))[preds] * 3.0
    config = {"data": {"source": "x", "max_train": 500}, "model": {"name": "student:small_cnn"},
              "train": {"epochs": epochs, "lr": 0.01, "seed": seed, "device": "cpu"}, "run": {"name": folder.name}}
    metrics = {"history": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5}],
               "test_acc": float((preds == labels).mean()), "parameters": 1000}
    if kind == "distill":
        config["distill"] = {"teacher": "t", "losses": {"kd": 1.0}}
        metrics.update(teacher="t", teacher_test_acc=0.9)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    np.savez(folder / "predictions.npz", logits=logits, labels=labels, preds=preds, class_names=np.array(classes))
    if teacher_preds is not None:
        np.savez(folder / "teacher_predictions.npz", logits=np.eye(len(classes))[teacher_preds] * 3.0,
                 labels=labels, preds=teacher_preds, class_names=np.array(classes))
    return float((preds == labels).mean())


def test_matched_groups_and_their_intervals(tmp_path):
    """Seeds are grouped by setting and method; a distillation is compared with the scratch run of the same budget
    only; a known gap far outside the seed spread is a gain, a small one is within noise."""
    root = tmp_path / "study"
    for s, (lo, hi, near) in enumerate([(0.70, 0.80, 0.705), (0.71, 0.81, 0.695), (0.70, 0.79, 0.712)]):
        fake_run(root / "scratch" / f"seed-{s}", "train", lo, s, rng_seed=s)
        fake_run(root / "kd" / f"seed-{s}", "distill", hi, s, rng_seed=10 + s)
        fake_run(root / "kd-long" / f"seed-{s}", "distill", near, s, epochs=20, rng_seed=20 + s)
        fake_run(root / "scratch-long" / f"seed-{s}", "train", 0.70, s, epochs=20, rng_seed=30 + s)
    result = report_job(ReportJob(runs=[str(root)], output=str(tmp_path / "out")))
    got = {(c["a"], c["b"]): c for c in result["comparisons"]}
    assert set(got) == {("kd", "scratch"), ("kd-long", "scratch-long")}  # never across budgets
    assert got[("kd", "scratch")]["verdict"] == "gain" and got[("kd", "scratch")]["low"] > 0
    assert got[("kd-long", "scratch-long")]["verdict"] == "within noise"
    assert "Welch" in got[("kd", "scratch")]["method"]
    rows = {r["label"]: r for r in result["accuracy"]}
    assert rows["kd"]["n"] == 3 and rows["kd"]["seeds"] == "0, 1, 2"
    assert any(v.startswith("kd vs scratch: +") and v.endswith(": gain") for v in result["verdicts"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="comparisons"' in page and "within noise" in page and "kd vs scratch" in page
    assert "matched runs" in page  # the confusion matrices pair kd with its own scratch run


def test_groups_are_never_taken_from_a_teacher_and_two_classes_agree_by_necessity(tmp_path):
    import numpy as np

    labels = np.arange(300) % 2
    teacher = labels.copy()
    teacher[:30] = 1 - teacher[:30]
    fake_run(tmp_path / "two" / "kd", "distill", 0.8, 0, classes=("cat", "dog"), teacher_preds=teacher)
    fake_run(tmp_path / "two" / "scratch", "train", 0.7, 0, classes=("cat", "dog"))
    result = report_job(ReportJob(runs=[str(tmp_path / "two")], output=str(tmp_path / "out2")))
    rows = {m["label"]: m for m in result["mistakes"]}
    assert rows["kd (seed 0)"]["error_agreement"] == "n/a" and rows["scratch (seed 0)"]["error_agreement"] == "n/a"
    assert all(m["superclass_error_share"] == "no groups" for m in result["mistakes"])
    page = (tmp_path / "out2" / "report.html").read_text()
    assert "<td>n/a</td>" in page and "<td>no groups</td>" in page
    # ten classes without known groups: still no groups (none are derived from the teacher's confusions)
    names = tuple("abcdefghij")
    fake_run(tmp_path / "ten" / "kd", "distill", 0.8, 0, classes=names, teacher_preds=np.arange(300) % 10)
    result = report_job(ReportJob(runs=[str(tmp_path / "ten")], output=str(tmp_path / "out3")))
    assert all(m["superclass_error_share"] == "no groups" for m in result["mistakes"])
    # the user's groups, from a file
    (tmp_path / "groups.yaml").write_text("first: [a, b, c, d, e]\nsecond: [f, g, h, i, j]\n")
    result = report_job(ReportJob(runs=[str(tmp_path / "ten")], output=str(tmp_path / "out4"),
                                  superclasses=str(tmp_path / "groups.yaml")))
    assert all(isinstance(m["superclass_error_share"], float) for m in result["mistakes"] if m["errors"])


def test_rows_from_several_folders_name_their_runs(tmp_path, capsys):
    """`fm2edge report runs/a runs/b` with seed folders: every row says which run it is, in HTML and Markdown."""
    for name, acc in (("a", 0.7), ("b", 0.8)):
        for s in (0, 1):
            kind = "train" if name == "a" else "distill"
            fake_run(tmp_path / name / f"seed-{s}", kind, acc + 0.01 * s, s, rng_seed=s + (5 if name == "b" else 0))
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    page = (tmp_path / "out" / "report.html").read_text()
    for text in (md, page):
        for label in ("a/seed-0", "a/seed-1", "b/seed-0", "b/seed-1"):
            assert label in text
        assert "b vs a" in text
    assert "| . |" not in md and "<td>.</td>" not in page


def test_a_studys_label_efficiency_curves_are_drawn_and_tabulated(runs, tmp_path):
    """A label_efficiency.json beside the runs (benchmarks/label_free_study.py writes one) becomes a table with each
    curve's numbers, its budget line, and a plot in the report."""
    study = tmp_path / "study"
    shutil.copytree(runs / "scratch", study / "scratch")
    curves = {"scratch": {"1": 15.2, "10": 28.13}, "pretrained + LP-FT": {"1": 26.27, "10": 51.7}}
    (study / "label_efficiency.json").write_text(json.dumps(
        {"title": "Label efficiency on digits", "budget": "8 epochs of pretraining, 9 min CPU", "curves": curves}))
    report_job(ReportJob(runs=[str(study)], output=str(tmp_path / "out")))
    page = (tmp_path / "out" / "report.html").read_text()
    table = page[page.index("<h2>Label efficiency"):]
    table = table[:table.index("</table>")]
    assert "pretrained + LP-FT" in table and "51.70" in table and "26.27" in table and "28.13" in table
    assert "8 epochs of pretraining, 9 min CPU" in page
    assert "Label efficiency: Label efficiency on digits" in page  # the figure's caption


def test_the_accuracy_latency_plot_stops_at_100_percent_when_every_graph_scores_it():
    from fm2edge.report.plots import accuracy_vs_latency

    points = [{"candidate": f"m@{s}", "precision": p, "int8_recipe": "minmax" if p == "int8" else None,
               "p50_ms": ms, "val_acc": 1.0} for s, ms in ((96, 1.6), (112, 2.2)) for p in ("fp32", "int8")]
    fig = accuracy_vs_latency(points, 3.5, chosen=points[0], teacher_acc=1.0)
    bottom, top = fig.axes[0].get_ylim()
    assert bottom < 100 <= top <= 101


def test_the_latency_plot_shows_agreement_with_the_teacher_when_that_chose():
    from fm2edge.report.plots import accuracy_vs_latency

    points = [{"candidate": "m@96", "precision": p, "int8_recipe": None, "p50_ms": ms, "val_acc": 1.0,
               "teacher_agreement": a} for p, ms, a in (("fp32", 2.0, 0.95), ("int8", 1.5, 0.90))]
    fig = accuracy_vs_latency(points, 3.0, points[0], None, "teacher_agreement",
                              "agreement with the teacher on 1,000 held-out images (%)")
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("agreement with the teacher")
    ys = sorted(float(y) for c in ax.collections for _, y in c.get_offsets())
    assert ys[0] == pytest.approx(90.0) and ys[-1] == pytest.approx(95.0)


def test_the_per_class_plot_shows_at_most_forty_classes_those_that_differ_most():
    from fm2edge.report.plots import PER_CLASS_MOST, per_class_pair

    rows = [{"class": f"c{i}", "images": 10, "teacher_acc": 0.5, "chosen_acc": 0.5 + (0.4 if i % 3 == 0 else 0.0)}
            for i in range(90)]
    fig = per_class_pair(rows, ("teacher", "chosen"), "per class")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == PER_CLASS_MOST and {f"c{i} (10)" for i in range(0, 90, 3)} <= set(labels)
    assert labels[:3] == ["c0 (10)", "c1 (10)", "c2 (10)"]  # in their listed order
    assert "where they differ most" in fig.axes[0].get_title()
    small = per_class_pair(rows[:3], ("teacher", "chosen"), "per class")
    assert [t.get_text() for t in small.axes[0].get_yticklabels()] == ["c0 (10)", "c1 (10)", "c2 (10)"]


def test_the_accuracy_table_shows_balanced_accuracy_where_every_seed_recorded_it(tmp_path):
    root = tmp_path / "study"
    for s, balanced in enumerate((0.6, 0.7)):
        fake_run(root / "new" / f"seed-{s}", "train", 0.8, s, rng_seed=s)
        metrics = json.loads((root / "new" / f"seed-{s}" / "metrics.json").read_text())
        (root / "new" / f"seed-{s}" / "metrics.json").write_text(json.dumps({**metrics, "test_balanced_acc": balanced}))
    fake_run(root / "old", "train", 0.8, 0, epochs=20, rng_seed=5)  # written before balanced accuracy was recorded
    result = report_job(ReportJob(runs=[str(root)], output=str(tmp_path / "out")))
    rows = {r["label"].split("/")[0]: r for r in result["accuracy"]}
    assert sorted(rows) == ["new", "old"], sorted(rows)
    assert rows["new"]["balanced_acc"] == pytest.approx(0.65) and rows["old"]["balanced_acc"] is None
    table = re.search(r'<table id="accuracy">(.*?)</table>', (tmp_path / "out" / "report.html").read_text(),
                      re.S).group(1)
    assert "balanced accuracy" in table and "65.00%" in table


def test_a_leaderboards_epochs_say_where_the_kept_weights_are_from():
    from fm2edge.report.job import epochs_text

    assert epochs_text(11, 11) == "11"
    assert epochs_text(11, 0) == "11 (kept 0)"  # no epoch beat the weights it started from (a probe head)
    assert epochs_text(11, None) == "11"  # a run recorded before the kept epochs were
    assert epochs_text(None, None) == "-" and epochs_text(0, 0) == "-"  # not trained


def test_a_plot_copied_into_another_run_folder_is_shown_once_naming_both():
    from fm2edge.report.job import unique_plots

    soup, curves = b"soup-png", b"curves-png"
    shown = unique_plots([("average-a: soup", soup), ("student-a: learning curves", curves), ("best: soup", soup)])
    assert shown == [("average-a: soup (also best)", soup), ("student-a: learning curves", curves)]


def test_balanced_accuracy_is_the_mean_of_the_classes_recall_and_quiet_on_one_class():
    """scikit-learn's definition; a split of one class (every answer right, or a class predicted that is not
    there) scores without a warning."""
    import warnings

    import numpy as np

    from fm2edge.report.metrics import balanced_accuracy

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx((1 + 0.5) / 2)
        assert balanced_accuracy(np.array([1, 1]), np.array([1, 1])) == 1.0
        assert balanced_accuracy(np.array([0, 1]), np.array([1, 1])) == 0.5
