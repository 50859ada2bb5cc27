"""Inspect an .onnx file's bytes before onnxruntime sees them, and refuse what edge-infer's models never hold.

A model file is code-like, so the runtime accepts only the shape of graph edge-export writes:
- no external data anywhere (onnxruntime would read the referenced files relative to the working directory
  for a model given as bytes, and leak them through the outputs);
- only the operators the exporter writes (the auto, per-step, hoisted and node forms, and the int8 models),
  so no loops (Loop, Scan: unbounded run time) and no operator that allocates a tensor whose size is a
  run-time value (ConstantOfShape, Expand, Tile, Range, Resize, Pad, ...);
- subgraphs only as the two branches of an If in the main graph (the auto form), checked the same way and
  holding no further subgraph: a branch runs once, so run time stays bounded;
- no local functions or training info.

It uses the runtime's one protobuf reader (edge_infer.onnx_graph.fields; the `onnx` package is not a runtime
dependency) to walk the ModelProto, GraphProto, NodeProto, AttributeProto and TensorProto fields that can carry
ops or data, and skips the rest.
"""

from __future__ import annotations

from edge_infer.model_info import MAX_METADATA_VALUE
from edge_infer.onnx_graph import Budget, OnnxFormatError, TooLarge, fields

# (domain, op_type) edge-export writes; "" is the default ONNX domain (also spelled "ai.onnx").
ALLOWED_OPS = frozenset(
    [
        ("", op)
        for op in (
            "Gemm",
            "MatMul",
            "Add",
            "Sub",
            "Mul",
            "Relu",
            "Tanh",
            "Sigmoid",  # the cells, fp32
            "Reshape",
            "Split",
            "Squeeze",
            "Unsqueeze",
            "Concat",
            "Identity",
            "Transpose",  # layout
            "RNN",
            "GRU",
            "LSTM",  # --form node
            "DynamicQuantizeLinear",
            "MatMulInteger",
            "Cast",
            "QuantizeLinear",
            "DequantizeLinear",  # int8
            "Shape",
            "Gather",
            "Less",
            "If",  # --form auto: one If on the batch size picks the faster form
        )
    ]
    + [
        ("com.microsoft", op)
        for op in ("DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "FusedGemm")
    ]
)

MAX_NODES = 20_000  # nodes in all graphs together (the bundled int8 model, one layer: 724); 19,000 load in ~4 s
WIRE_BYTES = 2  # protobuf's length-delimited wire type
# Field numbers, from onnx.proto3
MODEL_GRAPH, MODEL_METADATA, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 14, 20, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 4, 5, 7
ATTR_TENSOR, ATTR_GRAPH, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
SPARSE_VALUES, SPARSE_INDICES = 1, 2


class UnsafeModel(ValueError):
    """The model holds something edge-infer's models never do; one line."""


class NotOnnx(ValueError):
    """The bytes are not a protobuf ModelProto at all."""


Span = tuple[int, int]  # where a length-delimited field's bytes lie in the model's buffer


class _Budget(Budget):
    """The field budget, and the nodes seen so far."""

    __slots__ = ("choices", "nodes")

    def __init__(self) -> None:
        super().__init__()
        self.nodes = self.choices = 0  # choices: If nodes in the main graph


def _check_tensor(buf: bytes, tensor: Span, budget: _Budget) -> None:
    for n, _, value in fields(buf, *tensor, budget=budget):
        if n == TENSOR_EXTERNAL_DATA or (n == TENSOR_DATA_LOCATION and value != 0):
            raise UnsafeModel("the model uses external data (tensors stored in other files), which edge-infer refuses")


def _check_sparse(buf: bytes, sparse: Span, budget: _Budget) -> None:
    for n, wire, value in fields(buf, *sparse, budget=budget):
        if n in (SPARSE_VALUES, SPARSE_INDICES) and wire == WIRE_BYTES:
            _check_tensor(buf, value, budget)


def _check_graph(buf: bytes, graph: Span, budget: _Budget, depth: int = 0) -> None:
    for n, wire, value in fields(buf, *graph, budget=budget):
        if wire != WIRE_BYTES:
            continue
        if n == GRAPH_INITIALIZER:
            _check_tensor(buf, value, budget)
        elif n == GRAPH_SPARSE_INITIALIZER:
            _check_sparse(buf, value, budget)
        elif n == GRAPH_NODE:
            _check_node(buf, value, budget, depth)


def _name(buf: bytes, span: Span) -> str:
    return buf[span[0] : span[1]].decode("utf-8", "replace")


def _check_node(buf: bytes, node: Span, budget: _Budget, depth: int = 0) -> None:
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise UnsafeModel(f"the model has more than {MAX_NODES:,} nodes (the limit)")
    op_type, domain = "", ""
    for n, wire, value in fields(buf, *node, budget=budget):
        if wire != WIRE_BYTES:
            continue
        if n == NODE_OP_TYPE:
            op_type = _name(buf, value)
        elif n == NODE_DOMAIN:
            domain = _name(buf, value)
        elif n == NODE_ATTRIBUTE:
            for a, a_wire, a_value in fields(buf, value[0], value[1], budget):
                if a_wire != WIRE_BYTES:
                    continue
                if a == ATTR_GRAPH and op_type == "If" and depth == 0:
                    _check_graph(buf, a_value, budget, depth + 1)
                elif a in (ATTR_GRAPH, ATTR_GRAPHS):
                    raise UnsafeModel(
                        f"the model has a subgraph (in a {op_type or '?'} node), which edge-infer's models never do"
                    )
                if a in (ATTR_TENSOR, ATTR_TENSORS):
                    _check_tensor(buf, a_value, budget)
                elif a in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
                    _check_sparse(buf, a_value, budget)
    if op_type == "If" and depth == 0:
        budget.choices += 1
        if budget.choices > 1:
            raise UnsafeModel("the model has more than one If node, which edge-infer's models never do")
    if (("" if domain == "ai.onnx" else domain), op_type) not in ALLOWED_OPS:
        name = f"{domain}.{op_type}" if domain else op_type
        raise UnsafeModel(f"the model uses the operator {name[:80]!r}, which edge-export never writes")


def check_model_bytes(blob: bytes) -> None:
    """Raise NotOnnx or UnsafeModel (one line each) unless blob is an ONNX model of the kind edge-export
    writes. Bounded: raw tensor data is skipped, not parsed, and at most MAX_FIELDS protobuf fields are
    visited (about a second; the bundled models have 3,200-4,400); a metadata entry over MAX_METADATA_VALUE bytes
    is refused before onnxruntime turns it into Python strings."""
    buf = bytes(blob)
    graphs = 0
    budget = _Budget()
    try:
        for n, wire, value in fields(buf, budget=budget):
            if wire != WIRE_BYTES:
                continue
            if n == MODEL_GRAPH:
                graphs += 1
                _check_graph(buf, value, budget)
            elif n == MODEL_METADATA and value[1] - value[0] > MAX_METADATA_VALUE:
                raise UnsafeModel(
                    f"a metadata entry of the model is {value[1] - value[0]:,} bytes (limit {MAX_METADATA_VALUE:,})"
                )
            elif n in (MODEL_FUNCTIONS, MODEL_TRAINING_INFO):
                what = "local functions" if n == MODEL_FUNCTIONS else "training info"
                raise UnsafeModel(f"the model holds {what}, which edge-infer's models never do")
    except TooLarge as error:
        raise UnsafeModel(str(error)) from None
    except OnnxFormatError as error:
        raise NotOnnx(str(error)) from None
    if graphs == 0:
        raise NotOnnx("no ONNX graph in it")
