"""Is onnxruntime's integer arithmetic exact on this CPU, for this int8 model?

An int8 model answers the same on every CPU only if every integer matrix product comes out exact: then the
only differences left are float rounding (a few ulps, far from an argmax). Kernels are chosen by
instruction set, and some are not exact: x86 without VNNI multiplies uint8 activations by *int8* weights
with `vpmaddubsw`, which adds pairs of products in 16 bits and saturates (255 * 127 * 2 > 32767). This
module measures it instead of trusting it:

1. `instrument(model)` (needs onnx): the same graph with each MatMulInteger's quantized activation, its zero
   point and its int32 result exposed as extra outputs, plus the weights those products use (`Probe`);
2. `check(probe, rows)` (a runtime-only install: numpy, onnxruntime, edge_infer; so it also runs on a
   device or under an emulator): runs the probe through onnxruntime and recomputes every product exactly in
   numpy, from the activations onnxruntime itself quantized; any difference is the kernel's.

    python -m export.int8_exact probe MODEL.onnx DIR              # DIR/probe.onnx + DIR/probe.npz (needs onnx)
    python -m export.int8_exact check DIR IMAGES.npy [LOGITS.npy]  # one line; exit 1 if a product is inexact
    python -m export.int8_exact agree LOGITS.npy OTHER.npy         # argmax agreement; exit 1 under 99.9 %

IMAGES.npy: [N, 28, 28] in MNIST form, uint8 (0..255) or float (0..1). `agree` compares the logits two
machines (or kernel families) wrote for the same images.

`cpu_kind()` names the instruction sets onnxruntime's kernels are chosen by, for reports and provenance.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME

MIN_AGREEMENT = 0.999  # argmax agreement between two machines' int8 logits on the same images
CHECK_BATCH = 500  # images per run: the exposed int32 results of every step are held at once


@dataclass
class Probe:
    """An int8 model with its integer products exposed (see instrument)."""

    model: bytes
    products: list[dict[str, str]]  # per MatMulInteger: names of a, a_zero (or ""), b, b_zero (or ""), y
    weights: dict[str, np.ndarray]  # b and b_zero initializers by name

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "probe.onnx").write_bytes(self.model)
        np.savez(folder / "probe.npz", products=np.array(json.dumps(self.products)), **self.weights)

    @classmethod
    def load(cls, folder: Path) -> Probe:
        with np.load(folder / "probe.npz") as saved:
            weights = {name: saved[name] for name in saved.files if name != "products"}
            products = json.loads(str(saved["products"]))
        return cls((folder / "probe.onnx").read_bytes(), products, weights)


@dataclass
class IntegerCheck:
    """How many int32 products onnxruntime computed, and how many differ from the exact ones."""

    products: int
    inexact: int
    max_abs_diff: int
    ops: int  # MatMulInteger nodes checked
    logits: np.ndarray | None = None  # the model's own output on the images, for comparing machines

    @property
    def exact(self) -> bool:
        return self.inexact == 0 and self.products > 0

    def summary(self) -> str:
        return f"{self.ops} MatMulInteger ops, {self.products:,} int32 products: " + (
            "all exact" if self.exact else f"{self.inexact:,} inexact (max |diff| {self.max_abs_diff:,})"
        )


def instrument(model: Any) -> Probe:
    """model: an onnx.ModelProto holding MatMulInteger nodes whose B (and B's zero point) are initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    initializers = {t.name: t for t in graph.initializer}
    exposed = {o.name for o in graph.output}
    products: list[dict[str, str]] = []
    weights: dict[str, np.ndarray] = {}

    def expose(name: str, elem_type: int) -> None:
        if name and name not in exposed and name not in initializers:
            graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
            exposed.add(name)

    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        a, b, a_zero, b_zero = (list(node.input) + ["", ""])[:4]
        if b not in initializers or (b_zero and b_zero not in initializers):
            raise ValueError(f"MatMulInteger {node.output[0]}: its weight is not an initializer")
        expose(a, TensorProto.UINT8)  # DynamicQuantizeLinear's output: activations are uint8
        expose(a_zero, TensorProto.UINT8)
        expose(node.output[0], TensorProto.INT32)
        for name in (b, b_zero):
            if name:
                weights[name] = numpy_helper.to_array(initializers[name])
        if a_zero in initializers:
            weights[a_zero] = numpy_helper.to_array(initializers[a_zero])
        products.append({"a": a, "a_zero": a_zero, "b": b, "b_zero": b_zero, "y": node.output[0]})
    if not products:
        raise ValueError("the model has no MatMulInteger ops to check")
    return Probe(probe.SerializeToString(), products, weights)


def check(probe: Probe, rows: np.ndarray, threads: int = 1) -> IntegerCheck:
    """Run the probe on rows (float32 [28, N, 28]) and compare every int32 product with the exact one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    total = inexact = worst = 0
    logits = []
    for start in range(0, rows.shape[1], CHECK_BATCH):
        values = dict(zip(names, session.run(None, {INPUT_NAME: rows[:, start : start + CHECK_BATCH]}), strict=True))
        values.update(probe.weights)
        logits.append(values[OUTPUT_NAME])
        for product in probe.products:
            a = values[product["a"]].astype(np.float64)
            b = values[product["b"]].astype(np.float64)
            if product["a_zero"]:
                a -= values[product["a_zero"]].astype(np.float64)
            if product["b_zero"]:
                b -= values[product["b_zero"]].astype(np.float64)
            # float64 holds these sums exactly: |sum| <= 255 * 255 * inner size, far below 2**53
            exact = (a @ b).astype(np.int64)
            diff = np.abs(values[product["y"]].astype(np.int64) - exact)
            total += diff.size
            inexact += int(np.count_nonzero(diff))
            worst = max(worst, int(diff.max(initial=0)))
    return IntegerCheck(total, inexact, worst, len(probe.products), np.concatenate(logits))


def cpu_kind() -> str:
    """'x86_64: avx2 avx512f avx512bw avx512_vnni amx_int8' or 'aarch64: asimd asimddp': the instruction sets
    that decide which kernels onnxruntime (and torch) run, from /proc/cpuinfo where there is one. Under
    qemu-user this is the host's, not the emulated CPU's."""
    machine = platform.machine()
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return machine
    flags = next(
        (
            set(v.split())
            for k, _, v in (line.partition(":") for line in text.splitlines())
            if k.strip() in ("flags", "Features")
        ),
        set(),
    )
    return f"{machine}: {' '.join(f for f in wanted if f in flags) or 'no ' + '/'.join(wanted[:3])}"


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "probe":
        import onnx

        instrument(onnx.load(argv[1])).save(Path(argv[2]))
        return 0
    if len(argv) in (3, 4) and argv[0] == "check":
        images = np.load(argv[2])
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        rows = np.ascontiguousarray((images.astype(np.float32) / scale).transpose(1, 0, 2))
        result = check(Probe.load(Path(argv[1])), rows)
        print(f"{len(images)} images: {result.summary()}")
        if len(argv) == 4 and result.logits is not None:
            np.save(argv[3], result.logits)
        return 0 if result.exact else 1
    if len(argv) == 3 and argv[0] == "agree":
        ours, theirs = np.load(argv[1]), np.load(argv[2])
        agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
        print(
            f"{len(ours)} images: argmax agreement {agreement:.2%} (need {MIN_AGREEMENT:.1%}), "
            f"max |logit diff| {np.abs(ours - theirs).max():.1e}"
        )
        return 0 if agreement >= MIN_AGREEMENT else 1
    print(
        "usage: python -m export.int8_exact probe MODEL.onnx DIR | check DIR IMAGES.npy [LOGITS.npy]"
        " | agree A.npy B.npy",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
