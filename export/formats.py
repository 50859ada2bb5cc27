"""Two more forms of an exported model, for devices:

- ORT format (`.ort`): onnxruntime's own flatbuffer serialisation of the graph after its optimisations,
  the only format onnxruntime's reduced-size ("minimal") builds load. Written by onnxruntime's
  `convert_onnx_models_to_ort` tool (optimisation style Fixed), together with the operator list such a build
  must include (`<stem>.required_operators.config`, for the build's `--include_ops_by_config`).
- Static int8 in QDQ form: weights uint8 per channel and activations uint8 with scales calibrated once, on
  MNIST *training* images, written as QuantizeLinear/DequantizeLinear pairs around float ops. NPU and
  accelerator execution providers (QNN, CoreML, NNAPI per tensor) take this form; the dynamic int8 (scales
  computed at run time) they generally do not. On the CPU, onnxruntime fuses the pairs into integer kernels:
  uint8 weights because u8 x u8 products are exact on every CPU, where u8 x s8 saturates on x86 without
  VNNI (see export.export.WEIGHT_TYPE; int8 symmetric weights cost 1.7 points there on the reference run,
  uint8 0.9).

Both need onnx (onnxruntime's converter imports it), so they live on the export side.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edge_infer.model_info import INPUT_NAME

ORT_SUFFIX = ".ort"
OPERATORS_SUFFIX = ".required_operators.config"
CALIBRATION_IMAGES = 2000  # MNIST training images the activation ranges are calibrated on
CALIBRATION_BATCH = 500
# fraction: 1.5 percentage points below fp32 on the MNIST test images. Static activation ranges fit a ReLU
# RNN's unbounded state poorly: the test suite's 3-epoch reference RNN loses 0.9 points with exact integer
# kernels (AMD EPYC, AVX2; MinMax, percentile and entropy calibration alike), the bundled GRU far less.
STATIC_MAX_ACCURACY_DROP = 0.015


def ort_paths(onnx_path: Path) -> tuple[Path, Path]:
    """Where write_ort puts the .ort model and its operator list for onnx_path."""
    return onnx_path.with_suffix(ORT_SUFFIX), onnx_path.with_suffix(OPERATORS_SUFFIX)


def write_ort(onnx_path: Path) -> tuple[Path, Path]:
    """Convert onnx_path to `<stem>.ort` beside it, plus `<stem>.required_operators.config`.

    The tool runs in a temporary folder (its progress printing silenced) and both files are moved into
    place only once it has succeeded, so a failed conversion leaves nothing half-written."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnx_path = Path(onnx_path)
    ort_path, config_path = ort_paths(onnx_path)
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=".ort-") as tmp:
        source = Path(tmp) / "in" / onnx_path.name
        source.parent.mkdir()
        shutil.copyfile(onnx_path, source)
        out = Path(tmp) / "out"
        with _quiet():
            convert_onnx_models_to_ort(source, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        made_ort, made_config = ort_paths(out / onnx_path.name)
        # The tool's header names the temporary file; name the real one instead.
        config = made_config.read_text().replace(str(made_ort), ort_path.name)
        made_config.write_text(config)
        os.replace(made_ort, ort_path)
        os.replace(made_config, config_path)
    return ort_path, config_path


@contextlib.contextmanager
def _quiet():
    """onnxruntime's tools print progress and log INFO/WARNING lines (a generic 'consider pre-processing'
    among them, which doesn't apply); none of it is ours to show."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(before)


def calibration_rows(train_images: np.ndarray, count: int = CALIBRATION_IMAGES, seed: int = 0) -> list[np.ndarray]:
    """Time-major float batches [28, B, 28] of `count` training images picked at random (uint8 [N, 28, 28] in)."""
    picked = np.random.default_rng(seed).choice(len(train_images), size=min(count, len(train_images)), replace=False)
    images = train_images[np.sort(picked)].astype(np.float32) / 255.0
    return [
        np.ascontiguousarray(images[start : start + CALIBRATION_BATCH].transpose(1, 0, 2))
        for start in range(0, len(images), CALIBRATION_BATCH)
    ]


def quantize_static_qdq(fp32_matmul, calibration: list[np.ndarray]):
    """Static QDQ quantization of the MatMul+Add per-step graph (an onnx.ModelProto), calibrated on
    `calibration` (time-major batches of training images): uint8 per-channel weights, uint8 activations
    with MinMax ranges.

    Pre-processing runs shape inference only (skip_optimization=True): its default graph optimisation
    fuses each MatMul+Add back into an fp32 Gemm, which the quantizer then leaves alone, recurrent weights
    included."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        src, pre, dst = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(fp32_matmul, src)
        quant_pre_process(src, pre, skip_optimization=True)
        quantize_static(
            pre,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,  # exact on every CPU (see the module's docstring)
            per_channel=True,
            extra_options={"WeightSymmetric": False, "ActivationSymmetric": False},
        )
        return onnx.load(dst)


def qdq_recurrent_weights(model) -> list[str]:
    """The recurrent weights (initializers named Wh*) stored as 8-bit integers and dequantized into a MatMul."""
    from onnx import TensorProto

    int8 = {
        t.name
        for t in model.graph.initializer
        if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and t.name.startswith("Wh")
    }
    feeds_matmul = {name for node in model.graph.node if node.op_type == "MatMul" for name in node.input}
    return sorted(
        node.input[0]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in int8 and node.output[0] in feeds_matmul
    )


def write_ort_checked(onnx_paths: list[Path], images: np.ndarray) -> list[Path]:
    """write_ort for each model, then load each .ort with edge_infer.Classifier (so with the runtime's own
    checks: metadata, interface) and require the same logits as its .onnx on `images` (uint8 [N, 28, 28]).
    On a failure the .ort files written so far are removed and ExportError is raised."""
    from edge_infer.classifier import Classifier, ModelError
    from export.export import ExportError

    rows = np.ascontiguousarray((images.astype(np.float32) / 255.0).transpose(1, 0, 2))
    written: list[Path] = []
    try:
        for onnx_path in onnx_paths:
            ort_path, config_path = write_ort(onnx_path)
            written += [ort_path, config_path]
            logits = [Classifier(path).session.run(None, {INPUT_NAME: rows})[0] for path in (onnx_path, ort_path)]
            if not np.array_equal(*logits):
                raise ExportError(
                    f"{ort_path} gives other logits than {onnx_path} (max |diff| "
                    f"{np.abs(logits[0] - logits[1]).max():.2e}); no .ort written"
                )
    except (ModelError, ExportError, OSError, RuntimeError) as error:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(error, ExportError):
            raise
        raise ExportError(f"ORT conversion failed: {' '.join(str(error).split())[:300]}; no .ort written") from None
    return written
