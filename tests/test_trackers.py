"""Experiment trackers read back: MLflow against a local file store and W&B in offline mode receive the run's whole
config, every epoch's metrics and the stage's summary; stages without epochs (probe, export, bench) log their
summaries; TensorBoard keeps the config beside the events."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import yaml

from fm2edge.cli import main
from fm2edge.runs import flat_values

pytest.importorskip("mlflow")
TRAIN = ["train", "--data.source", "digits", "--data.max_train", "300", "--data.max_test", "100",
         "--model.name", "student:small_cnn", "--train.epochs", "2", "--train.device", "cpu"]


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """A local MLflow file store, and a client that reads it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    from mlflow.tracking import MlflowClient

    return MlflowClient((tmp_path / "mlruns").as_uri())


def mlflow_run(client, name: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def config_of(run: Path) -> dict:
    return flat_values(yaml.safe_load((run / "config.yaml").read_text()), numbers_only=False)


def test_mlflow_gets_the_config_every_epoch_and_the_summary(tmp_path, mlflow_store):
    assert main([*TRAIN, "--run.log_with", "mlflow", "--run.root", str(tmp_path), "--run.name", "m"]) == 0
    run = mlflow_run(mlflow_store, "m")
    config = config_of(tmp_path / "m")
    assert len(config) > 40 and run.data.params["train.epochs"] == "2"
    assert {k: str(v) for k, v in config.items()} == run.data.params  # the whole config, each key
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    history = mlflow_store.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(e["epoch"], pytest.approx(e["val_acc"]))
                                                    for e in metrics["history"]]
    for key in ("train_loss", "lr", "images_per_s"):
        assert len(mlflow_store.get_metric_history(run.info.run_id, key)) == 2, key
    assert run.data.metrics["summary/test_acc"] == pytest.approx(metrics["test_acc"])
    assert run.data.metrics["summary/selected.epoch"] == metrics["selected"]["epoch"]


def test_mlflow_without_a_tracking_uri_writes_a_store_beside_the_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    import mlflow

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # forget earlier tests' URI
    assert main([*TRAIN, "--train.epochs", "1", "--run.log_with", "mlflow", "--run.root", str(tmp_path),
                 "--run.name", "m"]) == 0
    assert list((tmp_path / "mlruns").rglob("val_acc")), "the epoch's metrics in ROOT/mlruns"


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records: 32 KiB blocks, each record
    a 7-byte header of checksum, length and type). W&B's own Python reader for it is gone from its package, so
    these few lines read it for the test."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, out, buf = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_gets_the_config_every_epoch_and_the_summary(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([*TRAIN, "--run.log_with", "wandb", "--run.root", str(tmp_path), "--run.name", "w"]) == 0
    (file,) = (tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(file)
    # W&B writes config changes as config records; a run record carries config too, so both count (one CI run on a
    # busy machine found none of the config in the file, and 11 runs since, idle and busy, found it all)
    updates = [r.config.update if r.WhichOneof("record_type") == "config" else r.run.config.update for r in records
               if r.WhichOneof("record_type") in ("config", "run")]
    logged = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for update in updates for i in update}
    config = config_of(tmp_path / "w")
    kinds = [r.WhichOneof("record_type") for r in records]
    assert set(config) <= set(logged), f"config keys missing from the W&B file; its records: {kinds}"
    assert {k: logged[k] for k in config} == config
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert [h["_step"] for h in history] == [1, 2]
    assert [h["val_acc"] for h in history] == pytest.approx([e["val_acc"] for e in metrics["history"]])
    assert history[-1]["summary/test_acc"] == pytest.approx(metrics["test_acc"])


def test_tensorboard_keeps_the_config_beside_the_events(tmp_path):
    pytest.importorskip("tensorboardX")
    assert main([*TRAIN, "--train.epochs", "1", "--run.log_with", "tensorboard", "--run.root", str(tmp_path),
                 "--run.name", "t"]) == 0
    (hparams,) = (tmp_path / "t" / "logs").rglob("hparams.yml")
    assert yaml.safe_load(hparams.read_text())["train.epochs"] == 1
    events = b"".join(p.read_bytes() for p in (tmp_path / "t" / "logs").rglob("events.out.tfevents.*"))
    assert b"summary/test_acc" in events and b"val_acc" in events


def test_probe_export_and_bench_log_their_summaries(tmp_path, mlflow_store, digits_run, tiny_dinov2, parquet_dir,
                                                    monkeypatch):
    from fm2edge import run_stage

    probe = run_stage("probe", {"data": {"source": str(parquet_dir)}, "model": {"name": f"hf:{tiny_dinov2}"},
                                "probe": {"methods": ["logreg"], "label_counts": [], "poolings": []},
                                "run": {"root": str(tmp_path), "name": "p", "log_with": "mlflow"}})
    assert mlflow_run(mlflow_store, "p").data.metrics["summary/probes.logreg.test_acc"] == pytest.approx(
        probe["probes"]["logreg"]["test_acc"])

    run = tmp_path / "cnn"
    shutil.copytree(digits_run, run)
    export = run_stage("export", {"model": str(run), "data": {"source": "digits", "max_train": 400, "max_test": 200},
                                  "export": {"latency_runs": 3, "calibration_images": 32, "log_with": "mlflow"}})
    logged = mlflow_run(mlflow_store, "cnn-export").data
    assert logged.metrics["summary/test_acc.onnx_int8"] == pytest.approx(export["test_acc"]["onnx_int8"])
    assert logged.metrics["summary/parity_max_abs_diff"] == pytest.approx(export["parity_max_abs_diff"])
    assert "summary/latency_batch1.onnx_fp32.p50_ms" in logged.metrics and logged.params["export.int8"] == "True"

    monkeypatch.chdir(tmp_path)
    bench = run_stage("bench", {"models": [str(run)], "bench": {"runs": 5, "warmup": 1, "throughput_runs": 1,
                                                                "throughput_batch": 4, "log_with": "mlflow"}})
    logged = mlflow_run(mlflow_store, "bench").data
    assert logged.metrics["summary/cnn/cpu/eager/fp32.p50_ms"] == pytest.approx(bench["rows"][0]["p50_ms"])
