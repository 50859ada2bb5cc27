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

This is a small hand-written protobuf reader (the `onnx` package is not a runtime dependency): it walks the
ModelProto, GraphProto, NodeProto, AttributeProto and TensorProto fields that can carry ops or data and
skips the rest, in well under a millisecond for the bundled models.
"""

from __future__ import annotations

from collections.abc import Iterator

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

WIRE_VARINT, WIRE_64, WIRE_BYTES, WIRE_32 = 0, 1, 2, 5
# Field numbers, from onnx.proto3
MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 20, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 4, 5, 7
ATTR_TENSOR, ATTR_GRAPH, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
SPARSE_VALUES, SPARSE_INDICES = 1, 2


class UnsafeModel(ValueError):
    """The model holds something edge-infer's models never do; one line."""


class NotOnnx(ValueError):
    """The bytes are not a protobuf ModelProto at all."""


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise NotOnnx("truncated or corrupt protobuf")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message; length-delimited values as memoryviews."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NotOnnx("truncated or corrupt protobuf")
        if wire == WIRE_VARINT:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == WIRE_BYTES:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise NotOnnx("truncated or corrupt protobuf")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire in (WIRE_64, WIRE_32):
            pos += 8 if wire == WIRE_64 else 4
            if pos > end:
                raise NotOnnx("truncated or corrupt protobuf")
        else:  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
            raise NotOnnx(f"not an ONNX protobuf (wire type {wire})")


def _messages(data: memoryview, number: int) -> Iterator[memoryview]:
    for n, wire, value in _fields(data):
        if n == number and wire == WIRE_BYTES:
            yield value  # type: ignore[misc]


def _check_tensor(tensor: memoryview) -> None:
    for n, _, value in _fields(tensor):
        if n == TENSOR_EXTERNAL_DATA or (n == TENSOR_DATA_LOCATION and value != 0):
            raise UnsafeModel("the model uses external data (tensors stored in other files), which edge-infer refuses")


def _check_sparse(sparse: memoryview) -> None:
    for n, wire, value in _fields(sparse):
        if n in (SPARSE_VALUES, SPARSE_INDICES) and wire == WIRE_BYTES:
            _check_tensor(value)  # type: ignore[arg-type]


def _check_graph(graph: memoryview, depth: int = 0) -> None:
    for n, wire, value in _fields(graph):
        if wire != WIRE_BYTES:
            continue
        if n == GRAPH_INITIALIZER:
            _check_tensor(value)  # type: ignore[arg-type]
        elif n == GRAPH_SPARSE_INITIALIZER:
            _check_sparse(value)  # type: ignore[arg-type]
        elif n == GRAPH_NODE:
            _check_node(value, depth)  # type: ignore[arg-type]


def _check_node(node: memoryview, depth: int = 0) -> None:
    op_type, domain = "", ""
    for n, wire, value in _fields(node):
        if wire != WIRE_BYTES:
            continue
        if n == NODE_OP_TYPE:
            op_type = bytes(value).decode("utf-8", "replace")
        elif n == NODE_DOMAIN:
            domain = bytes(value).decode("utf-8", "replace")
        elif n == NODE_ATTRIBUTE:
            for a, a_wire, a_value in _fields(value):  # type: ignore[arg-type]
                if a_wire != WIRE_BYTES:
                    continue
                if a == ATTR_GRAPH and op_type == "If" and depth == 0:
                    _check_graph(a_value, depth + 1)  # type: ignore[arg-type]
                elif a in (ATTR_GRAPH, ATTR_GRAPHS):
                    raise UnsafeModel(
                        f"the model has a subgraph (in a {op_type or '?'} node), which edge-infer's models never do"
                    )
                if a in (ATTR_TENSOR, ATTR_TENSORS):
                    _check_tensor(a_value)  # type: ignore[arg-type]
                elif a in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
                    _check_sparse(a_value)  # type: ignore[arg-type]
    if (("" if domain == "ai.onnx" else domain), op_type) not in ALLOWED_OPS:
        name = f"{domain}.{op_type}" if domain else op_type
        raise UnsafeModel(f"the model uses the operator {name[:80]!r}, which edge-export never writes")


def check_model_bytes(blob: bytes) -> None:
    """Raise NotOnnx or UnsafeModel (one line each) unless blob is an ONNX model of the kind edge-export
    writes. Cheap: raw tensor data is skipped, not parsed."""
    data = memoryview(blob)
    graphs = 0
    for n, wire, value in _fields(data):
        if wire != WIRE_BYTES:
            continue
        if n == MODEL_GRAPH:
            graphs += 1
            _check_graph(value)  # type: ignore[arg-type]
        elif n in (MODEL_FUNCTIONS, MODEL_TRAINING_INFO):
            what = "local functions" if n == MODEL_FUNCTIONS else "training info"
            raise UnsafeModel(f"the model holds {what}, which edge-infer's models never do")
    if graphs == 0:
        raise NotOnnx("no ONNX graph in it")
