"""A small reader of the ONNX file format (protobuf wire format), so the runtime can look inside a model
without the `onnx` package: the graph's nodes, weights (names, shapes, types; never their values),
inputs and outputs with shapes, opsets and metadata.

    graph = read_model(Path("model.onnx").read_bytes())
    [node.op_type for node in graph.nodes], graph.initializers["Wh0"].dims, graph.uses_external_data

Only the fields named below are decoded; everything else is skipped by its wire type, as protobuf
readers do. Field numbers are those of onnx/onnx.proto (stable since IR version 3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_infer.model_info import MAX_METADATA_VALUE, large_from_batch

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DATA_TYPES",
    "INTEGER_TYPES",
    "MAX_DIMS",
    "MAX_FIELDS",
    "MAX_SUBGRAPH_DEPTH",
    "Budget",
    "ModelGraph",
    "Node",
    "OnnxFormatError",
    "Tensor",
    "TooLarge",
    "ValueInfo",
    "printable",
    "read_model",
]


class OnnxFormatError(ValueError):
    """The bytes are not a readable ONNX model (or one past this reader's limits); one line."""


# Limits, so that reading any file of up to 256 MiB stays bounded in time and memory (README: Security and
# limits). The bundled models are far below each: 3,200-4,400 fields, 724 nodes, subgraphs 1 deep, 3 dims.
MAX_FIELDS = 1_000_000  # protobuf fields one reading visits (1.5 s on the 2-core development machine)
MAX_SUBGRAPH_DEPTH = 8  # graphs inside graphs (an If's branches are 1 deep)
MAX_DIMS = 16  # dimensions kept per shape; the rest are counted (Tensor.more_dims) and drawn as "…"


class TooLarge(OnnxFormatError):
    """The model is past one of this reader's limits."""


class Budget:
    """How many more protobuf fields one reading of a model may visit (fields() counts them down)."""

    __slots__ = ("left",)

    def __init__(self, fields: int = MAX_FIELDS) -> None:
        self.left = fields

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooLarge(f"the model has more than {MAX_FIELDS:,} protobuf fields to read (the limit)")


# TensorProto.DataType
DATA_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}
INTEGER_TYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64", "uint32", "uint64"})


@dataclass(frozen=True)
class Tensor:
    """An initializer (a weight): what it is, not its values."""

    name: str
    dims: tuple[int, ...]
    data_type: str  # e.g. "float32", "int8"
    external: bool = False  # its data lives in another file (data_location = EXTERNAL)
    more_dims: int = 0  # dimensions beyond the MAX_DIMS kept in dims

    @property
    def size(self) -> int:
        """The number of values (of the kept dims only, when more_dims)."""
        count = 1
        for d in self.dims:
            count *= d
        return count


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: name, element type and shape (ints, or names for dynamic dimensions)."""

    name: str
    data_type: str | None
    shape: tuple[int | str | None, ...] | None  # None: no shape recorded; past MAX_DIMS, "…" ends it


@dataclass(frozen=True)
class Node:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str = ""
    domain: str = ""
    subgraphs: tuple[tuple[str, ModelGraph], ...] = ()  # graph attributes (an If's branches), by name


@dataclass
class ModelGraph:
    ir_version: int = 0
    producer: str = ""
    opsets: dict[str, int] = field(default_factory=dict)  # domain ("" = ai.onnx) -> version
    name: str = ""
    nodes: list[Node] = field(default_factory=list)
    initializers: dict[str, Tensor] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)  # without initializers listed as inputs (IR < 4)
    outputs: list[ValueInfo] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    has_functions: bool = False  # model-local functions (not expanded here)
    note: str = ""  # what a drawing of this graph leaves out (see large_batch_view)
    nodes_not_read: int = 0  # nodes past read_model's max_nodes: counted, not decoded

    @property
    def node_count(self) -> int:
        return len(self.nodes) + self.nodes_not_read

    @property
    def uses_external_data(self) -> bool:
        return any(t.external for t in self.initializers.values())


def printable(text: str, limit: int = 100) -> str:
    """Text from a model as it may be shown: at most `limit` characters (cut with "…"), and control and
    other non-printable characters written as \\xNN / \\uNNNN, so that a name can't move a terminal's cursor or
    break an SVG (XML allows no control characters, escaped or not)."""
    clipped = text if len(text) <= limit else text[: limit - 1] + "…"
    if clipped.isprintable():
        return clipped
    out = "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in clipped
    )
    return out if len(out) <= limit else out[: limit - 1] + "…"


# -- the wire format -------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise OnnxFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise OnnxFormatError("varint too long")


def fields(
    buf: bytes, start: int = 0, end: int | None = None, budget: Budget | None = None
) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of one message; value is an int for varints and
    fixed-size fields, or (start, end) of the bytes for length-delimited ones (hence Any: the wire type,
    which every reader checks first, says which). Each field is spent from budget, if given."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        if budget is not None:
            budget.spend()
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int]
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire}")
        if pos > end or number == 0:
            raise OnnxFormatError("truncated or malformed protobuf message")
        yield number, wire, value


def _text(buf: bytes, span: tuple[int, int]) -> str:
    try:
        return buf[span[0] : span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxFormatError("a name is not valid UTF-8") from None


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _ints(buf: bytes, wire: int, value: Any, budget: Budget) -> list[int]:
    """A repeated int64 field: one varint, or a packed run of them (each spent from budget)."""
    if wire == 0:
        return [_signed(value)]
    out, pos, end = [], value[0], value[1]
    while pos < end:
        budget.spend()
        v, pos = _varint(buf, pos, end)
        out.append(_signed(v))
    return out


# -- the messages we read --------------------------------------------------------------------------


def _node(buf: bytes, span: tuple[int, int], budget: Budget, depth: int, max_nodes: int | None) -> Node:
    inputs, outputs, name, op_type, domain = [], [], "", "", ""
    subgraphs: list[tuple[str, ModelGraph]] = []
    for number, wire, value in fields(buf, *span, budget=budget):
        if wire != 2:
            continue
        if number == 1:
            inputs.append(_text(buf, value))
        elif number == 2:
            outputs.append(_text(buf, value))
        elif number == 3:
            name = _text(buf, value)
        elif number == 4:
            op_type = _text(buf, value)
        elif number == 7:
            domain = _text(buf, value)
        elif number == 5:  # AttributeProto: name = 1, g (a graph) = 6
            attribute, graph = "", None
            for n2, w2, v2 in fields(buf, value[0], value[1], budget):
                if n2 == 1 and w2 == 2:
                    attribute = _text(buf, v2)
                elif n2 == 6 and w2 == 2:
                    if depth >= MAX_SUBGRAPH_DEPTH:
                        raise TooLarge(f"subgraphs nested more than {MAX_SUBGRAPH_DEPTH} deep (the limit)")
                    graph = ModelGraph()
                    _graph(buf, v2, graph, budget, depth + 1, max_nodes)
            if graph is not None:
                subgraphs.append((attribute, graph))
    return Node(op_type, tuple(inputs), tuple(outputs), name, domain, tuple(subgraphs))


def _tensor(buf: bytes, span: tuple[int, int], budget: Budget) -> Tensor:
    dims: list[int] = []
    data_type, name, external = 0, "", False
    for number, wire, value in fields(buf, *span, budget=budget):
        if number == 1:
            dims.extend(_ints(buf, wire, value, budget))
        elif number == 2 and wire == 0:
            data_type = value
        elif number == 8 and wire == 2:
            name = _text(buf, value)
        elif number == 14 and wire == 0:
            external = value == 1  # DataLocation.EXTERNAL
        elif number == 13:  # external_data entries
            external = True
    kept = tuple(dims[:MAX_DIMS])
    return Tensor(name, kept, DATA_TYPES.get(data_type, f"type{data_type}"), external, len(dims) - len(kept))


def _shape(buf: bytes, span: tuple[int, int], budget: Budget) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for number, wire, value in fields(buf, *span, budget=budget):
        if number == 1 and wire == 2:  # Dimension
            if len(dims) == MAX_DIMS:
                dims.append("…")
            if len(dims) > MAX_DIMS:
                continue
            dim: int | str | None = None
            for n, w, v in fields(buf, value[0], value[1], budget):
                if n == 1 and w == 0:
                    dim = _signed(v)
                elif n == 2 and w == 2:
                    dim = _text(buf, v)
            dims.append(dim)
    return tuple(dims)


def _value_info(buf: bytes, span: tuple[int, int], budget: Budget) -> ValueInfo:
    name, data_type, shape = "", None, None
    for number, wire, value in fields(buf, *span, budget=budget):
        if number == 1 and wire == 2:
            name = _text(buf, value)
        elif number == 2 and wire == 2:  # TypeProto
            for n, w, v in fields(buf, value[0], value[1], budget):
                if n == 1 and w == 2:  # tensor_type
                    for n2, w2, v2 in fields(buf, v[0], v[1], budget):
                        if n2 == 1 and w2 == 0:
                            data_type = DATA_TYPES.get(v2, f"type{v2}")
                        elif n2 == 2 and w2 == 2:
                            shape = _shape(buf, v2, budget)
    return ValueInfo(name, data_type, shape)


def _graph(
    buf: bytes, span: tuple[int, int], model: ModelGraph, budget: Budget, depth: int = 0, max_nodes: int | None = None
) -> None:
    inputs: list[ValueInfo] = []
    for number, wire, value in fields(buf, *span, budget=budget):
        if wire != 2:
            continue
        if number == 1 and max_nodes is not None and len(model.nodes) >= max_nodes:
            model.nodes_not_read += 1
        elif number == 1:
            model.nodes.append(_node(buf, value, budget, depth, max_nodes))
        elif number == 2:
            model.name = _text(buf, value)
        elif number == 5:
            tensor = _tensor(buf, value, budget)
            model.initializers[tensor.name] = tensor
        elif number == 11:
            inputs.append(_value_info(buf, value, budget))
        elif number == 12:
            model.outputs.append(_value_info(buf, value, budget))
    model.inputs = [i for i in inputs if i.name not in model.initializers]


def _pair(buf: bytes, span: tuple[int, int], budget: Budget) -> tuple[str, str]:
    """OperatorSetIdProto (domain=1, version=2) or StringStringEntryProto (key=1, value=2)."""
    first, second = "", ""
    for number, wire, value in fields(buf, *span, budget=budget):
        if number == 1 and wire == 2:
            first = _text(buf, value)
        elif number == 2:
            second = _text(buf, value) if wire == 2 else str(value)
    return first, second


def large_batch_view(model: ModelGraph) -> ModelGraph:
    """The graph a drawing shows. The auto form (edge-export --form auto) is one If on the batch size over two
    graph forms; drawn is its else branch, the large-batch form with the 28 unrolled steps, as one graph with
    the outer graph's inputs, outputs and weights (the branch's one-input Concat weight copies undone), and a
    note naming what runs below the switch. Any other graph is returned as it is."""
    choose = next((n for n in model.nodes if n.op_type == "If" and len(n.subgraphs) == 2), None)
    if choose is None:
        return model
    branches = dict(choose.subgraphs)
    large, small = branches.get("else_branch"), branches.get("then_branch")
    if large is None or small is None:
        return model
    weights = {**model.initializers, **large.initializers}
    alias = {
        n.outputs[0]: n.inputs[0]
        for n in large.nodes
        if n.op_type == "Concat" and len(n.inputs) == 1 and n.inputs[0] in weights
    }
    rename = {**alias, **{o.name: choose.outputs[0] for o in large.outputs}}
    nodes = [
        Node(
            n.op_type,
            tuple(rename.get(i, i) for i in n.inputs),
            tuple(rename.get(o, o) for o in n.outputs),
            n.name,
            n.domain,
        )
        for n in large.nodes
        if n.outputs[0] not in alias
    ]
    small_ops = sorted({n.op_type for n in small.nodes if n.op_type != "Concat"} - {"Squeeze", "Reshape"})
    try:
        switch = f"from batch {large_from_batch(json.loads(model.metadata['model'][:MAX_METADATA_VALUE]))}"
    except (KeyError, ValueError, RecursionError):  # none, or not a sane batch size (1e400 reads as inf)
        switch = "for large batches"
    note = f"auto form: drawn is the branch run {switch}; smaller batches run {', '.join(small_ops)}"
    return ModelGraph(
        model.ir_version,
        model.producer,
        model.opsets,
        model.name,
        nodes,
        weights,
        model.inputs,
        model.outputs,
        model.metadata,
        model.has_functions,
        note,
        large.nodes_not_read,
    )


def read_model(blob: bytes, max_nodes: int | None = None) -> ModelGraph:
    """The structure of a serialized ONNX ModelProto. Raises OnnxFormatError for bytes that are not one (or
    past the limits above). With max_nodes, each graph's nodes past that many are counted, not decoded."""
    buf = bytes(blob)
    model = ModelGraph()
    seen_graph = False
    budget = Budget()
    try:
        for number, wire, value in fields(buf, budget=budget):
            if number == 1 and wire == 0:
                model.ir_version = value
            elif number == 2 and wire == 2:
                model.producer = _text(buf, value)
            elif number == 7 and wire == 2:
                _graph(buf, value, model, budget, 0, max_nodes)
                seen_graph = True
            elif number == 8 and wire == 2:
                domain, version = _pair(buf, value, budget)
                model.opsets[domain] = int(version or 0)
            elif number == 14 and wire == 2:
                key, text = _pair(buf, value, budget)
                model.metadata[key] = text
            elif number == 25 and wire == 2:
                model.has_functions = True
    except (IndexError, ValueError, RecursionError) as error:
        if isinstance(error, OnnxFormatError):
            raise OnnxFormatError(f"not a readable ONNX model ({error})") from None
        raise OnnxFormatError(f"not a readable ONNX model ({type(error).__name__})") from None
    if not seen_graph or model.ir_version == 0:
        raise OnnxFormatError("not an ONNX model (no graph or IR version)")
    return model
