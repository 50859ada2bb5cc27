"""edge_infer: the Classifier API, the edge-infer CLI, the bundled models and bad input, on real images."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edge_infer.classifier as classifier_module
from edge_infer import Classifier, ModelError, Prediction
from edge_infer.classifier import bundled_model_path, usable_cpus
from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, PIXELS, STEPS, ModelInfo, to_rows

from .conftest import ROOT, copy_file

EXAMPLES = sorted((ROOT / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


def cli(*args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """edge-infer in a subprocess, exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "edge_infer", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def parse_lines(stdout: bytes) -> dict[str, tuple[str, float]]:
    out = {}
    for line in stdout.decode().splitlines():
        path, label, confidence = line.split("\t")[:3]
        out[path] = (label, float(confidence))
    return out


def raw_accuracy(classifier: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    """The model alone on the raw test tensors: no file, no preprocessing."""
    logits = classifier.session.run([OUTPUT_NAME], {INPUT_NAME: to_rows(images)})[0]
    return float((logits.argmax(1) == labels).mean())


# --- the main path -------------------------------------------------------------------------------


def test_examples_print_the_right_digits():
    result = cli(*map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    predicted = parse_lines(result.stdout)
    assert len(predicted) == len(EXAMPLES) >= 5
    for path in EXAMPLES:
        expected = re.search(r"(\d)\.png$", path.name).group(1)
        label, confidence = predicted[str(path)]
        assert label == expected, path.name
        assert 0.5 < confidence <= 1.0


@pytest.mark.slow
def test_mnist_pngs_through_cli_match_raw_accuracy(tmp_path, mnist_test, classifier):
    """All 10,000 MNIST test images as PNG files, through the CLI (directory walk, decode, preprocess)."""
    images, labels = mnist_test
    folder = tmp_path / "mnist"
    folder.mkdir()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / f"{index:05d}-{label}.png", compress_level=1)
    result = cli(str(folder))
    assert result.returncode == 0, result.stderr[-500:]
    predicted = parse_lines(result.stdout)
    assert len(predicted) == len(images)
    correct = sum(label == Path(path).stem.split("-")[1] for path, (label, _) in predicted.items())
    cli_accuracy = correct / len(images)
    assert abs(cli_accuracy - raw_accuracy(classifier, images, labels)) <= 0.003
    assert cli_accuracy > 0.95


def test_predict_predict_batch_and_cli_agree(classifier, mnist_test, tmp_path):
    images, _ = mnist_test
    paths = list(EXAMPLES)
    for i in range(20):
        paths.append(tmp_path / f"m{i}.png")
        Image.fromarray(images[100 + i]).save(paths[-1])
    singles = [classifier.predict(p) for p in paths]
    batch = classifier.predict_batch(paths)
    result = cli("--json", *map(str, paths))
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    for single, batched, record in zip(singles, batch, records, strict=True):
        assert single.label == batched.label == record["label"]
        np.testing.assert_allclose(single.probabilities, batched.probabilities, atol=1e-5)
        np.testing.assert_allclose(record["probabilities"], single.probabilities, atol=1e-5)
        assert record["confidence"] == pytest.approx(single.confidence, abs=1e-5)


def test_inputs_of_every_kind_agree(classifier, mnist_test, tmp_path):
    """path, bytes, PIL image, uint8 array, float array, HxWxC array: one answer."""
    image = mnist_test[0][7]
    path = tmp_path / "d.png"
    Image.fromarray(image).save(path)
    expected = classifier.predict(path)
    for source in (
        path,
        str(path),
        path.read_bytes(),
        Image.open(path),
        image,
        image / 255.0,
        np.repeat(image[..., None], 3, axis=2),
    ):
        got = classifier.predict(source)
        assert got.label == expected.label
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)


def test_prediction_fields(classifier):
    p = classifier.predict(EXAMPLES[0])
    assert isinstance(p, Prediction) and isinstance(p.label, int) and isinstance(p.confidence, float)
    assert p.probabilities.shape == (10,) and p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert p.confidence == pytest.approx(float(p.probabilities.max())) and p.digit_found
    top = p.top_k(3)
    assert top[0] == (p.label, pytest.approx(p.confidence)) and top[0][1] >= top[1][1] >= top[2][1]


def test_blank_image_is_no_digit(classifier, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    p = classifier.predict(blank)
    assert not p.digit_found and p.label == -1 and p.confidence == 0.0
    result = cli(str(blank), "--json")
    assert result.returncode == 0
    record = json.loads(result.stdout)
    assert record["label"] is None and record["no_digit"] is True
    assert cli(str(blank)).stdout.decode().strip().split("\t")[1:] == ["-", "0.0000"]


def test_threads_share_one_classifier(classifier, mnist_test):
    images = [mnist_test[0][i] for i in range(64)]
    expected = [p.probabilities for p in classifier.predict_batch(images)]
    # one image at a time may run another graph form than a batch of 64 (the auto form): compare like with like
    expected_single = [classifier.predict(im).probabilities for im in images]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        out = []
        for _ in range(5):
            out.append([classifier.predict(im).probabilities for im in images[worker::8]])
            out.append([p.probabilities for p in classifier.predict_batch(images)])
        results[worker] = out

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for worker, out in results.items():
        for i in range(0, len(out), 2):
            np.testing.assert_array_equal(np.stack(out[i]), np.stack(expected_single[worker::8]))
            np.testing.assert_array_equal(np.stack(out[i + 1]), np.stack(expected))


# --- real-world-like images, made from real MNIST handwriting ----------------------------------------


def _paper(digit: np.ndarray, size: int, rng, noise: float = 0.0, gradient: float = 0.0) -> np.ndarray:
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    paper = 0.9 - gradient * (np.arange(size) / size)  # per column: light falling off to the right
    grey = paper * (1 - 0.9 * ink)
    return np.clip(grey + rng.normal(0, noise, ink.shape), 0, 1) if noise else np.clip(grey, 0, 1)


def _to_png(grey: np.ndarray) -> Image.Image:
    return Image.fromarray((grey * 255).astype(np.uint8))


def _off_centre(digit, rng):
    page = np.full((600, 800), 0.95, np.float32)
    small = _paper(digit, 120, rng)
    y, x = rng.integers(20, 450), rng.integers(20, 650)
    page[y : y + 120, x : x + 120] = small
    return _to_png(page)


def _rgba(digit, rng):
    ink = np.asarray(Image.fromarray(digit).resize((200, 200), Image.Resampling.BICUBIC))
    rgba = np.zeros((200, 200, 4), np.uint8)  # black strokes on a fully transparent canvas
    rgba[..., 3] = ink
    return Image.fromarray(rgba, "RGBA")


REAL_WORLD = {
    "dark ink on light paper": lambda d, rng: _to_png(_paper(d, 280, rng)),
    "off-centre on a big page": _off_centre,
    "large": lambda d, rng: _to_png(_paper(d, 1600, rng)),
    "noisy with uneven light": lambda d, rng: _to_png(_paper(d, 300, rng, noise=0.08, gradient=0.3)),
    "jpeg": lambda d, rng: _to_png(_paper(d, 300, rng, noise=0.02)),
    "rgba": _rgba,
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", REAL_WORLD)
def test_real_world_like_images(kind, classifier, mnist_test, tmp_path):
    images, labels = mnist_test
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(images), 40, replace=False)
    paths = []
    for i in chosen:
        image = REAL_WORLD[kind](images[i], rng)
        fmt = "JPEG" if kind == "jpeg" else "PNG"
        paths.append(tmp_path / f"{i}-{labels[i]}.{fmt.lower()}")
        image.save(paths[-1], fmt, **({"quality": 75} if fmt == "JPEG" else {"compress_level": 1}))
    predictions = classifier.predict_batch(paths)
    accuracy = np.mean([p.label == labels[i] for p, i in zip(predictions, chosen, strict=True)])
    assert accuracy >= 0.9, f"{kind}: {accuracy:.0%}"


# --- bad input: one clear line each, the rest of the batch goes on ------------------------------------


def _bad_inputs(folder: Path, digit: np.ndarray, bomb: Path) -> dict[str, Path]:
    """name -> file; names starting with 'ok-' must be classified, the rest must fail."""
    ink_on_paper = 255 - np.asarray(Image.fromarray(digit).resize((112, 112)))
    files = {}

    def path(name: str) -> Path:
        files[name] = folder / name
        return files[name]

    path("not-an-image.png").write_text("hello, I am text")
    png = io.BytesIO()
    Image.fromarray(ink_on_paper).save(png, "PNG")
    path("truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    path("empty.png").write_bytes(b"")
    files["bomb.png"] = copy_file(bomb, folder, "bomb.png")  # 400 megapixels when decoded
    path("ok-16bit.png")
    Image.fromarray(ink_on_paper.astype(np.uint16) * 257).save(files["ok-16bit.png"])
    Image.fromarray(ink_on_paper).convert("P").save(path("ok-palette.png"))
    la = np.stack([ink_on_paper, np.full_like(ink_on_paper, 255)], axis=-1)
    Image.fromarray(la, "LA").save(path("ok-la.png"))
    Image.fromarray(ink_on_paper).convert("CMYK").save(path("ok-cmyk.jpg"), "JPEG")
    frames = [Image.fromarray(ink_on_paper).convert("P"), Image.new("P", (112, 112), 255)]
    frames[0].save(path("ok-animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    huge = Image.fromarray(ink_on_paper).resize((6000, 6000), Image.Resampling.BILINEAR)
    huge.save(path("ok-huge.jpg"), "JPEG", quality=80)
    return files


def test_bad_inputs_through_cli(tmp_path, mnist_test, bomb_png):
    digit, label = mnist_test[0][3], str(mnist_test[1][3])
    files = _bad_inputs(tmp_path, digit, bomb_png)
    (tmp_path / "no-images").mkdir()
    (tmp_path / "no-images" / "notes.txt").write_text("not an image")
    args = [str(p) for p in files.values()] + [str(tmp_path / "no-images"), str(tmp_path / "missing.png")]
    result = cli(*args)
    assert result.returncode == 1
    errors = result.stderr.decode().strip().splitlines()
    assert "Traceback" not in result.stderr.decode()
    failing = [n for n in files if not n.startswith("ok-")] + ["no-images", "missing.png"]
    assert len(errors) == len(failing)
    for name in failing:
        line = next(e for e in errors if name in e)
        assert line.startswith("edge-infer: ") and len(line) < 300
    assert "too large" in next(e for e in errors if "bomb" in e)
    assert "no image files" in next(e for e in errors if "no-images" in e)
    predicted = parse_lines(result.stdout)
    for name in files:
        if name.startswith("ok-"):
            assert predicted[str(files[name])][0] == label, name  # handled, and read correctly

    json_result = cli("--json", *args)
    records = [json.loads(line) for line in json_result.stdout.decode().splitlines()]
    assert len(records) == len(args) and json_result.returncode == 1
    assert {Path(r["path"]).name for r in records if "error" in r} == set(failing)


def test_stdin(tmp_path):
    data = EXAMPLES[0].read_bytes()
    result = cli("-", stdin=data)
    assert result.returncode == 0
    path, label, _ = result.stdout.decode().strip().split("\t")
    assert path == "-" and label == re.search(r"(\d)\.png$", EXAMPLES[0].name).group(1)


def test_top_k(tmp_path):
    text = cli("--top-k", "3", str(EXAMPLES[0])).stdout.decode().strip().split("\t")
    assert len(text) == 5 and all(re.fullmatch(r"\d:\d\.\d{4}", t) for t in text[3:])
    record = json.loads(cli("--json", "--top-k", "3", str(EXAMPLES[0])).stdout)
    assert len(record["top_k"]) == 3 and record["top_k"][0][0] == record["label"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--top-k", "0", "x.png"],
        ["--threads", "0", "x.png"],
        ["-", "-"],
        ["--int8", "--model", "m.onnx", "x.png"],
        ["--nonsense", "x.png"],
    ],
)
def test_usage_errors_exit_2(args):
    result = cli(*args)
    assert result.returncode == 2 and result.stdout == b""
    assert "Traceback" not in result.stderr.decode()


# --- models -----------------------------------------------------------------------------------------


def test_bundled_models_load_and_are_verified(tmp_path, monkeypatch):
    fp32, int8 = Classifier(), Classifier(int8=True)
    assert fp32.info.precision == "fp32" and int8.info.precision == "int8"
    assert fp32.info.mnist_test_accuracy > 0.98 and int8.info.mnist_test_accuracy > 0.98
    provenance = json.loads((bundled_model_path().parent / "provenance.json").read_text())
    for path in (bundled_model_path(False), bundled_model_path(True)):
        assert provenance["models"][path.name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    # A damaged bundled file is refused.
    damaged = tmp_path / "models"
    shutil.copytree(bundled_model_path().parent, damaged)
    blob = bytearray((damaged / "digit-rnn.onnx").read_bytes())
    blob[-100] ^= 0xFF
    (damaged / "digit-rnn.onnx").write_bytes(bytes(blob))
    monkeypatch.setattr(classifier_module, "MODELS_DIR", damaged)
    with pytest.raises(ModelError, match="sha256"):
        Classifier()


def test_int8_model_agrees_with_fp32(mnist_test):
    images, labels = mnist_test
    fp32, int8 = Classifier(), Classifier(int8=True)
    a, b = raw_accuracy(fp32, images, labels), raw_accuracy(int8, images, labels)
    assert abs(a - b) <= 0.003


def test_corrupt_and_foreign_models(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(bundled_model_path().read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot load"):
        Classifier(corrupt)
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 224, 224])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), foreign)
    with pytest.raises(ModelError, match="not an edge-infer digit model"):
        Classifier(foreign)
    for path in (corrupt, foreign, tmp_path / "absent.onnx"):
        result = cli("--model", str(path), str(EXAMPLES[0]))
        assert result.returncode == 2 and len(result.stderr.decode().strip().splitlines()) == 1


def test_model_info_optional_fields_have_defaults_required_ones_do_not(classifier):
    """Older models lack fields added later (those have defaults) and still load; a missing required field,
    or one that is not JSON, is refused; fields this runtime doesn't know are ignored."""
    props = dict(classifier.session.get_modelmeta().custom_metadata_map)
    assert ModelInfo.from_metadata(props) == classifier.info
    older = {k: v for k, v in props.items() if k not in ("checks", "labels")}
    info = ModelInfo.from_metadata({**older, "added_in_a_later_version": "{}"})
    assert info.checks == {} and info.labels == [str(d) for d in range(10)] and info.precision == "fp32"
    with pytest.raises(ValueError, match="lacks 'precision'"):
        ModelInfo.from_metadata({k: v for k, v in props.items() if k != "precision"})
    with pytest.raises(ValueError, match="'recipe' is not valid JSON"):
        ModelInfo.from_metadata({**props, "recipe": "{oops"})


def test_to_rows_is_the_time_major_input(mnist_test, classifier):
    images = mnist_test[0][:5]
    rows = to_rows(images)
    assert rows.shape == (STEPS, 5, PIXELS) and rows.dtype == np.float32 and rows.flags.c_contiguous
    for n in range(5):
        for t in (0, 13, 27):  # step t is row t of image n, scaled to [0, 1]
            np.testing.assert_array_equal(rows[t, n], images[n, t] / np.float32(255))
    np.testing.assert_array_equal(to_rows(images / np.float32(255)), rows)
    with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
        to_rows(images[0])
    logits = classifier.session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]
    assert [p.label for p in classifier.classify(images / 255.0)] == list(logits.argmax(1))


def test_unknown_provider_lists_available():
    with pytest.raises(ModelError, match="CPUExecutionProvider"):
        Classifier(provider="NoSuchExecutionProvider")
    result = cli("--provider", "NoSuchExecutionProvider", str(EXAMPLES[0]))
    assert result.returncode == 2 and b"available: " in result.stderr


def test_info_prints_metadata():
    result = cli("--info", "--json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert info["precision"] == "fp32" and info["labels"] == [str(d) for d in range(10)]
    assert "[28, N, 28]" in info["input_layout"]


# --- no torch on the device -------------------------------------------------------------------------

BLOCK_IMPORTS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "onnx"):
            raise ModuleNotFoundError(f"{name} is blocked: the runtime must not need it", name=name)
sys.meta_path.insert(0, Block())
for name in list(sys.modules):
    if name.split(".")[0] in ("torch", "torchvision", "onnx"):
        del sys.modules[name]
"""


def test_cli_runs_where_torch_and_onnx_cannot_be_imported(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    check = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **env}, capture_output=True)
    assert check.returncode != 0 and b"blocked" in check.stderr  # the block really works
    result = cli("--int8", *map(str, EXAMPLES), env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert len(parse_lines(result.stdout)) == len(EXAMPLES)


@pytest.mark.parametrize("command", ["edge_train", "edge_export"])
def test_training_commands_without_torch_say_so_and_exit_2(command, tmp_path):
    """edge-train / edge-export where torch and onnx are missing (as in the runtime-only install, which
    .ci/run checks for real): one line naming the extra, exit 2, no traceback."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-c", f"from edge_infer._training import {command}; {command}()", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "install edge-infer[train]" in lines[0], result.stderr.decode()


def test_runtime_imports_nothing_from_the_training_side():
    for source in (ROOT / "edge_infer").glob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(from|import)\s+(train|export|torch|torchvision|onnx)\b", text, re.M), source


def test_large_batches_on_all_cores_give_the_same_answers(mnist_test, monkeypatch):
    """threads=None runs batches >= PARALLEL_BATCH on a multi-thread session; results must not change."""
    if usable_cpus() < 2:
        pytest.skip("one usable CPU: there is no all-cores session to compare with")
    monkeypatch.setattr(classifier_module, "PARALLEL_MIN_CPUS", 2)  # (the policy keeps 2-core machines on 1)
    digits = mnist_test[0][: classifier_module.PARALLEL_BATCH + 44].astype(np.float32) / 255
    auto, single = Classifier(), Classifier(threads=1)
    ran_with: list[int] = []  # intra-op threads of every session run from here on
    real_run = classifier_module.ort.InferenceSession.run

    def run(session, *args, **kwargs):
        ran_with.append(session.get_session_options().intra_op_num_threads)
        return real_run(session, *args, **kwargs)

    monkeypatch.setattr(classifier_module.ort.InferenceSession, "run", run)
    auto_predictions = auto.classify(digits)
    assert ran_with == [usable_cpus()]  # the large batch really ran on the all-cores session
    for a, b in zip(auto_predictions, single.classify(digits), strict=True):
        assert a.label == b.label
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_large_batches_stay_on_one_thread_below_parallel_min_cpus(mnist_test, monkeypatch):
    """threads=None on a machine with fewer than PARALLEL_MIN_CPUS cores: even a large batch runs on the
    one-thread session (a second thread was slower there, quiet or busy: benchmarks/threads.py)."""
    monkeypatch.setattr(classifier_module, "PARALLEL_MIN_CPUS", usable_cpus() + 1)
    digits = mnist_test[0][: classifier_module.PARALLEL_BATCH + 44].astype(np.float32) / 255
    classifier = Classifier()
    ran_with: list[int] = []
    real_run = classifier_module.ort.InferenceSession.run

    def run(session, *args, **kwargs):
        ran_with.append(session.get_session_options().intra_op_num_threads)
        return real_run(session, *args, **kwargs)

    monkeypatch.setattr(classifier_module.ort.InferenceSession, "run", run)
    labels = [p.label for p in classifier.classify(digits)]
    assert ran_with == [1] and classifier._parallel is None
    assert np.mean(np.array(labels) == mnist_test[1][: len(digits)]) > 0.95


def test_rendered_font_digits(classifier):
    """Printed digits: 0-9 in every DejaVu font on the machine, dark on white, as a renderer draws them."""
    from PIL import ImageDraw, ImageFont

    fonts = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))
    if not fonts:
        pytest.skip("no DejaVu fonts here")
    images, labels = [], []
    for font_path in fonts:
        font = ImageFont.truetype(str(font_path), 120)
        for digit in range(10):
            page = Image.new("L", (160, 180), 255)
            ImageDraw.Draw(page).text((30, 10), str(digit), fill=0, font=font)
            images.append(page)
            labels.append(digit)
    predictions = classifier.predict_batch(images)
    accuracy = np.mean([p.label == label for p, label in zip(predictions, labels, strict=True)])
    assert accuracy >= 0.9, f"{accuracy:.1%} of {len(labels)} rendered digits"
