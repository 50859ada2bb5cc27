"""Pictures: the network graph (pure-Python ONNX reader), what the model saw (--save-input / explain),
where it errs (report.png and the numbers it is drawn from), the progress bar, and training's outputs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer import preprocess
from edge_infer.classifier import bundled_model_path
from edge_infer.draw_graph import Group, summarize, to_png, to_svg
from edge_infer.input_picture import SCALE, input_pixels, model_input_box
from edge_infer.onnx_graph import OnnxFormatError, read_model

from .conftest import ROOT
from .test_runtime import BLOCK_IMPORTS

EXAMPLES = sorted((ROOT / "examples").glob("*.png"))


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_infer", *args],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        **kwargs,
    )


def ops(summary, indices) -> list[str]:
    return [summary.graph.nodes[i].op_type for i in indices]


# --- the ONNX reader --------------------------------------------------------------------------------


def _built_models():
    torch = pytest.importorskip("torch")
    from export.graph import build_model
    from train.model import DigitRNN, ModelConfig

    torch.manual_seed(0)
    for cell in ("rnn", "gru", "lstm"):
        for layers in (1, 2):
            weights = {
                k: v.numpy() for k, v in DigitRNN(ModelConfig(cell, 12, layers), batch_first=False).state_dict().items()
            }
            for form, gemm in (("per-step", True), ("hoisted", True), ("node", True), ("per-step", False)):
                yield (cell, layers, form, gemm), build_model(weights, cell, 12, layers, form=form, gemm=gemm)


def test_reader_agrees_with_the_onnx_package():
    onnx = pytest.importorskip("onnx")
    models = [onnx.load(bundled_model_path(False)), onnx.load(bundled_model_path(True))]
    models += [model for _, model in _built_models()]
    for model in models:
        ours = read_model(model.SerializeToString())
        g = model.graph
        assert [(n.op_type, tuple(n.input), tuple(n.output), n.name) for n in g.node] == [
            (n.op_type, n.inputs, n.outputs, n.name) for n in ours.nodes
        ]
        assert {
            t.name: (tuple(t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name) for t in g.initializer
        } == {t.name: (t.dims, t.data_type) for t in ours.initializers.values()}
        for theirs, mine in ((g.input, ours.inputs), (g.output, ours.outputs)):
            assert [
                (v.name, tuple(d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim)) for v in theirs
            ] == [(v.name, v.shape) for v in mine]
        assert ours.ir_version == model.ir_version and ours.opsets == {o.domain: o.version for o in model.opset_import}
        assert ours.metadata == {p.key: p.value for p in model.metadata_props}
        assert not ours.uses_external_data


def test_reader_sees_external_data_and_refuses_garbage(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(bundled_model_path(False))
    onnx.save(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    external = read_model((tmp_path / "ext.onnx").read_bytes())
    blob = bundled_model_path(False).read_bytes()
    inline = read_model(blob)
    recurrent = next(name for name in inline.initializers if name.startswith("Wh"))  # any cell's recurrent weight
    assert external.uses_external_data and external.initializers[recurrent].external
    assert external.initializers[recurrent].dims == inline.initializers[recurrent].dims
    assert not inline.uses_external_data
    for bad in (b"", b"not an onnx model at all", blob[: len(blob) // 2], bytes(range(256)) * 4):
        with pytest.raises(OnnxFormatError):
            read_model(bad)


# --- the graph picture ------------------------------------------------------------------------------


def test_every_form_collapses_to_28_steps_per_layer():
    for (cell, layers, form, gemm), model in _built_models():
        summary = summarize(read_model(model.SerializeToString()))
        covered = sum(len(g.nodes) for g in summary.groups) + sum(1 for i in summary.items if not isinstance(i, Group))
        assert covered == len(model.graph.node)  # every node drawn once, in a block or on its own
        if form == "node":  # one ONNX RNN/GRU/LSTM node per layer: nothing unrolled
            assert not summary.groups and ops(summary, summary.items).count(cell.upper()) == layers
            continue
        assert [g.repeats for g in summary.groups] == [28] * layers, (cell, layers, form, gemm)
        for group in summary.groups:
            assert len(group.nodes) >= 27 * len(group.block)  # the block really stands for the steps
            assert group.loop_edges  # the state it hands to the next step
        if cell == "rnn":
            step = ["Gemm", "Gemm", "Relu"] if gemm else ["MatMul", "Add", "MatMul", "Add", "Relu"]
            if form == "hoisted":
                step = ["Gemm", "Relu"]
            assert all(ops(summary, g.block) == step for g in summary.groups), (layers, form, gemm)


def test_graph_of_the_bundled_models_without_training_extras(tmp_path):
    """edge-infer --info --graph draws the bundled models where torch and onnx cannot be imported."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    for int8, name in ((False, "fp32.svg"), (True, "int8.svg"), (True, "int8.png")):
        result = cli("--info", "--graph", str(tmp_path / name), *(["--int8"] if int8 else []), env=env)
        assert result.returncode == 0, result.stderr.decode()
        assert "precision:" in result.stdout.decode()
    svg = (tmp_path / "fp32.svg").read_text()
    for text in ("rows: float32 [28, N, 28]", "logits: float32 [N, 10]", "× 28", "Split", "Reshape", "<svg"):
        assert text in svg, text
    # whatever the bundled cell: every weight with its shape, every op of the step, and one step drawn, not 28
    summary = summarize(read_model(bundled_model_path(False).read_bytes()))
    (group,) = summary.groups
    for name, weight in summary.graph.initializers.items():
        if len(weight.dims) == 2:
            assert f"{name}: {weight.dims[0]}×{weight.dims[1]} float32" in svg, name
    step = ops(summary, group.block)
    for op in set(step):
        assert step.count(op) <= svg.count(f">{op}<") < 28 * step.count(op), op  # drawn once per step
    int8_svg = (tmp_path / "int8.svg").read_text()
    int8 = read_model(bundled_model_path(True).read_bytes())
    recurrent = next(name for name, w in int8.initializers.items() if name.startswith("Wh") and len(w.dims) == 2)
    dims = "×".join(map(str, int8.initializers[recurrent].dims))
    for text in (
        "× 28",
        "MatMulInteger  [integer]",
        "DynamicQuantizeLinear  [integer]",
        f"{recurrent}: {dims} {int8.initializers[recurrent].data_type}",
        "(int8)",
    ):
        assert text in int8_svg, text
    assert "[integer]" not in svg
    with Image.open(tmp_path / "int8.png") as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 1000
        assert len(png.convert("RGB").getcolors(1 << 20)) > 10  # something is drawn


def test_the_graph_data_of_the_int8_model():
    summary = summarize(read_model(bundled_model_path(True).read_bytes()))
    cell = json.loads(summary.graph.metadata["model"])["cell"]
    assert summary.integer_ops == ["DynamicQuantizeLinear", "MatMulInteger"]
    (group,) = summary.groups
    # one integer MatMul for the input and one per recurrent weight matrix of the cell
    recurrent = {"rnn": ["Wh0"], "lstm": ["Wh0"], "gru": ["Whrz0", "Whn0"]}[cell]
    assert group.repeats == 28 and ops(summary, group.block).count("MatMulInteger") == 1 + len(recurrent)
    weights = {w for n in group.block for w in summary.graph.nodes[n].inputs if w in summary.graph.initializers}
    assert {"Wi0", *recurrent} <= weights
    # uint8: u8 x u8 products are exact on every CPU (export.export.WEIGHT_TYPE)
    assert all(summary.graph.initializers[name].data_type == "uint8" for name in recurrent)
    assert group.first_step_missing  # h0 = 0: the first step has no recurrent MatMulInteger
    assert "MatMulInteger" in group.first_step_missing
    assert to_svg(summary).startswith("<svg") and to_png(summary).size[0] > 0


def test_graph_option_errors_are_one_line(tmp_path):
    for args in (["--graph", str(tmp_path / "g.txt")], ["--graph", str(tmp_path / "no" / "dir" / "g.svg")]):
        result = cli(*args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert b"Traceback" not in result.stderr


def test_edge_export_draws_both_graphs_and_prints_int8_changes(small_checkpoints, data_root, tmp_path):
    pytest.importorskip("onnx")
    from click.testing import CliRunner

    from export.cli import main as edge_export

    result = CliRunner().invoke(
        edge_export,
        [
            str(small_checkpoints["rnn"]),
            "--out",
            str(tmp_path / "m.onnx"),
            "--int8",
            str(tmp_path / "m8.onnx"),
            "--data-dir",
            str(data_root),
            "--no-download",
            "--graph",
            str(tmp_path / "g.svg"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "int8 vs fp32:" in result.output and "graph: " in result.output
    fp32_svg, int8_svg = (tmp_path / "g.svg").read_text(), (tmp_path / "g-int8.svg").read_text()
    assert "× 28" in fp32_svg and "[integer]" not in fp32_svg
    assert "× 28" in int8_svg and "MatMulInteger  [integer]" in int8_svg
    # The changes line counts the images whose prediction int8 changes, on the real test set.
    line = next(line for line in result.output.splitlines() if line.startswith("int8 vs fp32:"))
    fp32 = _predictions(tmp_path / "m.onnx", data_root)
    int8 = _predictions(tmp_path / "m8.onnx", data_root)
    changed = int((fp32 != int8).sum())
    assert (f"{changed} of 10,000" in line) if changed else ("all 10,000" in line)


def _predictions(model: Path, data_root: Path) -> np.ndarray:
    from export.export import onnx_logits

    from .conftest import read_idx

    images, _ = read_idx(data_root / "MNIST" / "raw", "t10k")
    return onnx_logits(model.read_bytes(), images).argmax(1)


# --- what the model saw -----------------------------------------------------------------------------


def test_save_input_middle_panel_is_exactly_the_model_input(tmp_path):
    out = tmp_path / "seen"
    result = cli("--save-input", str(out), *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in EXAMPLES)
    for example in EXAMPLES:
        with Image.open(out / example.name) as picture:
            panel = np.asarray(picture.convert("RGB").crop(model_input_box()))
        assert panel.shape == (28 * SCALE, 28 * SCALE, 3)
        assert (panel[..., 0] == panel[..., 1]).all() and (panel[..., 1] == panel[..., 2]).all()  # grey
        grey = panel[..., 0]
        digit = preprocess(example)
        expected = input_pixels(digit)
        assert (grey[::SCALE, ::SCALE] == expected).all(), example.name
        assert (grey == np.kron(expected, np.ones((SCALE, SCALE), np.uint8))).all()  # nearest-neighbour blocks
        assert np.abs(grey[::SCALE, ::SCALE] / 255 - digit).max() <= 0.5 / 255  # the float array, to 8 bits
        assert expected.max() > 200 and (expected > 128).sum() > 30  # a real digit: the comparison means something


def test_explain_is_public_and_handles_every_input_kind(tmp_path, mnist_test):
    import edge_infer

    images, _ = mnist_test
    digit = images[0]
    (tmp_path / "d.png").write_bytes(_png(digit))
    for source in (digit, Image.fromarray(digit), str(tmp_path / "d.png"), (tmp_path / "d.png").read_bytes()):
        picture = edge_infer.explain(source)
        assert isinstance(picture, Image.Image)
        grey = np.asarray(picture.convert("L").crop(model_input_box()))[::SCALE, ::SCALE]
        assert (grey == input_pixels(preprocess(source))).all()
    blank = edge_infer.explain(np.full((40, 40), 255, np.uint8))  # no digit: still a picture, middle panel black
    assert not np.asarray(blank.convert("L").crop(model_input_box())).any()


def test_save_input_names_repeats_and_stdin(tmp_path):
    out = tmp_path / "seen"
    example = str(EXAMPLES[0])
    result = cli("--save-input", str(out), example, example, "-", input=EXAMPLES[1].read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    stem = EXAMPLES[0].stem
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{stem}.png", f"{stem}-2.png", "stdin.png"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("--save-input", str(blocker), example)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and b"--save-input" in result.stderr


def _png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --- progress bar -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_pngs(tmp_path_factory, mnist_test) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i, digit in enumerate(mnist_test[0][:150]):
        (folder / f"{i:03d}.png").write_bytes(_png(digit))
    return folder


def _run_with_terminal_stderr(*args: str) -> tuple[int, bytes, str]:
    """edge-infer with stderr on a pseudo-terminal (as in an interactive shell); stdout on a pipe."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_infer", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = process.stdout.read()
    process.wait(timeout=300)
    os.close(master)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(many_pngs):
    piped = cli(str(many_pngs), "--jobs", "1")
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 150
    assert piped.stderr == b""  # not a terminal: no bar, no escape codes
    code, stdout, terminal = _run_with_terminal_stderr(str(many_pngs), "--jobs", "1")
    assert code == 0 and len(stdout.splitlines()) == 150
    assert "images/s" in terminal and "150/150" in terminal
    code, _, quiet = _run_with_terminal_stderr(str(many_pngs), "--jobs", "1", "--quiet")
    assert code == 0 and "images/s" not in quiet
    code, _, few = _run_with_terminal_stderr(*map(str, EXAMPLES))  # a handful of images: no bar
    assert code == 0 and "images/s" not in few


# --- training: model.txt, report.png, the header ----------------------------------------------------


def test_report_counts_add_up_to_the_test_set(small_checkpoints, data_root, mnist, tmp_path):
    torch = pytest.importorskip("torch")
    from click.testing import CliRunner

    from train.cli import main as edge_train
    from train.trainer import load_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(small_checkpoints["rnn"].read_bytes())
    result = CliRunner().invoke(
        edge_train, ["--report", "--out", str(run), "--data-dir", str(data_root), "--no-download"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "report.json", "report.png"]  # no retraining
    report = json.loads((run / "report.json").read_text())
    confusion = np.array(report["confusion"])
    test = mnist[1]
    assert confusion.shape == (10, 10) and confusion.sum() == len(test) == report["test_images"] == 10_000
    assert (confusion.sum(1) == np.bincount(test.labels.numpy(), minlength=10)).all()  # rows: the true digits
    assert np.trace(confusion) / 10_000 == pytest.approx(report["accuracy"], abs=1e-6)
    assert report["accuracy"] == pytest.approx(load_checkpoint(run / "checkpoint.pt")["test_acc"], abs=1e-4)
    assert report["per_digit_accuracy"] == pytest.approx(list(np.diag(confusion) / confusion.sum(1)), abs=1e-6)
    errors = report["most_confident_errors"]
    assert len(errors) == 24 and all(e["true"] != e["predicted"] for e in errors)
    assert [e["confidence"] for e in errors] == sorted((e["confidence"] for e in errors), reverse=True)
    assert all(test.labels[e["index"]].item() == e["true"] for e in errors)
    with Image.open(run / "report.png") as png:
        assert png.format == "PNG" and png.width > 800
    assert torch is not None


def test_report_needs_a_finished_run(tmp_path, data_root):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from train.cli import main as edge_train

    for args in (["--report"], ["--report", "--out", str(tmp_path / "none")]):
        result = CliRunner().invoke(edge_train, args + ["--data-dir", str(data_root), "--no-download"])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output


def test_edge_train_writes_model_txt_report_and_a_readable_header(tmp_path, data_root):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from train.cli import main as edge_train

    out = tmp_path / "run"
    result = CliRunner().invoke(
        edge_train,
        [
            "--limit-train",
            "600",
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--data-dir",
            str(data_root),
            "--no-download",
            "--no-augment",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert {"model.txt", "report.png", "report.json", "curves.png"} <= {p.name for p in out.iterdir()}
    summary = (out / "model.txt").read_text()
    assert "RNN(28, 16, batch_first=True)" in summary and "Linear(in_features=16, out_features=10" in summary
    expected = 16 * 28 + 16 * 16 + 16 + 16 + 10 * 16 + 10
    assert summary.rstrip().splitlines()[-1].split()[-1] == f"{expected:,}"
    recipe = next(line for line in result.output.splitlines() if line.startswith("recipe: "))
    pairs = dict(part.split("=", 1) if "=" in part else (part, True) for part in recipe[8:].split())
    assert pairs["optimizer"] == "adamw" and pairs["epochs"] == "1" and pairs["ema_decay"] == "0.998"
    assert pairs["identity_init"] is True and "augment" not in pairs  # off options are left out
    assert "EMA" in result.output and "exceed train" in result.output
    assert json.loads((out / "report.json").read_text())["test_images"] == 10_000


def test_recipe_text_shows_only_what_applies():
    pytest.importorskip("torch")
    from train.report import recipe_text
    from train.trainer import PRESETS, preset_recipe

    gru = recipe_text(preset_recipe("default", "gru"), "gru")
    epochs = preset_recipe("default", "gru").epochs
    assert "identity_init" not in gru and "lr=0.004" in gru and f"epochs={epochs}" in gru  # IRNN only changes rnn
    seed = recipe_text(PRESETS["seed"], "rnn")
    assert seed == "optimizer=rmsprop lr=0.0003 batch_size=64 epochs=30 schedule=constant"


def test_readme_pictures_are_what_the_script_makes(tmp_path):
    """docs/ holds what `python examples/make_pictures.py` makes from the bundled models today."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_pictures.py"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()
    docs = ROOT / "docs"
    for name in ("graph.svg", "graph-int8.svg"):
        assert (tmp_path / name).read_text() == (docs / name).read_text(), f"docs/{name} is stale: rerun the script"
    with Image.open(tmp_path / "photo-4-input.png") as new, Image.open(docs / "photo-4-input.png") as committed:
        assert new.size == committed.size
        box = model_input_box()
        assert np.array_equal(np.asarray(new.convert("L").crop(box)), np.asarray(committed.convert("L").crop(box)))
    readme = (ROOT / "README.md").read_text()
    assert "](docs/graph.svg)" in readme and "](docs/photo-4-input.png)" in readme
    assert "python examples/make_pictures.py" in readme
