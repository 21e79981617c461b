"""Bad input through the command line: one clear line, exit status 2, and nothing half-written in the run root."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import image_folder_with_a_truncated_png, save_dinov2

from fm2edge.cli import main
from fm2edge.runs import RunDir

COMMON = ["--train.epochs", "1", "--train.batch_size", "32", "--train.device", "cpu"]


def leftovers(root):
    """Partial files: temporaries of atomic writes, or anything beside a lock in a folder that holds no result."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.parent.name]


def run_cli(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def bad_labels(tmp_path):
    """A parquet split whose ClassLabel names two classes while a label says 5."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import hub_dataset
    from datasets import ClassLabel, Features
    from datasets import Image as ImageFeature

    root = tmp_path / "bad-labels"
    root.mkdir()
    feats = Features({"img": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    rows = hub_dataset(4, 0).to_dict()
    tbl = pa.table({"img": [{"bytes": r["bytes"], "path": None} for r in rows["img"]], "label": [0, 1, 5, 1]})
    pq.write_table(tbl.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": feats.to_dict()}})}),
                   root / "train.parquet")
    return root


@pytest.fixture
def truncated_images(tmp_path):
    return image_folder_with_a_truncated_png(tmp_path / "imgs")


@pytest.mark.parametrize("case,extra,match", [
    ("missing dataset", ["--data.source", "{tmp}/nope"], "does not exist"),
    ("empty dataset", ["--data.source", "{tmp}/empty"], "empty folder"),
    ("wrong label column", ["--data.source", "{parquet}", "--data.label_column", "lbl"], "is not a column"),
    ("truncated image", ["--data.source", "{images}"], "cannot be decoded"),
    ("label outside the classes", ["--data.source", "{labels}", "--data.test_fraction", "0.5"],
     "outside the class range"),
    ("hub unreachable", ["--data.source", "someone/no-such-dataset"], "Hugging Face Hub is unreachable"),
    ("unknown key", ["--data.source", "digits", "--train.epoch", "2"], "epoch"),
    ("wrong type", ["--data.source", "digits", "--train.epochs", "three"], "epochs"),
    ("bad value", ["--data.source", "digits", "--train.lr", "-1"], "train.lr"),
])
def test_bad_input_is_one_line_and_leaves_nothing(case, extra, match, tmp_path, parquet_dir, truncated_images,
                                                  bad_labels, capsys):
    (tmp_path / "empty").mkdir()
    extra = [a.format(tmp=tmp_path, parquet=parquet_dir, images=truncated_images, labels=bad_labels) for a in extra]
    root = tmp_path / "runs"
    rc, err = run_cli(["train", *extra, *COMMON, "--run.root", str(root), "--run.name", "r"], capsys)
    assert rc == 2 and err.startswith("fm2edge: error:") and len(err.splitlines()) == 1, err
    assert match in err, err
    assert not (root / "r").exists() or not any(p.name != ".lock" for p in (root / "r").iterdir())
    assert leftovers(root) == []


def _digest(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--data.source", "digits", "--data.max_train", "200", *COMMON, "--run.root", str(root),
                 "--run.name", "cnn"]) == 0
    return root


def test_checkpoint_of_another_architecture_is_refused_and_the_run_kept(finished, capsys):
    before = _digest(finished / "cnn")
    rc, err = run_cli(["train", "--data.source", "digits", "--data.max_train", "200", *COMMON, "--model.name",
                       "student:cifar_resnet18", "--train.epochs", "2", "--run.root", str(finished), "--run.name",
                       "cnn", "--run.resume", "true"], capsys)
    assert rc == 2 and "different architecture" in err and len(err.splitlines()) == 1, err
    after = _digest(finished / "cnn")
    assert {k: v for k, v in after.items() if k != "config.yaml"} == \
        {k: v for k, v in before.items() if k != "config.yaml"}  # results and weights untouched
    assert leftovers(finished) == []


def test_teacher_with_other_classes_is_refused(finished, parquet_dir, tmp_path, capsys):
    rc, err = run_cli(["distill", "--data.source", str(parquet_dir), *COMMON, "--distill.teacher",
                       str(finished / "cnn"), "--run.root", str(tmp_path), "--run.name", "kd"], capsys)
    assert rc == 2 and "classes" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "kd").exists() and leftovers(tmp_path) == []


def test_two_runs_cannot_write_one_folder(finished, capsys):
    with RunDir(finished / "busy"):
        rc, err = run_cli(["train", "--data.source", "digits", "--data.max_train", "200", *COMMON, "--run.root",
                           str(finished), "--run.name", "busy", "--run.resume", "true"], capsys)
    assert rc == 2 and "in use by another fm2edge process" in err, err


def test_an_existing_run_is_never_overwritten_silently(finished, capsys):
    before = _digest(finished / "cnn")
    rc, err = run_cli(["train", "--data.source", "digits", *COMMON, "--run.root", str(finished), "--run.name", "cnn"],
                      capsys)
    assert rc == 2 and "already exists" in err and _digest(finished / "cnn") == before


# ---------------------------------------------------------------- interruption: real signals to real processes

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "JSONARGPARSE_DEPRECATION_WARNINGS": "off", "PYTHONUNBUFFERED": "1"}


def fm2edge(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fm2edge", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)


def signal_when(args, ready, sig, env=None, deadline_s=240):
    """Start ``fm2edge ARGS``, send ``sig`` as soon as ``ready()`` holds, and return (exit status, stderr)."""
    # A shell that starts its jobs in the background (nohup, `cmd &`) passes them SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: the child gets the default disposition back, as a command in a terminal has it.
    proc = subprocess.Popen([sys.executable, "-m", "fm2edge", *args], env=env or ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + deadline_s
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the command ended before the signal could be sent"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
    """A random DINOv2 big enough (196 tokens at 112 px) that extraction takes seconds on a CPU."""
    return save_dinov2(tmp_path_factory.mktemp("vit"), hidden=96, layers=4, heads=3, size=112, patch=8, shortest=112)


@pytest.mark.slow
def test_extraction_killed_mid_split_resumes_to_the_same_features(small_vit, tmp_path):
    cache = tmp_path / "cache"
    env = {**ENV, "FM2EDGE_CACHE": str(cache)}
    args = ["embed", "--data.source", "digits", "--data.max_train", "600", "--model.name", f"hf:{small_vit}",
            "--embed.device", "cpu", "--embed.splits", "[train]", "--embed.batch_size", "10",
            "--embed.chunk_size", "50", "--tsne_samples", "0", "--run.root", str(tmp_path)]

    def chunks():
        return list((cache / "features").glob(".*.partial/*.npz"))

    rc, _ = signal_when([*args, "--run.name", "killed"], lambda: len(chunks()) >= 2, signal.SIGKILL, env=env)
    assert rc == -signal.SIGKILL
    saved = len(chunks())
    assert 2 <= saved < 12, saved
    entries = [p for p in (cache / "features").iterdir() if not p.name.startswith(".")]
    assert entries == [], "no cache entry until every chunk is in"
    resumed = fm2edge(*args, "--run.name", "killed", env=env)
    assert resumed.returncode == 0, resumed.stderr
    # 600 labelled images, less 60 held out for validation
    assert f"resuming extraction, {saved * 50:,} of 540 images already done" in resumed.stdout
    straight = fm2edge(*args, "--run.name", "straight", env={**ENV, "FM2EDGE_CACHE": str(tmp_path / "other")})
    assert straight.returncode == 0, straight.stderr
    a = json.loads((tmp_path / "killed" / "embed.json").read_text())["train"]["cache"]
    b = json.loads((tmp_path / "straight" / "embed.json").read_text())["train"]["cache"]
    assert np.allclose(np.load(f"{a}/features.npy"), np.load(f"{b}/features.npy"), atol=1e-6)
    assert leftovers(cache) == [] and chunks() == []


@pytest.mark.slow
def test_export_killed_midway_leaves_no_export_and_reruns_clean(finished, tmp_path):
    model = finished / "cnn"
    args = ["export", str(model), "--data.source", "digits", "--data.max_train", "200", "--export.latency_runs", "3"]
    rc, _ = signal_when(args, lambda: bool(list(model.glob(".export.*.tmp"))), signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (model / "export").exists(), "a killed export never looks finished"
    again = fm2edge(*args)
    assert again.returncode == 0, again.stderr
    result = json.loads((model / "export" / "export.json").read_text())
    assert set(result["test_acc"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    assert result["parity_max_abs_diff"] < 1e-3
    assert {p.name for p in (model / "export").iterdir()} == {"model.onnx", "model.int8.onnx", "export.json"}
    assert leftovers(model) == [] and not list(model.glob(".export*"))


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_and_resumes_to_the_same_result(tmp_path):
    common = ["train", "--data.source", "digits", "--train.epochs", "4", "--train.batch_size", "64",
              "--train.lr", "0.002", "--train.device", "cpu", "--run.root", str(tmp_path)]
    first = tmp_path / "stopped" / "checkpoints" / "epoch-001" / "state.json"
    rc, err = signal_when([*common, "--run.name", "stopped"], first.exists, signal.SIGINT)
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("fm2edge: interrupted; finished epochs and feature chunks are kept")
    assert leftovers(tmp_path) == []
    assert fm2edge(*common, "--run.name", "stopped", "--run.resume", "true").returncode == 0
    assert fm2edge(*common, "--run.name", "straight").returncode == 0
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert b["resumed_from_epoch"] is not None
    assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-6)
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"], rel=1e-4)


def test_ctrl_c_inside_a_half_built_object_still_ends_on_the_interrupted_line(monkeypatch, capsys):
    """Ctrl-C between two attributes of a library's object (a tqdm bar) leaves it half built; its __del__ fails when
    the interrupt's traceback goes. That must not print after the last line."""
    from fm2edge import cli
    from fm2edge.stages import Stage

    deleted = []

    class HalfBuilt:
        def __init__(self):
            self.disable = False
            raise KeyboardInterrupt

        def __del__(self):
            deleted.append(self)
            raise AttributeError("'HalfBuilt' object has no attribute 'pos'")

    def interrupted(job):
        HalfBuilt()

    monkeypatch.setitem(cli.COMMANDS, "data", Stage(interrupted, cli.COMMANDS["data"].job, "interrupted"))
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # what Python would print as "Exception ignored"
    rc, err = run_cli(["data", "--data.source", "digits"], capsys)
    assert rc == 130
    assert len(deleted) == 1
    assert err.splitlines()[-1].startswith("fm2edge: interrupted; finished epochs and feature chunks are kept")
    assert unraisable == [] and "AttributeError" not in err
    assert sys.unraisablehook == unraisable.append


# ---------------------------------------------------------------- safety: nothing from a file runs as code


def test_yaml_cannot_run_code(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    evil = f"train:\n  epochs: !!python/object/apply:os.system ['touch {sentinel}']\n"
    (tmp_path / "c.yaml").write_text(evil)
    (tmp_path / "r.yaml").write_text(f"stages:\n- name: a\n  command: train\n  args: {{x: !!python/object/apply:"
                                     f"os.system ['touch {sentinel}']}}\n")
    rc, err = run_cli(["train", "--config", str(tmp_path / "c.yaml"), "--run.root", str(tmp_path)], capsys)
    assert rc == 2 and "not valid YAML at line 2" in err and "python/object" in err and len(err.splitlines()) == 1
    rc, err = run_cli(["run", str(tmp_path / "r.yaml"), "--root", str(tmp_path / "runs")], capsys)
    assert rc == 2 and "not valid YAML at line 4" in err and len(err.splitlines()) == 1, err
    assert not sentinel.exists()


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_that_holds_code_is_not_loaded(tmp_path, capsys):
    common = ["train", "--data.source", "digits", "--data.max_train", "200", *COMMON, "--train.epochs", "2",
              "--run.root", str(tmp_path), "--run.name", "r"]
    assert main([*common, "--train.epochs", "1"]) == 0
    capsys.readouterr()
    sentinel = tmp_path / "ran"
    ckpt = next((tmp_path / "r" / "checkpoints").glob("epoch-*"))
    torch.save({"state": _RunsCode(sentinel)}, ckpt / "optimizer.pt")
    rc, err = run_cli([*common, "--run.resume", "true"], capsys)
    assert rc == 2 and "holds more than tensors" in err and len(err.splitlines()) == 1, err
    assert not sentinel.exists()


def test_model_code_shipped_in_a_model_folder_never_runs(tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "model"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    sentinel = tmp_path / "ran"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil-net", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    rc, err = run_cli(["embed", "--data.source", "digits", "--data.max_train", "50", "--model.name", f"hf:{folder}",
                       "--run.root", str(tmp_path / "runs")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "never runs code" in err or "trust_remote_code" in err, err
    assert not sentinel.exists()


# ---------------------------------------------------------------- atomic folders shared by several processes


def test_an_interrupt_from_another_thread_waits_until_an_atomic_write_is_done(tmp_path):
    """The OS hands a process's SIGINT to any thread that does not hold it back (torch's, tqdm's); the write still
    finishes whole, the interrupt comes right after it, and no temporary file stays."""
    import threading

    from fm2edge.runs import interrupts_held

    arrived = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
            sender.start()
            sender.join()
            for _ in range(1000):  # bytecode boundaries, where Python runs a handler the signal tripped
                arrived.append(None)
            (tmp_path / "done").write_text("whole")
    restored = signal.signal(signal.SIGINT, previous)
    assert len(arrived) == 1000 and (tmp_path / "done").read_text() == "whole"
    assert restored is signal.default_int_handler


def test_a_locked_atomic_folder_clears_what_a_killed_writer_left(tmp_path):
    from fm2edge.runs import atomic_dir

    final = tmp_path / "entry"
    (tmp_path / ".entry.k1ll3d.tmp").mkdir()  # a writer killed before its rename
    (tmp_path / ".entry.k1ll3d.tmp" / "half.npy").write_bytes(b"\0" * 10)
    (tmp_path / ".entry.old").mkdir()  # killed between the two renames of a replacement
    (tmp_path / ".other.x.tmp").mkdir()  # another entry's writer, possibly alive: not ours to remove
    with atomic_dir(final, lock=True) as tmp:
        (tmp / "data.txt").write_text("whole")
    assert (final / "data.txt").read_text() == "whole"
    # the lock file stays (removing a lock another process may wait on would let two in)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".other.x.tmp", "entry"]


def test_writers_of_one_locked_folder_take_turns(tmp_path):
    """Two processes replace one folder at once: each rename happens whole, and the last one wins."""
    code = ("import sys, time; from fm2edge.runs import atomic_dir\n"
            "with atomic_dir(sys.argv[1], lock=True) as tmp:\n"
            "    (tmp / 'a').write_text(sys.argv[2]); time.sleep(3); (tmp / 'b').write_text(sys.argv[2])\n")
    final = tmp_path / "shared"

    def start(tag):
        return subprocess.Popen([sys.executable, "-c", code, str(final), tag], stderr=subprocess.PIPE, text=True)

    procs = [start("one")]
    deadline = time.time() + 60
    while not list(tmp_path.glob(".shared.*.tmp")) and time.time() < deadline:  # one holds the lock and writes
        time.sleep(0.01)
    procs.append(start("two"))
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert "waiting for another fm2edge process" in errs[1]  # the second one said it waited
    assert (final / "a").read_text() == (final / "b").read_text() == "two"  # whole, and the last writer's
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "shared"]
