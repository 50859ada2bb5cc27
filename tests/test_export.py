"""export/: time-major graphs, parity with torch on real MNIST, int8, metadata and bad checkpoints.

The exported models are read back from the files the exporter wrote, and run through the runtime's input
helper (edge_infer.model_info.to_rows) and names, so the tests see exactly what a user's runtime sees."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import export.export as exporter  # noqa: E402
from edge_infer import Classifier  # noqa: E402
from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, ModelInfo, to_rows  # noqa: E402
from export.cli import main as edge_export  # noqa: E402
from export.graph import AUTO_FORMS, FORMS, SWITCH_BATCH, build_graph  # noqa: E402
from train.model import CELLS, DigitRNN, ModelConfig  # noqa: E402
from train.trainer import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_checkpoints, mnist) -> dict[str, tuple]:
    """Each cell's small checkpoint exported to fp32 + int8 (the exporter runs its own checks)."""
    out = {}
    for cell, checkpoint in small_checkpoints.items():
        folder = tmp_path_factory.mktemp(f"onnx-{cell}")
        report = exporter.export(checkpoint, folder / "m.onnx", mnist[1], int8_out=folder / "m8.onnx")
        out[cell] = (report, onnx.load(folder / "m.onnx"), onnx.load(folder / "m8.onnx"))
    return out


def torch_logits(checkpoint, images_uint8: np.ndarray) -> np.ndarray:
    """The trained model's logits (batch_first, as trained), with the checkpoint's calibration temperature
    applied as the export applies it."""
    state = load_checkpoint(checkpoint)
    model = DigitRNN(ModelConfig(**state["model_config"])).eval()  # as trained: batch_first
    model.load_state_dict(state["model"])
    temperature = (state.get("calibration") or {}).get("temperature", 1.0)
    with torch.no_grad():
        model.fc.weight.div_(temperature)
        model.fc.bias.div_(temperature)
        return model(torch.from_numpy(images_uint8).float() / 255).numpy()


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_rows(sess: ort.InferenceSession, images_uint8: np.ndarray) -> np.ndarray:
    return sess.run([OUTPUT_NAME], {INPUT_NAME: to_rows(images_uint8)})[0]


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_parity_with_torch_on_real_mnist(cell, exported, small_checkpoints, mnist):
    report, fp32, _ = exported[cell]
    images = mnist[1].images[:1000].numpy()
    ours, theirs = run_rows(session(fp32), images), torch_logits(small_checkpoints[cell], images)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0 and report.parity_images >= 1000


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_dynamic_batch(cell, batch, exported, mnist):
    _, fp32, int8 = exported[cell]
    images = mnist[1].images[:batch].numpy()
    for model in (fp32, int8):
        assert run_rows(session(model), images).shape == (batch, 10)


@pytest.mark.parametrize("cell", CELLS)
def test_both_graph_forms_match_torch_for_deep_models(cell, mnist):
    """Any hidden size and layer count: a random 2-layer model in every graph form (per-step, hoisted, ONNX
    RNN/GRU/LSTM node), and the per-step form as MatMul+Add (the one int8 quantizes)."""
    torch.manual_seed(1)
    model = DigitRNN(ModelConfig(cell, 20, 2), batch_first=False).eval()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    images = mnist[1].images[:64].numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(images).float().div(255).transpose(0, 1)).numpy()
    for form, gemm in [(form, True) for form in FORMS] + [("per-step", False)]:  # gemm=False: what int8 quantizes
        got = run_rows(session(build_graph(weights, cell, 20, 2, form=form, gemm=gemm)), images)
        assert np.abs(got - expected).max() <= 1e-5, (form, gemm)


@pytest.mark.slow
def test_graph_is_time_major(exported):
    """The input feeds the recurrence as [time, batch, pixels]: no Transpose anywhere, and in the per-step
    branch of the (default) auto form the input is split into 28 per-step tensors along axis 0."""
    _, fp32, _ = exported["rnn"]
    graph = fp32.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [28, "N", 28]
    choose = next(n for n in graph.node if n.op_type == "If")
    branches = [a.g for a in choose.attribute]
    assert len(branches) == 2
    for branch in (graph, *branches):
        assert not any(n.op_type == "Transpose" for n in branch.node)
    for branch in branches:
        if any(n.op_type == "RNN" for n in branch.node):  # the node form (batch 1): checked below
            continue
        splits = [n for n in branch.node if n.op_type == "Split"]
        assert len(splits) == 1 and len(splits[0].output) == 28
        assert next(a.i for a in splits[0].attribute if a.name == "axis") == 0
    node_form = build_graph(_seed_weights(), "rnn", 128, 1, form="node")
    rnn = next(n for n in node_form.graph.node if n.op_type == "RNN")
    assert rnn.input[0] == INPUT_NAME and all(a.name != "layout" or a.i == 0 for a in rnn.attribute)


@pytest.mark.parametrize("cell", CELLS)
def test_auto_form_runs_the_small_batch_form_below_the_switch(cell, exported, small_checkpoints, mnist):
    """The exported default: an If picks AUTO_FORMS[cell][0] below SWITCH_BATCH and per-step from there;
    both agree with torch on each side of the switch, and the metadata says which is which."""
    report, fp32, _ = exported[cell]
    small, large = AUTO_FORMS[cell]
    recurrent_op = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    ops = {n.op_type for n in fp32.graph.node}
    if small == large:  # one form is the fastest everywhere: no If
        assert "If" not in ops and (recurrent_op in ops) == (small == "node")
    else:
        choose = next(n for n in fp32.graph.node if n.op_type == "If")
        branch = {a.name: {n.op_type for n in a.g.node} for a in choose.attribute}
        assert (recurrent_op in branch["then_branch"]) == (small == "node")
        assert (recurrent_op in branch["else_branch"]) == (large == "node")
    meta = ModelInfo.from_metadata({p.key: p.value for p in fp32.metadata_props}).model
    assert (meta["graph"], meta["small_batch_form"], meta["large_batch_form"], meta["large_from_batch"]) == (
        "auto",
        small,
        large,
        SWITCH_BATCH[cell],
    )
    sess = session(fp32)
    for batch in (1, SWITCH_BATCH[cell] - 1, SWITCH_BATCH[cell]):
        images = mnist[1].images[:batch].numpy()
        theirs = torch_logits(small_checkpoints[cell], images)
        assert np.abs(run_rows(sess, images) - theirs).max() <= 1e-4, batch


def _seed_weights() -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in DigitRNN(ModelConfig(), batch_first=False).state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_int8_has_integer_recurrent_ops(cell, exported):
    _, _, int8 = exported[cell]
    integer_nodes = [n for n in int8.graph.node if n.op_type == "MatMulInteger"]
    recurrent = [n for n in integer_nodes if n.input[1].startswith("Wh")]
    assert recurrent, "the recurrent weights must be int8"
    assert any(n.input[1].startswith("Wo") for n in integer_nodes)  # and the classifier
    # uint8: u8 x u8 products are exact on every CPU (u8 x s8 saturates on x86 without VNNI)
    int8_weights = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    assert {n.input[1] for n in recurrent} <= int8_weights
    # No float copy of any quantized weight is left in the file.
    float_names = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert not {"Wi0", "Wh0", "Wo"} & float_names


@pytest.mark.slow
def test_int8_accuracy_and_size(exported, tmp_path, mnist):
    report, fp32, int8 = exported["rnn"]  # hidden 128, the seed's size
    test = mnist[1]
    accuracy = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        logits = run_rows(session(model), test.images.numpy())
        accuracy[name] = float((logits.argmax(1) == test.labels.numpy()).mean())
    assert accuracy["fp32"] > 0.85  # a real model, so the comparison means something
    assert accuracy["fp32"] - accuracy["int8"] <= 0.003
    # Dynamic quantization scales activations per batch, so a different batching (the exporter runs
    # 1000 at a time, this test all 10,000) may flip a handful of borderline images.
    assert accuracy["int8"] == pytest.approx(report.int8_accuracy, abs=1e-3)
    assert report.int8_path.stat().st_size <= 0.40 * report.fp32_path.stat().st_size


@pytest.mark.slow
def test_metadata_round_trip(exported):
    report, fp32, int8 = exported["rnn"]
    for path, precision in ((report.fp32_path, "fp32"), (report.int8_path, "int8")):
        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        info = ModelInfo.from_metadata(props)
        assert info.precision == precision
        assert info.labels == [str(d) for d in range(10)]
        assert info.model["cell"] == "rnn" and info.model["hidden"] == 128
        assert info.recipe["optimizer"] == "adamw" and info.min_onnxruntime == "1.16" and info.opset == 17
        assert "[28, N, 28]" in info.input_layout and "ink bright" in info.preprocessing
        assert ModelInfo.from_metadata(info.to_metadata()) == info
    fp32_info = ModelInfo.from_metadata({p.key: p.value for p in fp32.metadata_props})
    assert fp32_info.mnist_test_accuracy == pytest.approx(report.fp32_accuracy, abs=1e-6)
    assert fp32_info.checks["argmax_agreement"] == 1.0
    assert fp32.opset_import[0].version == 17 and fp32.ir_version == 8
    onnx.checker.check_model(fp32, full_check=True)
    onnx.checker.check_model(int8, full_check=True)


@pytest.mark.slow
def test_cli_writes_both_models_and_prints_summary(small_checkpoints, data_root, tmp_path):
    result = CliRunner().invoke(
        edge_export,
        [
            str(small_checkpoints["gru"]),
            "--out",
            str(tmp_path / "a.onnx"),
            "--int8",
            str(tmp_path / "a8.onnx"),
            "--data-dir",
            str(data_root),
            "--no-download",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "parity on 1000 MNIST test images" in result.output and "int8:" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a8.onnx"]  # no temp files left


@pytest.mark.slow
def test_failed_int8_gate_keeps_fp32(small_checkpoints, data_root, tmp_path, monkeypatch):
    """The int8 model fails its gate: the fp32 model, which passed, is written; the int8 one is not (nor its
    .ort); exit 1 and one line on stderr naming what was not written and why, and what was."""
    monkeypatch.setattr(exporter, "INT8_MAX_ACCURACY_DROP", -1.0)  # no int8 model can pass this
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m8.onnx"
    args = [str(small_checkpoints["gru"]), "--out", str(fp32), "--int8", str(int8), "--ort"]
    result = CliRunner().invoke(edge_export, [*args, "--data-dir", str(data_root), "--no-download"])
    assert result.exit_code == 1, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "int8 not written: int8 MNIST test accuracy" in errors[0] and f"written: fp32 {fp32}" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.ort", "m.required_operators.config"]
    assert Classifier(fp32).info.precision == "fp32"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "foreign"])
def test_bad_checkpoint_is_one_line_exit_2(content, tmp_path, data_root):
    path = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)  # someone else's checkpoint
    else:
        path.write_bytes(content)
    result = CliRunner().invoke(
        edge_export, [str(path), "--out", str(tmp_path / "m.onnx"), "--data-dir", str(data_root), "--no-download"]
    )
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_missing_checkpoint(tmp_path):
    result = CliRunner().invoke(edge_export, [str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "no checkpoint" in result.output


@pytest.mark.slow
def test_parity_check_fails_on_tampered_model(small_checkpoints, mnist, tmp_path, monkeypatch):
    real_build = exporter.build_graph

    def tampered(weights, *args, **kwargs):
        weights = dict(weights)
        weights["fc.bias"] = weights["fc.bias"] + np.float32(1e-3)  # a tiny change the check must catch
        return real_build(weights, *args, **kwargs)

    monkeypatch.setattr(exporter, "build_graph", tampered)
    with pytest.raises(exporter.ExportError, match="parity check failed"):
        exporter.export(small_checkpoints["rnn"], tmp_path / "m.onnx", mnist[1])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_shipped_bytes_are_the_checked_bytes(small_checkpoints, mnist, tmp_path, monkeypatch):
    """Every gate runs through edge_infer.Classifier, and the files written are bytes it checked."""
    checked = []
    real_classifier = exporter.runtime_classifier

    def recording(blob):
        checked.append(blob)
        return real_classifier(blob)

    monkeypatch.setattr(exporter, "runtime_classifier", recording)
    report = exporter.export(small_checkpoints["lstm"], tmp_path / "m.onnx", mnist[1], int8_out=tmp_path / "m8.onnx")
    for path in (report.fp32_path, report.int8_path):
        assert path.read_bytes() in checked
    assert report.infos["int8"].precision == "int8" and set(report.paths) == {"fp32", "int8"}


@pytest.mark.slow
def test_bad_output_paths_and_opset(small_checkpoints, data_root, tmp_path):
    common = ["--data-dir", str(data_root), "--no-download"]
    folder = tmp_path / "a-dir"
    folder.mkdir()
    for args in (
        [str(small_checkpoints["rnn"]), "--out", str(folder)],
        [str(small_checkpoints["rnn"]), "--out", str(tmp_path / "m.onnx"), "--opset", "9"],
    ):
        result = CliRunner().invoke(edge_export, args + common)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_int8_integer_products_are_exact_on_this_cpu(cell, exported, mnist_test):
    """Every int32 product onnxruntime computes for the exported int8 model equals the exact one, on real
    MNIST images: what makes its answers the same on every CPU (export.int8_exact). The int8 gate runs this
    too; here it runs on other images, through the probe's own files as the compatibility matrix uses them."""
    from export import int8_exact

    report, _, int8 = exported[cell]
    probe = int8_exact.instrument(int8)
    probe.save(report.int8_path.parent / f"probe-{cell}")
    saved = int8_exact.Probe.load(report.int8_path.parent / f"probe-{cell}")
    result = int8_exact.check(saved, to_rows(mnist_test[0][-600:]))
    assert result.ops == sum(n.op_type == "MatMulInteger" for n in int8.graph.node)
    assert result.products > 0 and result.exact, result.summary()
    assert "all exact" in Classifier(report.int8_path).info.checks["integer_products"]


@pytest.mark.slow
def test_int8_exactness_check_counts_every_wrong_product(exported, mnist_test):
    """A kernel that gets products wrong is caught, counted and measured: the probe's copy of the output
    layer's weight (what the exact products are computed from) is off by one in one column, so those
    products differ from onnxruntime's as a saturating or otherwise wrong kernel's would."""
    from export import int8_exact

    _, _, int8 = exported["gru"]
    probe = int8_exact.instrument(int8)
    rows = to_rows(mnist_test[0][:40])
    assert int8_exact.check(probe, rows).exact
    weight = next(p["b"] for p in probe.products if p["b"].startswith("Wo"))  # reads the final state
    wrong = probe.weights[weight].copy()
    wrong[:, 0] = np.where(wrong[:, 0] < 255, wrong[:, 0] + 1, wrong[:, 0] - 1)  # output column 0, off by one
    probe.weights[weight] = wrong
    result = int8_exact.check(probe, rows)
    # every image's product in column 0 of that op is off by the sum of its activations' offsets: some are
    # off (not every activation sits on its zero point), none elsewhere
    assert not result.exact and 0 < result.inexact <= rows.shape[1]
    assert 0 < result.max_abs_diff <= 255 * wrong.shape[0]
