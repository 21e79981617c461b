"""`fm2edge export`: a trained classifier as ONNX (dynamic batch) and int8 ONNX, each checked against PyTorch.

The deployment end of the lifecycle. The fp32 graph must reproduce PyTorch's logits within a tolerance or the export
fails; the int8 graph is statically quantised with ONNX Runtime's own tooling (``quant_pre_process`` then
``quantize_static``, QDQ format, per-channel weights) from calibration images of the training split, and its test
accuracy is reported beside fp32's, with a warning when it loses more than a threshold. Nothing is written unless
every check passes: the export folder appears complete or not at all.
"""

from __future__ import annotations

import dataclasses
import platform
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fm2edge.config import DataConfig, check
from fm2edge.errors import Fm2EdgeError
from fm2edge.report.metrics import Difference, accuracy, paired_difference
from fm2edge.timing import summarise, time_calls


@dataclass
class ExportConfig:
    """How to export and what to check.

    Args:
        opset: ONNX opset version.
        parity_tolerance: Largest allowed absolute difference between PyTorch and ONNX Runtime fp32 logits.
        int8: Also write a statically quantised int8 model.
        calibration_images: Training images fed through the model to calibrate int8 activation ranges.
        calibration_method: How ranges are chosen from the calibration activations: minmax, percentile or entropy.
        per_channel: Quantise weights per output channel (more accurate than one scale per tensor).
        max_int8_drop: Warn when int8 test accuracy is more than this many points below fp32's.
        threads: ONNX Runtime and PyTorch CPU threads for the checks and timings; empty keeps the default.
        latency_runs: Timed batch-1 runs per backend (after warm-up) for the latency table.
        batch_size: Batch size for accuracy evaluation.
    """

    opset: int = 17
    parity_tolerance: float = 1e-3
    int8: bool = True
    calibration_images: int = 500
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True
    max_int8_drop: float = 1.0
    threads: int | None = None
    latency_runs: int = 200
    batch_size: int = 256

    def __post_init__(self) -> None:
        check(self.parity_tolerance > 0, f"export.parity_tolerance must be positive, got {self.parity_tolerance}")
        check(self.calibration_images >= 1, "export.calibration_images must be at least 1")
        check(self.threads is None or self.threads >= 1, f"export.threads must be >= 1, got {self.threads}")
        check(self.latency_runs >= 1 and self.batch_size >= 1, "export.latency_runs and batch_size must be >= 1")


@dataclass
class ExportJob:
    """`fm2edge export MODEL`: ONNX fp32 and int8 files with parity, accuracy and batch-1 latency checks.

    Args:
        model: A run folder holding a trained fm2edge model (`fm2edge train`, `distill`, `probe`, `finetune`).
        data: Calibration images (training split) and accuracy images (test split); use the model's own data.
        export: Export settings and checks.
        output: Folder for model.onnx, model.int8.onnx and export.json; empty writes MODEL/export.
    """

    model: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    output: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.model), "give the run folder of a trained model, e.g. fm2edge export runs/distill-student")


# ---------------------------------------------------------------- ONNX building blocks (shared with `fm2edge bench`)


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Fm2EdgeError("ONNX export needs onnx and onnxruntime: pip install 'fm2edge[export]'") from exc
    return ort


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """``model`` (normalised float NCHW in, logits out) as ONNX with a dynamic batch axis."""
    _ort()
    model = model.eval().float()
    with warnings.catch_warnings():  # the tracer's notes on shape checks it freezes are expected at a fixed size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
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


def quantize_int8(fp32: Path, out: Path, batches: Iterator[np.ndarray], method: str = "minmax",
                  per_channel: bool = True) -> Path:
    """Static int8 quantisation with ONNX Runtime: graph pre-processing, calibration on ``batches``, QDQ format.

    Activations are unsigned and weights signed 8-bit (the U8S8 pairing ONNX Runtime's x86 kernels run fastest).
    """
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
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"pixels": np.ascontiguousarray(b, dtype=np.float32)}

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
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


def _batches(model, images: torch.Tensor, batch_size: int) -> Iterator[np.ndarray]:
    """Preprocessed (resized, normalised) float batches of uint8 images, as the ONNX graph expects them."""
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            yield model.preprocess(images[s:s + batch_size]).float().numpy()


def _torch_logits(model, images: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(b)).float().numpy() for b in _batches(model, images,
                                                                                               batch_size)])


def _onnx_logits(sess, model, images: torch.Tensor, batch_size: int) -> np.ndarray:
    return np.concatenate([run_session(sess, b) for b in _batches(model, images, batch_size)])


def _default_output(model: str) -> Path:
    return Path(model) / "export"


def check_parity(model, sess, test, cfg: ExportConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """PyTorch and ONNX Runtime logits on the test images, and their largest difference; an error above the
    tolerance (the export is then not written)."""
    ref = _torch_logits(model, test.images, cfg.batch_size)
    onnx_logits = _onnx_logits(sess, model, test.images, cfg.batch_size)
    max_diff = float(np.abs(ref - onnx_logits).max())
    print(f"parity: max |PyTorch - ONNX Runtime| logit difference {max_diff:.2e} over {len(test)} test images "
          f"(tolerance {cfg.parity_tolerance:.0e})")
    if not max_diff <= cfg.parity_tolerance:
        raise Fm2EdgeError(f"the ONNX model's logits differ from PyTorch's by {max_diff:.3g}, above "
                           f"--export.parity_tolerance {cfg.parity_tolerance}; nothing was written. Check for "
                           f"ops ONNX does not support exactly, or raise the tolerance if the gap is expected")
    return ref, onnx_logits, max_diff


def quantise_and_measure(model, fp32_path: Path, int8_path: Path, train, test, fp32_logits: np.ndarray,
                         x1: torch.Tensor, cfg: ExportConfig) -> dict:
    """The int8 graph calibrated on class-balanced training images, with its test accuracy, agreement with fp32
    and batch-1 latency."""
    from fm2edge.data import balanced_indices

    n = min(cfg.calibration_images, len(train))
    calib = torch.from_numpy(balanced_indices(train.labels.numpy(), n))
    quantize_int8(fp32_path, int8_path, _batches(model, train.images[calib], 64), cfg.calibration_method,
                  cfg.per_channel)
    sess8 = open_session(int8_path, cfg.threads)
    q_logits = _onnx_logits(sess8, model, test.images, cfg.batch_size)
    labels = test.labels.numpy()
    difference = paired_difference(q_logits.argmax(1) == labels, fp32_logits.argmax(1) == labels)
    return {"test_acc": accuracy(q_logits, test.labels),
            "int8_vs_fp32": dataclasses.asdict(difference),
            "int8_agreement_with_fp32": accuracy(q_logits.argmax(1), fp32_logits.argmax(1)),
            "calibration_images": int(len(calib)),
            "latency": _latency(lambda: run_session(sess8, x1), cfg.latency_runs)}


def export_job(job: ExportJob) -> dict:
    from fm2edge.data import load_data
    from fm2edge.models.io import load_classifier
    from fm2edge.runs import atomic_dir, atomic_write_json

    cfg = job.export
    _ort()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_classifier(job.model)
    train, _, test = load_data(job.data)
    if train.num_classes != model.num_classes:
        raise Fm2EdgeError(f"{job.model} predicts {model.num_classes} classes but {job.data.source} has "
                           f"{train.num_classes}; export with the data the model was trained on (--data.source)")
    size = model.preprocess.size
    example = model.preprocess(test.images[:2]).float()
    out = Path(job.output) if job.output else _default_output(job.model)
    print(f"exporting {model.name} ({sum(p.numel() for p in model.parameters()):,} parameters, input {size} px) "
          f"to {out}")
    with atomic_dir(out, lock=True) as tmp:
        fp32_path = export_onnx(model, example, tmp / "model.onnx", cfg.opset)
        sess = open_session(fp32_path, cfg.threads)
        ref, onnx_logits, max_diff = check_parity(model, sess, test, cfg)
        acc = {"pytorch_fp32": accuracy(ref, test.labels), "onnx_fp32": accuracy(onnx_logits, test.labels)}
        x1 = example[:1]
        timings = {"pytorch_fp32": _latency(lambda: _torch_forward(model, x1), cfg.latency_runs),
                   "onnx_fp32": _latency(lambda: run_session(sess, x1), cfg.latency_runs)}
        files = {"onnx_fp32": "model.onnx"}
        result: dict = {"model": job.model, "name": model.name, "data": job.data.source, "test_images": len(test),
                        "parity_max_abs_diff": max_diff, "parity_tolerance": cfg.parity_tolerance}
        if cfg.int8:
            q = quantise_and_measure(model, fp32_path, tmp / "model.int8.onnx", train, test, onnx_logits, x1, cfg)
            acc["onnx_int8"] = q.pop("test_acc")
            timings["onnx_int8"] = q.pop("latency")
            files["onnx_int8"] = "model.int8.onnx"
            result.update(q)
        sizes = {"pytorch_fp32": (Path(job.model) / "model.safetensors").stat().st_size,
                 **{k: (tmp / f).stat().st_size for k, f in files.items()}}
        result.update({"files": files, "size_bytes": sizes, "test_acc": acc, "latency_batch1": timings,
                       "input": {"name": "pixels", "shape": ["batch", 3, size, size], "dtype": "float32",
                                 "preprocess": model.describe()["preprocess"]},
                       "class_names": list(test.class_names),
                       "env": {"torch": torch.__version__, "onnxruntime": _ort().__version__,
                               "threads": cfg.threads or torch.get_num_threads(),
                               "cpu": f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"}})
        drop = 100 * (acc["onnx_fp32"] - acc.get("onnx_int8", acc["onnx_fp32"]))
        result["int8_drop_points"] = drop if cfg.int8 else None
        atomic_write_json(tmp / "export.json", result)
    _print_table(result)
    if cfg.int8:
        print(Difference(**result["int8_vs_fp32"]).line("int8 vs fp32 ONNX"))
    if cfg.int8 and drop > cfg.max_int8_drop:
        print(f"warning: int8 loses {drop:.2f} points of test accuracy (more than --export.max_int8_drop "
              f"{cfg.max_int8_drop}); try --export.calibration_method percentile, more calibration images, or ship "
              f"the fp32 model")
    print(f"results in {out}")
    return result


def _torch_forward(model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _latency(fn, runs: int) -> dict:
    return summarise(time_calls(fn, runs, max(10, runs // 10)))


def _print_table(r: dict) -> None:
    base = r["latency_batch1"]["pytorch_fp32"]["p50_ms"]
    print(f"{'model':<14} {'test acc':>9} {'size':>10} {'p50 ms':>8} {'p90 ms':>8} {'vs PyTorch':>10}")
    for key, label in (("pytorch_fp32", "PyTorch fp32"), ("onnx_fp32", "ONNX fp32"), ("onnx_int8", "ONNX int8")):
        if key not in r["test_acc"]:
            continue
        lat = r["latency_batch1"][key]
        size = r["size_bytes"].get(key)
        size_text = f"{size / 1e6:.2f} MB" if size else "-"
        print(f"{label:<14} {100 * r['test_acc'][key]:>8.2f}% {size_text:>10} {lat['p50_ms']:>8.3f} "
              f"{lat['p90_ms']:>8.3f} {base / lat['p50_ms']:>9.2f}x")
    print(f"batch-1 latency on {r['env']['cpu']} with {r['env']['threads']} threads; "
          f"{r['test_images']} test images")
