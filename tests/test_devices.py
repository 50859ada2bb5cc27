"""Models for devices (export/formats.py): the ORT format and static int8 (QDQ), on real MNIST."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

import export.export as exporter  # noqa: E402
import export.formats as formats  # noqa: E402
from edge_infer import Classifier, ModelError  # noqa: E402
from export.cli import main as edge_export  # noqa: E402

from .conftest import ROOT  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_checkpoints, data_root):
    """The small rnn (hidden 128) exported by the CLI with every device option: fp32, int8, static int8, .ort."""
    folder = tmp_path_factory.mktemp("devices")
    paths = {"fp32": folder / "m.onnx", "int8": folder / "m8.onnx", "static": folder / "m8s.onnx"}
    result = CliRunner().invoke(
        edge_export,
        [
            str(small_checkpoints["rnn"]),
            "--out",
            str(paths["fp32"]),
            "--int8",
            str(paths["int8"]),
            "--int8-static",
            str(paths["static"]),
            "--ort",
            "--data-dir",
            str(data_root),
            "--no-download",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "static int8 (QDQ):" in result.output and "ORT format" in result.output
    return folder, paths, result.output


def rows(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((images.astype(np.float32) / 255).transpose(1, 0, 2))


def logits(model, images: np.ndarray) -> np.ndarray:
    return Classifier(model).session.run(["logits"], {"rows": rows(images)})[0]


# --- ORT format -------------------------------------------------------------------------------------


def test_ort_files_beside_each_model(exported):
    folder, paths, _ = exported
    expected = {p.name for p in paths.values()}
    for path in paths.values():
        expected |= {path.with_suffix(".ort").name, path.with_suffix(".required_operators.config").name}
    assert {p.name for p in folder.iterdir()} == expected  # and no temporary files left


def test_ort_models_give_identical_logits_and_the_same_metadata(exported, mnist_test):
    _, paths, _ = exported
    images = mnist_test[0][:2000]
    for path in paths.values():
        onnx_clf, ort_clf = Classifier(path), Classifier(path.with_suffix(".ort"))
        assert ort_clf.info == onnx_clf.info
        np.testing.assert_array_equal(logits(path.with_suffix(".ort"), images), logits(path, images))
        assert path.with_suffix(".ort").read_bytes()[4:8] == b"ORTM"  # really the flatbuffer format


def test_required_operators_list_what_the_ort_model_runs(exported):
    _, paths, _ = exported
    for kind, path in paths.items():
        config = path.with_suffix(".required_operators.config").read_text()
        assert path.with_suffix(".ort").name in config and str(path.parent) not in config  # names the file only
        ops = {
            op
            for line in config.splitlines()
            if line and not line.startswith("#")
            for op in line.split(";")[2].split(",")
        }
        must = {"fp32": {"Gemm"}, "int8": {"DynamicQuantizeMatMul"}, "static": {"QLinearMatMul"}}[kind]
        assert must <= ops, (kind, ops)


def test_cli_runs_the_ort_model(exported, mnist_test, tmp_path):
    _, paths, _ = exported
    images, labels = mnist_test
    files = []
    for i in range(8):
        files.append(str(tmp_path / f"{i}-{labels[i]}.png"))
        Image.fromarray(images[i]).save(files[-1])
    outputs = {}
    for suffix in (".onnx", ".ort"):
        result = subprocess.run(
            [sys.executable, "-m", "edge_infer", "--json", "--model", str(paths["fp32"].with_suffix(suffix)), *files],
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs[suffix] = result.stdout
    assert outputs[".ort"] == outputs[".onnx"] and outputs[".ort"].count(b"\n") == 8


def test_damaged_ort_file_is_a_one_line_model_error(exported, tmp_path):
    _, paths, _ = exported
    blob = paths["fp32"].with_suffix(".ort").read_bytes()
    for name, content in (("truncated.ort", blob[: len(blob) // 2]), ("flipped.ort", blob[:8] + bytes(64) + blob[72:])):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ModelError) as error:
            Classifier(path)
        assert "\n" not in str(error.value)
        result = subprocess.run(
            [sys.executable, "-m", "edge_infer", "--model", str(path), str(ROOT / "examples" / "mnist-7.png")],
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 2 and b"Traceback" not in result.stderr
        assert len(result.stderr.decode().strip().splitlines()) == 1


def test_foreign_ort_model_is_refused(tmp_path):
    """An .ort file that is not an edge-infer model: the same interface and metadata checks as an .onnx."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    foreign = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    foreign.ir_version = 8
    onnx.save(foreign, tmp_path / "foreign.onnx")
    ort_path, _ = formats.write_ort(tmp_path / "foreign.onnx")
    with pytest.raises(ModelError, match="not an edge-infer digit model"):
        Classifier(ort_path)


# --- static int8 (QDQ) ------------------------------------------------------------------------------


def test_static_int8_is_qdq_with_int8_recurrent_weights(exported):
    _, paths, _ = exported
    model = onnx.load(paths["static"])
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= ops
    assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "Gemm"}  # static, and the MatMuls kept apart
    assert formats.qdq_recurrent_weights(model)
    weights = {t.name: t for t in model.graph.initializer}
    # uint8: exact on every CPU (export.formats)
    assert weights["Wh0"].data_type == onnx.TensorProto.UINT8 and weights["Wo"].data_type == onnx.TensorProto.UINT8
    onnx.checker.check_model(model, full_check=True)
    # On the CPU, onnxruntime runs the recurrence as integer kernels: every MatMul became a QLinearMatMul.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(paths["static"].with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(paths["static"]), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    paths["static"].with_suffix(".optimized.onnx").unlink()
    fused = [n for n in optimized.graph.node if n.op_type == "QLinearMatMul"]
    assert len(fused) == sum(n.op_type == "MatMul" for n in model.graph.node)
    assert not any(n.op_type in ("MatMul", "Gemm", "FusedGemm") for n in optimized.graph.node)


def test_static_int8_accuracy_metadata_and_size(exported, mnist_test):
    _, paths, _ = exported
    images, labels = mnist_test
    accuracy = {kind: float((logits(paths[kind], images).argmax(1) == labels).mean()) for kind in ("fp32", "static")}
    assert accuracy["fp32"] > 0.85
    assert accuracy["fp32"] - accuracy["static"] <= formats.STATIC_MAX_ACCURACY_DROP
    info = Classifier(paths["static"]).info
    assert info.precision == "int8" and info.model["graph"] == "per-step-int8-qdq"
    # Static scales: the accuracy doesn't depend on the batching, so the metadata's number is exact.
    assert info.mnist_test_accuracy == pytest.approx(accuracy["static"], abs=1e-6)
    assert info.checks["accuracy_drop"] == pytest.approx(accuracy["fp32"] - accuracy["static"], abs=1e-6)
    assert "training images" in info.checks["calibration"]
    assert paths["static"].stat().st_size <= 0.5 * paths["fp32"].stat().st_size


def test_static_int8_answers_do_not_depend_on_the_batch(exported, mnist_test):
    _, paths, _ = exported
    images = mnist_test[0][:64]
    batch = logits(paths["static"], images)
    one_by_one = np.concatenate([logits(paths["static"], images[i : i + 1]) for i in range(0, 64, 16)])
    np.testing.assert_allclose(batch[::16], one_by_one, atol=1e-6)


def test_calibration_uses_training_images_only(small_checkpoints, mnist, tmp_path, monkeypatch):
    train, test = mnist
    seen = []
    real = formats.calibration_rows

    def spy(images, *args, **kwargs):
        seen.append(images)
        return real(images, *args, **kwargs)

    monkeypatch.setattr(formats, "calibration_rows", spy)
    exporter.export(
        small_checkpoints["lstm"], tmp_path / "m.onnx", test, int8_static_out=tmp_path / "s.onnx", train=train
    )
    assert len(seen) == 1 and np.shares_memory(seen[0], train.images.numpy())
    assert not np.shares_memory(seen[0], test.images.numpy())
    batches = real(train.images.numpy())
    assert sum(b.shape[1] for b in batches) == formats.CALIBRATION_IMAGES and batches[0].shape[::2] == (28, 28)


def test_failed_static_gate_keeps_what_passed(small_checkpoints, mnist, tmp_path, monkeypatch):
    train, test = mnist
    monkeypatch.setattr(formats, "STATIC_MAX_ACCURACY_DROP", -1.0)  # no model can pass this
    with pytest.raises(exporter.IncompleteExport, match="int8-static not written: static int8 MNIST test") as error:
        exporter.export(
            small_checkpoints["gru"],
            tmp_path / "m.onnx",
            test,
            int8_static_out=tmp_path / "s.onnx",
            train=train,
            ort=True,
        )
    assert set(error.value.failed) == {"int8-static"} and list(error.value.report.paths) == ["fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.ort", "m.required_operators.config"]
    for path in list(tmp_path.iterdir()):
        path.unlink()
    with pytest.raises(exporter.ExportError, match="training images"):
        exporter.export(small_checkpoints["gru"], tmp_path / "m.onnx", test, int8_static_out=tmp_path / "s.onnx")
