from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DIGITS_SMALL

from fm2edge.cli import main
from fm2edge.config import DataConfig, ExportConfig, ExportJob
from fm2edge.errors import Fm2EdgeError
from fm2edge.export import export_job, graph_latency, open_session, run_images

DIGITS = DataConfig(**DIGITS_SMALL)


@pytest.fixture(scope="module")
def trained(digits_run):
    return digits_run


def fast(**kw) -> ExportConfig:
    return ExportConfig(**{"latency_runs": 5, "calibration_images": 64, **kw})


def int8_weights(path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return np.concatenate([numpy_helper.to_array(t).ravel().astype(np.int32) for t in graph.initializer
                           if t.data_type == onnx.TensorProto.INT8])


def test_int8_weights_keep_to_7_bits_where_the_cpu_saturates_or_when_asked(trained, tmp_path):
    from fm2edge.device import int8_saturates

    seven = export_job(ExportJob(model=str(trained), data=DIGITS, export=fast(reduce_range=True),
                                 output=str(tmp_path / "seven")))
    eight = export_job(ExportJob(model=str(trained), data=DIGITS, export=fast(reduce_range=False),
                                 output=str(tmp_path / "eight")))
    assert seven["reduce_range"] is True and eight["reduce_range"] is False
    assert np.abs(int8_weights(tmp_path / "seven" / "model.int8.onnx")).max() <= 64
    assert np.abs(int8_weights(tmp_path / "eight" / "model.int8.onnx")).max() >= 127  # the full range
    default = export_job(ExportJob(model=str(trained), data=DIGITS, export=fast(), output=str(tmp_path / "auto")))
    assert default["reduce_range"] is int8_saturates()


@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("fp32_layers", ["none", "first_last"])
def test_vectorised_weight_scales_write_the_graph_onnxruntime_writes(tmp_path, reduce_range, fp32_layers):
    """The convolutions' per-channel weight scales computed in one pass per weight and handed to onnxruntime give
    the int8 graph its quantiser writes when it computes them channel by channel: every node and every initializer
    identical, a channel of zeros (its scale 1, as onnxruntime sets it) included."""
    import onnx
    from onnx import numpy_helper

    from fm2edge.config import ModelConfig
    from fm2edge.export import export_deployable, quantize_int8
    from fm2edge.models import create_model

    torch.manual_seed(0)
    model = create_model(ModelConfig(name="student:small_cnn", image_size=32), 10).eval()
    second = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]  # quantised in both layouts
    with torch.no_grad():
        second.weight[3].zero_()
    fp32 = export_deployable(model, tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    graphs = {}
    for scales in ("onnxruntime", "vectorised"):
        batches = (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for _ in range(2))
        rng = np.random.default_rng(0)  # the same calibration images for both
        path = quantize_int8(fp32, tmp_path / f"{scales}.onnx", batches, input_name="images",
                             fp32_layers=fp32_layers, reduce_range=reduce_range, weight_scales=scales)
        graphs[scales] = onnx.load(str(path)).graph
    ours, theirs = graphs["vectorised"], graphs["onnxruntime"]
    assert [n.SerializeToString() for n in ours.node] == [n.SerializeToString() for n in theirs.node]
    mine = {t.name: numpy_helper.to_array(t) for t in ours.initializer}
    assert len(mine) == len(theirs.initializer) and sum(t.data_type == onnx.TensorProto.INT8 for t in
                                                        theirs.initializer) >= 3
    for t in theirs.initializer:
        expected = numpy_helper.to_array(t)
        assert mine[t.name].dtype == expected.dtype and np.array_equal(mine[t.name], expected), t.name
    assert any(a.dtype == np.float32 and a.ndim == 1 and 1.0 in a for n, a in mine.items() if "scale" in n)


def test_export_fp32_and_int8_with_parity_and_accuracy(trained, tmp_path):
    out = tmp_path / "export"
    result = export_job(ExportJob(model=str(trained), data=DIGITS, export=fast(), output=str(out)))
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.int8.onnx", "export.json"}
    assert result["parity_max_abs_diff"] <= 1e-4
    acc = result["test_acc"]
    assert acc["pytorch_fp32"] == pytest.approx(acc["onnx_fp32"], abs=1 / 120)
    assert acc["onnx_fp32"] > 0.5  # trained: far above the 10% of chance
    assert 0 <= acc["onnx_int8"] <= 1 and result["int8_agreement_with_fp32"] > 0.8
    assert result["size_bytes"]["onnx_int8"] < result["size_bytes"]["onnx_fp32"] / 2
    assert result["calibration_images"] == 64
    for key in ("pytorch_fp32", "onnx_fp32", "onnx_int8"):
        lat = result["latency_batch1"][key]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert json.loads((out / "export.json").read_text())["test_acc"] == acc
    # a graph timed again as its export timed it (auto does so where two timings of one graph disagree)
    again = graph_latency(out / "model.int8.onnx", None, 10)
    assert 0 < again["quiet_p50_ms"] <= again["p50_ms"] and again["runs"] == 10 and "busy" in again
    # dynamic batch axis: the files run at batch sizes other than the export example's
    for name in ("model.onnx", "model.int8.onnx"):
        sess = open_session(out / name)
        for n in (1, 5):
            assert run_images(sess, np.zeros((n, 32, 32, 3), np.uint8)).shape == (n, 10)


def test_parity_failure_leaves_nothing_behind(trained, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(Fm2EdgeError, match="differ from PyTorch"):
        export_job(ExportJob(model=str(trained), data=DIGITS, export=fast(parity_tolerance=1e-12, int8=False),
                             output=str(out)))
    assert not out.exists() and not list(tmp_path.glob(".export*"))


def test_int8_drop_above_threshold_warns(trained, tmp_path, capsys):
    export_job(ExportJob(model=str(trained), data=DIGITS, export=fast(max_int8_drop=-101.0),
                         output=str(tmp_path / "e")))
    assert "warning: int8 loses" in capsys.readouterr().out


def test_export_cli_positional_and_default_folder(trained):
    rc = main(["export", str(trained), "--data.source", "digits", "--data.max_train", "200", "--data.max_test",
               "50", "--export.int8", "false", "--export.latency_runs", "3"])
    assert rc == 0
    assert json.loads((trained / "export" / "export.json").read_text())["files"] == {"onnx_fp32": "model.onnx"}


@pytest.mark.parametrize("argv,match", [
    (["export"], "give the run folder"),
    (["export", "no/such/run"], "model.json missing"),
    (["export", "RUN", "--export.calibration_method", "median"], "median"),
    (["export", "RUN", "--data.source", "PARQUET"], "predicts 10 classes"),
])
def test_export_bad_input_is_one_line(argv, match, trained, parquet_dir, capsys):
    argv = [a.replace("RUN", str(trained)).replace("PARQUET", str(parquet_dir)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_histogram_calibration_and_fp32_end_layers(trained, tmp_path):
    import onnx

    from fm2edge.export import first_and_last_layers

    counts = {}
    for keep in ("none", "first_last"):
        # 70 calibration images: a smaller last batch, which percentile calibration takes as each batch is its own
        result = export_job(ExportJob(model=str(trained), data=DIGITS, output=str(tmp_path / keep),
                                      export=fast(calibration_method="percentile", fp32_layers=keep,
                                                  calibration_images=70)))
        assert result["calibration_images"] == 70 and result["test_acc"]["onnx_int8"] > 0.5
        graph = onnx.load(str(tmp_path / keep / "model.int8.onnx")).graph
        counts[keep] = sum(n.op_type == "DequantizeLinear" for n in graph.node)
        fp32_names = first_and_last_layers(tmp_path / keep / "model.onnx")
        assert len(fp32_names) == 4  # the stem, the classifier, and the pooling and flattening that feed it
    assert counts["first_last"] < counts["none"], "the first and last layers are left unquantised"


def test_calibration_collected_batch_by_batch_finds_the_ranges_of_all_images_at_once(tmp_path):
    """Each calibration batch is collected on its own and the ranges merged (what keeps the histogram calibrators'
    memory to one batch): min-max ranges are then those of every image in one batch, scale for scale."""
    import onnx
    from onnx import numpy_helper

    from fm2edge.export import quantize_int8

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, input_names=["pixels"],
                      dynamic_axes={"pixels": {0: "batch"}})
    x = np.random.default_rng(0).normal(size=(9, 3, 16, 16)).astype(np.float32)
    x[7] *= 5  # one image widens every range: its batch must count
    scales = {}
    for name, batches in {"one": [x], "split": [x[:4], x[4:8], x[8:]]}.items():
        graph = onnx.load(str(quantize_int8(path, tmp_path / f"{name}.onnx", iter(batches), fp32_layers="none",
                                            reduce_range=False))).graph
        scales[name] = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_scale")}
    assert scales["one"] and scales["one"].keys() == scales["split"].keys()
    for key, value in scales["one"].items():
        np.testing.assert_allclose(scales["split"][key], value, rtol=1e-6)


def test_large_inputs_are_exported_in_smaller_batches():
    """Batches of the export's graphs hold at most BATCH_PIXELS (memory grows with them): the asked-for batch at
    small inputs, fewer images at large ones, never none."""
    from types import SimpleNamespace

    from fm2edge.export import BATCH_PIXELS, batch_for

    def model(size):
        return SimpleNamespace(preprocess=SimpleNamespace(size=size))

    assert batch_for(model(32), 256) == 256
    assert batch_for(model(224), 64) == 8 and batch_for(model(224), 4) == 4
    assert batch_for(model(4096), 64) == 1
    for size in (64, 96, 128, 160, 224, 384):
        assert batch_for(model(size), 10_000) * size ** 2 <= BATCH_PIXELS


def test_the_fp32_end_layers_keep_the_classifier_input_unrounded(tmp_path):
    """The "first_last" layout keeps the first layer, the classifier and the pooling that feeds it in fp32: a
    quantised classifier input made a Lite0 student with large classifier weights answer one class for every image."""
    import onnx

    from fm2edge.export import first_and_last_layers

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False)
    nodes = onnx.load(str(path)).graph.node
    kept = {n.op_type for n in nodes if n.name in first_and_last_layers(path)}
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    assert kept == {"Conv", "GlobalAveragePool", "Flatten", "Gemm"}
    assert convs[0] in first_and_last_layers(path) and convs[1] not in first_and_last_layers(path)
