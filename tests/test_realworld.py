"""Training for the real world: the synthetic pool, UNIPEN pen data drawn many ways and split by writer,
calibration folded into the export, and the bundled model on real-world digits it never saw (the sets of
benchmarks/realworld.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from edge_infer import Classifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

torch = pytest.importorskip("torch")


def test_pool_is_deterministic_and_in_mnist_form(mnist):
    from train.synth import PoolSpec, build_pool

    train, _ = mnist
    images, labels = train.images[:200].numpy(), train.labels[:200].numpy()
    spec = PoolSpec(degraded=40, strokes=40, printed=20, seed=3)
    one, one_labels = build_pool(images, labels, spec, workers=1)
    two, two_labels = build_pool(images, labels, spec, workers=2)
    assert one.shape == (100, 28, 28) and one.dtype == np.uint8
    assert np.array_equal(one, two) and np.array_equal(one_labels, two_labels)  # whatever the worker count
    other, _ = build_pool(images, labels, replace(spec, seed=4), workers=1)
    assert not np.array_equal(one, other)
    assert set(one_labels[40:]) == set(range(10))  # strokes and printed cover every digit
    assert_mnist_form(one)


def assert_mnist_form(images: np.ndarray) -> None:
    """What to_mnist makes: ink (mostly saturated) in every image, centre of mass ~(14, 14)."""
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    peaks = images.reshape(len(images), -1).max(1)
    assert peaks.min() >= 128 and np.median(peaks) == 255
    ys, xs = np.mgrid[0:28, 0:28]
    mass = images.sum(axis=(1, 2)).astype(float)
    cy, cx = (images * ys).sum(axis=(1, 2)) / mass, (images * xs).sum(axis=(1, 2)) / mass
    assert np.abs(cy - 14).max() < 2.0 and np.abs(cx - 14).max() < 2.0


@pytest.fixture(scope="module")
def unipen(data_root):
    from train.unipen import load_unipen

    return load_unipen(data_root)


def test_unipen_is_split_by_writer_never_by_digit(unipen):
    from train.unipen import ROLES, writer_roles

    roles = writer_roles(unipen.writers)
    assert set(roles) == set(unipen.writers.tolist()) and roles == writer_roles(unipen.writers[::-1])
    parts = {role: unipen.role(role) for role in ROLES}
    assert sum(len(part) for part in parts.values()) == len(unipen) == 10_646
    writers = {role: set(part.writers.tolist()) for role, part in parts.items()}
    assert all(a.isdisjoint(b) for a, b in combinations(writers.values(), 2))  # no writer in two roles
    share = {role: len(part) / len(unipen) for role, part in parts.items()}
    assert 0.15 <= share["held-out"] < 0.2 and 0.06 <= share["calibration"] < 0.1 and share["train"] > 0.7
    assert len(writers["held-out"]) >= 20 and len(writers["calibration"]) >= 10
    assert all(set(part.labels.tolist()) == set(range(10)) for part in parts.values())


def test_unipen_renderings_are_deterministic_and_in_mnist_form(unipen):
    from train.unipen import build_unipen_pool

    subset = unipen.role("train").subset(np.arange(150))
    one, labels = build_unipen_pool(subset, 2.0, seed=3, workers=1)
    two, labels_two = build_unipen_pool(subset, 2.0, seed=3, workers=2)
    assert one.shape == (300, 28, 28) and np.array_equal(one, two)  # whatever the worker count
    assert np.array_equal(labels, np.tile(subset.labels, 2)) and np.array_equal(labels, labels_two)
    assert not np.array_equal(one[:150], one[150:])  # each copy is drawn anew
    assert_mnist_form(one)
    part, _ = build_unipen_pool(subset, 0.5, seed=3, workers=1)
    assert len(part) == 75


def test_few_points_keeps_evenly_spaced_points_along_the_pen_path():
    from train.unipen import _resample

    path = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])  # a repeated point, as tablets record
    points = _resample(path, 5)
    assert points.shape == (5, 2) and np.allclose(points[0], [0, 0]) and np.allclose(points[-1], [1, 1])
    assert np.allclose(np.linalg.norm(np.diff(points, axis=0), axis=1), 0.5)


# Accuracy of the bundled model (not trained on these renderings) on 80 training-writer digits per style: the
# drawings are the digits their labels say, the right way up. A few-point tablet is harder (the issue: 77.6 %).
STYLE_FLOORS = {"few-points": 0.65}


def test_every_render_style_draws_a_readable_digit(unipen):
    import realworld

    from train.unipen import RENDER_STYLES, render

    train = unipen.role("train")
    pick = np.random.default_rng(2).permutation(len(train))[:80]
    classifier = Classifier()
    rng = np.random.default_rng(1)
    for style in RENDER_STYLES:
        pages = [render(train.strokes[i], rng, style) for i in pick]
        # ink and paper (a box-filling scan may be more ink than paper; a faint ballpoint has little contrast)
        assert all(page.max() - page.min() > 0.2 for page in pages), style
        labels = [int(train.labels[i]) for i in pick]
        items = [(realworld._png(realworld._page(page)), label) for page, label in zip(pages, labels, strict=True)]
        accuracy = realworld.score(classifier, items)["accuracy"]
        assert accuracy >= STYLE_FLOORS.get(style, 0.8), f"{style}: {accuracy:.2%}"


def test_missing_unipen_is_one_line_before_any_work(tmp_path, data_root):
    from click.testing import CliRunner

    from train.cli import main as edge_train

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MNIST").symlink_to(data_root / "MNIST")
    out = tmp_path / "run"
    args = ["--limit-train", "600", "--data-dir", str(tmp_path / "data"), "--no-download", "--out", str(out)]
    result = CliRunner().invoke(edge_train, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "UNIPEN not found" in lines[0] and "unipen-1a-digits.npz" in lines[0]
    assert "--unipen 0" in lines[0] and not out.exists()
    ok = CliRunner().invoke(edge_train, [*args, "--unipen", "0", "--synthetic", "0", "--epochs", "1", "--quiet"])
    assert ok.exit_code == 0, ok.output  # without UNIPEN the same data trains
    from train.trainer import load_checkpoint

    recipe = load_checkpoint(out / "checkpoint.pt")["recipe"]
    assert recipe["unipen"] == 0 and recipe["synthetic"] == 0  # the overrides are what the run records


def test_default_recipe_draws_unipen_and_the_seed_preset_does_not():
    from train.trainer import PRESETS, preset_recipe

    assert PRESETS["seed"].unipen == 0 and PRESETS["seed"].synthetic == 0
    assert all(preset_recipe("default", cell).unipen >= 3 for cell in ("rnn", "gru", "lstm"))


def test_continental_styles_are_drawn():
    """The styles the issue names are templates, drawn as dark strokes on light paper: a crossed 7 and a
    1 with a foot put more ink on the page than the plain ones drawn with the same pen."""
    from train.synth import STYLES, stroke_digit

    assert len(STYLES[7]) >= 4 and len(STYLES[1]) >= 4 and len(STYLES[4]) >= 2 and len(STYLES[9]) >= 3

    def ink(label: int, style: int) -> float:
        page = stroke_digit(label, np.random.default_rng(5), style=style)
        assert page.min() < 0.5 and np.median(page) > 0.6
        return float((1.0 - page).sum())

    assert ink(7, 1) > 1.1 * ink(7, 0)  # crossed 7
    assert ink(1, 3) > 1.1 * ink(1, 1)  # flag and foot vs flag


def test_calibration_is_fitted_and_folded_into_the_export(tmp_path, mnist, data_root, unipen):
    from export.export import export, load_trained, onnx_logits
    from train.model import ModelConfig
    from train.trainer import MNIST_TRAIN_SIZE, PRESETS, Trainer

    train, test = mnist
    recipe = replace(PRESETS["default"], epochs=1, synthetic=0.3, calibration_images=300, unipen=1.0)
    trainer = Trainer(
        tmp_path,
        ModelConfig("rnn", 32, 1),
        recipe,
        train.head(3000),
        test,
        seed=0,
        progress_bar=False,
        data_dir=data_root,
    )
    # UNIPEN scaled to the 3,000 of 60,000 MNIST images: training writers drawn once, calibration writers twice
    scale = 3000 / MNIST_TRAIN_SIZE
    unipen_train, unipen_calibration = (
        round(len(unipen.role("train")) * scale),
        round(2 * len(unipen.role("calibration")) * scale),
    )
    # 300 held-out MNIST images, a synthetic twin each, and the calibration writers' digits
    assert len(trainer.calibration_split) == 600 + unipen_calibration
    assert len(trainer.train_split) == 2700 + round(2700 * 0.3) + unipen_train
    trainer.fit()
    calibration = trainer.calibration
    assert calibration["images"] == 600 + unipen_calibration and calibration["temperature"] > 0
    assert calibration["nll_after"] <= calibration["nll_before"]

    export(tmp_path / "checkpoint.pt", tmp_path / "m.onnx", test)
    classifier = Classifier(tmp_path / "m.onnx")
    assert classifier.info.calibration == calibration
    # the ONNX logits are the trained weights' logits divided by T (folded into the last layer)
    _, calibrated, _ = load_trained(tmp_path / "checkpoint.pt")
    plain = calibrated.__class__(calibrated.config).eval()
    plain.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"])
    images = test.images[:200].numpy()
    with torch.no_grad():
        uncalibrated = plain(torch.from_numpy(images).float() / 255).numpy()
    ours = onnx_logits((tmp_path / "m.onnx").read_bytes(), images)
    assert np.allclose(ours * calibration["temperature"], uncalibrated, atol=1e-4)


@pytest.fixture(scope="module")
def realworld_sets(mnist_test, data_root):
    import realworld

    images, labels = mnist_test
    return {
        "uci-writers": realworld.uci_writers(),
        "fonts": realworld.fonts(quick=True),
        "tablet": realworld.tablet(images, labels, 300),
        "postal": realworld.postal(images, labels, 300),
        "unipen-writers": realworld.unipen_writers(data_root, 150),
    }


# Held-out sets (never trained or tuned on; UNIPEN: writers never trained on): the bundled models' floors, a
# few points under what `python benchmarks/realworld.py` measures on the full sets (README), so a regression
# fails here.
BUNDLED_FLOORS = {"uci-writers": 0.93, "fonts": 0.92, "tablet": 0.93, "postal": 0.93, "unipen-writers": 0.88}


def test_unipen_writers_set_is_held_out_writers_drawn_several_ways(realworld_sets, unipen):
    from train.unipen import writer_roles

    items = realworld_sets["unipen-writers"]
    assert len(items) == 300 and all(blob.startswith(b"\x89PNG") for blob, _ in items)
    held = unipen.role("held-out")
    assert set(held.writers.tolist()) == {w for w, r in writer_roles(unipen.writers).items() if r == "held-out"}
    assert {label for _, label in items} == set(range(10))
    assert items[0][0] != items[1][0] and items[0][1] == items[1][1]  # each digit drawn twice, differently


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_bundled_model_reads_held_out_real_world_digits(realworld_sets, int8):
    import realworld

    classifier = Classifier(int8=int8)
    for name, items in realworld_sets.items():
        accuracy = realworld.score(classifier, items)["accuracy"]
        assert accuracy >= BUNDLED_FLOORS[name], f"{name}: {accuracy:.2%}"


def test_bundled_confidence_is_calibrated_and_min_confidence_withholds_errors(realworld_sets, mnist_test):
    from train.calibrate import ece

    classifier = Classifier()
    assert classifier.info.calibration["temperature"] > 0
    images, labels = mnist_test
    predictions = classifier.classify(images.astype(np.float32) / 255.0)
    confidence = np.array([p.confidence for p in predictions])
    correct = np.array([p.label for p in predictions]) == labels
    assert ece(confidence, correct) <= 0.02  # the target on MNIST test

    # on a held-out real-world set, "not sure" below a threshold leaves fewer errors among the answers
    items = realworld_sets["uci-writers"]
    truth = np.array([label for _, label in items])
    plain = Classifier().predict_batch([blob for blob, _ in items])
    careful = Classifier(min_confidence=0.9).predict_batch([blob for blob, _ in items])
    answered = np.array([p.label >= 0 for p in careful])
    assert 0.5 < answered.mean() < 1.0
    error_all = np.mean([p.label != t for p, t in zip(plain, truth, strict=True)])
    error_answered = np.mean([p.label != t for p, t, a in zip(careful, truth, answered, strict=True) if a])
    assert error_answered < 0.5 * error_all
