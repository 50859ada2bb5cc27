"""A picture of an ONNX model's graph: inputs and outputs with shapes, op types, weight shapes, integer
(quantized) ops marked, and an unrolled recurrence collapsed into one block drawn once with "× 28".

    summary = summarize(read_model(blob))      # the graph data the picture is drawn from
    draw(summary, "graph.svg")                 # .svg (text) or .png (Pillow)

The repeated block is found from the graph alone, with no knowledge of how it was built: a class of
structurally identical nodes that form a chain (each depends on the one before) cuts the graph into
steps; each step is what the chain member needs that the previous one did not. Nodes that feed many
steps (a Split of the input rows) stay outside, and a first step with a subset of the block's ops
(h0 = 0: no recurrent term) is counted in the repeat and noted.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.sax.saxutils import escape

from edge_infer.files import replace_file
from edge_infer.onnx_graph import ModelGraph, Node, ValueInfo, large_batch_view, printable

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping

    from PIL import Image, ImageFont

_Key = TypeVar("_Key", bound="Hashable")  # a row's key in the layout (node index, group id or value name)

__all__ = ["INTEGER_OPS", "GraphSummary", "Group", "draw", "load_font", "summarize", "to_png", "to_svg"]

# Ops that compute on integers (their inputs or outputs are quantized tensors).
INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "QLinearAdd",
        "QGemm",
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLSTM",
    }
)
MIN_REPEATS = 3  # a chain of fewer members is not worth collapsing (and "feeds many steps" needs 3)
# Limits, so that any model draws in bounded time and memory (README: Security and limits); past each, the
# picture says what it leaves out ("…"). The bundled models: 724 nodes, 9 rows, 4 weights per node.
MAX_NODES = 2000  # nodes searched for repeats and drawn (the search is quadratic: 0.25 s for 2,000 here)
MAX_ROWS = 150  # top-level rows drawn (a row is a node, a repeated block, a graph input or output)
MAX_VALUES = 20  # graph inputs, and graph outputs, drawn
MAX_WEIGHTS = 8  # weights listed in one node's box
MAX_NAME = 60  # characters of a name drawn
MAX_LINE = 100  # characters of a line of text drawn


@dataclass
class Group:
    """An unrolled loop: `block` (node indices of one typical step, in order) repeated `repeats` times."""

    block: list[int]
    repeats: int
    nodes: set[int]  # every node of every step
    first_step_missing: list[str] = field(default_factory=list)  # op types the first step lacks
    loop_edges: list[tuple[int, int]] = field(default_factory=list)  # block node -> block node of the next step


@dataclass
class GraphSummary:
    graph: ModelGraph
    items: list[int | Group]  # top-level: node indices and groups, in topological order
    integer_ops: list[str]  # op types of integer nodes, sorted, once each

    @property
    def groups(self) -> list[Group]:
        return [item for item in self.items if isinstance(item, Group)]

    def header(self) -> str:
        g = self.graph
        parameters = sum(t.size for t in g.initializers.values())
        opset = g.opsets.get("", g.opsets.get("ai.onnx", "?"))
        precision = f" ({printable(g.metadata['precision'], 12)})" if "precision" in g.metadata else ""
        return printable(
            f"{printable(g.name, MAX_NAME) or 'graph'}{precision}: {g.node_count:,} nodes, {len(g.initializers):,} "
            f"weights ({parameters:,} values), opset {opset}, IR {g.ir_version}",
            MAX_LINE * 2,
        )

    def node_text(self, index: int) -> list[str]:
        """The lines of a node's box: op type, then each weight it reads with shape and type."""
        node = self.graph.nodes[index]
        head = printable(node.op_type, MAX_NAME) + ("  [integer]" if is_integer(self.graph, node) else "")
        if len(node.outputs) > 2:
            head += f"  → {len(node.outputs):,} outputs"
        lines = [head]
        weights = [self.graph.initializers[name] for name in node.inputs if name in self.graph.initializers]
        for tensor in weights[:MAX_WEIGHTS]:
            shown = [str(d) for d in tensor.dims] + ["…"] * (tensor.more_dims > 0)
            dims = "×".join(shown) if len(shown) > 1 else f"[{', '.join(shown)}]"
            lines.append(printable(f"{printable(tensor.name, MAX_NAME)}: {dims} {tensor.data_type}", MAX_LINE))
        if len(weights) > MAX_WEIGHTS:
            lines.append(f"… {len(weights) - MAX_WEIGHTS:,} more weights")
        return lines


def is_integer(graph: ModelGraph, node: Node) -> bool:
    return node.op_type in INTEGER_OPS


def value_text(value: ValueInfo) -> str:
    if value.shape is None:
        shape = "?"
    else:
        shape = "[" + ", ".join("?" if d is None else printable(str(d), MAX_NAME) for d in value.shape) + "]"
    return printable(f"{printable(value.name, MAX_NAME)}: {value.data_type or '?'} {shape}", MAX_LINE)


# -- finding the repeated block --------------------------------------------------------------------


class _Structure:
    def __init__(self, graph: ModelGraph) -> None:
        nodes = graph.nodes
        producer = {out: i for i, n in enumerate(nodes) for out in n.outputs if out}
        self.preds = [sorted({producer[x] for x in n.inputs if x in producer}) for n in nodes]
        self.succs: list[list[int]] = [[] for _ in nodes]
        for i, preds in enumerate(self.preds):
            for p in preds:
                self.succs[p].append(i)
        self.anc: list[int] = []  # bitmask of ancestors, self included (ONNX nodes are topologically sorted)
        for i, preds in enumerate(self.preds):
            mask = 1 << i
            for p in preds:
                mask |= self.anc[p] if p < i else 0
            self.anc.append(mask)
        self.sig0 = [(n.op_type, tuple(x for x in n.inputs if x in graph.initializers)) for n in nodes]
        sig1 = [(s, tuple(sorted(nodes[p].op_type for p in self.preds[i]))) for i, s in enumerate(self.sig0)]
        self.sig2 = [(s, tuple(sorted(sig1[p] for p in self.preds[i]))) for i, s in enumerate(self.sig0)]


def _bits(mask: int) -> list[int]:
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def _blocks(s: _Structure, chain: list[int], free: int) -> tuple[list[set[int]], set[int]]:
    """Each chain member's step (what it needs that the previous member did not), and the nodes shared by
    many steps (with their ancestors), which belong to no step."""
    blocks, covered = [], 0
    for member in chain:
        new = s.anc[member] & free & ~covered
        covered |= new
        blocks.append(set(_bits(new)))
    step_of = {n: j for j, block in enumerate(blocks) for n in block}
    shared = {n for n in step_of if len({step_of[c] for c in s.succs[n] if c in step_of}) >= MIN_REPEATS}
    prelude = set()
    for n in shared:
        prelude |= set(_bits(s.anc[n])) & set(step_of)
    return [block - prelude for block in blocks], prelude


def _crossings(s: _Structure, blocks: list[set[int]]) -> float:
    step_of = {n: j for j, block in enumerate(blocks) for n in block}
    crossing = sum(1 for n, j in step_of.items() for c in s.succs[n] if step_of.get(c, j) != j)
    return crossing / max(1, len(blocks) - 1)


def _content(s: _Structure, block: set[int]) -> tuple[tuple[object, int], ...]:
    return tuple(sorted(Counter(s.sig0[n] for n in block).items()))


def _find_group(s: _Structure, free: int) -> Group | None:
    classes: dict[object, list[int]] = {}
    for i in _bits(free):
        classes.setdefault(s.sig2[i], []).append(i)
    candidates = []
    for members in classes.values():
        if len(members) < MIN_REPEATS or not all(s.anc[b] >> a & 1 for a, b in zip(members, members[1:], strict=False)):
            continue
        # A chain may run on through another loop with the same structure but other weights (the next
        # layer): keep its longest run of steps with the same content, and the (partial) step before it.
        blocks, _ = _blocks(s, members, free)
        contents = [_content(s, block) for block in blocks]
        run_start, run_end, start = 0, 0, 0
        for j in range(1, len(contents) + 1):
            if j == len(contents) or contents[j] != contents[start]:
                if j - start > run_end - run_start:
                    run_start, run_end = start, j
                start = j
        chain = members[max(0, run_start - 1) : run_end]
        if len(chain) < MIN_REPEATS:
            continue
        if len(chain) != len(members):
            blocks, _ = _blocks(s, chain, free)
        if any(not block for block in blocks):
            continue
        group = _group(s, chain, blocks)
        candidates.append(((group.repeats, -_crossings(s, blocks), chain[-1]), group))
    if not candidates:
        return None
    # Loops in graph order: the first loop's cuts are the candidates that share most nodes with the earliest.
    first = min(candidates, key=lambda c: min(c[1].nodes))[1].nodes
    same_loop = [c for c in candidates if 2 * len(c[1].nodes & first) >= min(len(c[1].nodes), len(first))]
    # The most steps; then the cut that the fewest values cross (the loop-carried state); then the latest.
    return max(same_loop, key=lambda c: c[0])[1]


def _group(s: _Structure, chain: list[int], blocks: list[set[int]]) -> Group:
    typical_key = Counter(_content(s, block) for block in blocks[1:]).most_common(1)[0][0]
    typical = next(j for j in range(1, len(blocks)) if _content(s, blocks[j]) == typical_key)
    group = Group(block=sorted(blocks[typical]), repeats=len(chain), nodes=set().union(*blocks))
    block_ops = Counter(s.sig0[n][0] for n in blocks[typical])

    # The first block may hold a whole step and, before it, a partial one (e.g. h0 = 0: no recurrent term):
    # take from it the nodes that match the typical block, nearest the chain member first.
    first, wanted = blocks[0], Counter(dict(typical_key))
    distance = {chain[0]: 0}
    frontier = [chain[0]]
    while frontier:
        nxt = []
        for n in frontier:
            for p in s.preds[n]:
                if p in first and p not in distance:
                    distance[p] = distance[n] + 1
                    nxt.append(p)
        frontier = nxt
    leftover = set(first)
    for n in sorted(first, key=lambda n: distance.get(n, 1 << 30)):
        if wanted[s.sig0[n]] > 0:
            wanted[s.sig0[n]] -= 1
            leftover.discard(n)
    if +wanted:  # the first block is itself a partial step
        leftover = first
    else:
        if leftover:
            group.repeats += 1
    lead_ops = Counter(s.sig0[n][0] for n in leftover)
    if leftover and not lead_ops - block_ops:
        group.first_step_missing = sorted((block_ops - lead_ops).elements())
    elif leftover and leftover is not first:
        group.nodes -= leftover  # not a step: drawn on its own
        group.repeats -= 1
    # Values the typical step hands to the next one, drawn as a loop back into the block.
    if typical + 1 < len(blocks):
        following = sorted(blocks[typical + 1])
        position = {n: k for k, n in enumerate(following)}
        for n in group.block:
            for c in s.succs[n]:
                if c in position and position[c] < len(group.block):
                    target = group.block[position[c]]
                    if s.sig0[target] == s.sig0[c]:
                        group.loop_edges.append((n, target))
    return group


def summarize(graph: ModelGraph) -> GraphSummary:
    """The graph as drawn (read it with read_model(blob, MAX_NODES): nodes past the limit need not be decoded):
    nodes, and unrolled loops collapsed into groups (the auto form: its large-batch
    branch, see onnx_graph.large_batch_view). Past MAX_NODES the rest of the nodes are left out, past
    MAX_ROWS the rest of the rows, and past MAX_VALUES the rest of the inputs and outputs; the note says so."""
    graph = large_batch_view(graph)
    notes = [graph.note] if graph.note else []
    if graph.node_count > MAX_NODES:
        notes.append(f"… {graph.node_count - MAX_NODES:,} more nodes not drawn (limit {MAX_NODES:,})")
        graph = replace(graph, nodes=graph.nodes[:MAX_NODES], nodes_not_read=graph.node_count - MAX_NODES)
    for kind, values in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        if len(values) > MAX_VALUES:
            notes.append(f"… {len(values) - MAX_VALUES:,} more graph {kind} not drawn")
    graph = replace(graph, inputs=graph.inputs[:MAX_VALUES], outputs=graph.outputs[:MAX_VALUES])
    s = _Structure(graph)
    free = (1 << len(graph.nodes)) - 1
    groups = []
    while True:
        group = _find_group(s, free)
        if group is None:
            break
        groups.append(group)
        for n in group.nodes:
            free &= ~(1 << n)
    in_group = {n for g in groups for n in g.nodes}
    items: list[tuple[int, int | Group]] = [(i, i) for i in range(len(graph.nodes)) if i not in in_group]
    items += [(min(g.nodes), g) for g in groups]
    items.sort(key=lambda pair: pair[0])
    if len(items) > MAX_ROWS:
        notes.append(f"… {len(items) - MAX_ROWS:,} more rows not drawn (limit {MAX_ROWS:,})")
        items = items[:MAX_ROWS]
    graph = replace(graph, note=printable("; ".join(notes), MAX_LINE * 2))
    integer = sorted({n.op_type for n in graph.nodes if is_integer(graph, n)})
    return GraphSummary(graph, [item for _, item in items], integer)


# -- layout ----------------------------------------------------------------------------------------

FONT = 13
LINE = 17
CHAR = 7.9  # width of one character of the monospace font at FONT px
PAD = 8
GAP = 22
LANE = 9
COLOURS = {
    "box": "#eef3fb",
    "border": "#4a6fa5",
    "int": "#fdebd3",
    "int_border": "#c0712a",
    "io": "#e8f5e9",
    "io_border": "#2e7d32",
    "group": "#fafafa",
    "group_border": "#777777",
    "edge": "#555555",
    "loop": "#c0392b",
    "text": "#111111",
    "note": "#555555",
}


@dataclass
class _Shape:
    kind: str  # "box" | "text" | "arrow" | "frame"
    points: list[tuple[float, float]]
    text: list[str] = field(default_factory=list)
    style: str = ""


def _box_height(lines: list[str]) -> float:
    return len(lines) * LINE + 2 * PAD


def _group_title(group: Group, width: int) -> list[str]:
    title = [f"× {group.repeats}", f"one step, repeated {group.repeats} times"]
    if group.first_step_missing:
        missing = printable(", ".join(group.first_step_missing), MAX_LINE)
        words, line = f"the first step lacks: {missing}".split(" "), ""
        for word in words:
            if line and len(line) + 1 + len(word) > width:
                title.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        title.append(line)
    return title


def _side_edges(edges: Iterable[tuple[_Key, _Key]], order: Mapping[_Key, int]) -> int:
    """How many edges go round the side (between rows that are not neighbours)."""
    return sum(1 for a, b in dict.fromkeys(edges) if a in order and b in order and order[b] != order[a] + 1)


def _layout(summary: GraphSummary) -> tuple[list[_Shape], float, float]:
    graph = summary.graph
    shapes: list[_Shape] = []
    rows: list[tuple[str, Any, list[str]]] = [("io", v, ["input", value_text(v)]) for v in graph.inputs]
    rows += [
        (
            "group" if isinstance(item, Group) else "node",
            item,
            [] if isinstance(item, Group) else summary.node_text(item),
        )
        for item in summary.items
    ]
    rows += [("io", v, ["output", value_text(v)]) for v in graph.outputs]
    text_width = max(
        [len(line) for _, _, lines in rows for line in lines]
        + [len(line) for g in summary.groups for n in g.block for line in summary.node_text(n)]
        + [30]
    )
    keys = [item.name if kind == "io" else (id(item) if isinstance(item, Group) else item) for kind, item, _ in rows]
    order = {key: k for k, key in enumerate(keys)}
    top_edges = _top_edges(summary)
    inner_lanes = max(
        [_side_edges(_internal_edges(summary, g), {n: k for k, n in enumerate(g.block)}) for g in summary.groups] + [0]
    )
    loop_lanes = max([len(g.loop_edges) for g in summary.groups] + [0])
    inner_w = text_width * CHAR + 2 * PAD
    inner_left = 2 * PAD + min(12, inner_lanes) * LANE
    outer_w = inner_left + inner_w + 2 * PAD + loop_lanes * LANE + PAD
    x0 = 2 * PAD + min(12, _side_edges(top_edges, order)) * LANE
    y = 20.0 + LINE
    shapes.append(_Shape("text", [(PAD, 20.0)], [summary.header()], "note"))
    if summary.graph.note:  # e.g. which branch of the auto form is drawn
        shapes.append(_Shape("text", [(PAD, y)], [summary.graph.note], "note"))
        y += LINE
    spans: dict[object, tuple[float, float]] = {}  # row key -> (top, bottom)
    for key, (kind, item, lines) in zip(keys, rows, strict=False):
        if kind == "group":
            top = y
            title = _group_title(item, int((outer_w - 2 * PAD) / CHAR))
            inner_y = top + PAD + len(title) * LINE + PAD
            inner_x = x0 + inner_left
            positions = {}
            for n in item.block:
                node_lines = summary.node_text(n)
                h = _box_height(node_lines)
                style = "int" if is_integer(graph, graph.nodes[n]) else "box"
                shapes.append(_Shape("box", [(inner_x, inner_y), (inner_x + inner_w, inner_y + h)], node_lines, style))
                positions[n] = (inner_y, inner_y + h)
                inner_y += h + GAP
            bottom = inner_y - GAP + 2 * PAD + (LINE if item.loop_edges else 0)
            shapes.insert(0, _Shape("frame", [(x0, top), (x0 + outer_w, bottom)], title, "group"))
            _edges(shapes, _internal_edges(summary, item), positions, inner_x, inner_w, "edge")
            for lane, (a, b) in enumerate(item.loop_edges):  # into the next step: a loop on the right
                right = inner_x + inner_w + PAD + (lane + 1) * LANE
                ya, yb = positions[a][1] - PAD, positions[b][0] + PAD
                shapes.append(
                    _Shape(
                        "arrow",
                        [(inner_x + inner_w, ya), (right, ya), (right, yb), (inner_x + inner_w, yb)],
                        [],
                        "loop",
                    )
                )
            if item.loop_edges:
                label = "↺ to the next step"
                shapes.append(_Shape("text", [(x0 + outer_w - PAD - len(label) * CHAR, bottom - PAD)], [label], "loop"))
            spans[key] = (top, bottom)
            y = bottom + GAP
        else:
            h = _box_height(lines)
            style = kind if kind == "io" else ("int" if is_integer(graph, graph.nodes[item]) else "box")
            bx = x0 + (outer_w - inner_w) / 2
            shapes.append(_Shape("box", [(bx, y), (bx + inner_w, y + h)], lines, style))
            spans[key] = (y, y + h)
            y += h + GAP
    _edges(
        shapes,
        sorted(top_edges, key=lambda e: (order[e[0]], order[e[1]])),
        spans,
        x0 + (outer_w - inner_w) / 2,
        inner_w,
        "edge",
        order,
    )
    width = max(x0 + outer_w + 2 * PAD, PAD + max(len(summary.header()), len(summary.graph.note)) * CHAR + PAD)
    return shapes, width, y


def _top_edges(summary: GraphSummary) -> set[tuple[object, object]]:
    """Edges between top-level rows: graph inputs, nodes, groups, graph outputs."""
    graph = summary.graph
    row_of: dict[int, object] = {}
    for item in summary.items:
        if isinstance(item, Group):
            for n in item.nodes:
                row_of[n] = id(item)
        else:
            row_of[item] = item
    producer = {out: i for i, n in enumerate(graph.nodes) for out in n.outputs}
    inputs, outputs = {v.name for v in graph.inputs}, {v.name for v in graph.outputs}
    edges: set[tuple[object, object]] = set()
    for i, node in enumerate(graph.nodes):
        if i not in row_of:
            continue
        for x in node.inputs:
            source = row_of.get(producer[x]) if x in producer else (x if x in inputs else None)
            if source is not None and source != row_of[i]:
                edges.add((source, row_of[i]))
        for out in node.outputs:
            if out in outputs:
                edges.add((row_of[i], out))
    return edges


def _internal_edges(summary: GraphSummary, group: Group) -> list[tuple[int, int]]:
    producer = {out: i for i, n in enumerate(summary.graph.nodes) for out in n.outputs}
    block = set(group.block)
    return [
        (producer[x], n)
        for n in group.block
        for x in summary.graph.nodes[n].inputs
        if x in producer and producer[x] in block
    ]


def _edges(
    shapes: list[_Shape],
    edges: Iterable[tuple[_Key, _Key]],
    spans: Mapping[_Key, tuple[float, float]],
    x: float,
    width: float,
    style: str,
    order: Mapping[_Key, int] | None = None,
) -> None:
    """Arrows: straight down between neighbouring rows, round the left side otherwise."""
    keys = list(spans) if order is None else sorted(spans, key=lambda k: order[k])
    index = {k: n for n, k in enumerate(keys)}
    lane = 0
    for a, b in dict.fromkeys(edges):
        if a not in spans or b not in spans:
            continue
        (_, a_bottom), (b_top, _) = spans[a], spans[b]
        if index[b] <= index[a]:
            continue  # never happens in a topologically sorted graph
        if index[b] == index[a] + 1:
            cx = x + width / 2
            shapes.append(_Shape("arrow", [(cx, a_bottom), (cx, b_top)], [], style))
        else:
            left = x - 12 - (lane % 12) * LANE
            lane += 1
            shapes.append(
                _Shape(
                    "arrow",
                    [(x, a_bottom - PAD), (left, a_bottom - PAD), (left, b_top + PAD), (x, b_top + PAD)],
                    [],
                    style,
                )
            )


# -- rendering -------------------------------------------------------------------------------------


def _fill(style: str) -> tuple[str, str]:
    return {
        "int": (COLOURS["int"], COLOURS["int_border"]),
        "io": (COLOURS["io"], COLOURS["io_border"]),
        "group": (COLOURS["group"], COLOURS["group_border"]),
    }.get(style, (COLOURS["box"], COLOURS["border"]))


def to_svg(summary: GraphSummary) -> str:
    shapes, width, height = _layout(summary)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
        f'font-size="{FONT}">',
        "<defs>"
        + "".join(
            f'<marker id="{kind}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="{COLOURS[kind]}"/>'
            f"</marker>"
            for kind in ("edge", "loop")
        )
        + "</defs>",
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for shape in shapes:
        if shape.kind in ("box", "frame"):
            (x1, y1), (x2, y2) = shape.points
            fill, stroke = _fill(shape.style)
            dash = ' stroke-dasharray="6 4"' if shape.kind == "frame" else ""
            out.append(
                f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}" rx="5" '
                f'fill="{fill}" stroke="{stroke}" stroke-width="1.3"{dash}/>'
            )
            for k, line in enumerate(shape.text):
                weight = ' font-weight="bold"' if k == 0 else ""
                size = f' font-size="{FONT + 3}"' if shape.kind == "frame" and k == 0 else ""
                out.append(
                    f'<text x="{x1 + PAD:.1f}" y="{y1 + PAD + (k + 1) * LINE - 4:.1f}" '
                    f'fill="{COLOURS["text"]}"{weight}{size}>{escape(line)}</text>'
                )
        elif shape.kind == "arrow":
            colour = COLOURS["loop" if shape.style == "loop" else "edge"]
            dash = ' stroke-dasharray="4 3"' if shape.style == "loop" else ""
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in shape.points)
            out.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.2"{dash} '
                f'marker-end="url(#{"loop" if shape.style == "loop" else "edge"})"/>'
            )
        elif shape.kind == "text":
            ((x, y),) = shape.points
            out.append(
                f'<text x="{x:.1f}" y="{y:.1f}" fill="{COLOURS[shape.style]}" font-size="{FONT - 1}">'
                f"{escape(shape.text[0])}</text>"
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def load_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    for name in (("DejaVuSansMono-Bold.ttf" if bold else "DejaVuSansMono.ttf"), "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:
        return ImageFont.load_default()


def to_png(summary: GraphSummary, scale: float = 1.5) -> Image.Image:
    """The same picture as a PIL image (drawn with Pillow, no system packages)."""
    from PIL import Image, ImageDraw

    shapes, width, height = _layout(summary)
    image = Image.new("RGB", (int(width * scale), int(height * scale)), "white")
    draw = ImageDraw.Draw(image)
    fonts = {
        False: load_font(int(FONT * scale)),
        True: load_font(int(FONT * scale), bold=True),
        "title": load_font(int((FONT + 3) * scale), bold=True),
    }

    def p(point: tuple[float, float]) -> tuple[float, float]:
        return (point[0] * scale, point[1] * scale)

    for shape in shapes:
        if shape.kind in ("box", "frame"):
            (x1, y1), (x2, y2) = shape.points
            fill, stroke = _fill(shape.style)
            draw.rounded_rectangle(
                [p((x1, y1)), p((x2, y2))],
                radius=int(5 * scale),
                fill=fill,
                outline=stroke,
                width=max(1, int(1.3 * scale)),
            )
            for k, line in enumerate(shape.text):
                font = fonts["title"] if shape.kind == "frame" and k == 0 else fonts[k == 0]
                draw.text(p((x1 + PAD, y1 + PAD + k * LINE)), line, fill=COLOURS["text"], font=font)
        elif shape.kind == "arrow":
            colour = COLOURS["loop" if shape.style == "loop" else "edge"]
            points = [p(q) for q in shape.points]
            draw.line(points, fill=colour, width=max(1, int(1.2 * scale)), joint="curve")
            (xa, ya), (xb, yb) = points[-2], points[-1]
            length = max(1e-6, ((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5)
            ux, uy = (xb - xa) / length, (yb - ya) / length
            size = 6 * scale
            draw.polygon(
                [
                    (xb, yb),
                    (xb - ux * size - uy * size / 2, yb - uy * size + ux * size / 2),
                    (xb - ux * size + uy * size / 2, yb - uy * size - ux * size / 2),
                ],
                fill=colour,
            )
        elif shape.kind == "text":
            ((x, y),) = shape.points
            draw.text(p((x, y - FONT)), shape.text[0], fill=COLOURS[shape.style], font=fonts[False])
    return image


def draw(summary: GraphSummary, path: str | Path) -> None:
    """Write the picture to path: .svg or .png (edge_infer.files.replace_file: FileRefused for a FIFO,
    device or directory there; OSError if it can't be written)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        data = to_svg(summary).encode("utf-8")
    elif suffix == ".png":
        buffer = io.BytesIO()
        to_png(summary).save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise ValueError(f"{path}: the graph picture must be a .svg or .png file")
    replace_file(path, data)  # whole or not at all; a FIFO or directory there is refused, never waited on
