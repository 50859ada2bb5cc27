"""Hostile models and outputs, round 3 (issue 21): every model problem is one ModelError (the CLI: one line,
exit 2), the model reader and `--graph` stay bounded, `--save-input` and `--graph` never destroy a file, and
onnxruntime neither prints on stdout nor writes files. Every hostile model is made here, by the test, from the
bundled model with the `onnx` package; each run is timed and its peak RSS measured."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from edge_infer import Classifier, ModelError
from edge_infer.classifier import bundled_model_path
from edge_infer.model_check import MAX_NODES as MAX_MODEL_NODES
from edge_infer.model_check import UnsafeModel, check_model_bytes
from edge_infer.model_info import MAX_METADATA_VALUE
from edge_infer.onnx_graph import MAX_FIELDS, MAX_SUBGRAPH_DEPTH, OnnxFormatError, read_model

from .conftest import ROOT
from .test_hardening import SEVEN, one_error_line

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SECONDS, MEGABYTES = 10.0, 600  # the bound for every case, on the 2-core development machine


# Runs the command and writes its peak RSS (KiB) into argv[1]. A small process in between, because a child's
# ru_maxrss starts from its parent's at fork (and exec), and the test process may be large.
_MEASURE = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code % 256)"
)


def bounded_cli(*args: str, tmp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """edge-infer in a subprocess, as a user runs it; asserts it took at most SECONDS and MEGABYTES peak RSS."""
    peak = tmp / "cli.peak"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(peak), sys.executable, "-m", "edge_infer", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    elapsed, peak_mb = time.monotonic() - started, int(peak.read_text()) / 1024
    peak.unlink()
    assert elapsed <= SECONDS and peak_mb <= MEGABYTES, (args, f"{elapsed:.1f} s", f"{peak_mb:.0f} MB")
    return result


def bundled(int8: bool = False):
    return onnx.load(str(bundled_model_path(int8)))


def with_tail(model, nodes, elem_type=TensorProto.FLOAT, shape=("N", 10), initializers=()) -> bytes:
    """The model with `nodes` appended after its logits (renamed logits_in); the nodes must produce
    'logits', declared as the graph output with elem_type and shape."""
    model.graph.node[-1].output[0] = "logits_in"
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", elem_type, list(shape)))
    return model.SerializeToString()


def refused_everywhere(blob: bytes, tmp: Path, message: str = "") -> str:
    """Classifier(bytes) raises ModelError (one line) and the CLI prints one line, exits 2, prints nothing on
    stdout; returns the CLI's line."""
    with pytest.raises(ModelError) as error:
        Classifier(blob)
    assert "\n" not in str(error.value) and message in str(error.value), error.value
    path = tmp / "hostile.onnx"
    path.write_bytes(blob)
    result = bounded_cli("--model", str(path), str(SEVEN), tmp=tmp)
    line = one_error_line(result, 2)
    assert result.stdout == b"" and message in line and str(path) in line
    return line


# --- every model problem is a ModelError --------------------------------------------------------------------


def test_deeply_nested_json_in_metadata(tmp_path):
    model = bundled()
    depth = MAX_METADATA_VALUE // 2 - 10  # within the size limit: the nesting is what is refused
    next(p for p in model.metadata_props if p.key == "checks").value = "[" * depth + "]" * depth
    refused_everywhere(model.SerializeToString(), tmp_path, "'checks' is nested too deeply")


def test_extra_output_whose_name_is_not_utf8(tmp_path):
    model = bundled()
    model.graph.node.append(helper.make_node("Identity", ["logits"], ["zzextra"]))
    model.graph.output.append(helper.make_tensor_value_info("zzextra", TensorProto.FLOAT, ["N", 10]))
    blob = model.SerializeToString().replace(b"zzextra", b"\xffzextra")  # protobuf strings are not checked
    refused_everywhere(blob, tmp_path, "UnicodeDecodeError")  # and no "EP Error" banner on stdout


@pytest.mark.parametrize(
    "elem_type", [TensorProto.STRING, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.BOOL]
)
def test_logits_that_are_not_float32(elem_type, tmp_path):
    blob = with_tail(bundled(), [helper.make_node("Cast", ["logits_in"], ["logits"], to=elem_type)], elem_type)
    refused_everywhere(blob, tmp_path, "float32")


def test_a_fixed_batch_dimension_of_2_to_the_62(tmp_path):
    blob = with_tail(bundled(), [helper.make_node("Identity", ["logits_in"], ["logits"])], shape=(2**62, 10))
    refused_everywhere(blob, tmp_path, "not an edge-infer digit model")


def test_logits_shaped_n_squared_by_10(tmp_path):
    # [N, 1, 10] + [1, N, 10] -> [N, N, 10] -> [N*N, 10]: right for 1 image, wrong for any other batch
    nodes = [
        helper.make_node("Unsqueeze", ["logits_in", "one"], ["column"]),
        helper.make_node("Unsqueeze", ["logits_in", "zero"], ["row"]),
        helper.make_node("Add", ["column", "row"], ["square"]),
        helper.make_node("Reshape", ["square", "flat"], ["logits"]),
    ]
    weights = [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1, 10], np.int64), "flat"),
    ]
    blob = with_tail(bundled(), nodes, initializers=weights)
    line = refused_everywhere(blob, tmp_path, "outputs logits[")
    assert "expected [16, 10]" in line  # found by the probe across the auto form's switch (batch 16)


def test_a_large_batch_branch_that_answers_5_classes(tmp_path):
    model = bundled()
    choose = model.graph.node[-1]
    large = next(a.g for a in choose.attribute if a.name == "else_branch")
    large.node[-1].output[0] = "all10"
    large.initializer.append(numpy_helper.from_array(np.array([5, 5], np.int64), "halves"))
    large.node.append(helper.make_node("Split", ["all10", "halves"], ["llogits", "rest"], axis=1))
    refused_everywhere(model.SerializeToString(), tmp_path, "expected [16, 10]")


def test_every_run_checks_the_logits_too():
    """The probe can't see a switch the metadata doesn't name; every run checks what it gets anyway."""
    model = bundled()
    next(p for p in model.metadata_props if p.key == "model").value = '{"cell": "gru"}'  # no large_from_batch
    choose = model.graph.node[-1]
    large = next(a.g for a in choose.attribute if a.name == "else_branch")
    large.node[-1].output[0] = "all10"
    large.initializer.append(numpy_helper.from_array(np.array([5, 5], np.int64), "halves"))
    large.node.append(helper.make_node("Split", ["all10", "halves"], ["llogits", "rest"], axis=1))
    classifier = Classifier(model.SerializeToString())  # probed at 1 and 2: both below the switch at 16
    assert classifier.predict(SEVEN).label == 7
    with pytest.raises(ModelError, match=r"for 16 images it outputs logits\[16, 5\]"):
        classifier.classify(np.zeros((16, 28, 28), np.float32) + 0.5)


# --- --graph, bounded -------------------------------------------------------------------------------------


def _chain(model, count: int) -> bytes:
    nodes = [helper.make_node("Identity", [f"c{i}"], [f"c{i + 1}"]) for i in range(count)]
    nodes[0].input[0] = "logits_in"
    nodes[-1].output[0] = "logits"
    return with_tail(model, nodes)


def test_graph_of_a_100k_node_chain_and_of_a_10k_one(tmp_path):
    path = tmp_path / "chain.onnx"
    path.write_bytes(_chain(bundled(int8=True), 100_000))  # the int8 model: no If, so its whole graph is drawn
    result = bounded_cli("--model", str(path), "--graph", str(tmp_path / "g.svg"), str(SEVEN), tmp=tmp_path)
    assert f"more than {MAX_MODEL_NODES:,} nodes" in one_error_line(result, 2)  # onnxruntime alone: 4-5 s
    path.write_bytes(_chain(bundled(int8=True), 10_000))
    result = bounded_cli("--model", str(path), "--graph", str(tmp_path / "g.svg"), str(SEVEN), tmp=tmp_path)
    assert result.returncode == 0 and result.stdout.split(b"\t")[1] == b"7", result.stderr
    svg = (tmp_path / "g.svg").read_text()
    ElementTree.fromstring(svg)
    assert "8,724 more nodes not drawn" in svg and "10,724 nodes" in svg


def test_graph_of_an_unused_initializer_with_200k_dims(tmp_path):
    model = bundled()
    huge = helper.make_tensor("unused", TensorProto.FLOAT, [1] * 200_000, [1.0])
    model.graph.initializer.append(huge)
    path = tmp_path / "dims.onnx"
    path.write_bytes(model.SerializeToString())
    result = bounded_cli("--model", str(path), "--graph", str(tmp_path / "g.svg"), str(SEVEN), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_model(path.read_bytes()).initializers["unused"].more_dims == 200_000 - 16


def test_graph_name_of_300k_characters_with_control_characters(tmp_path):
    model = bundled()
    model.graph.name = "\x1b[31m\x01\x00<script>" + "x" * 300_000
    path = tmp_path / "named.onnx"
    path.write_bytes(model.SerializeToString())
    for picture in ("g.png", "g.svg"):
        result = bounded_cli("--model", str(path), "--graph", str(tmp_path / picture), tmp=tmp_path)
        assert result.returncode == 0 and result.stderr == b"", result.stderr
    texts = [t.text for t in ElementTree.fromstring((tmp_path / "g.svg").read_text()).findall(".//{*}text")]
    header = next(text for text in texts if "<script>" in text)
    assert header.startswith("\\x1b[31m\\x01\\x00<script>xxx") and "…" in header and len(header) < 300
    from PIL import Image

    with Image.open(tmp_path / "g.png") as png:
        assert png.width < 4000


def test_large_from_batch_1e400_in_metadata(tmp_path):
    model = bundled()
    next(p for p in model.metadata_props if p.key == "model").value = '{"graph": "auto", "large_from_batch": 1e400}'
    blob = model.SerializeToString()
    refused_everywhere(blob, tmp_path, "large_from_batch")
    from edge_infer.draw_graph import summarize, to_svg

    assert "for large batches" in to_svg(summarize(read_model(blob)))  # the library's drawing: no OverflowError


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def test_subgraphs_2000_deep_and_an_ort_model(tmp_path):
    graph = _field(1, _field(4, b"Relu"))
    for _ in range(2000):  # a GraphProto whose node is an If whose then_branch is a GraphProto ... 2,000 deep
        graph = _field(1, _field(4, b"If") + _field(5, _field(1, b"then_branch") + _field(6, graph)))
    blob = b"\x08\x08" + _field(7, graph)
    with pytest.raises(OnnxFormatError, match=f"nested more than {MAX_SUBGRAPH_DEPTH} deep"):
        read_model(blob)
    with pytest.raises(UnsafeModel, match="subgraph"):
        check_model_bytes(blob)
    # --graph of a usable .ort model: refused before anything is done, one line
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "model.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(bundled_model_path()), options, providers=["CPUExecutionProvider"])
    result = bounded_cli("--model", str(tmp_path / "model.ort"), "--graph", str(tmp_path / "g.svg"), tmp=tmp_path)
    assert "ORT-format" in one_error_line(result, 2) and not (tmp_path / "g.svg").exists()


# --- the model check's budget --------------------------------------------------------------------------------


def test_a_255_mb_model_of_2_byte_fields(tmp_path):
    path = tmp_path / "fields.onnx"
    path.write_bytes(b"\x08\x01" * (255 * 2**20 // 2))  # ir_version = 1, 134 million times
    line = one_error_line(bounded_cli("--model", str(path), str(SEVEN), tmp=tmp_path), 2)
    assert f"more than {MAX_FIELDS:,} protobuf fields" in line


def test_a_200_mb_json_list_in_metadata(tmp_path):
    model = bundled()
    model.metadata_props.add(key="recipe_extra", value="[" + "1," * (100 * 2**20) + "1]")
    path = tmp_path / "metadata.onnx"
    path.write_bytes(model.SerializeToString())
    del model
    line = one_error_line(bounded_cli("--model", str(path), str(SEVEN), tmp=tmp_path), 2)
    assert f"limit {MAX_METADATA_VALUE:,}" in line


# --- output hygiene -----------------------------------------------------------------------------------------


def test_onnxruntime_writes_no_files_and_prints_nothing_on_stdout(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env_without = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run(
        [sys.executable, "-m", "edge_infer", "--json", str(SEVEN)],
        cwd=ROOT,
        capture_output=True,
        env={**env_without, **env},
        timeout=120,
    )
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert list(home.iterdir()) == []  # no ~/.cache/Microsoft/DeveloperTools telemetry database
    home.chmod(0o500)  # unwritable HOME: no colourful warning either
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_infer", str(SEVEN)], cwd=ROOT, capture_output=True, env={**env_without, **env}
        )
    finally:
        home.chmod(0o700)
    assert result.returncode == 0 and result.stderr == b"", result.stderr


# --- --save-input and --graph never destroy a file -----------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    return {
        str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def test_save_input_refuses_a_directory_that_holds_an_input(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "mnist-7.png").write_bytes(SEVEN.read_bytes())
    before = _snapshot(tmp_path)
    for args in (("in", "in/mnist-7.png"), ("in", "in"), (".", "in/mnist-7.png"), ("in/", "./in/../in/mnist-7.png")):
        result = subprocess.run(
            [sys.executable, "-m", "edge_infer", "--save-input", *args], cwd=tmp_path, capture_output=True, timeout=120
        )
        assert "holds the input" in one_error_line(result, 2) and result.stdout == b""
        assert _snapshot(tmp_path) == before


def test_save_input_never_overwrites_or_follows_a_symlink(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (out / "mnist-7.png").symlink_to(outside)  # named like the output: must not be written through
    (out / "mnist-7-2.png").symlink_to(tmp_path / "absent.txt")  # dangling: must not be created
    (out / "mnist-7-3.png").write_bytes(b"an existing file")
    os.mkfifo(out / "mnist-7-4.png")  # would block an open for writing
    before = _snapshot(tmp_path)
    for _ in range(2):  # and across runs: the second run's pictures take new names too
        result = bounded_cli("--save-input", str(out), str(SEVEN), str(SEVEN), tmp=tmp_path)
        assert result.returncode == 0, result.stderr
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before and not (tmp_path / "absent.txt").exists()
    new = sorted(set(after) - set(before))
    assert new == [f"out/mnist-7-{n}.png" for n in (5, 6, 7, 8)]
    assert all(after[name][:8] == b"\x89PNG\r\n\x1a\n" for name in new)


def test_graph_replaces_a_symlink_and_refuses_a_fifo(tmp_path):
    outside = tmp_path / "outside.svg"
    outside.write_bytes(b"precious")
    link = tmp_path / "link.svg"
    link.symlink_to(outside)
    result = bounded_cli("--graph", str(link), tmp=tmp_path)
    assert result.returncode == 0 and outside.read_bytes() == b"precious" and not link.is_symlink()
    ElementTree.fromstring(link.read_text())
    fifo = tmp_path / "fifo.svg"
    os.mkfifo(fifo)
    assert "not a regular file" in one_error_line(bounded_cli("--graph", str(fifo), tmp=tmp_path), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.svg", "link.svg", "outside.svg"]


def test_info_never_prints_escape_sequences_from_metadata(tmp_path):
    model = bundled()
    next(p for p in model.metadata_props if p.key == "package_version").value = "\x1b[2J\x1b]0;owned\x07 1.0"
    path = tmp_path / "escapes.onnx"
    path.write_bytes(model.SerializeToString())
    result = bounded_cli("--model", str(path), "--info", tmp=tmp_path)
    assert result.returncode == 0 and b"\x1b" not in result.stdout and b"\x07" not in result.stdout
    assert "package_version: \\x1b[2J\\x1b]0;owned\\x07 1.0" in result.stdout.decode()


def test_200_if_nodes_in_the_main_graph_are_refused(tmp_path):
    model = bundled()
    choose = model.graph.node[-1]
    for k in range(199):  # more Ifs on the same condition, their outputs unused
        extra = model.graph.node.add()
        extra.CopyFrom(choose)
        extra.output[0] = f"unused{k}"
    refused_everywhere(model.SerializeToString(), tmp_path, "more than one If node")


# --- fuzzing the model reader --------------------------------------------------------------------------------

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .test_hardening import FUZZ, FUZZ_SECONDS, mutated_bytes  # noqa: E402

MODEL_SEEDS = [bundled_model_path(False).read_bytes(), bundled_model_path(True).read_bytes()]


def _read_within_limit(blob: bytes) -> None:
    """Every reader of model bytes answers, or refuses with its one-line error, within FUZZ_SECONDS: the
    check and onnxruntime (Classifier), the structure reader and the drawing."""
    from edge_infer.draw_graph import MAX_NODES, summarize, to_svg

    started = time.monotonic()
    try:
        classifier = Classifier(blob)
    except ModelError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert np.isfinite(classifier.predict(SEVEN).probabilities).all()
    try:
        graph = read_model(blob, MAX_NODES)
    except OnnxFormatError as error:
        assert str(error) and "\n" not in str(error)
    else:
        ElementTree.fromstring(to_svg(summarize(graph)))  # well-formed XML, whatever the names
    assert time.monotonic() - started < FUZZ_SECONDS


def _encode(message: list) -> bytes:
    """Protobuf bytes from [(field number, value)]: an int is a varint, bytes are bytes, a list a message."""
    out = b""
    for number, value in message:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            out += _field(number, value if isinstance(value, bytes) else _encode(value))
    return out


# Messages with the field numbers the readers look at (1-25), nested as ModelProto > GraphProto > NodeProto >
# AttributeProto > GraphProto ... can be; names and strings from a few interesting ones.
_messages = st.recursive(
    st.lists(
        st.tuples(
            st.integers(1, 25),
            st.one_of(
                st.integers(0, 2**64 - 1),
                st.sampled_from([b"If", b"Loop", b"rows", b"logits", b"\xff\xfe", b"\x00\x1b[31m", b"format"]),
                st.binary(max_size=16),
            ),
        ),
        max_size=6,
    ),
    lambda children: st.lists(st.tuples(st.integers(1, 25), children), max_size=6),
    max_leaves=40,
)


@FUZZ
@given(mutated_bytes(MODEL_SEEDS))
def test_fuzz_model_bytes(blob):
    _read_within_limit(blob)


@FUZZ
@given(_messages)
def test_fuzz_crafted_protobufs(message):
    _read_within_limit(b"\x08\x08" + _field(7, _encode(message)))  # IR version 8 and a graph of the message
    _read_within_limit(_encode(message))
