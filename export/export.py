"""Checkpoint -> ONNX, with the checks in one place (like YOLOv5's export.py, one table drives the formats):

1. rebuild the trained model time-major (batch_first=False, same weights) as the torch reference;
2. for each requested format, in FORMATS order: build its graph, serialise the final model (opset and IR
   version pinned, metadata, onnx.checker), and run that format's gates on exactly those bytes through
   edge_infer.Classifier, so with the session options the runtime really uses:
   fp32: parity with torch on real MNIST test images (max |logit difference| <= 1e-4 and 100 % argmax
         agreement) and MNIST test accuracy;
   int8: dynamic quantization (uint8 weights and activations: exact on every CPU): integer ops on the
         recurrent weights, every int32 product exact on this CPU (export.int8_exact), and test accuracy
         within 0.3 points of fp32;
3. write those checked bytes (atomically): nothing if fp32 failed; otherwise fp32 and every format that
   passed (IncompleteExport names the ones that did not).

A new output format is one function (Source -> Artifact, running its own gates via ship()) and one FORMATS
entry.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edge_infer import Classifier, ModelError
from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, ModelInfo, to_rows
from export import formats, int8_exact
from export.graph import AUTO_FORMS, FORMS, IR_FOR_OPSET, MIN_ORT_FOR_OPSET, OPSETS, SWITCH_BATCH, build_graph
from train.data import Split
from train.files import atomic_write
from train.model import DigitRNN, ModelConfig
from train.report import prediction_changes
from train.trainer import load_checkpoint, require_keys

PARITY_IMAGES = 1000
PARITY_MAX_ABS_DIFF = 1e-4
INT8_MAX_ACCURACY_DROP = 0.003  # fraction: 0.3 percentage points
EXACT_CHECK_IMAGES = 500  # images whose every int32 product the int8 gate recomputes exactly
RUN_BATCH = 1000  # images per session.run in the checks (int8 scales activations per batch, so it matters)


class ExportError(RuntimeError):
    """A check failed; nothing was written. The message is one line."""


class CheckpointError(ExportError):
    """The checkpoint is missing, corrupt or not edge-train's."""


class IncompleteExport(ExportError):
    """fp32 passed and was written, with every other format that passed; `failed` ({format: why}) were not.
    The message is one line naming both."""

    def __init__(self, report: ExportReport, failed: dict[str, str]) -> None:
        self.report, self.failed = report, failed
        written = ", ".join(f"{name} {path}" for name, path in report.paths.items())
        reasons = "; ".join(f"{name} not written: {why}" for name, why in failed.items())
        super().__init__(f"{reasons} (written: {written})")


@dataclass
class ExportReport:
    fp32_path: Path
    fp32_accuracy: float
    checkpoint_accuracy: float | None
    max_abs_diff: float
    agreement: float
    parity_images: int
    int8_path: Path | None = None
    int8_accuracy: float | None = None
    paths: dict[str, Path] = field(default_factory=dict)  # every format written: {format: path}
    infos: dict[str, ModelInfo] = field(default_factory=dict)  # and the metadata it carries
    int8_changes: str = ""  # which fp32 predictions int8 changes (train.report.prediction_changes)
    int8_static_path: Path | None = None  # export.formats: static int8 (QDQ)
    int8_static_accuracy: float | None = None
    ort_paths: list[Path] = field(default_factory=list)  # export.formats: .ort models + operator lists

    def _quantized_line(self, what: str, path: Path, accuracy: float) -> str:
        size, ratio = path.stat().st_size, path.stat().st_size / self.fp32_path.stat().st_size
        return (
            f"{what}: {path} ({size / 1024:.1f} KiB, {ratio:.0%} of fp32), MNIST test accuracy {accuracy:.2%} "
            f"({(accuracy - self.fp32_accuracy) * 100:+.2f} points)"
        )

    def summary(self) -> str:
        lines = [
            f"parity on {self.parity_images} MNIST test images: max |logit diff| {self.max_abs_diff:.2e} "
            f"(limit {PARITY_MAX_ABS_DIFF:.0e}), argmax agreement {self.agreement:.2%}",
            f"fp32: {self.fp32_path} ({self.fp32_path.stat().st_size / 1024:.1f} KiB), "
            f"MNIST test accuracy {self.fp32_accuracy:.2%}"
            + (f" (checkpoint: {self.checkpoint_accuracy:.2%})" if self.checkpoint_accuracy is not None else ""),
        ]
        if self.int8_path is not None and self.int8_accuracy is not None:
            lines.append(self._quantized_line("int8", self.int8_path, self.int8_accuracy))
            if self.int8_changes:
                lines.append(self.int8_changes)
        if self.int8_static_path is not None and self.int8_static_accuracy is not None:
            lines.append(self._quantized_line("static int8 (QDQ)", self.int8_static_path, self.int8_static_accuracy))
        if self.ort_paths:
            lines.append("ORT format (same logits as the .onnx): " + ", ".join(str(p) for p in self.ort_paths))
        return "\n".join(lines)


def package_version() -> str:
    try:
        return version("edge-infer")
    except PackageNotFoundError:
        return "0+unknown"


def load_trained(checkpoint: Path) -> tuple[dict, DigitRNN, DigitRNN]:
    """(checkpoint, batch-first model as trained, time-major rebuild with the same weights), both with the
    checkpoint's calibration temperature folded into their last layer."""
    try:
        state = load_checkpoint(checkpoint)
        require_keys(state, ("model_config", "model"))
        config = ModelConfig(**state["model_config"])
        trained, time_major = DigitRNN(config, batch_first=True), DigitRNN(config, batch_first=False)
        trained.load_state_dict(state["model"])
        time_major.load_state_dict(state["model"])
        temperature = float(state.get("calibration", {}).get("temperature", 1.0))
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(" ".join(str(error).split())[:300]) from None
    broken = [name for name, weight in trained.state_dict().items() if not torch.isfinite(weight).all()]
    if broken:  # a diverged run: NaN compares false, so no later check would catch it
        raise CheckpointError(
            f"{checkpoint}: the weights hold NaN or inf ({', '.join(broken)}); the run diverged, "
            f"retrain it (e.g. with a lower --lr)"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"calibration temperature must be positive, not {temperature}")
    with torch.no_grad():  # calibrated logits = logits / T: folded into the last layer, free at run time
        for model in (trained, time_major):
            model.fc.weight.div_(temperature)
            model.fc.bias.div_(temperature)
    return state, trained.eval(), time_major.eval()


def runtime_classifier(model: onnx.ModelProto | bytes) -> Classifier:
    """The runtime's own Classifier over these bytes (one thread: deterministic, and what small batches use)."""
    blob = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return Classifier(blob, threads=1)
    except ModelError as error:
        raise ExportError(f"the runtime refuses the exported model: {error}") from None


def onnx_logits(model: onnx.ModelProto | bytes | Classifier, images: np.ndarray, batch: int = RUN_BATCH) -> np.ndarray:
    """Logits from the runtime's onnxruntime session for uint8/float images [N, 28, 28] (ink bright)."""
    session = (model if isinstance(model, Classifier) else runtime_classifier(model)).session
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: to_rows(images[start : start + batch])})[0]
            for start in range(0, len(images), batch)
        ]
    )


def torch_reference(trained: DigitRNN, time_major: DigitRNN, images: np.ndarray) -> np.ndarray:
    """The time-major rebuild's logits for uint8 images; it must agree with the model as trained."""
    x = torch.from_numpy(images).float().div_(255.0)
    with torch.no_grad():
        reference = time_major(x.transpose(0, 1).contiguous()).numpy()
        as_trained = trained(x).numpy()
    if not np.isfinite(reference).all():  # NaN compares false: it would pass every check below
        raise ExportError("the model's logits on MNIST test images are NaN or inf; refusing to export")
    if not np.abs(reference - as_trained).max() <= PARITY_MAX_ABS_DIFF:  # guards the rebuild itself
        raise ExportError("the time-major rebuild disagrees with the trained model; refusing to export")
    return reference


def integer_recurrent_ops(model: onnx.ModelProto) -> list[str]:
    """Integer ops whose int8 weight is a recurrent weight (named Wh*, after quantization Wh*_quantized)."""
    return [
        f"{n.op_type}({n.input[1]})"
        for n in model.graph.node
        if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM")
        and len(n.input) > 1
        and n.input[1].startswith("Wh")
    ]


# Weights as uint8 (per channel, asymmetric), activations uint8: u8 x u8 products are exact on every CPU
# onnxruntime runs on (x86 widens them to 16 bits and adds in 32; ARM's UDOT adds in 32). u8 x s8, the
# quantizer's default, is not: x86 without VNNI (AVX2, SSE) adds pairs of products in 16 bits and saturates,
# which cost 1.5-3 points of accuracy there (export.int8_exact measures it; README "Devices").
WEIGHT_TYPE = "uint8 per-channel asymmetric"


def quantize_int8(
    fp32_matmul: onnx.ModelProto, weight_type: str = "QUInt8", reduce_range: bool = False
) -> onnx.ModelProto:
    """Dynamic quantization: per-channel weights (uint8 by default, see WEIGHT_TYPE; benchmarks/int8_schemes.py
    tries the others), uint8 activations quantized per step at run time. Node and tensor names are shortened to
    keep the file small."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32_matmul, src)
        quantize_dynamic(
            src,
            dst,
            weight_type=getattr(QuantType, weight_type),
            reduce_range=reduce_range,
            per_channel=True,
            extra_options={"MatMulConstBOnly": True},
        )
        model = onnx.load(dst)
    _shorten_names(model)
    return model


def _short_name(index: int) -> str:
    """0 -> '_0', 61 -> '_z', 62 -> '_10', ...: never clashes with weight names, which start with a letter."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    name = ""
    while True:
        index, rest = divmod(index, 62)
        name = digits[rest] + name
        if index == 0:
            return "_" + name


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs a generic 'consider pre-processing' warning on the root logger; it doesn't apply."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _shorten_names(model: onnx.ModelProto) -> None:
    """The quantizer's names (e.g. 't57_quantized_scale') cost bytes in every node, and the int8 weights
    are only ~22 KB: give intermediate tensors 1-2 character names and drop node names (optional in ONNX).
    Inputs, outputs and weights keep theirs."""
    graph = model.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        node.ClearField("name")
        for i, name in enumerate(node.output):
            if name not in keep:
                rename.setdefault(name, _short_name(len(rename)))
                node.output[i] = rename[name]
    # Weights: 'Wh0_quantized' -> 'Wh0', 'Wh0_scale' -> 'Wh0s' (the fp32 originals are gone).
    suffixes = {"_quantized": "", "_scale": "s", "_zero_point": "z"}
    for tensor in graph.initializer:
        for suffix, short in suffixes.items():
            if tensor.name.endswith(suffix):
                rename[tensor.name] = tensor.name[: -len(suffix)] + short
                tensor.name = rename[tensor.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    # Symmetric int8 weights have all-zero zero points, which MatMulInteger assumes when the (optional)
    # input is absent: drop them.
    zeros = {t.name for t in graph.initializer if t.name.endswith("z") and not numpy_helper.to_array(t).any()}
    for node in graph.node:
        if node.op_type == "MatMulInteger" and len(node.input) == 4 and node.input[3] in zeros:
            del node.input[3]
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]


def final_bytes(model: onnx.ModelProto, info: ModelInfo, opset: int) -> bytes:
    """The file as shipped: opset and IR version pinned, metadata attached, serialised, passed by onnx.checker."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    model.ir_version = IR_FOR_OPSET[opset]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_metadata())
    model.doc_string = "edge-infer digit classifier; see metadata_props"
    blob = model.SerializeToString()
    try:
        onnx.checker.check_model(blob, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejected the graph: {str(error).splitlines()[0]}") from None
    return blob


def write_bytes(blob: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


# -- the formats ------------------------------------------------------------------------------------


@dataclass
class Artifact:
    """One checked model: blob is exactly what gets written, and what the gates ran on."""

    blob: bytes
    info: ModelInfo


@dataclass
class Source:
    """What every format's exporter gets: the checkpoint, its torch reference and the MNIST test set."""

    state: dict  # the checkpoint
    config: ModelConfig
    weights: dict[str, np.ndarray]  # the time-major state_dict as numpy
    images: np.ndarray  # uint8 [N, 28, 28], the MNIST test images
    labels: np.ndarray
    reference: np.ndarray  # torch logits of the first parity_images images
    opset: int
    form: str
    train_images: np.ndarray | None = None  # uint8 MNIST training images: static int8 calibrates on them
    shipped: dict[str, Artifact] = field(default_factory=dict)  # the formats already done, in FORMATS order

    def graph(self, form: str, gemm: bool) -> onnx.ModelProto:
        return build_graph(
            self.weights,
            self.config.cell,
            self.config.hidden,
            self.config.layers,
            form=form,
            gemm=gemm,
            opset=self.opset,
        )

    def accuracy(self, logits: np.ndarray) -> float:
        return float((logits.argmax(1) == self.labels).mean())

    def ship(
        self,
        model: onnx.ModelProto,
        precision: str,
        graph_form: str,
        gate: Callable[[Classifier, bytes], tuple[float, dict]],
    ) -> Artifact:
        """Serialise model as shipped and run gate(runtime classifier, bytes) -> (MNIST test accuracy,
        checks) on those bytes; it raises ExportError when a check fails. The measured values go into the
        metadata, so the gate runs again on the final bytes, which must give exactly the same results."""

        def info(accuracy: float, checks: dict) -> ModelInfo:
            return ModelInfo(
                precision=precision,
                mnist_test_accuracy=round(accuracy, 6),
                model={**self.config.to_dict(), "graph": graph_form, **_auto_choice(graph_form, self.config.cell)},
                recipe=self.state["recipe"],
                package_version=package_version(),
                min_onnxruntime=MIN_ORT_FOR_OPSET[self.opset],
                opset=self.opset,
                checks=checks,
                calibration=self.state.get("calibration", {}),
            )

        draft = final_bytes(model, info(0.0, {}), self.opset)
        accuracy, checks = gate(runtime_classifier(draft), draft)
        final = info(accuracy, checks)
        blob = final_bytes(model, final, self.opset)
        if gate(runtime_classifier(blob), blob) != (accuracy, checks):
            raise ExportError(
                f"the final {precision} model does not reproduce the results in its metadata; not written"
            )
        return Artifact(blob, final)


def _auto_choice(graph_form: str, cell: str) -> dict:
    """What the auto form runs at which batch size, for the metadata."""
    if graph_form != "auto":
        return {}
    small, large = AUTO_FORMS[cell]
    return {"small_batch_form": small, "large_batch_form": large, "large_from_batch": SWITCH_BATCH[cell]}


def export_fp32(src: Source) -> Artifact:
    """The chosen graph form with Gemm nodes; parity with torch, then accuracy."""

    def gate(classifier: Classifier, blob: bytes) -> tuple[float, dict]:
        logits = onnx_logits(classifier, src.images)
        n = len(src.reference)
        max_diff, agreement = 0.0, 1.0
        # in large batches and one image at a time: the auto form runs a different graph for each
        for ours in (logits[:n], onnx_logits(classifier, src.images[:n], batch=1)):
            diff = np.abs(ours - src.reference)
            max_diff = max(max_diff, float(diff.max()) if np.isfinite(diff).all() else float("inf"))  # NaN: fail
            agreement = min(agreement, float((ours.argmax(1) == src.reference.argmax(1)).mean()))
        if max_diff > PARITY_MAX_ABS_DIFF or agreement < 1.0:
            raise ExportError(
                f"parity check failed on {n} MNIST test images: max |logit diff| {max_diff:.2e} "
                f"(limit {PARITY_MAX_ABS_DIFF:.0e}), argmax agreement {agreement:.2%} (need 100%); "
                f"nothing written"
            )
        return src.accuracy(logits), {
            "parity_images": n,
            "max_abs_logit_diff": max_diff,
            "argmax_agreement": agreement,
            "checkpoint_test_accuracy": src.state.get("test_acc"),
        }

    return src.ship(src.graph(src.form, gemm=True), "fp32", src.form, gate)


def export_int8(src: Source) -> Artifact:
    """Dynamic quantization of the MatMul+Add per-step form: the only form whose recurrent weights the
    quantizer reaches. Gates: integer ops on the recurrent weights, accuracy within 0.3 points of fp32."""
    fp32_accuracy = src.shipped["fp32"].info.mnist_test_accuracy

    def gate(classifier: Classifier, blob: bytes) -> tuple[float, dict]:
        shipped = onnx.load_from_string(blob)
        recurrent = integer_recurrent_ops(shipped)
        if not recurrent:
            raise ExportError("the int8 graph has no integer ops on the recurrent weights")
        # Exact integer products here mean the same answers on every CPU (export.int8_exact).
        products = int8_exact.check(int8_exact.instrument(shipped), to_rows(src.images[:EXACT_CHECK_IMAGES]))
        if not products.exact:
            raise ExportError(
                f"onnxruntime's integer kernels on this CPU ({int8_exact.cpu_kind()}) give inexact int32 "
                f"products ({products.summary()}): the model would answer differently on other CPUs"
            )
        accuracy = src.accuracy(onnx_logits(classifier, src.images))
        drop = fp32_accuracy - accuracy
        if drop > INT8_MAX_ACCURACY_DROP:
            raise ExportError(
                f"int8 MNIST test accuracy {accuracy:.2%} is {drop * 100:.2f} points below fp32 "
                f"{fp32_accuracy:.2%} (limit {INT8_MAX_ACCURACY_DROP * 100:.1f})"
            )
        return accuracy, {
            "fp32_mnist_test_accuracy": fp32_accuracy,
            "accuracy_drop": round(drop, 6),
            "integer_recurrent_ops": len(recurrent),
            "weights": f"{WEIGHT_TYPE}, dynamic uint8 activations",
            "integer_products": f"{products.summary()} on {EXACT_CHECK_IMAGES} MNIST test images",
        }

    return src.ship(quantize_int8(src.graph("per-step", gemm=False)), "int8", "per-step-int8", gate)


def export_int8_static(src: Source) -> Artifact:
    """Static int8 in QDQ form (export.formats), calibrated on MNIST training images. Gates: int8 recurrent
    weights, no weight matrix left in float, accuracy within 0.5 points of fp32."""
    from onnx import TensorProto

    fp32_accuracy = src.shipped["fp32"].info.mnist_test_accuracy
    assert src.train_images is not None  # export() checks it
    matmul_form = src.graph("per-step", gemm=False)
    model = formats.quantize_static_qdq(matmul_form, formats.calibration_rows(src.train_images))
    _shorten_names(model)
    matrices = {t.name for t in matmul_form.graph.initializer if len(t.dims) == 2}

    def gate(classifier: Classifier, blob: bytes) -> tuple[float, dict]:
        shipped = onnx.load_from_string(blob)
        recurrent = formats.qdq_recurrent_weights(shipped)
        if not recurrent:
            raise ExportError("the static int8 graph has no int8 recurrent weights")
        left_float = sorted(
            t.name
            for t in shipped.graph.initializer
            if t.name in matrices and t.data_type not in (TensorProto.INT8, TensorProto.UINT8)
        )
        if left_float:
            raise ExportError(f"the static int8 graph keeps float weights ({', '.join(left_float)})")
        accuracy = src.accuracy(onnx_logits(classifier, src.images))
        drop = fp32_accuracy - accuracy
        if drop > formats.STATIC_MAX_ACCURACY_DROP:
            raise ExportError(
                f"static int8 MNIST test accuracy {accuracy:.2%} is {drop * 100:.2f} points below fp32 "
                f"{fp32_accuracy:.2%} (limit {formats.STATIC_MAX_ACCURACY_DROP * 100:.1f})"
            )
        return accuracy, {
            "fp32_mnist_test_accuracy": fp32_accuracy,
            "accuracy_drop": round(drop, 6),
            "int8_recurrent_weights": len(recurrent),
            "weights": "uint8 per-channel asymmetric; uint8 activations, static (QDQ)",
            "calibration": f"{min(formats.CALIBRATION_IMAGES, len(src.train_images))} MNIST training images (MinMax)",
        }

    return src.ship(model, "int8", "per-step-int8-qdq", gate)


# Every output format, in the order they are built (a later one may use an earlier one's results).
FORMATS: dict[str, Callable[[Source], Artifact]] = {
    "fp32": export_fp32,
    "int8": export_int8,
    "int8-static": export_int8_static,
}


def export(
    checkpoint: Path,
    out: Path,
    test: Split,
    int8_out: Path | None = None,
    opset: int = 17,
    form: str = "auto",
    parity_images: int = PARITY_IMAGES,
    outputs: dict[str, Path] | None = None,
    int8_static_out: Path | None = None,
    train: Split | None = None,
    ort: bool = False,
) -> ExportReport:
    """Export checkpoint to out (fp32), int8_out, int8_static_out and any further outputs {format: path}
    (FORMATS keys), running every check first. Raises ExportError: nothing is written if fp32 fails its
    checks; if another format fails, fp32 and every format that passed are written and IncompleteExport
    (report and reasons inside) is raised. The static int8 model is calibrated on `train` images; ort: also
    write each model in ORT format beside it, checked for the same logits (export.formats)."""
    if opset not in OPSETS:
        raise ExportError(f"--opset must be between {OPSETS[0]} and {OPSETS[-1]}, not {opset}")
    if form not in FORMS:
        raise ExportError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    if parity_images < PARITY_IMAGES:
        raise ExportError(f"parity needs at least {PARITY_IMAGES} test images")
    wanted = {
        "fp32": out,
        **({"int8": int8_out} if int8_out is not None else {}),
        **({"int8-static": int8_static_out} if int8_static_out is not None else {}),
        **(outputs or {}),
    }
    if "int8-static" in wanted and train is None:
        raise ExportError("static int8 needs the MNIST training images to calibrate on")
    unknown = set(wanted) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown output format {', '.join(sorted(unknown))}; known: {', '.join(FORMATS)}")
    state, trained, time_major = load_trained(checkpoint)
    images = test.images.numpy()
    src = Source(
        state=state,
        config=trained.config,
        weights={k: v.detach().numpy() for k, v in time_major.state_dict().items()},
        images=images,
        labels=test.labels.numpy(),
        reference=torch_reference(trained, time_major, images[:parity_images]),
        opset=opset,
        form=form,
        train_images=train.images.numpy() if train is not None else None,
    )
    failed: dict[str, str] = {}
    for name, build in FORMATS.items():  # fp32, always wanted, comes first: if it fails, nothing is written
        if name in wanted:
            try:
                src.shipped[name] = build(src)
            except ExportError as error:
                if name == "fp32":
                    raise
                failed[name] = str(error)

    # Write what passed, exactly the bytes the checks ran on; a format that failed its checks is not written.
    wanted = {name: path for name, path in wanted.items() if name in src.shipped}
    for name, path in wanted.items():
        write_bytes(src.shipped[name].blob, path)
    fp32 = src.shipped["fp32"].info
    report = ExportReport(
        out,
        fp32.mnist_test_accuracy,
        state.get("test_acc"),
        fp32.checks["max_abs_logit_diff"],
        fp32.checks["argmax_agreement"],
        fp32.checks["parity_images"],
        paths={name: Path(path) for name, path in wanted.items()},
        infos={name: src.shipped[name].info for name in wanted},
    )
    if "int8" in wanted:
        report.int8_path, report.int8_accuracy = Path(wanted["int8"]), src.shipped["int8"].info.mnist_test_accuracy
        fp32_read, int8_read = (onnx_logits(src.shipped[name].blob, images).argmax(1) for name in ("fp32", "int8"))
        report.int8_changes = prediction_changes(fp32_read, int8_read, src.labels)
    if "int8-static" in wanted:
        report.int8_static_path = Path(wanted["int8-static"])
        report.int8_static_accuracy = src.shipped["int8-static"].info.mnist_test_accuracy
    if ort:
        try:
            report.ort_paths = formats.write_ort_checked(
                [Path(path) for path in wanted.values()], images[:parity_images]
            )
        except ExportError as error:
            failed["ort"] = str(error)
    if failed:
        raise IncompleteExport(report, failed)
    return report
