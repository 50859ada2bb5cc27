"""Hostile and odd inputs: models that try to read files or hang, files that are not files, names that break
output, photos too big to decode naively. Every hostile file is made here, by the test."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer import Classifier, ImageError, ModelError, Prediction, preprocess
from edge_infer.classifier import bundled_model_path, usable_cpus
from edge_infer.preprocess import FORMAT_PLUGINS, MAX_PIXELS, load_image

from .conftest import ROOT, obey_permission_bits
from .test_runtime import cli, parse_lines

SEVEN = ROOT / "examples" / "mnist-7.png"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


def one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The run failed with `code` and exactly one line on stderr, no traceback; returns that line."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- models -----------------------------------------------------------------------------------------


def _bundled_onnx():
    onnx = pytest.importorskip("onnx")
    return onnx, onnx.load(str(bundled_model_path()))


def _relu_rnn_like_bundled(onnx, bundled, input_scale: float = 1.0) -> bytes:
    """A small ReLU RNN graph (export.graph, per-step form) with the bundled model's metadata and versions, its
    input weights scaled by input_scale and its output weights by 1e10."""
    from export.graph import build_graph

    rng = np.random.default_rng(0)
    hidden = 16
    shapes = {
        "rnn.weight_ih_l0": (hidden, 28),
        "rnn.weight_hh_l0": (hidden, hidden),
        "rnn.bias_ih_l0": (hidden,),
        "rnn.bias_hh_l0": (hidden,),
        "fc.weight": (10, hidden),
        "fc.bias": (10,),
    }
    state = {name: rng.normal(0, 0.1, shape).astype(np.float32) for name, shape in shapes.items()}
    state["rnn.weight_ih_l0"] *= np.float32(input_scale)
    state["fc.weight"] *= np.float32(1e10)  # a huge state overflows the logits; a blank input's small one doesn't
    model = build_graph(state, "rnn", hidden, 1, form="per-step")
    model.ir_version = bundled.ir_version
    model.metadata_props.extend(bundled.metadata_props)
    return model.SerializeToString()


def test_model_with_external_data_cannot_read_files_in_the_working_directory(tmp_path):
    onnx, model = _bundled_onnx()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(bytes(range(256)) * 20)  # enough bytes for Wo (10x128 float32)
    wo = next(t for t in model.graph.initializer if t.name == "Wo")
    wo.ClearField("raw_data")
    wo.data_location = onnx.TensorProto.EXTERNAL
    entry = wo.external_data.add()
    entry.key, entry.value = "location", "secret.txt"
    evil = tmp_path / "evil.onnx"
    evil.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="external data"):
        Classifier(evil.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "edge_infer", "--json", "--model", "evil.onnx", str(SEVEN)],
        cwd=tmp_path,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert "external data" in one_error_line(result, 2) and result.stdout == b""


def _with_extra_node(model, node, *initializers):
    model.graph.node.append(node)
    model.graph.initializer.extend(initializers)
    return model.SerializeToString()


def test_models_with_foreign_operators_are_refused_before_onnxruntime_runs_them(tmp_path):
    onnx, _ = _bundled_onnx()
    from onnx import TensorProto, helper, numpy_helper

    # 10 GB at run time from a shape held in the file
    _, model = _bundled_onnx()
    big = _with_extra_node(
        model,
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"]),
        numpy_helper.from_array(np.array([50_000, 50_000], np.int64), "huge_shape"),
    )
    with pytest.raises(ModelError, match="ConstantOfShape"):
        Classifier(big)
    # a Loop of 2^62 iterations
    _, model = _bundled_onnx()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    loop = _with_extra_node(
        model,
        helper.make_node("Loop", ["trips", "cond"], [], body=body),
        numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
    )
    with pytest.raises(ModelError, match="Loop"):
        Classifier(loop)
    (tmp_path / "loop.onnx").write_bytes(loop)
    assert "Loop" in one_error_line(cli("--model", str(tmp_path / "loop.onnx"), str(SEVEN)), 2)


def test_the_exporters_own_forms_pass_the_inspection():
    """The bundled fp32 and int8 models, and a model given as bytes, go through model_check unchanged."""
    for path in (bundled_model_path(False), bundled_model_path(True)):
        assert Classifier(path).predict(SEVEN).label == 7
        assert Classifier(path.read_bytes()).predict(SEVEN).label == 7


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_every_form_edge_export_writes_passes_the_inspection(cell):
    """The allowed operators are exactly enough: every cell, 1 and 2 layers, every graph form and int8."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from edge_infer.model_check import check_model_bytes
    from export.export import quantize_int8
    from export.graph import FORMS, build_model
    from train.model import DigitRNN, ModelConfig

    for layers in (1, 2):
        torch.manual_seed(0)
        state = {k: v.detach().numpy() for k, v in DigitRNN(ModelConfig(cell, 16, layers)).state_dict().items()}
        for form in FORMS:
            check_model_bytes(build_model(state, cell, 16, layers, form=form).SerializeToString())
        check_model_bytes(quantize_int8(build_model(state, cell, 16, layers, gemm=False)).SerializeToString())


def test_model_paths_that_are_not_sane_files(tmp_path):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    sparse = tmp_path / "huge.onnx"
    with open(sparse, "wb") as f:
        f.truncate(3 * 2**30)  # 3 GB, sparse: no disk used
    started = time.monotonic()
    for path, message in (
        ("/dev/zero", "not a regular file"),
        (fifo, "not a regular file"),
        (sparse, "file too large"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(ModelError, match=message):
            Classifier(path)
        assert message in one_error_line(cli("--model", str(path), str(SEVEN)), 2)
    assert time.monotonic() - started < 60  # nothing hung or read 3 GB


def test_a_checkpoint_given_as_model_is_named_as_such(tmp_path):
    import pickle
    import zipfile

    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:  # torch.save's format
        z.writestr("archive/data.pkl", pickle.dumps({"model": {}}))
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"model": {}}, protocol=2))  # torch's legacy format
    for name in ("zip.pt", "legacy.pt"):
        line = one_error_line(cli("--model", str(tmp_path / name), str(SEVEN)), 2)
        assert "not an ONNX model (is it a checkpoint? run edge-export)" in line


def test_non_finite_logits_are_refused_never_printed(tmp_path):
    onnx, model = _bundled_onnx()
    from onnx import numpy_helper

    def with_weight(name: str, transform) -> bytes:
        _, m = _bundled_onnx()
        tensor = next(t for t in m.graph.initializer if t.name == name)
        tensor.CopyFrom(numpy_helper.from_array(transform(numpy_helper.to_array(tensor)), name))
        return m.SerializeToString()

    with pytest.raises(ModelError, match="NaN or infinite"):  # NaN weights: refused at load
        Classifier(with_weight("Wo", lambda w: np.full_like(w, np.nan)))
    # Finite on a blank input, infinite as soon as there is ink: refused when classifying. (A ReLU RNN, whose
    # state is unbounded: the bundled cell's gates saturate, so no input weight can make its logits explode.)
    exploding = tmp_path / "exploding.onnx"
    exploding.write_bytes(_relu_rnn_like_bundled(onnx, model, input_scale=3e38))
    with pytest.raises(ModelError, match="NaN or infinite"):
        Classifier(exploding).predict(SEVEN)
    result = cli("--json", "--model", str(exploding), str(SEVEN))
    assert "NaN or infinite" in one_error_line(result, 2)
    assert b"NaN" not in result.stdout and b"Infinity" not in result.stdout


def test_bad_output_shape_is_described():
    onnx, model = _bundled_onnx()
    from onnx import helper, numpy_helper

    out = model.graph.output[0]
    out.name = "logits_old"
    model.graph.node[-1].output[0] = "logits_old"
    model.graph.node.append(helper.make_node("Reshape", ["logits_old", "flat"], ["logits"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
    model.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["M"]))
    with pytest.raises(ModelError, match=r"logits\['M'\]|outputs logits\[10\]"):
        Classifier(model.SerializeToString())


def test_threads_are_capped_at_the_usable_cores():
    assert Classifier(threads=1000).threads == usable_cpus()
    started = time.monotonic()
    result = cli("--threads", "1000", str(SEVEN))
    assert result.returncode == 0 and parse_lines(result.stdout)[str(SEVEN)][0] == "7"
    assert time.monotonic() - started < 60


# --- files that are not (sane) image files -------------------------------------------------------------


def test_fifo_device_symlink_and_sparse_file_in_a_directory(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.png").write_bytes(SEVEN.read_bytes())
    os.mkfifo(folder / "y.png")
    os.symlink("/dev/zero", folder / "z.png")
    with open(folder / "big.png", "wb") as f:
        f.truncate(3 * 2**30)
    os.symlink(folder / "loop1.png", folder / "loop2.png")
    os.symlink(folder / "loop2.png", folder / "loop1.png")
    started = time.monotonic()
    result = cli(str(folder))
    assert time.monotonic() - started < 60 and result.returncode == 1
    assert parse_lines(result.stdout) == {str(folder / "a.png"): ("7", pytest.approx(1.0, abs=0.01))}
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 5 and "Traceback" not in result.stderr.decode()
    message = {Path(line.split(": ")[1]).name: line.split(": ", 2)[2] for line in errors}
    assert message["y.png"].startswith("not a regular file") and message["z.png"].startswith("not a regular file")
    assert message["big.png"].startswith("file too large")
    assert message["loop1.png"] == message["loop2.png"] == "symbolic link loop"


def test_format_is_sniffed_and_only_documented_plugins_are_used(tmp_path):
    """An EPS file (Pillow would hand it to Ghostscript) is 'not an image'; no other Pillow plugin loads."""
    (tmp_path / "x.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n" + b"0 " * 100)
    digit = Image.open(SEVEN).convert("L")
    files = [tmp_path / "x.eps"]
    for fmt, suffix in (
        ("PNG", "png"),
        ("JPEG", "jpg"),
        ("GIF", "gif"),
        ("BMP", "bmp"),
        ("TIFF", "tif"),
        ("WEBP", "webp"),
        ("PPM", "pgm"),
        ("ICO", "ico"),
        ("TGA", "tga"),
    ):
        files.append(tmp_path / f"d.{suffix}")
        digit.resize((64, 64)).save(files[-1], fmt)
    code = f"""
import sys
from edge_infer import Classifier, ImageError
c = Classifier()
for path in {[str(f) for f in files]!r}:
    try:
        print(c.predict(path).label)
    except ImageError as e:
        print("error", e)
print(sorted(m for m in sys.modules if m.startswith("PIL.") and m.endswith("ImagePlugin")))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.splitlines()
    assert out[0] == "error not an image (unrecognised format)"
    assert out[1:-1] == ["7"] * 9, out
    plugins = eval(out[-1])
    assert set(plugins) <= {f"PIL.{p}" for p in FORMAT_PLUGINS.values()} and "PIL.EpsImagePlugin" not in plugins


def test_heic_in_a_directory_is_reported_not_skipped(tmp_path):
    (tmp_path / "a.png").write_bytes(SEVEN.read_bytes())
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(100))
    result = cli(str(tmp_path))
    assert result.returncode == 1 and len(parse_lines(result.stdout)) == 1
    assert "not supported" in one_error_line(result, 1) and "IMG_0001.HEIC" in result.stderr.decode()
    with pytest.raises(ImageError, match="HEIC"):
        preprocess(tmp_path / "IMG_0001.HEIC")


def test_odd_paths_and_files_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="NUL"):
        load_image("bad\0name.png")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ImageError, match="^symbolic link loop$"):
        load_image(tmp_path / "a")


def test_an_unreadable_subdirectory_is_one_error_and_the_rest_are_classified(tmp_path):
    """A subdirectory that cannot be listed was skipped in silence (exit 0); now it is one error line (exit
    1), in its place, and the images around it are classified. Root obeys the permission bits here too."""
    folder = tmp_path / "d"
    for sub in ("a", "locked", "z"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "seven.png").write_bytes(SEVEN.read_bytes())
    os.chmod(folder / "locked", 0)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_infer", str(folder), str(folder / "locked")],
            cwd=ROOT,
            capture_output=True,
            timeout=300,
            preexec_fn=obey_permission_bits,
        )
    finally:
        os.chmod(folder / "locked", 0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr.decode()
    unreadable = f"edge-infer: {folder / 'locked'}: cannot read the directory: Permission denied"
    assert result.stderr.decode().splitlines() == [unreadable, unreadable]  # (the second: given by name)
    assert list(parse_lines(result.stdout)) == [str(folder / "a" / "seven.png"), str(folder / "z" / "seven.png")]
    assert {label for label, _ in parse_lines(result.stdout).values()} == {"7"}


def test_a_strip_of_800_digits_is_refused_not_read_as_one_digit(tmp_path, mnist_test):
    """A 20000x50 strip of 800 MNIST digits read as one confident digit, later as "no digit" (exit 0):
    shrunk to the 512-pixel working size it is 1 px high. Now it is refused in one line, with and without
    --number; a strip of 64 digit widths is still read."""
    images = mnist_test[0]
    strip = np.full((50, 20000), 255, np.uint8)
    for k in range(800):
        strip[12:37, 25 * k : 25 * k + 25] = 255 - np.asarray(Image.fromarray(images[k]).resize((25, 25)))
    Image.fromarray(strip).save(tmp_path / "strip.png")
    for args in (["--json"], ["--number"]):
        line = one_error_line(cli(*args, str(tmp_path / "strip.png")), 1)
        assert line.endswith(
            "strip.png: image too long and thin to read (20000x50; once over 512 px, a side may be "
            "at most 64 times the other): crop it into shorter pieces"
        ), line
    assert json.loads(cli("--json", str(tmp_path / "strip.png")).stdout)["error"].startswith("image too long")
    with pytest.raises(ImageError, match="too long and thin"):
        load_image(strip)
    assert load_image(strip[:, : 64 * 50]).size == (512, 8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_zero_width_png_has_no_pixels():
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="no pixels"):
        preprocess(png)


# --- output that file names cannot break ----------------------------------------------------------------


def test_tabs_newlines_and_non_utf8_in_file_names(tmp_path):
    names = [b"plain.png", b"tab\there.png", b"new\nline.png", b"caf\xe9.png"]
    for name in names:
        (Path(os.fsdecode(tmp_path)) / os.fsdecode(name)).write_bytes(SEVEN.read_bytes())
    result = cli(str(tmp_path), env={"PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode("utf-8").splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 3 and line.split("\t")[1] == "7" for line in lines)
    shown = {Path(line.split("\t")[0]).name for line in lines}
    assert shown == {"plain.png", "tab\\there.png", "new\\nline.png", "caf\\xe9.png"}
    records = [
        json.loads(line)
        for line in cli("--json", str(tmp_path), env={"PYTHONIOENCODING": "utf-8"}).stdout.decode("utf-8").splitlines()
    ]
    assert len(records) == 4 and {r["label"] for r in records} == {7}


# --- PIL image objects ------------------------------------------------------------------------------------

INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_tiff_files_and_objects(orientation, tmp_path, classifier):
    """A path, its bytes and the caller's PIL image of an uncompressed TIFF read alike. The digit is not
    square: for 5-8 Pillow (13.0) memory-maps such a file opened by name with width and height swapped, and
    the caller's image read as a confident 1."""
    upright = Image.open(SEVEN).convert("L").resize((100, 160))
    stored = upright.transpose(INVERSE[orientation]) if orientation > 1 else upright
    path = tmp_path / f"o{orientation}.tif"
    stored.save(path, "TIFF", tiffinfo={0x0112: orientation})
    expected = preprocess(upright)
    np.testing.assert_allclose(preprocess(path), expected, atol=1e-5)
    np.testing.assert_allclose(preprocess(path.read_bytes()), expected, atol=1e-5)
    with Image.open(path) as opened:
        np.testing.assert_allclose(preprocess(opened), expected, atol=1e-5)
    with Image.open(path) as opened:
        assert classifier.predict(opened).label == 7 and opened.filename == str(path)


def test_pil_image_at_a_later_frame_is_read_from_its_first(tmp_path, mnist_test, classifier):
    first, second = mnist_test[0][0], mnist_test[0][1]  # a 7, then a 2
    frames = [Image.fromarray(first).convert("P"), Image.fromarray(second).convert("P")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(tmp_path / "a.gif") as gif:
        gif.seek(1)
        assert classifier.predict(gif).label == 7
        assert gif.tell() == 1  # the caller's image is left where it was


def test_inf_pixel_in_a_float_tiff_is_an_image_error(tmp_path):
    grey = np.full((40, 40), 0.9, np.float32)
    grey[10:30, 18:22] = 0.1
    grey[0, 0] = np.inf
    Image.fromarray(grey, "F").save(tmp_path / "f.tif")
    for source in (tmp_path / "f.tif", Image.open(tmp_path / "f.tif"), grey):
        with pytest.raises(ImageError, match="NaN or infinite"):
            preprocess(source)


def test_premultiplied_modes_are_handled(classifier):
    digit = Image.open(SEVEN).convert("L")
    la = Image.merge("LA", [digit, Image.new("L", digit.size, 255)])
    for mode in ("La", "RGBa"):
        image = la.convert(mode) if mode == "La" else la.convert("RGBA").convert(mode)
        assert classifier.predict(image).label == 7


# --- big phone photos --------------------------------------------------------------------------------------


def _photo(size: tuple[int, int], path: Path) -> Path:
    digit = Image.open(SEVEN).convert("L").resize((size[1] // 2, size[1] // 2))
    page = Image.new("L", size, 255)
    page.paste(Image.eval(digit, lambda v: 255 - v), (size[0] // 4, size[1] // 4))
    page.save(path, "JPEG", quality=85)
    return path


def test_48_and_108_megapixel_jpegs_are_decoded_at_reduced_scale(tmp_path, classifier):
    for size in ((8000, 6000), (12000, 9000)):
        path = _photo(size, tmp_path / f"{size[0]}.jpg")
        assert size[0] * size[1] > MAX_PIXELS
        assert classifier.predict(path).label == 7
    big_png = tmp_path / "big.png"
    Image.new("1", (8000, 6000)).save(big_png)  # PNG can't be decoded at reduced scale: refused, one message
    with pytest.raises(ImageError, match=r"^image too large \(8000x6000 pixels; limit 40,000,000"):
        preprocess(big_png)


# --- the one library call the CLI uses -----------------------------------------------------------------------


class CountingSession:
    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_predict_many_returns_errors_in_place_with_one_run(tmp_path):
    classifier = Classifier()
    classifier.session = counting = CountingSession(classifier.session)
    (tmp_path / "bad.png").write_text("not a png")
    images = [SEVEN, tmp_path / "bad.png", SEVEN.read_bytes(), tmp_path / "missing.png", np.zeros((0, 3))]
    results = classifier.predict_many(images, errors="return")
    assert counting.runs == 1
    assert [type(r) for r in results] == [Prediction, ImageError, Prediction, ImageError, ImageError]
    assert str(results[1]) == "not an image (unrecognised format)" and str(results[3]) == "file not found"
    assert str(tmp_path) not in " ".join(map(str, results))  # the library names no path; the CLI does
    with pytest.raises(ImageError):
        classifier.predict_many(images)


def test_option_errors_are_one_line_exit_2():
    for args in (
        ["--top-k", "0", "x.png"],
        ["--nonsense", "x.png"],
        ["--threads", "zero", "x.png"],
        ["--min-confidence", "2", "x.png"],
        [],
    ):
        line = one_error_line(cli(*args), 2)
        assert line.startswith("edge-infer: error: "), line


# --- not sure --------------------------------------------------------------------------------------------


def test_min_confidence_says_not_sure_and_keeps_the_guess(tmp_path, mnist_test):
    images = mnist_test[0][:300]
    plain = Classifier().predict_batch(list(images))
    threshold = float(np.quantile([p.confidence for p in plain], 0.05))
    cautious = Classifier(min_confidence=threshold).predict_batch(list(images))
    unsure = [i for i, p in enumerate(cautious) if p.unsure]
    assert 0 < len(unsure) < len(images) // 5
    for p, q in zip(plain, cautious, strict=True):
        assert q.digit_found and q.guess == p.label and q.confidence == p.confidence
        assert (q.label == -1) == q.unsure == (p.confidence < threshold)
    path = tmp_path / "unsure.png"
    Image.fromarray(images[unsure[0]]).save(path)
    line = cli("--min-confidence", str(threshold), str(path)).stdout.decode().strip().split("\t")
    assert line[1] == "-" and float(line[2]) < threshold
    record = json.loads(cli("--json", "--min-confidence", str(threshold), str(path)).stdout)
    assert record["label"] is None and record["unsure"] is True and record["guess"] == plain[unsure[0]].label


# --- a worker process that dies ------------------------------------------------------------------------------

KILL_ONE_WORKER = """
import os, signal
import edge_infer.cli as cli
_real, _parent = cli._preprocess_in_worker, os.getpid()
def _dying(paths):
    if os.getpid() != _parent and any(p.endswith("00100.png") for p in paths):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return _real(paths)
cli._preprocess_in_worker = _dying
"""


def test_a_dead_worker_is_detected_and_its_images_retried(tmp_path, mnist_test):
    folder = tmp_path / "digits"
    folder.mkdir()
    images, labels = mnist_test
    for i in range(600):
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png", compress_level=1)
    (tmp_path / "sitecustomize.py").write_text(KILL_ONE_WORKER)
    result = cli("-j", "2", str(folder), env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert result.returncode == 0, result.stderr
    assert "a decoding process died" in result.stderr.decode()
    predicted = parse_lines(result.stdout)
    assert len(predicted) == 600
    assert np.mean([predicted[str(folder / f"{i:05d}.png")][0] == str(labels[i]) for i in range(600)]) > 0.95


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """The process exists and has not ended (a zombie has ended; PID 1 of a container may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_workers_end_when_the_cli_is_killed(tmp_path, mnist_test):
    """`edge-infer --jobs 2` SIGKILLed while its workers decode: they used to wait on, idle, for good (65 MB
    each); now they end within seconds."""
    folder = tmp_path / "digits"
    folder.mkdir()
    encoded = []
    for image in mnist_test[0][:100]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    for i in range(6000):
        (folder / f"{i:05d}.png").write_bytes(encoded[i % 100])
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_infer", "--jobs", "2", str(folder)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            workers = _children(proc.pid)
        assert len(workers) == 2, "the workers were not seen"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:  # (only when the test fails: don't leave them behind)
        os.kill(pid, 9)
    assert not left, f"workers still running 10 s after their parent was killed: {left}"


# --- fuzz: a Prediction or an ImageError, nothing else, in bounded time ----------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

FUZZ_EXAMPLES = 400 if os.environ.get("CI") else 40  # the fast tier: a few seconds; CI: longer
FUZZ_SECONDS = 5.0  # per input; the slowest legitimate input here (a 64x64 image) takes milliseconds
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def _seeds() -> list[bytes]:
    digit = Image.open(SEVEN).convert("L").resize((48, 48))
    out = []
    for fmt, mode in (
        ("PNG", "L"),
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "L"),
        ("WEBP", "RGB"),
        ("PPM", "L"),
        ("ICO", "RGBA"),
        ("TGA", "L"),
    ):
        buffer = io.BytesIO()
        digit.convert(mode).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = _seeds()


def _classify_within_limit(classifier: Classifier, source) -> None:
    started = time.monotonic()
    try:
        result = classifier.predict(source)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert isinstance(result, Prediction) and np.isfinite(result.probabilities).all()
    assert time.monotonic() - started < FUZZ_SECONDS


@st.composite
def mutated_bytes(draw, seeds: list[bytes]) -> bytes:
    """One of seeds with bytes overwritten (headers, lengths, varints, field keys, names), cut, or spliced into."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # cut
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):  # splice random bytes in
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(max_size=64))
    return bytes(data)


@FUZZ
@given(mutated_bytes(SEEDS))
def test_fuzz_image_bytes(classifier, data):
    _classify_within_limit(classifier, data)


@FUZZ
@given(
    st.one_of(
        hnp.arrays(
            st.sampled_from(
                [np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.float16, bool, np.complex64]
            ),
            st.one_of(
                hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=48),
                st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 5])),
                hnp.array_shapes(min_dims=0, max_dims=4, max_side=6),
            ),
        ),
    )
)
def test_fuzz_arrays(classifier, array):
    _classify_within_limit(classifier, array)


# --- decoding memory near the pixel limit -------------------------------------------------------------------


def test_shrinking_in_bands_equals_shrinking_whole():
    from edge_infer.preprocess import WORK_SIZE, _shrink

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (2100, 3333, 4), dtype=np.uint8), "RGBA")
    scale = WORK_SIZE / 3333
    whole = rgba.reduce(int(1 / scale)).resize((WORK_SIZE, round(2100 * scale)), Image.Resampling.BOX)
    np.testing.assert_array_equal(np.asarray(_shrink(rgba)), np.asarray(whole))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_40_megapixel_png_is_shrunk_without_full_size_copies(tmp_path):
    side = int(MAX_PIXELS**0.5) - 10
    Image.new("RGBA", (side, side)).save(tmp_path / "big.png")  # ~160 KB on disk, 160 MB decoded
    # VmHWM, this process's own peak (ru_maxrss would carry over pytest's own, the parent of the exec)
    code = (
        "import re, sys; from edge_infer import preprocess; preprocess(sys.argv[1]); "
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024)"
    )
    peak = int(
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "big.png")],
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=120,
        ).stdout
    )
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MiB"  # the decoded image is 160 MB; a full copy made 360


def test_pillow_warnings_do_not_leak(tmp_path):
    """A damaged TIFF on which Pillow warns ('Tag data larger than file', 'Corrupt EXIF data'): neither the
    library nor the CLI lets the warning through; the CLI prints one line or the prediction."""
    import random
    import warnings

    seed = io.BytesIO()
    Image.open(SEVEN).convert("L").resize((48, 48)).save(seed, "TIFF")
    rng = random.Random(0)
    for _ in range(5000):
        data = bytearray(seed.getvalue())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.suppress(Exception):
                Image.open(io.BytesIO(bytes(data))).load()
        if caught:
            break
    assert caught, "no mutation made Pillow warn"
    (tmp_path / "warns.tif").write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(ImageError):
            preprocess(bytes(data))
    assert caught == []
    result = cli(str(tmp_path / "warns.tif"))
    assert len(result.stderr.decode().strip().splitlines()) == (0 if result.returncode == 0 else 1)
    assert "Warning" not in result.stderr.decode()
