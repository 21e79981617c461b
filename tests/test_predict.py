"""From a run folder to predictions: export, `fm2edge predict` through PyTorch and ONNX, the Python API."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import DIGITS_SMALL
from PIL import Image

import fm2edge
from fm2edge.cli import main
from fm2edge.config import DataConfig, ExportConfig, ExportJob
from fm2edge.export import export_job, open_session

DIGITS = DataConfig(**DIGITS_SMALL)


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("predict") / "cnn"
    shutil.copytree(digits_run, run)  # its own copy: the export goes inside the run folder
    export_job(ExportJob(model=str(run), data=DIGITS, export=ExportConfig(latency_runs=3, calibration_images=32)))
    return run


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Digits test images as PNG files of other sizes than the stored 8 px (so predict has to resize and crop)."""
    from fm2edge.data import load_data

    _, _, test = load_data(DIGITS)
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(40):
        img = Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).resize((24 + i % 3 * 4, 24), Image.NEAREST)
        img.save(folder / f"{i:02d}-{test.class_names[test.labels[i]]}.png")
    return folder, [test.class_names[y] for y in test.labels[:40]]


def test_the_exported_graph_takes_uint8_images_and_says_so(exported):
    meta = json.loads((exported / "export" / "export.json").read_text())
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["batch", 32, 32, 3]
    assert meta["input"]["output"]["name"] == "probabilities"
    sess = open_session(exported / "export" / "model.onnx")
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("images", "tensor(uint8)")]
    probs = sess.run(None, {"images": np.zeros((3, 32, 32, 3), np.uint8)})[0]
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["class_names"]) == [str(i) for i in range(10)]


def test_predict_files_through_pytorch_and_onnx_agree(exported, pngs, tmp_path, capsys):
    folder, truth = pngs
    out = {}
    for backend in ("torch", "onnx"):
        path = tmp_path / f"{backend}.csv"
        assert main(["predict", str(exported), str(folder), "--predict.backend", backend, "--predict.top_k", "3",
                     "--predict.output", str(path)]) == 0
        with open(path) as f:
            out[backend] = list(csv.DictReader(f))
    assert len(out["torch"]) == 40
    assert [r["class_1"] for r in out["torch"]] == [r["class_1"] for r in out["onnx"]]
    for a, b in zip(out["torch"], out["onnx"], strict=True):
        assert abs(float(a["probability_1"]) - float(b["probability_1"])) <= 1e-4
    assert np.mean([r["class_1"] == t for r, t in zip(out["torch"], truth, strict=True)]) >= 0.6  # chance: 0.1
    assert "at or above confidence" not in capsys.readouterr().out  # no --predict.min_confidence: every one is sure

    files = sorted(folder.glob("*.png"))
    a = fm2edge.load(exported).predict(files)
    b = fm2edge.load(exported / "export" / "model.onnx").predict(files)
    assert a.labels == b.labels and float(np.abs(a.probabilities - b.probabilities).max()) <= 1e-4
    # the same answers for a PIL image and a uint8 array as for the file
    one = fm2edge.load(exported)
    pil = Image.open(files[0])
    for image in (pil, np.asarray(pil.convert("RGB")), torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0,
                                                                                                            1)):
        assert np.allclose(one.predict(image).probabilities, a.probabilities[:1], atol=1e-6)


def test_an_any_size_graph_resizes_inside_and_agrees_with_pytorch(digits_run, pngs, tmp_path):
    """--export.resize_inside: the graph takes photos of any size and does the model's own antialiased resize and
    crop; on PNG files of several sizes it gives PyTorch's probabilities (which resize before the model)."""
    run = tmp_path / "cnn"
    shutil.copytree(digits_run, run)
    result = export_job(ExportJob(model=str(run), data=DIGITS,
                                  export=ExportConfig(latency_runs=3, int8=False, resize_inside=True)))
    assert result["files"]["onnx_fp32_any_size"] == "model.any_size.onnx"
    parity = result["any_size_parity"]  # digits are stored at 8 px: whole-factor upscaling hits ties at .5
    assert parity["max_pixel_diff"] <= 1 and parity["pixels_off_by_one"] < 0.01 and parity["top1_agreement"] == 1
    graph = run / "export" / "model.any_size.onnx"
    sess = open_session(graph)
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["input"])
    assert meta["shape"] == ["batch", "height", "width", 3] and "inside the graph" in meta["resize"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    files = sorted(pngs[0].glob("*.png"))  # 24 x 24, 24 x 28 and 24 x 32 pixels
    a = fm2edge.load(run).predict(files)
    b = fm2edge.load(graph).predict(files)
    # the resized pixels may differ by one level where rounding ties (above; PyTorch's uint8 resize kernels differ
    # between AVX2 and AVX-512): 1.04e-4 in probability measured on an AVX2 CPU, so 3e-4
    assert a.labels == b.labels and float(np.abs(a.probabilities - b.probabilities).max()) <= 3e-4
    big = np.asarray(Image.open(files[0]).convert("RGB").resize((300, 220)))
    assert np.abs(fm2edge.load(graph).predict(big).probabilities - fm2edge.load(run).predict(big).probabilities
                  ).max() <= 3e-4


def test_pseudo_labels_are_a_dataset_train_reads(exported, pngs, tmp_path, capsys):
    from fm2edge.data import load_data

    folder, _ = pngs
    result = fm2edge.run_stage("predict", {"model": str(exported), "inputs": [str(folder)],
                                           "predict": {"min_confidence": 0.5, "pseudo_labels": str(tmp_path / "pl")}})
    sure = result["probabilities"].max(1) >= 0.5
    assert f"; {int(sure.sum())} at or above confidence 0.5" in capsys.readouterr().out
    train, val, test = load_data(DataConfig(source=str(tmp_path / "pl"), test_fraction=0.25, val_fraction=0))
    assert len(train) + len(test) == int(sure.sum())
    assert train.class_names == [str(i) for i in range(10)]


@pytest.mark.parametrize("kind", ["pseudo-labels", "files"])
def test_autolabelled_or_plain_image_files_are_an_unlabelled_source_for_distill(kind, exported, pngs, tmp_path):
    from fm2edge.config import DistillConfig, DistillJob, ModelConfig, RunConfig, TrainConfig
    from fm2edge.distill.task import distill_job

    folder, _ = pngs
    source = str(folder)
    if kind == "pseudo-labels":
        source = str(tmp_path / "pl")
        fm2edge.run_stage("predict", {"model": str(exported), "inputs": [str(folder)],
                                      "predict": {"min_confidence": 0.0, "pseudo_labels": source}})
    job = DistillJob(data=DIGITS, model=ModelConfig(name="student:small_cnn"),
                     train=TrainConfig(epochs=1, batch_size=32, device="cpu"),
                     distill=DistillConfig(teacher=str(exported), unlabeled_source=source),
                     run=RunConfig(root=str(tmp_path), name="d"))
    metrics = distill_job(job)
    assert metrics["unlabelled_images"] == 40, "every image of the source, labels or none"
    assert metrics["labelled_images"] == 400 - int(400 * 0.1)  # the labelled split as before (10% validation)


def test_a_folder_with_broken_photos_is_classified_without_them(exported, pngs, tmp_path, capsys):
    """One truncated photo among many is skipped with its reason (the batch holding it classified image by image);
    the others get the answers they get without it."""
    folder, _ = pngs
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    good = sorted(mixed.glob("*.png"))
    (mixed / "15-broken.png").write_bytes(good[0].read_bytes()[:60])  # a truncated copy, sorted into a batch
    out = tmp_path / "p.csv"
    assert main(["predict", str(exported), str(mixed), "--predict.output", str(out), "--predict.batch_size", "8"]) == 0
    said = capsys.readouterr().out
    assert f"skipped 1 unreadable image: cannot read image '{mixed / '15-broken.png'}'" in said
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(f) for f in good]
    alone = fm2edge.load(exported).predict(good).labels
    assert [r["class_1"] for r in rows] == alone


@pytest.mark.parametrize("argv,match", [
    (["predict", "RUN"], "give image files"),
    (["predict", "RUN", "no/such/*.png"], "names no image files"),
    (["predict", "RUN", "PNGS", "--predict.output", "x.txt"], "must end in .csv or .jsonl"),
    (["predict", "no/such/run", "PNGS"], "model.json missing"),
    (["predict", "RUN", "BAD"], "cannot read image"),
])
def test_predict_bad_input_is_one_line(argv, match, exported, pngs, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    argv = [a.replace("RUN", str(exported)).replace("PNGS", str(pngs[0])).replace("BAD", str(bad)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_a_run_is_a_pretrained_folder_with_a_model_card(exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fm2edge") and "test accuracy" in card and "fm2edge.load" in card
    model = fm2edge.from_pretrained(exported)
    assert model.num_classes == 10 and model.preprocess.size == 32


@pytest.mark.network
def test_push_to_hub_and_back(exported):  # needs network and a token (HF_TOKEN); skipped by default
    import os

    from fm2edge.models.io import push_to_hub

    repo = os.environ.get("FM2EDGE_TEST_REPO", "fm2edge-test/digits-cnn")
    push_to_hub(exported, repo)
    assert fm2edge.from_pretrained(repo).num_classes == 10


def test_a_folder_that_ships_a_graph_predicts_through_it(exported, pngs, tmp_path, capsys):
    """`fm2edge auto`'s best/ holds its chosen graph at its top: predict and fm2edge.load run that graph (the one its
    test accuracy was read through) unless told --predict.backend torch."""
    best = tmp_path / "best"
    shutil.copytree(exported, best, ignore=shutil.ignore_patterns("export"))
    graph = best / "model.int8.onnx"  # its metadata holds ONNX Runtime's quantiser marks beside fm2edge's
    shutil.copy2(exported / "export" / "model.int8.onnx", graph)
    assert fm2edge.load(exported).backend == "torch"  # an ordinary run folder: PyTorch
    shipped = fm2edge.load(best)
    assert shipped.backend == "onnx" and shipped.source == str(graph)
    assert fm2edge.load(best, backend="onnx").source == str(graph)
    assert fm2edge.load(best, backend="torch").backend == "torch"
    folder, _ = pngs
    files = sorted(folder.glob("*.png"))
    assert shipped.predict(files).labels == fm2edge.load(exported / "export" / "model.int8.onnx").predict(files).labels
    assert main(["predict", str(best), str(folder), "--predict.output", str(tmp_path / "p.csv")]) == 0
    assert "onnx" in capsys.readouterr().out
    assert main(["predict", str(best), str(files[0])]) == 0
    out = capsys.readouterr().out
    assert "classifying 1 image with" in out and "\n1 image, per class" in out  # one image is not "1 images"


def test_without_onnx_runtime_a_folder_that_ships_a_graph_predicts_with_its_weights(exported, tmp_path, monkeypatch,
                                                                                     caplog):
    import importlib.util

    best = tmp_path / "best"
    shutil.copytree(exported, best, ignore=shutil.ignore_patterns("export"))
    shutil.copy2(exported / "export" / "model.onnx", best / "model.onnx")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with caplog.at_level("WARNING"):
        assert fm2edge.load(best).backend == "torch"
    assert "needs ONNX Runtime" in caplog.text
