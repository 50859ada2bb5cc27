"""Checkpoint -> ONNX, with the checks in one place (like YOLOv5's export.py):

1. rebuild the trained model time-major (batch_first=False, same weights) as the torch reference;
2. build the ONNX graph (export.graph), pin opset + IR version, write metadata, run onnx.checker;
3. parity on real MNIST test images: max |logit difference| <= 1e-4 and 100 % argmax agreement, or no file
   (in one batch and one image at a time: the auto form runs a different graph for each);
4. optionally int8: dynamic quantization (int8 weights, VNNI-friendly u8 x s8), checked for integer ops on
   the recurrent weights and for test accuracy within 0.3 points of fp32;
5. atomic writes.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edge_infer.model_info import INPUT_NAME, ModelInfo
from export.graph import AUTO_FORMS, FORMS, IR_FOR_OPSET, MIN_ORT_FOR_OPSET, OPSETS, SWITCH_BATCH, build_model
from train.data import Split
from train.model import DigitRNN, ModelConfig
from train.trainer import atomic_write, load_checkpoint

PARITY_IMAGES = 1000
PARITY_MAX_ABS_DIFF = 1e-4
INT8_MAX_ACCURACY_DROP = 0.003  # fraction: 0.3 percentage points


class ExportError(RuntimeError):
    """A check failed; nothing was written. The message is one line."""


class CheckpointError(ExportError):
    """The checkpoint is missing, corrupt or not edge-train's."""


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

    def summary(self) -> str:
        lines = [f"parity on {self.parity_images} MNIST test images: max |logit diff| {self.max_abs_diff:.2e} "
                 f"(limit {PARITY_MAX_ABS_DIFF:.0e}), argmax agreement {self.agreement:.2%}",
                 f"fp32: {self.fp32_path} ({self.fp32_path.stat().st_size / 1024:.1f} KiB), "
                 f"MNIST test accuracy {self.fp32_accuracy:.2%}"
                 + (f" (checkpoint: {self.checkpoint_accuracy:.2%})" if self.checkpoint_accuracy is not None else "")]
        if self.int8_path is not None:
            ratio = self.int8_path.stat().st_size / self.fp32_path.stat().st_size
            lines.append(f"int8: {self.int8_path} ({self.int8_path.stat().st_size / 1024:.1f} KiB, {ratio:.0%} of fp32), "
                         f"MNIST test accuracy {self.int8_accuracy:.2%} "
                         f"({(self.int8_accuracy - self.fp32_accuracy) * 100:+.2f} points)")
        return "\n".join(lines)


def package_version() -> str:
    try:
        return version("edge-infer")
    except PackageNotFoundError:
        return "0+unknown"


def load_trained(checkpoint: Path) -> tuple[dict, DigitRNN, DigitRNN]:
    """(checkpoint, batch-first model as trained, time-major rebuild with the same weights)."""
    try:
        state = load_checkpoint(checkpoint)
        config = ModelConfig(**state["model_config"])
        trained, time_major = DigitRNN(config, batch_first=True), DigitRNN(config, batch_first=False)
        trained.load_state_dict(state["model"])
        time_major.load_state_dict(state["model"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(" ".join(str(error).split())[:300]) from None
    return state, trained.eval(), time_major.eval()


def onnx_logits(model: onnx.ModelProto | bytes, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Logits from onnxruntime for uint8/float images [N, 28, 28] (ink bright)."""
    import onnxruntime as ort

    blob = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].astype(np.float32)
        if images.dtype == np.uint8:
            chunk /= 255.0
        out.append(session.run(None, {INPUT_NAME: np.ascontiguousarray(chunk.transpose(1, 0, 2))})[0])
    return np.concatenate(out)


def check_parity(model: onnx.ModelProto, trained: DigitRNN, time_major: DigitRNN, images: np.ndarray
                 ) -> tuple[float, float]:
    """(max |logit diff|, argmax agreement) of ONNX vs torch; both torch layouts must agree too."""
    x = torch.from_numpy(images).float().div_(255.0)
    with torch.no_grad():
        reference = time_major(x.transpose(0, 1).contiguous()).numpy()
        as_trained = trained(x).numpy()
    if np.abs(reference - as_trained).max() > PARITY_MAX_ABS_DIFF:  # guards the rebuild itself
        raise ExportError("the time-major rebuild disagrees with the trained model; refusing to export")
    worst, agreement = 0.0, 1.0
    for batch in (len(images), 1):  # both branches of the auto form: large batches and single images
        ours = onnx_logits(model, images, batch=batch)
        worst = max(worst, float(np.abs(ours - reference).max()))
        agreement = min(agreement, float((ours.argmax(1) == reference.argmax(1)).mean()))
    return worst, agreement


def _auto_choice(graph_form: str, cell: str) -> dict:
    """What the auto form runs at which batch size, for the metadata."""
    if graph_form != "auto":
        return {}
    small, large = AUTO_FORMS[cell]
    return {"small_batch_form": small, "large_batch_form": large, "large_from_batch": SWITCH_BATCH[cell]}


def integer_recurrent_ops(model: onnx.ModelProto) -> list[str]:
    """Integer ops whose int8 weight is a recurrent weight (named Wh*, after quantization Wh*_quantized)."""
    return [f"{n.op_type}({n.input[1]})" for n in model.graph.node
            if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM") and len(n.input) > 1
            and n.input[1].startswith("Wh")]


def quantize_int8(fp32_matmul: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic quantization: int8 per-channel weights, uint8 activations quantized per step at run time
    (u8 x s8 runs on AVX-512 VNNI). Node and tensor names are shortened to keep the file small."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32_matmul, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"MatMulConstBOnly": True})
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
def _quiet_root_logger():
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


def finish(model: onnx.ModelProto, info: ModelInfo, opset: int) -> onnx.ModelProto:
    """Pin the opset and IR version, attach metadata, and run onnx.checker."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    model.ir_version = IR_FOR_OPSET[opset]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_metadata())
    model.doc_string = "edge-infer digit classifier; see metadata_props"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejected the graph: {str(error).splitlines()[0]}") from None
    return model


def save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: onnx.save(model, tmp))


def export(checkpoint: Path, out: Path, test: Split, int8_out: Path | None = None, opset: int = 17,
           form: str = "auto", parity_images: int = PARITY_IMAGES) -> ExportReport:
    """Export checkpoint to out (and int8_out), running every check first. Raises ExportError."""
    if opset not in OPSETS:
        raise ExportError(f"--opset must be between {OPSETS[0]} and {OPSETS[-1]}, not {opset}")
    if form not in FORMS:
        raise ExportError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    if parity_images < PARITY_IMAGES:
        raise ExportError(f"parity needs at least {PARITY_IMAGES} test images")
    state, trained, time_major = load_trained(checkpoint)
    config = trained.config
    weights = {k: v.detach().numpy() for k, v in time_major.state_dict().items()}
    images, labels = test.images.numpy(), test.labels.numpy()

    def info(precision: str, accuracy: float, checks: dict, graph_form: str) -> ModelInfo:
        return ModelInfo(precision=precision, mnist_test_accuracy=round(accuracy, 6),
                         model={**config.to_dict(), "graph": graph_form, **_auto_choice(graph_form, config.cell)},
                         recipe=state["recipe"],
                         package_version=package_version(), min_onnxruntime=MIN_ORT_FOR_OPSET[opset], opset=opset,
                         checks=checks)

    fp32 = build_model(weights, config.cell, config.hidden, config.layers, form=form, gemm=True, opset=opset)
    max_diff, agreement = check_parity(fp32, trained, time_major, images[:parity_images])
    if max_diff > PARITY_MAX_ABS_DIFF or agreement < 1.0:
        raise ExportError(f"parity check failed on {parity_images} MNIST test images: max |logit diff| "
                          f"{max_diff:.2e} (limit {PARITY_MAX_ABS_DIFF:.0e}), argmax agreement {agreement:.2%} "
                          f"(need 100%); nothing written")
    fp32_accuracy = float((onnx_logits(fp32, images).argmax(1) == labels).mean())
    checks = {"parity_images": parity_images, "max_abs_logit_diff": max_diff, "argmax_agreement": agreement,
              "checkpoint_test_accuracy": state.get("test_acc")}
    fp32 = finish(fp32, info("fp32", fp32_accuracy, checks, form), opset)
    report = ExportReport(out, fp32_accuracy, state.get("test_acc"), max_diff, agreement, parity_images)

    int8 = None
    if int8_out is not None:
        # The MatMul+Add form: the only one whose recurrent weights the dynamic quantizer reaches.
        int8 = quantize_int8(build_model(weights, config.cell, config.hidden, config.layers, form="per-step",
                                         gemm=False, opset=opset))
        recurrent = integer_recurrent_ops(int8)
        if not recurrent:
            raise ExportError("int8 graph has no integer ops on the recurrent weights; nothing written")
        int8_accuracy = float((onnx_logits(int8, images).argmax(1) == labels).mean())
        drop = fp32_accuracy - int8_accuracy
        if drop > INT8_MAX_ACCURACY_DROP:
            raise ExportError(f"int8 MNIST test accuracy {int8_accuracy:.2%} is {drop * 100:.2f} points below fp32 "
                              f"{fp32_accuracy:.2%} (limit {INT8_MAX_ACCURACY_DROP * 100:.1f}); nothing written")
        int8_checks = {"fp32_mnist_test_accuracy": round(fp32_accuracy, 6), "accuracy_drop": round(drop, 6),
                       "integer_recurrent_ops": len(recurrent), "weights": "int8 per-channel, dynamic uint8 activations"}
        int8 = finish(int8, info("int8", int8_accuracy, int8_checks, "per-step-int8"), opset)
        report.int8_path, report.int8_accuracy = int8_out, int8_accuracy

    # Write only after every check passed.
    save(fp32, out)
    if int8 is not None:
        save(int8, int8_out)
    return report
