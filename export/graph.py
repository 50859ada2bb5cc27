"""ONNX graphs for the digit classifier, built node by node from a trained state_dict.

The recurrence always runs time-major: input `rows` is float32 [28, N, 28] (time, batch, pixels), output
`logits` is [N, 10], with N dynamic. We build the graph ourselves instead of tracing torch: the graph is
lean (short names, every constant once), never touches the batch_first path that old exporters rejected,
and takes the form we choose:

  "auto" (default)     two of the forms below in one graph, and an If node that picks one by the batch size:
                      the form fastest at small batches for this cell (AUTO_FORMS) below SWITCH_BATCH, per-step
                      from there on (lstm: the node form at every batch size, no If). Both branches read the
                      same weights, stored once where the forms share them (per-step and hoisted do; the node
                      form has its own gate order). The If costs ~3 us.
  "per-step"          the recurrence as one Gemm(+Relu, fused by onnxruntime) per step,
                      h_t = Relu(Gemm(h_{t-1}, W_hh, C = x_t W_ih^T + b)), where each step projects its own
                      input row. With `gemm=False` it is written as MatMul+Add, which onnxruntime's dynamic
                      quantizer turns into int8 MatMulInteger for the recurrent weights too (the int8 form).
  "hoisted"           the input projection of all 28 steps hoisted into one Gemm, then Split per step:
                      28 fewer nodes, ~10 us (~20 %) faster at batch 1, but Split copies the big projected
                      tensor, which makes it 15-20 % slower from batch 64 on.
  "node"              one ONNX RNN / GRU / LSTM node per layer (the textbook export): one node, but
                      onnxruntime's kernels for it are 2x slower than the others from batch 64 on.
  (benchmarks/inference.py times all three side by side.)

Gate orders differ: torch GRU is (r, z, n), ONNX GRU (z, r, h); torch LSTM is (i, f, g, o), ONNX LSTM
(i, o, f, c). Parity with torch is checked by export.export, never assumed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_infer.model_info import CLASSES, INPUT_NAME, OUTPUT_NAME, PIXELS, STEPS

FORMS = ("auto", "per-step", "hoisted", "node")
# "auto": (small-batch form, large-batch form) per cell, and the batch from which the large one runs. Measured
# with benchmarks/inference.py on a 2-core Sapphire Rapids: for rnn the node form is the fastest at batch 1
# (with the runtime's IO binding; 4 us ahead of hoisted) but 2x slower from batch 4, where per-step is about as
# fast as hoisted; for gru and lstm the node form is 2-2.5x faster than the ~10 nodes per step of
# the others at batch 1; per-step is the fastest from batch 64 for rnn and gru, while for lstm the node form
# stays the fastest at batch 1024 too (on the 2 threads Classifier gives large batches), so lstm needs no If.
AUTO_FORMS = {"rnn": ("node", "per-step"), "gru": ("node", "per-step"), "lstm": ("node", "node")}
SWITCH_BATCH = {"rnn": 2, "gru": 16, "lstm": 16}
INPUT, OUTPUT = INPUT_NAME, OUTPUT_NAME  # the contract's names (edge_infer.model_info)
OPSET = 17  # the default; the exporter pins it and the matching IR version
# Lowest onnxruntime that runs each opset; we never claim less than 1.16.
MIN_ORT_FOR_OPSET = {
    13: "1.16",
    14: "1.16",
    15: "1.16",
    16: "1.16",
    17: "1.16",
    18: "1.16",
    19: "1.16",
    20: "1.17",
    21: "1.18",
}
IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
OPSETS = tuple(MIN_ORT_FOR_OPSET)


class _Graph:
    """A tiny builder: unique short names, initializers stored once."""

    def __init__(self, opset: int, hoist: bool, prefix: str = "", shared: bool = False) -> None:
        self.opset, self.hoist, self.prefix = opset, hoist, prefix  # prefix: of node and tensor names
        self.shared = shared  # the node form derives its weights from the per-step form's (auto form)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        self._count += 1
        t = f"{self.prefix}t{self._count}"
        outputs = [t if n_out == 1 else f"{t}_{i}" for i in range(n_out)]
        if op_type == "Split" and len(inputs) == 1 and self.opset >= 18:
            attrs["num_outputs"] = n_out  # opset 18 made the equal-split count explicit
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{self.prefix}n{self._count}", **attrs))
        return outputs[0] if n_out == 1 else outputs

    def linear(self, x: str, weight: str, bias: str | None, gemm: bool) -> str:
        """x @ W^T + b. Gemm is one fused node; MatMul+Add is what the dynamic quantizer reaches."""
        if gemm:
            return self.op("Gemm", [x, weight] + ([bias] if bias else []), transB=1)
        y = self.op("MatMul", [x, weight])
        return self.op("Add", [y, bias]) if bias else y


def build_graph(
    state: dict[str, np.ndarray],
    cell: str,
    hidden: int,
    layers: int,
    form: str = "per-step",
    gemm: bool = True,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """An ONNX model computing the same logits as train.model.DigitRNN with these weights."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if form == "auto":
        if not gemm:
            raise ValueError("the auto form is fp32 Gemm only (int8 quantizes the per-step MatMul form)")
        small, large = AUTO_FORMS[cell]
        if small != large:
            return _auto_model(state, cell, hidden, layers, opset)
        form = small  # one form is the fastest at every batch size: no If
    g = _Graph(opset, hoist=form == "hoisted")
    _build(g, state, cell, hidden, layers, form, gemm, OUTPUT)
    return _model(g.nodes, list(g.initializers.values()), opset)


build_model = build_graph  # the old name, for code written before the rename


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "digit_rnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [STEPS, "N", PIXELS])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edge-infer")


def _auto_model(state: dict[str, np.ndarray], cell: str, hidden: int, layers: int, opset: int) -> onnx.ModelProto:
    """If(batch < SWITCH_BATCH[cell]) then the small-batch form else the large-batch one (AUTO_FORMS)."""
    g = _Graph(opset, hoist=False)
    branches = []
    for prefix, form in zip("sl", AUTO_FORMS[cell], strict=False):
        branch = _Graph(opset, hoist=form == "hoisted", prefix=prefix, shared=True)
        _build(branch, state, cell, hidden, layers, form, True, prefix + OUTPUT)
        for name, tensor in branch.initializers.items():  # the outer graph holds the weights, each name once
            assert name not in g.initializers or g.initializers[name] == tensor, name
            g.initializers[name] = tensor
        # A branch reading the outer graph's weights directly is ~10 us slower per call at batch 1 (they are
        # passed in as implicit inputs and not pre-packed): give it its own copy, a one-input Concat, which
        # onnxruntime folds into a constant of the branch when it loads the model.
        # Small constants (shapes, axes) are simply stored in the branch: fewer implicit inputs per call.
        weights = {name for name, t in branch.initializers.items() if t.data_type == TensorProto.FLOAT}
        consts = [t for name, t in branch.initializers.items() if name not in weights]
        local: dict[str, str] = {}
        for node in branch.nodes:
            for i, name in enumerate(node.input):
                if name in weights:
                    node.input[i] = local.setdefault(name, f"{prefix}_{name}")
        copies = [
            helper.make_node("Concat", [name], [copy], name=f"{prefix}_copy_{name}", axis=0)
            for name, copy in local.items()
        ]
        out = helper.make_tensor_value_info(prefix + OUTPUT, TensorProto.FLOAT, ["N", CLASSES])
        branches.append(helper.make_graph(copies + branch.nodes, f"{prefix}_{form}", [], [out], consts))
        for tensor in consts:
            del g.initializers[tensor.name]
    if opset >= 15:  # Shape slices itself there: one node fewer per call
        batch = g.op("Shape", [INPUT], start=1, end=2)
        switch = g.const("switch_batch", np.array([SWITCH_BATCH[cell]], np.int64))
    else:
        batch = g.op("Gather", [g.op("Shape", [INPUT]), g.const("dim1", np.array(1, np.int64))], axis=0)
        switch = g.const("switch_batch", np.array(SWITCH_BATCH[cell], np.int64))
    small = g.op("Less", [batch, switch])
    g.nodes.append(
        helper.make_node("If", [small], [OUTPUT], name="choose_form", then_branch=branches[0], else_branch=branches[1])
    )
    return _model(g.nodes, list(g.initializers.values()), opset)


def _build(
    g: _Graph, state: dict[str, np.ndarray], cell: str, hidden: int, layers: int, form: str, gemm: bool, output: str
) -> None:
    """Append the nodes of one form to g; the last one writes `output`."""
    if form in ("hoisted", "per-step"):
        if not gemm:  # MatMul takes W^T as stored; transpose once here, not per step
            state = {k: (v.T.copy() if k.startswith("rnn.weight") or k == "fc.weight" else v) for k, v in state.items()}
        seq = g.op("Reshape", [INPUT, g.const("shape_rows", np.array([-1, PIXELS], np.int64))])  # [28N, 28]
        last = None
        for layer in range(layers):
            step = {"rnn": _rnn_layer, "gru": _gru_layer, "lstm": _lstm_layer}[cell]
            outputs = step(g, seq, state, layer, hidden, gemm)
            last = outputs[-1]
            if layer + 1 < layers:
                seq = g.op("Concat", outputs, axis=0)  # [28N, H]: the next layer's input sequence
        final = last
    else:
        seq = INPUT
        for layer in range(layers):
            y, y_h = _recurrent_node(g, seq, state, cell, layer, hidden)
            seq = g.op("Squeeze", [y, g.const("axis1", np.array([1], np.int64))])  # [28, N, H]
        final = g.op("Squeeze", [y_h, g.const("axis0", np.array([0], np.int64))])  # [N, H]
    g.linear(final, g.const("Wo", state["fc.weight"]), g.const("bo", state["fc.bias"]), gemm)
    g.nodes[-1].output[0] = output  # the last node (Gemm, or MatMul's Add) produces the logits


def _weights(
    g: _Graph, state: dict[str, np.ndarray], layer: int, gates: int, hidden: int, fold_hh_bias: slice | None
) -> tuple[str, str, np.ndarray, np.ndarray]:
    """Input weight + bias names, and the recurrent weight / bias arrays, for one layer.
    fold_hh_bias: which gate rows of b_hh can be folded into the hoisted input bias (all but GRU's n gate)."""
    w_ih, w_hh = state[f"rnn.weight_ih_l{layer}"], state[f"rnn.weight_hh_l{layer}"]
    b_ih, b_hh = state[f"rnn.bias_ih_l{layer}"].copy(), state[f"rnn.bias_hh_l{layer}"].copy()
    if fold_hh_bias is not None:
        b_ih[fold_hh_bias] += b_hh[fold_hh_bias]
    return g.const(f"Wi{layer}", w_ih), g.const(f"bi{layer}", b_ih), w_hh, b_hh


def _input_steps(g: _Graph, seq: str, w_ih: str, b_ih: str, gemm: bool) -> list[str]:
    """Each step's input projection, 28 [N, G*H] tensors. Hoisted: one Gemm over all 28 steps, then a
    Split (fewest nodes: fastest at small batches). Not hoisted: Split the (4.5x smaller) input, then one
    projection per step (no copy of the big projected tensor: faster for int8 at large batches)."""
    if g.hoist:
        return g.op("Split", [g.linear(seq, w_ih, b_ih, gemm)], n_out=STEPS, axis=0)
    return [g.linear(x_t, w_ih, b_ih, gemm) for x_t in g.op("Split", [seq], n_out=STEPS, axis=0)]


def _rnn_layer(g: _Graph, seq: str, state, layer: int, hidden: int, gemm: bool) -> list[str]:
    w_ih, b_ih, w_hh, _ = _weights(g, state, layer, 1, hidden, fold_hh_bias=slice(None))
    steps = _input_steps(g, seq, w_ih, b_ih, gemm)
    w_hh = g.const(f"Wh{layer}", w_hh)
    h = g.op("Relu", [steps[0]])  # h0 = 0, so step 0 has no recurrent term
    outputs = [h]
    for x_t in steps[1:]:
        # Gemm(h, W_hh, x_t): the step's input projection rides in as Gemm's C
        pre = g.op("Gemm", [h, w_hh, x_t], transB=1) if gemm else g.op("Add", [g.op("MatMul", [h, w_hh]), x_t])
        h = g.op("Relu", [pre])
        outputs.append(h)
    return outputs


def _gru_layer(g: _Graph, seq: str, state, layer: int, hidden: int, gemm: bool) -> list[str]:
    H = hidden
    # b_hn sits inside r * (W_hn h + b_hn), so only the r and z rows of b_hh fold into the input bias.
    w_ih, b_ih, w_hh, b_hh = _weights(g, state, layer, 3, H, fold_hh_bias=slice(0, 2 * H))
    steps = _input_steps(g, seq, w_ih, b_ih, gemm)
    # Gemm keeps torch's [out, in] layout (gate blocks are rows); MatMul's is transposed (blocks are columns).
    w_hrz = g.const(f"Whrz{layer}", w_hh[: 2 * H] if gemm else w_hh[:, : 2 * H])
    w_hn = g.const(f"Whn{layer}", w_hh[2 * H :] if gemm else w_hh[:, 2 * H :])
    b_hn = g.const(f"bhn{layer}", b_hh[2 * H :])
    h = None
    outputs = []
    for x_t in steps:
        x_rz, x_n = g.op("Split", [x_t, g.const("split_gru", np.array([2 * H, H], np.int64))], n_out=2, axis=1)
        if h is None:  # h0 = 0
            rz = g.op("Sigmoid", [x_rz])
            h_n = b_hn
        else:
            rz = g.op("Sigmoid", [g.op("Add", [x_rz, g.linear(h, w_hrz, None, gemm)])])
            h_n = g.linear(h, w_hn, b_hn, gemm)
        r, z = g.op("Split", [rz], n_out=2, axis=1)
        n = g.op("Tanh", [g.op("Add", [x_n, g.op("Mul", [r, h_n])])])
        # h' = (1 - z) * n + z * h  =  n + z * (h - n)
        h = (
            g.op("Sub", [n, g.op("Mul", [z, n])])
            if h is None
            else g.op("Add", [n, g.op("Mul", [z, g.op("Sub", [h, n])])])
        )
        outputs.append(h)
    return outputs


def _lstm_layer(g: _Graph, seq: str, state, layer: int, hidden: int, gemm: bool) -> list[str]:
    w_ih, b_ih, w_hh, _ = _weights(g, state, layer, 4, hidden, fold_hh_bias=slice(None))
    steps = _input_steps(g, seq, w_ih, b_ih, gemm)
    w_hh = g.const(f"Wh{layer}", w_hh)
    h = c = None
    outputs = []
    for x_t in steps:
        gates = x_t if h is None else g.op("Add", [x_t, g.linear(h, w_hh, None, gemm)])
        i, f, cell_in, o = g.op("Split", [gates], n_out=4, axis=1)
        i, f, o = (g.op("Sigmoid", [t]) for t in (i, f, o))
        ig = g.op("Mul", [i, g.op("Tanh", [cell_in])])
        c = ig if c is None else g.op("Add", [g.op("Mul", [f, c]), ig])
        h = g.op("Mul", [o, g.op("Tanh", [c])])
        outputs.append(h)
    return outputs


def _recurrent_node(g: _Graph, seq: str, state, cell: str, layer: int, hidden: int) -> tuple[str, str]:
    H = hidden
    w_ih, w_hh = state[f"rnn.weight_ih_l{layer}"], state[f"rnn.weight_hh_l{layer}"]
    b_ih, b_hh = state[f"rnn.bias_ih_l{layer}"], state[f"rnn.bias_hh_l{layer}"]
    # Reorder torch's gate blocks into ONNX's.
    order = {"rnn": [0], "gru": [1, 0, 2], "lstm": [0, 3, 1, 2]}[cell]

    def reorder(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[k * H : (k + 1) * H] for k in order])[None]

    if g.shared:
        inputs = [seq, *_node_weights_from_step_weights(g, state, cell, layer, H, order)]
    else:
        inputs = [
            seq,
            g.const(f"W{layer}", reorder(w_ih)),
            g.const(f"R{layer}", reorder(w_hh)),
            g.const(f"B{layer}", np.concatenate([reorder(b_ih), reorder(b_hh)], axis=1)),
        ]
    attrs: dict = {"hidden_size": H}
    if cell == "rnn":
        attrs["activations"] = ["Relu"]
    if cell == "gru":
        attrs["linear_before_reset"] = 1  # torch applies r after the recurrent Linear
    op_type = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    y, y_h = g.op(op_type, inputs, n_out=2, **attrs)
    return y, y_h


def _node_weights_from_step_weights(g: _Graph, state, cell: str, layer: int, H: int, order: list[int]) -> list[str]:
    """W, R, B of an ONNX RNN/GRU/LSTM node, computed by Split/Concat/Unsqueeze nodes from the per-step form's
    weights (registered here under the same names, so the file holds them once). onnxruntime folds these
    nodes into constants when it loads the model. The per-step biases already hold b_hh (GRU: its r and z
    rows), so the node's recurrent bias is zero there."""
    gates = len(order)
    fold = slice(0, 2 * H) if cell == "gru" else slice(None)
    w_ih, b_ih, w_hh, b_hh = _weights(g, state, layer, gates, H, fold_hh_bias=fold)

    def reordered(blocks: list[str]) -> str:
        return blocks[0] if len(blocks) == 1 else g.op("Concat", [blocks[k] for k in order], axis=0)

    def split(name: str, n: int) -> list[str]:
        return [name] if n == 1 else g.op("Split", [name], n_out=n, axis=0)

    if cell == "gru":  # the per-step form keeps W_hh as its r,z rows and its n rows, and b_hn apart
        w_rz, w_n = g.const(f"Whrz{layer}", w_hh[: 2 * H]), g.const(f"Whn{layer}", w_hh[2 * H :])
        recurrent = reordered(split(w_rz, 2) + [w_n])
        zero = g.const(f"zeros{2 * H}", np.zeros(2 * H, np.float32))
        recurrent_bias = g.op("Concat", [zero, g.const(f"bhn{layer}", b_hh[2 * H :])], axis=0)
    else:
        recurrent = reordered(split(g.const(f"Wh{layer}", w_hh), gates))
        recurrent_bias = g.const(f"zeros{gates * H}", np.zeros(gates * H, np.float32))
    bias = g.op("Concat", [reordered(split(b_ih, gates)), recurrent_bias], axis=0)
    axis0 = g.const("axis0", np.array([0], np.int64))
    return [g.op("Unsqueeze", [t, axis0]) for t in (reordered(split(w_ih, gates)), recurrent, bias)]
