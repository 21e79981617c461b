"""`fm2edge export`: a trained classifier as ONNX (dynamic batch) and int8 ONNX, each checked against PyTorch.

The deployment end of the lifecycle. The graphs take uint8 RGB images (N, H, W, 3) at the model's input size and
return probabilities: normalisation and softmax are inside (:class:`~fm2edge.models.deploy.ImageClassifier`), and
the class names and preprocessing are in the file's metadata. The fp32 graph must reproduce PyTorch's probabilities
within a tolerance or the export
fails; the int8 graph is statically quantised with ONNX Runtime's own tooling (``quant_pre_process`` then
``quantize_static``, QDQ format, per-channel weights) from calibration images of the training split, and its test
accuracy is reported beside fp32's, with a warning when it loses more than a threshold. Nothing is written unless
every check passes: the export folder appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import platform
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fm2edge.config import DataConfig, ExportConfig, ExportJob
from fm2edge.errors import Fm2EdgeError
from fm2edge.report.metrics import Difference, accuracy, balanced_accuracy, paired_difference
from fm2edge.timing import latency_with_noise

# ---------------------------------------------------------------- ONNX building blocks (shared with `fm2edge bench`)


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Fm2EdgeError("ONNX export needs onnx and onnxruntime: pip install 'fm2edge[export]'") from exc
    return ort


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """``model`` (normalised float NCHW in, logits out) as ONNX with a dynamic batch axis, at ``example``'s height
    and width (its "same" padding fixed for them: :func:`fm2edge.models.static.with_fixed_padding`)."""
    from fm2edge.models.static import with_fixed_padding

    _ort()
    model = with_fixed_padding(model.eval().float(), tuple(example.shape[-2:]))
    with warnings.catch_warnings():  # the tracer's notes on shape checks it freezes are expected at a fixed size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # a fixed padding's reversed slice
        torch.onnx.export(model, (example.float(),), str(path), input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    return path


def open_session(path: Path, threads: int | None = None, cuda: bool = False):
    """An ONNX Runtime session on the CPU, or on CUDA (with the CPU for the ops CUDA lacks)."""
    ort = _ort()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


def run_session(sess, x: np.ndarray | torch.Tensor) -> np.ndarray:
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return sess.run(None, {"pixels": np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_deployable(model, path: Path, opset: int = 17, metadata: dict | None = None,
                      fixed_padding: bool = True) -> Path:
    """``model`` as shipped (:class:`~fm2edge.models.deploy.ImageClassifier`: uint8 NHWC images in, probabilities
    out) as ONNX with a dynamic batch axis (its "same" padding fixed for its input size:
    :func:`fm2edge.models.static.with_fixed_padding`; ``fixed_padding=False`` keeps it computed from the input, for
    comparison); ``metadata`` (class names, preprocessing) goes into the file's
    metadata_props, so the .onnx describes itself."""
    import json

    import onnx

    from fm2edge.models.deploy import ImageClassifier
    from fm2edge.models.static import with_fixed_padding

    _ort()
    model = model.float().eval()
    wrapped = ImageClassifier(with_fixed_padding(model, model.preprocess.size) if fixed_padding else model).eval()
    example = torch.zeros(2, wrapped.size, wrapped.size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # a fixed padding's reversed slice
        torch.onnx.export(wrapped, (example,), str(path), input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    if metadata:
        graph = onnx.load(str(path))
        onnx.helper.set_model_props(graph, {k: json.dumps(v) for k, v in metadata.items()})
        onnx.save(graph, str(path))
    return path


def resize_graph(preprocess, opset: int = 18, ir_version: int | None = None):
    """An ONNX graph doing :meth:`~fm2edge.models.preprocess.Preprocess.resize` for uint8 RGB images of any size
    (N x H x W x 3, one size a batch): shortest edge to the model's resize size (antialiased, PIL's bicubic
    kernel or bilinear), centre crop, rounded to uint8 pixels, output "pixels" (N x size x size x 3).

    Written as ONNX nodes (opset 18: Resize with antialias): the TorchScript exporter has no antialiased resize,
    and the dynamo exporter cannot trace a size computed from the input's shape."""
    from onnx import TensorProto, helper, numpy_helper

    size, short = preprocess.size, preprocess.resize_size()
    cubic = preprocess.interpolation == "bicubic"
    ints = {"two_four_s": [2], "two_four_e": [4], "zero_two_s": [0], "zero_two_e": [2], "sixth": [2, 3],
            "size_i": [size, size], "two": 2}
    floats = {"short": [float(short)], "lo": 0.0, "one": 1.0, "hi": 255.0}
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in ints.items()]
    inits += [numpy_helper.from_array(np.array(v, dtype=np.float32), k) for k, v in floats.items()]
    n = helper.make_node
    nodes = [
        # the same float steps as Preprocess.resize (to 0-1, resize, clamp, back to 0-255, round)
        n("Cast", ["images"], ["f255"], to=TensorProto.FLOAT),
        n("Div", ["f255", "hi"], ["f"]),
        n("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        n("Shape", ["nchw"], ["shape"]),
        n("Slice", ["shape", "two_four_s", "two_four_e"], ["hw"]),
        n("Cast", ["hw"], ["hw_f"], to=TensorProto.FLOAT),
        n("ReduceMin", ["hw_f"], ["edge"], keepdims=1),
        n("Div", ["short", "edge"], ["scale"]),
        n("Mul", ["hw_f", "scale"], ["new_f"]),
        n("Round", ["new_f"], ["new_r"]),
        n("Max", ["new_r", "short"], ["new_m"]),  # as Preprocess: max(short, round(side * scale))
        n("Cast", ["new_m"], ["new_hw"], to=TensorProto.INT64),
        n("Slice", ["shape", "zero_two_s", "zero_two_e"], ["nc"]),
        n("Concat", ["nc", "new_hw"], ["sizes"], axis=0),
        n("Resize", ["nchw", "", "", "sizes"], ["resized"], mode="cubic" if cubic else "linear", antialias=1,
          cubic_coeff_a=-0.5, exclude_outside=1, coordinate_transformation_mode="half_pixel"),
        n("Clip", ["resized", "lo", "one"], ["unit"]) if cubic else n("Identity", ["resized"], ["unit"]),
        n("Sub", ["new_hw", "size_i"], ["spare"]),
        n("Div", ["spare", "two"], ["starts"]),
        n("Add", ["starts", "size_i"], ["ends"]),
        n("Slice", ["unit", "starts", "ends", "sixth"], ["crop"]),
        n("Mul", ["crop", "hi"], ["crop255"]),
        n("Round", ["crop255"], ["rounded"]),
        n("Clip", ["rounded", "lo", "hi"], ["clipped"]),
        n("Cast", ["clipped"], ["pixels_nchw"], to=TensorProto.UINT8),
        n("Transpose", ["pixels_nchw"], ["pixels"], perm=[0, 2, 3, 1]),
    ]
    used = {i for node in nodes for i in node.input}
    graph_in = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", "height", "width", 3])
    graph_out = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", size, size, 3])
    graph = helper.make_graph(nodes, "resize", [graph_in], [graph_out], [i for i in inits if i.name in used])
    extra = {"ir_version": ir_version} if ir_version else {}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **extra)


def graph_metadata(session) -> dict:
    """What :func:`export_deployable` wrote into a graph's metadata (JSON values), read from an ONNX Runtime
    session; entries other tools add are left out (ONNX Runtime's quantiser marks its passes with plain strings,
    such as ``onnx.quant.pre_process``)."""
    import json

    meta = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            continue
    return meta


def with_resize_inside(graph: Path, out: Path, preprocess) -> Path:
    """The deployable graph behind :func:`resize_graph`: uint8 RGB images of any size in (one size a batch),
    probabilities out; joined with ``onnx.compose``, metadata kept and its input description updated."""
    import json

    import onnx
    from onnx import compose, version_converter

    main = onnx.load(str(graph))
    meta = {p.key: p.value for p in main.metadata_props}
    opset = max(18, next(o.version for o in main.opset_import if o.domain in ("", "ai.onnx")))
    resize = resize_graph(preprocess, opset, main.ir_version)
    main = version_converter.convert_version(main, opset) if opset != main.opset_import[0].version else main
    main = compose.add_prefix(main, "model/")
    merged = compose.merge_models(resize, main, io_map=[("pixels", "model/images")])
    for node in merged.graph.node:  # keep the output's name
        node.output[:] = ["probabilities" if o == "model/probabilities" else o for o in node.output]
    merged.graph.output[0].name = "probabilities"
    described = json.loads(meta.get("input", "{}"))
    cubic = preprocess.interpolation == "bicubic"
    meta["input"] = json.dumps({**described, "shape": ["batch", "height", "width", 3],
                                "resize": f"inside the graph: shortest edge to {preprocess.resize_size()} px "
                                          f"({'bicubic' if cubic else 'bilinear'}, antialiased), centre crop "
                                          f"{preprocess.size} x {preprocess.size}; one image size per batch"})
    meta["resize_inside"] = "true"
    onnx.helper.set_model_props(merged, meta)
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))
    return out


def any_size_parity(deployable, path: Path, test, cfg: ExportConfig) -> dict:
    """The any-size graph against PyTorch on the test images as they are stored (resized by
    :meth:`Preprocess.resize` for PyTorch): the largest pixel and probability differences. Float rounding may move
    a pixel that lands exactly between two values by 1 (upscaling small images by whole factors does that); a
    larger difference is an error."""
    import onnxruntime as ort

    pre = deployable.model.preprocess
    raw = test.images[:256]
    nhwc = raw.permute(0, 2, 3, 1).contiguous().numpy()
    pixels = ort.InferenceSession(resize_graph(pre).SerializeToString(), providers=["CPUExecutionProvider"])
    ours = pixels.run(None, {"images": nhwc})[0].astype(np.int16)
    theirs = pre.resize(raw).permute(0, 2, 3, 1).numpy().astype(np.int16)
    off = np.abs(ours - theirs)
    with torch.inference_mode():
        ref = deployable(torch.from_numpy(theirs.astype(np.uint8))).numpy()
    got = run_images(open_session(path, cfg.threads), nhwc)
    result = {"max_pixel_diff": int(off.max()), "pixels_off_by_one": float((off == 1).mean()),
              "max_probability_diff": float(np.abs(got - ref).max()),
              "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
    if result["max_pixel_diff"] > 1:
        raise Fm2EdgeError(f"the any-size ONNX graph resizes differently from PyTorch (pixels differ by up to "
                           f"{result['max_pixel_diff']}); export without --export.resize_inside and resize before "
                           f"the graph")
    return result


def run_images(sess, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Probabilities from a deployable graph for uint8 images (N, H, W, 3)."""
    images = images.numpy() if isinstance(images, torch.Tensor) else images
    return sess.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})[0]


WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
# weight-free nodes between a backbone's last activation and its classifier (global pooling, flattening)
HEAD_FEEDERS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze")


def first_and_last_layers(path: Path) -> list[str]:
    """Names of the nodes kept in fp32 by the "first_last" layout: the first Conv / MatMul / Gemm node of an ONNX
    graph (in graph order), the last one, and the pooling and flattening nodes that feed the last one.

    The last layer's input stays fp32 too, not only its weights: a quantised input rounds every pooled feature to
    1/255 of its calibrated range before the classifier, and a classifier with large weights turns that into the
    answer (a Lite0 student on 28 px grey product photos predicted one class for every image that way, 10% on
    validation against its fp32 graph's 80%; with the pooled features in fp32 the rounding of the last activation is
    averaged over the pooled positions instead)."""
    import onnx

    graph = onnx.load(str(path)).graph
    weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
    if not weighted:
        return []
    producer = {o: n for n in graph.node for o in n.output}
    keep = {weighted[0].name, weighted[-1].name}
    node = producer.get(weighted[-1].input[0])
    while node is not None and node.op_type in HEAD_FEEDERS:
        keep.add(node.name)
        node = producer.get(node.input[0])
    return sorted(keep)


def conv_weight_scales(path: Path, exclude: list[str], reduce_range: bool) -> dict[str, list[dict]]:
    """The per-channel int8 scales and zero points of the weights of every convolution of the graph at ``path`` not
    in ``exclude``, as onnxruntime's ``TensorQuantOverrides``. Its quantiser computes them one output channel at a
    time in Python (42,000 calls, 5.9 of the 13.8 s measuring a Lite0 candidate took on a 2-core AVX2 EPYC); here
    each weight is one vectorised pass of its own formula (symmetric: zero point 0, scale the largest magnitude
    over half the int8 range, divided in float64 and stored in float32), so it writes the graph it would have
    written (tests/test_export.py compares the two)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    graph = onnx.load(str(path)).graph
    weights = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 3}
    uses = Counter(name for n in graph.node for name in n.input)
    qmin, qmax = (float(q) for q in get_qmin_qmax_for_qType(QuantType.QInt8.tensor_type, reduce_range,
                                                             symmetric=True))
    out = {}
    for n in graph.node:
        if n.op_type != "Conv" or n.name in exclude or len(n.input) < 2 or uses.get(n.input[1]) != 1 \
                or n.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[n.input[1]])
        flat = w.reshape(w.shape[0], -1)
        absmax = np.maximum(np.abs(np.minimum(flat.min(axis=1), 0)), np.maximum(flat.max(axis=1), 0))
        scale = (absmax.astype(np.float64) * 2) / (qmax - qmin)
        stored = np.where(scale < np.finfo(np.float32).tiny, 1.0, scale).astype(np.float32)
        out[n.input[1]] = [{"scale": sc, "zero_point": np.int8(0), **({"axis": 0} if i == 0 else {})}
                           for i, sc in enumerate(stored)]
    return out


def quantize_int8(fp32: Path, out: Path, batches: Iterator[np.ndarray], method: str = "minmax",
                  per_channel: bool = True, input_name: str = "pixels", fp32_layers: str = "first_last",
                  reduce_range: bool | None = None, weight_scales: Literal["vectorised", "onnxruntime"] = "vectorised",
                  progress: bool = True) -> Path:
    """Static int8 quantisation with ONNX Runtime: graph pre-processing, calibration on ``batches`` (fed to the
    graph's ``input_name`` as they are: float pixels, or uint8 images for a deployable graph), QDQ format.

    Activations are unsigned and weights signed 8-bit (the U8S8 pairing ONNX Runtime's x86 kernels run fastest);
    ``reduce_range`` keeps weights to 7 bits, for CPUs whose 8-bit kernels saturate (None: where this one does,
    see :func:`fm2edge.device.int8_saturates`); ``fp32_layers`` "first_last" leaves :func:`first_and_last_layers`
    in fp32 (see ExportConfig.fp32_layers), "none" quantises every layer it can. ``weight_scales``: "vectorised"
    hands the convolutions' per-channel weight scales over computed (:func:`conv_weight_scales`, the same graph in
    a fraction of the time), "onnxruntime" leaves them to the quantiser. ``progress``: a bar over the calibration
    batches (off inside work that shows its own).
    """
    from tqdm.auto import tqdm

    from fm2edge.device import int8_saturates

    _ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The batches one range at a time, for ONNX Runtime's strided calibration (``CalibStridedMinMax``, which
        serves every method): its histogram calibrators keep every activation of what one collection reads (16 GB for
        256 images of EfficientNet-Lite0 at 224 px), so each collection reads one batch and the histograms (or
        min-max ranges) merge between collections. Strided calibration came in onnxruntime 1.19, the floor in
        pyproject.toml."""

        def __init__(self) -> None:
            self.batches = [np.ascontiguousarray(b) for b in batches]  # uint8 images: 150 KB each at 224 px
            self.it = iter(self.batches)
            self.bar = tqdm(total=len(self.batches), desc="int8 calibration", unit="batch", leave=False,
                            disable=not progress)

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(self.batches[start_index:end_index])

        def get_next(self):
            b = next(self.it, None)
            if b is None:
                return None
            self.bar.update()
            return {input_name: b}

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    exclude = first_and_last_layers(pre) if fp32_layers == "first_last" else []
    reduce_range = int8_saturates() if reduce_range is None else reduce_range
    overrides = (conv_weight_scales(pre, exclude, reduce_range) if per_channel and weight_scales == "vectorised"
                 else {})
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # ONNX Runtime's quantiser logs a line per tensor on the root logger
    reader = Reader()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # and its histogram calibrators print theirs
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=exclude,
                            reduce_range=reduce_range,
                            extra_options={"CalibStridedMinMax": 1, "TensorQuantOverrides": overrides})
    finally:
        root.setLevel(level)
        reader.bar.close()
    pre.unlink()
    return out


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantisation with ONNX Runtime: weights of the matrix multiplies stored as int8 per channel,
    activations quantised on the fly per batch (no calibration). This is what speeds up transformers on CPUs with
    VNNI; convolutions are left in fp32 (ONNX Runtime's dynamic ConvInteger is slower than its fp32 Conv)."""
    _ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    pre.unlink()
    return out


# ---------------------------------------------------------------- the stage


# The most pixels one batch of the export's graphs holds (eight images at 224 px): what a forward pass keeps grows
# with them, and exporting an EfficientNet-Lite0 teacher at 224 px with batches of 256 (evaluation) and 64
# (calibration) peaked at 10.1 GB of resident memory; calibrating at batch 8 held 1.4 GB (7.2 at batch 64) and ran
# 2.7x faster (2-core AMX Xeon). A fifth of what PyTorch's forward passes take on a CPU (device.inference_batch):
# the calibration graph keeps about 80 MB per 224 px image.
BATCH_PIXELS = 8 * 224 * 224
CALIBRATION_BATCH = 64


def batch_for(model, most: int) -> int:
    """Images per batch for ``model``'s input size: ``most``, or fewer where that many would exceed BATCH_PIXELS."""
    from fm2edge.device import inference_batch

    # the export's graphs and checks run on the CPU (ONNX Runtime's CPU provider, PyTorch beside it)
    return inference_batch(most, model.preprocess.size, torch.device("cpu"), BATCH_PIXELS)


def image_batches(model, images: torch.Tensor, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (N, H, W, 3) batches at the model's input size, as the deployable graph takes them (at most
    ``batch_size`` images each, fewer at large sizes, see :func:`batch_for`)."""
    batch_size = batch_for(model, batch_size)
    for s in range(0, len(images), batch_size):
        yield model.preprocess.resize(images[s:s + batch_size]).permute(0, 2, 3, 1).contiguous().numpy()


def calibration_batches(model, images: torch.Tensor, batch_size: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    """The calibration images as deployable batches (every image: each batch is collected on its own, see
    :func:`quantize_int8`)."""
    return image_batches(model, images, batch_size)


def progress(model, images: torch.Tensor, batch_size: int, what: str):
    """The deployable batches of ``images`` behind a progress bar."""
    import math

    from tqdm.auto import tqdm

    return tqdm(image_batches(model, images, batch_size), desc=what, unit="batch", leave=False,
                total=math.ceil(len(images) / batch_for(model, batch_size)))


def _torch_probabilities(model, images: torch.Tensor, batch_size: int) -> np.ndarray:
    from fm2edge.models.deploy import ImageClassifier

    wrapped = ImageClassifier(model).eval()
    with torch.inference_mode():
        return np.concatenate([wrapped(torch.from_numpy(b)).numpy()
                               for b in progress(model, images, batch_size, "PyTorch accuracy")])


def _onnx_probabilities(sess, model, images: torch.Tensor, batch_size: int, what: str = "ONNX accuracy"
                        ) -> np.ndarray:
    return np.concatenate([run_images(sess, b) for b in progress(model, images, batch_size, what)])


def _default_output(model: str) -> Path:
    return Path(model) / "export"


def check_parity(model, sess, test, cfg: ExportConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """PyTorch and ONNX Runtime probabilities on the test images (the same uint8 inputs), and their largest
    difference; an error above the tolerance (the export is then not written)."""
    ref = _torch_probabilities(model, test.images, cfg.batch_size)
    onnx_probs = _onnx_probabilities(sess, model, test.images, cfg.batch_size)
    max_diff = float(np.abs(ref - onnx_probs).max())
    print(f"parity: max |PyTorch - ONNX Runtime| probability difference {max_diff:.2e} over {len(test)} "
          f"{cfg.score_on} images (tolerance {cfg.parity_tolerance:.0e})")
    if not max_diff <= cfg.parity_tolerance:
        raise Fm2EdgeError(f"the ONNX model's probabilities differ from PyTorch's by {max_diff:.3g}, above "
                           f"--export.parity_tolerance {cfg.parity_tolerance}; nothing was written. Check for "
                           f"ops ONNX does not support exactly, or raise the tolerance if the gap is expected")
    return ref, onnx_probs, max_diff


def reduce_range(cfg: ExportConfig) -> bool:
    """Whether int8 weights keep to 7 bits: as set, else as this CPU needs."""
    from fm2edge.device import int8_saturates

    return int8_saturates() if cfg.reduce_range is None else cfg.reduce_range


def quantise_and_measure(model, fp32_path: Path, int8_path: Path, train, test, fp32_logits: np.ndarray,
                         x1: torch.Tensor, cfg: ExportConfig) -> dict:
    """The int8 graph calibrated on class-balanced training images, with its test accuracy, agreement with fp32
    and batch-1 latency."""
    from fm2edge.data import balanced_indices

    n = min(cfg.calibration_images, len(train))
    calib = torch.from_numpy(balanced_indices(train.labels.numpy(), n))
    batches = calibration_batches(model, train.images[calib])
    quantize_int8(fp32_path, int8_path, batches, cfg.calibration_method, cfg.per_channel, input_name="images",
                  fp32_layers=cfg.fp32_layers, reduce_range=reduce_range(cfg))
    sess8 = open_session(int8_path, cfg.threads)
    q_logits = _onnx_probabilities(sess8, model, test.images, cfg.batch_size, "int8 ONNX accuracy")
    labels = test.labels.numpy()
    difference = paired_difference(q_logits.argmax(1) == labels, fp32_logits.argmax(1) == labels,
                                   what=f"{cfg.score_on} images")
    return {"test_acc": accuracy(q_logits, test.labels), "balanced_acc": balanced_accuracy(q_logits.argmax(1), labels),
            "int8_vs_fp32": dataclasses.asdict(difference),
            "int8_agreement_with_fp32": accuracy(q_logits.argmax(1), fp32_logits.argmax(1)),
            "calibration_images": int(len(calib)), "reduce_range": reduce_range(cfg),
            "latency": _latency(lambda: run_images(sess8, x1), cfg.latency_runs)}


def run_data(run: Path) -> DataConfig:
    """The data a run was trained on, from its config.yaml."""
    import yaml

    config = run / "config.yaml"
    section = (yaml.safe_load(config.read_text()) or {}).get("data") if config.exists() else None
    if not section:
        raise Fm2EdgeError(f"'{run}' does not say which data it was trained on (no data section in config.yaml); "
                           f"give --data.source")
    return DataConfig(**section)


def check_classes(run: str, model, data, source: str) -> None:
    """Refuse data whose classes are not the model's: calibrating and scoring on them would mean nothing."""
    from fm2edge.models.io import class_names_of_run

    if data.num_classes != model.num_classes:
        raise Fm2EdgeError(f"{run} predicts {model.num_classes} classes but {source} has {data.num_classes}; "
                           f"export with the data the model was trained on (--data.source)")
    names = class_names_of_run(Path(run))
    if names != [str(i) for i in range(model.num_classes)] and names != list(data.class_names):
        raise Fm2EdgeError(f"{run} was trained on the classes {names[:5]}... but {source} has "
                           f"{list(data.class_names)[:5]}...; export with the data the model was trained on "
                           f"(--data.source)")


def export_job(job: ExportJob) -> dict:
    from fm2edge.config import to_dict
    from fm2edge.data import load_data
    from fm2edge.models.io import TIMM_FILE, load_classifier, write_timm_weights
    from fm2edge.runs import atomic_dir, atomic_write_json, log_summary

    cfg = job.export
    _ort()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_classifier(job.model)
    data = job.data or run_data(Path(job.model))
    train, val, test = load_data(data)
    check_classes(job.model, model, train, data.source)
    if cfg.score_on == "validation":
        if val is None:
            raise Fm2EdgeError(f"--export.score_on validation, but {data.source} has no validation images; score on "
                               f"the test split, or give the data a validation split")
        test = val  # every check below reads validation images; the test split stays unread
    from fm2edge.models.deploy import ImageClassifier

    size = model.preprocess.size
    deployable = ImageClassifier(model)
    x1 = next(image_batches(model, test.images[:1], 1))
    out = Path(job.output) if job.output else _default_output(job.model)
    print(f"exporting {model.name} ({sum(p.numel() for p in model.parameters()):,} parameters, input {size} px) "
          f"to {out}")
    with atomic_dir(out, lock=True) as tmp:
        metadata = {"class_names": list(test.class_names), "preprocess": model.describe()["preprocess"],
                    "input": deployable.describe_input(), "model": model.name}
        fp32_path = export_deployable(model, tmp / "model.onnx", cfg.opset, metadata)
        sess = open_session(fp32_path, cfg.threads)
        ref, onnx_logits, max_diff = check_parity(model, sess, test, cfg)
        acc = {"pytorch_fp32": accuracy(ref, test.labels), "onnx_fp32": accuracy(onnx_logits, test.labels)}
        # the mean of the classes' accuracies beside it (what `auto --auto.metric balanced_accuracy` judges graphs on)
        balanced = {"pytorch_fp32": balanced_accuracy(ref.argmax(1), test.labels),
                    "onnx_fp32": balanced_accuracy(onnx_logits.argmax(1), test.labels)}
        x1_torch = torch.from_numpy(x1)
        timings = {"pytorch_fp32": _latency(lambda: _torch_forward(deployable, x1_torch), cfg.latency_runs),
                   "onnx_fp32": _latency(lambda: run_images(sess, x1), cfg.latency_runs)}
        files = {"onnx_fp32": "model.onnx"}
        result: dict = {"model": job.model, "name": model.name, "data": data.source, "scored_on": cfg.score_on,
                        "test_images": len(test),
                        "parity_max_abs_diff": max_diff, "parity_tolerance": cfg.parity_tolerance}
        if cfg.resize_inside:
            any_size = with_resize_inside(fp32_path, tmp / "model.any_size.onnx", model.preprocess)
            files["onnx_fp32_any_size"] = any_size.name
            result["any_size_parity"] = any_size_parity(deployable, any_size, test, cfg)
        if cfg.int8:
            q = quantise_and_measure(model, fp32_path, tmp / "model.int8.onnx", train, test, onnx_logits, x1, cfg)
            acc["onnx_int8"] = q.pop("test_acc")
            balanced["onnx_int8"] = q.pop("balanced_acc")
            timings["onnx_int8"] = q.pop("latency")
            files["onnx_int8"] = "model.int8.onnx"
            result.update(q)
        timm_copy = write_timm_weights(model, tmp)
        if timm_copy:  # a timm student: also loadable by timm.create_model (its arguments in export.json)
            files["timm"] = TIMM_FILE
            result["timm"] = timm_copy
        sizes = {"pytorch_fp32": (Path(job.model) / "model.safetensors").stat().st_size,
                 **{k: (tmp / f).stat().st_size for k, f in files.items()}}
        result.update({"files": files, "size_bytes": sizes, f"{cfg.score_on}_acc": acc,
                       f"{cfg.score_on}_balanced_acc": balanced, "latency_batch1": timings,
                       "input": {**deployable.describe_input(), "preprocess": model.describe()["preprocess"]},
                       "class_names": list(test.class_names),
                       "env": {"torch": torch.__version__, "onnxruntime": _ort().__version__,
                               "threads": cfg.threads or torch.get_num_threads(),
                               "cpu": f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"}})
        result["int8_drop_points"] = 100 * (acc["onnx_fp32"] - acc["onnx_int8"]) if cfg.int8 else None
        atomic_write_json(tmp / "export.json", result)
    _print_table(result)
    _print_notes(result, cfg, size)
    print(f"results in {out}")
    # the run's own tracker folder (TensorBoard: RUN/logs), not the export folder, which holds what ships
    log_summary(cfg.log_with, Path(job.model), to_dict(job), result, name=f"{Path(job.model).resolve().name}-export")
    if cfg.push_to_hub:
        from fm2edge.models.io import push_to_hub

        print(f"uploaded to {push_to_hub(job.model, cfg.push_to_hub)}")
    return result


def _print_notes(result: dict, cfg: ExportConfig, size: int) -> None:
    """What the graphs take and give, the any-size graph's parity, int8 against fp32, and a warning where int8 loses
    more than --export.max_int8_drop."""
    print(f"the ONNX graphs take uint8 RGB images, batch x {size} x {size} x 3 (NHWC), and output probabilities; "
          f"resize first ({result['input']['resize'].split(':')[0]}); `fm2edge predict` does it for image files")
    if cfg.resize_inside:
        print(f"model.any_size.onnx takes uint8 RGB images of any size (one size a batch) and resizes them itself "
              f"(against PyTorch: {100 * result['any_size_parity']['pixels_off_by_one']:.2f}% of pixels off by one, "
              f"max probability difference {result['any_size_parity']['max_probability_diff']:.1e})")
    if cfg.int8:
        print(Difference(**result["int8_vs_fp32"]).line("int8 vs fp32 ONNX"))
    if cfg.int8 and result["int8_drop_points"] > cfg.max_int8_drop:
        print(f"warning: int8 loses {result['int8_drop_points']:.2f} points of {cfg.score_on} accuracy (more than "
              f"--export.max_int8_drop {cfg.max_int8_drop}); try --export.calibration_method percentile, more "
              f"calibration images, or ship the fp32 model")


def _torch_forward(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _latency(fn, runs: int) -> dict:
    return latency_with_noise(fn, runs, max(10, runs // 10))


def graph_latency(path: Path, threads: int | None, runs: int) -> dict:
    """Batch-1 latency of an exported graph as shipped (a uint8 image in, ONNX Runtime on the CPU), timed as its
    export timed it (:func:`fm2edge.timing.latency_with_noise`: the quiet median and the spread beside the p50)."""
    sess = open_session(path, threads)
    size = graph_metadata(sess)["preprocess"]["size"]
    x1 = np.zeros((1, size, size, 3), np.uint8)
    return _latency(lambda: run_images(sess, x1), runs)


def _print_table(r: dict) -> None:
    base = r["latency_batch1"]["pytorch_fp32"]["p50_ms"]
    split = r.get("scored_on", "test")
    accs = r[f"{split}_acc"]
    print(f"{'model':<14} {split[:5] + ' acc':>9} {'size':>10} {'p50 ms':>8} {'p90 ms':>8} {'quiet ms':>8} "
          f"{'vs PyTorch':>10}")
    for key, label in (("pytorch_fp32", "PyTorch fp32"), ("onnx_fp32", "ONNX fp32"), ("onnx_int8", "ONNX int8")):
        if key not in accs:
            continue
        lat = r["latency_batch1"][key]
        size = r["size_bytes"].get(key)
        size_text = f"{size / 1e6:.2f} MB" if size else "-"
        print(f"{label:<14} {100 * accs[key]:>8.2f}% {size_text:>10} {lat['p50_ms']:>8.3f} "
              f"{lat['p90_ms']:>8.3f} {lat['quiet_p50_ms']:>8.3f} {base / lat['p50_ms']:>9.2f}x")
    print(f"batch-1 latency on {r['env']['cpu']} with {r['env']['threads']} threads; quiet: the lowest of 5 "
          f"repeated medians; {r['test_images']} {split} images")
    busy = [label for key, label in (("pytorch_fp32", "PyTorch"), ("onnx_fp32", "ONNX fp32"),
                                     ("onnx_int8", "ONNX int8"))
            if r["latency_batch1"].get(key, {}).get("busy")]
    if busy:
        print(f"note: the machine was busy while {', '.join(busy)} was timed (repeated medians disagree, or the p90 "
              f"is far above the p50): read the quiet column, or measure again on an idle machine")
