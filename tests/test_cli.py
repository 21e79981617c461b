"""The command line as a user runs it: files written, one-line errors, kill and resume, two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fm2edge.cli import main
from fm2edge.stages import STAGES

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off", "PYTHONUNBUFFERED": "1"}


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fm2edge", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def test_train_end_to_end_writes_its_files(tmp_path, parquet_dir):
    rc = main(["train", "--data.source", str(parquet_dir), "--train.epochs", "2", "--train.batch_size", "16",
               "--run.root", str(tmp_path), "--run.name", "e2e"])
    assert rc == 0
    run = tmp_path / "e2e"
    cfg = (run / "config.yaml").read_text()
    assert "epochs: 2" in cfg and str(parquet_dir) in cfg
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    pred = np.load(run / "predictions.npz")
    assert pred["logits"].shape == (32, 4) and list(pred["class_names"]) == ["red", "green", "blue", "grey"]
    assert metrics["test_acc"] == pytest.approx((pred["preds"] == pred["labels"]).mean())
    png = (run / "plots" / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (run / "checkpoints" / "epoch-001" / "state.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--data.source", "/no/such/folder"], "data.source '/no/such/folder' does not exist"),
    (["--data.source", "{parquet}", "--data.label_column", "lbl"], "data.label_column 'lbl' is not a column"),
    (["--model.name", "student:tiny"], "unknown model 'student:tiny'"),
    (["--data.source", "someone/not-here"], "Hugging Face Hub is unreachable"),
    (["--train.epochs", "0"], "train.epochs must be at least 1"),
    (["--train.epoch", "3"], "train.epoch"),
])
def test_bad_input_is_one_clear_line(tmp_path, parquet_dir, args, message):
    args = [a.replace("{parquet}", str(parquet_dir)) for a in args]
    res = cli("train", *args, "--run.root", str(tmp_path), timeout=120)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("fm2edge: error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not any(tmp_path.rglob("*.safetensors"))


def test_help_explains_options():
    res = cli("train", "--help", timeout=60)
    assert res.returncode == 0
    for flag in ("--data.source", "--model.name", "--train.lr", "--run.resume", "--config"):
        assert flag in res.stdout
    assert "Peak learning rate" in res.stdout
    # left empty, the settings are the proven recipe, and the help says what that is
    for part in ("scales them to it", "5e-4 from pretrained weights", "random-resized crops and flips for photos"):
        assert part in " ".join(res.stdout.split()), part



@pytest.mark.parametrize("args,shown", [
    (["--help"], "auto"), (["auto", "--help"], "--auto.latency_ms"), (["train", "--help"], "--train.lr"),
    (["auto", "photos", "--auto.latency", "3"], "unrecognized arguments: --auto.latency"),
    (["lst"], "invalid choice: 'lst'"),
])
def test_help_and_flag_mistakes_answer_without_importing_torch(args, shown):
    # torch is 3 of the 4 s a command took to start: help and a mistyped flag need none of it (Stage imports lazily)
    code = (f"import sys; from fm2edge.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert shown in res.stdout + res.stderr
    assert "torch imported: False" in res.stdout, res.stdout + res.stderr


def test_every_command_answers_help_without_importing_torch():
    # every job class lives in fm2edge.config (or automate.config), which imports no torch: each command's help
    # is read in one process, and its own sections are listed in it
    code = ("import contextlib, io, sys\nfrom fm2edge.cli import main\nfrom fm2edge.stages import STAGES\n"
            "for command in STAGES:\n    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "        main([command, '--help'])\n    print(command, 'flags', out.getvalue().count('--'))\n"
            "print('torch imported:', 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert "torch imported: False" in res.stdout, res.stdout + res.stderr
    counts = dict(line.split(" flags ") for line in res.stdout.splitlines() if " flags " in line)
    assert set(counts) == set(STAGES) and all(int(n) >= 5 for n in counts.values()), counts

def test_list_prints_models_and_sources():
    res = cli("list", timeout=60)
    assert res.returncode == 0 and "student:small_cnn" in res.stdout and "digits" in res.stdout


@pytest.mark.slow
def test_demo_runs_offline(tmp_path):
    rc = main(["demo", "--epochs", "2", "--run.root", str(tmp_path)])
    assert rc == 0
    demo = tmp_path / "demo"
    metrics = json.loads((demo / "scratch" / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.5  # digits, chance is 0.1
    probe = json.loads((demo / "probe" / "metrics.json").read_text())
    assert probe["probes"]["logreg"]["test_acc"] > 0.8
    assert set(probe["label_efficiency"]["scratch"]) == {"1", "5", "25"}
    for png in ("embed/plots/tsne_train.png", "embed/plots/tsne_test.png", "probe/plots/label_efficiency.png",
                "scratch/plots/learning_curves.png", "distill/plots/learning_curves.png"):
        assert (demo / png).stat().st_size > 10_000, png
    distill = json.loads((demo / "distill" / "metrics.json").read_text())
    assert distill["teacher_test_acc"] > 0.8 and distill["test_acc"] > 0.5
    bench = json.loads((demo / "bench" / "bench.json").read_text())["rows"]
    assert bench[1]["speedup_vs_first"] > 1  # the student is faster than its teacher
    export = json.loads((demo / "export" / "export.json").read_text())
    assert (demo / "report" / "report.html").stat().st_size > 100_000
    assert export["parity_max_abs_diff"] < 1e-3 and set(export["test_acc"]) == {"pytorch_fp32", "onnx_fp32",
                                                                                 "onnx_int8"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    common = ["train", "--data.source", "digits", "--train.epochs", "4", "--train.batch_size", "64",
              "--run.root", str(tmp_path), "--train.lr", "0.002"]
    straight = cli(*common, "--run.name", "straight")
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen([sys.executable, "-m", "fm2edge", *common, "--run.name", "killed"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "epoch-001" / "state.json"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert len(metrics["history"]) < 4, "the run finished before it could be killed"
    resumed = cli(*common, "--run.name", "killed", "--run.resume", "true")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["resumed_from_epoch"] is not None
    assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-6)
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_two_cpu_processes_with_torchrun(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    args = ["-m", "fm2edge", "train", "--data.source", "digits", "--train.epochs", "4", "--train.batch_size", "64",
            "--train.lr", "0.003", "--train.schedule", "onecycle", "--train.optimizer", "adamw",
            "--train.device", "cpu", "--run.root", str(tmp_path)]
    res = subprocess.run([*torchrun, *args, "--run.name", "ddp"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one = cli(*args[2:], "--run.name", "single")
    assert one.returncode == 0
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["env"]["processes"] == 2 and single["env"]["processes"] == 1
    assert len(ddp["history"]) == 4
    # Same global batch and data order; BatchNorm statistics are per process, so results are close, not equal.
    assert ddp["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"], rel=0.1)
    assert ddp["test_acc"] == pytest.approx(single["test_acc"], abs=0.03)
    assert ddp["test_acc"] > 0.95


def two_processes_and_one(args: list[str], tmp_path, port: int) -> tuple[dict, dict]:
    """``fm2edge ARGS`` under torchrun with 2 CPU processes (run "ddp") and alone (run "single"): their metrics."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    res = subprocess.run([*torchrun, "-m", "fm2edge", *args, "--run.name", "ddp"], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert cli(*args, "--run.name", "single").returncode == 0
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["env"]["processes"] == 2 and single["env"]["processes"] == 1
    return ddp, single


@pytest.mark.slow
def test_two_cpu_processes_distill_like_one(tmp_path):
    # a schedule that converges (as in the train test above): at a constant rate, accuracy swings from epoch to epoch
    # and two runs would be compared at a noisy point
    common = ["--data.source", "digits", "--train.epochs", "4", "--train.batch_size", "64", "--train.lr", "0.003",
              "--train.schedule", "onecycle", "--train.optimizer", "adamw", "--train.device", "cpu",
              "--run.root", str(tmp_path)]
    assert cli("train", *common, "--run.name", "teacher").returncode == 0
    ddp, single = two_processes_and_one(["distill", *common, "--distill.teacher", str(tmp_path / "teacher")],
                                        tmp_path, 29533)
    # one teacher cache serves both runs: same teacher, same images
    assert ddp["teacher_cache"] == single["teacher_cache"]
    # digits: 75% of 1,797 images (1,347), less a 10% validation share (135)
    assert len(np.load(f"{ddp['teacher_cache']}/logits.npy")) == 1212
    assert ddp["teacher_test_acc"] == single["teacher_test_acc"]
    assert ddp["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"], rel=0.1)
    assert ddp["test_acc"] == pytest.approx(single["test_acc"], abs=0.03)


@pytest.mark.slow
def test_two_cpu_processes_pretrain_like_one(tmp_path):
    common = ["--data.source", "digits", "--train.epochs", "3", "--train.batch_size", "64", "--train.device", "cpu",
              "--run.root", str(tmp_path)]
    assert cli("train", *common, "--run.name", "teacher").returncode == 0
    ddp, single = two_processes_and_one(["pretrain", *common, "--pretrain.teacher", str(tmp_path / "teacher"),
                                         "--train.augment.crop", "resized", "--train.augment.flip", "true",
                                         "--pretrain.views", "2"], tmp_path, 29535)
    assert ddp["teacher_cache"] == single["teacher_cache"], "one feature cache for both"
    assert ddp["history"][-1]["train_loss"] < ddp["history"][0]["train_loss"]
    # BatchNorm statistics are per process: close, not equal
    assert ddp["history"][-1]["train_loss"] == pytest.approx(single["history"][-1]["train_loss"], rel=0.25)


def test_seeds_accept_spaced_values():
    from fm2edge.cli import _spaced_lists

    assert _spaced_lists(["train", "--seeds", "0", "1", "2", "--train.epochs", "1"]) == \
        ["train", "--seeds", "[0, 1, 2]", "--train.epochs", "1"]
    assert _spaced_lists(["train", "--seeds", "[0,1]"]) == ["train", "--seeds", "[0,1]"]
    assert _spaced_lists(["train", "--seeds", "3"]) == ["train", "--seeds", "[3]"]


def test_version_and_list_with_a_positional_what(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"fm2edge {version('fm2edge')}"
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "models (--model.name):" in out and "data sources" not in out
    assert main(["list", "data"]) == 0
    out = capsys.readouterr().out
    assert "data sources" in out and "models (" not in out and "../shared" not in out


def test_list_and_dict_flags_take_what_users_type(tmp_path, monkeypatch):
    from fm2edge.cli import _spaced_lists

    assert _spaced_lists(["bench", "--bench.backends", "onnx"]) == ["bench", "--bench.backends", '["onnx"]']
    assert _spaced_lists(["train", "--seeds", "0", "1", "2"])[2] == "[0, 1, 2]"
    assert _spaced_lists(["train", "--train.augment.scale", "0.2", "1.0"])[2] == "[0.2, 1.0]"
    assert _spaced_lists(["distill", "--distill.losses", "{kd:1,feature:0.5}"])[2] == "{kd: 1, feature: 0.5}"
    assert _spaced_lists(["train", "--seeds", "[0,1]"])[2] == "[0,1]"


def test_distill_without_a_teacher_says_what_to_give(capsys):
    assert main(["distill", "--data.source", "digits"]) == 2
    err = capsys.readouterr().err
    assert "--distill.teacher is required" in err and len(err.strip().splitlines()) == 1


def test_export_uses_the_runs_own_data_and_refuses_other_classes(tmp_path, parquet_dir, capsys):
    from fm2edge.config import DataConfig, RunConfig, TrainConfig, TrainJob
    from fm2edge.train import train_job

    train_job(TrainJob(data=DataConfig(source=str(parquet_dir)), train=TrainConfig(epochs=1, device="cpu"),
                       run=RunConfig(root=str(tmp_path), name="colours")))
    assert main(["export", str(tmp_path / "colours"), "--export.int8", "false", "--export.latency_runs", "3"]) == 0
    saved = json.loads((tmp_path / "colours" / "export" / "export.json").read_text())
    assert saved["data"] == str(parquet_dir) and saved["class_names"] == ["red", "green", "blue", "grey"]
    other = tmp_path / "other"
    other.mkdir()
    from conftest import hub_dataset

    ds = hub_dataset(40, seed=3)
    ds = ds.cast_column("label", type(ds.features["label"])(names=["w", "x", "y", "z"]))
    ds.to_parquet(str(other / "train.parquet"))
    assert main(["export", str(tmp_path / "colours"), "--data.source", str(other), "--output",
                 str(tmp_path / "e2")]) == 2
    assert "was trained on the classes" in capsys.readouterr().err


def test_positionals_may_follow_the_flags():
    from fm2edge.cli import _positional_models

    assert _positional_models(["bench", "--bench.runs", "10", "torchvision:resnet18"]) == \
        ["bench", "--models", '["torchvision:resnet18"]', "--bench.runs", "10"]
    assert _positional_models(["predict", "RUN", "--predict.top_k", "3", "a.png"]) == \
        ["predict", "--model", "RUN", "--inputs", '["a.png"]', "--predict.top_k", "3"]
    assert _positional_models(["train", "--seeds", "0", "1"]) == ["train", "--seeds", "0", "1"]
    assert _positional_models(["auto", "photos/", "--auto.students", "a@32", "b@64", "--auto.minutes", "4"]) == \
        ["auto", "--data.source", "photos/", "--auto.students", "a@32", "b@64", "--auto.minutes", "4"]
    assert _positional_models(["auto", "--auto.minutes", "4", "photos/"]) == \
        ["auto", "--data.source", "photos/", "--auto.minutes", "4"]


def test_what_the_data_loggers_say_is_said_once_per_command_and_other_loggers_are_left_alone():
    """Every stage of `auto` or of a recipe reads the same folder again; its warnings about it are printed once."""
    import io
    import logging

    from fm2edge.cli import SaidOnce

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SaidOnce())
    data, other = logging.getLogger("fm2edge.data.dataset"), logging.getLogger("fm2edge.train")
    for logger in (data, other):
        logger.addHandler(handler)
    try:
        for _ in range(3):
            data.warning("3 of the 152 test images are also training images")
            other.warning("kept epoch 4")
        data.warning("another folder's word")
    finally:
        for logger in (data, other):
            logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines.count("3 of the 152 test images are also training images") == 1
    assert lines.count("kept epoch 4") == 3 and "another folder's word" in lines
