"""Bad input through the command line: one clear line, exit status 2, and nothing half-written in the run root."""

from __future__ import annotations

import hashlib

import pytest
from conftest import image_folder_with_a_truncated_png

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
