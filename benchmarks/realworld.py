"""Real-world accuracy: digits MNIST's training data does not contain, read as image files through
`edge_infer.Classifier` (decode + the runtime's preprocessing + the model), fp32 and int8.

    python benchmarks/realworld.py [--model X.onnx --int8-model Y.onnx] [--quick]
    python benchmarks/realworld.py --ablation [--out bench-out]     # what each training source adds

Sets (HELD_OUT: never used for training, nor for choosing the recipe or the bundled model):
  uci-writers      scikit-learn's bundled UCI handwritten digits (43 writers, 1,797 digits), 8x8 counts
                   enlarged as a scanner would (bicubic), dark ink on white                      HELD OUT
  fonts            0-9 in Computer Modern roman/bold/italic and Pillow's own font (the training set uses
                   STIX and CM sans/typewriter; tests use DejaVu), sizes, slants, weights         HELD OUT
  tablet           MNIST *test* digits thinned to their skeleton and redrawn with a round pen of random
                   width (hairline to very thick), anti-aliased, on white or transparent canvases, like a
                   drawing app saves them (code used by nothing else)                             HELD OUT
  postal           MNIST test digits as USPS stores envelope digits: cropped to the ink and stretched to fill
                   a 16x16 grey box with no margin (code used by nothing else)                      HELD OUT
  scans            MNIST test digits through the training degradations (binarised, thick pens, box-filling
                   crops, elastic): same generator as training, unseen digits
  styles           continental styles drawn as strokes (crossed 7, flagged 1, open 4, ...): same templates
                   as training, another seed
  unipen-writers   the UNIPEN writers held out from training and calibration (train.unipen.writer_roles),
                   each digit drawn twice, cycling through the training's pens, scans, photos and few-point
                   tablets: real writers never trained on, drawn by the training's renderer    WRITERS HELD OUT
  unipen-8-points  the same writers' digits as a tablet keeping 8 points per digit (pen lifts as lines,
                   straight segments), one each                                               WRITERS HELD OUT
  mnist            the 10,000 MNIST test images, for reference
Prints per set: accuracy, per-digit accuracy, the confusions that cost most, expected calibration error,
the error left at 95 % coverage (the 5 % least confident answers withheld), and the share of images read
wrong with confidence >= 0.9.

--ablation trains four small models (ABLATION: GRU-64, the first 15,000 MNIST training images, seed 0, one
thread, otherwise the default recipe) with MNIST only, + synthetic, + UNIPEN, + both, each for about the same
number of training images seen, exports each (fp32) and scores them on the --quick sets; about 10 minutes on
the 2-core machine.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from benchlib import add_common_args, machine_header, section, table
from PIL import Image, ImageDraw, ImageFont

from edge_infer.classifier import Classifier, bundled_model_path

HELD_OUT = ("uci-writers", "fonts", "tablet", "postal")
WRITERS_HELD_OUT = ("unipen-writers", "unipen-8-points")  # real writers never trained on; the training's renderer
CONFIDENT = 0.9
SEED = 20261201


# -----------------------------------------------------------------------------------------------------------
# the sets: each a list of (PNG bytes, label)


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _page(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8))


def uci_writers() -> list[tuple[bytes, int]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    out = []
    for image, label in zip(digits.images, digits.target, strict=True):
        page = 1.0 - image / 16.0  # 16 = all 4x4 cells of that 32x32 bitmap block inked
        big = Image.fromarray(page.astype(np.float32)).resize((40, 40), Image.Resampling.BICUBIC)
        out.append((_png(_page(np.pad(np.asarray(big), 6, constant_values=1.0))), int(label)))
    return out


def _cm_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / name), size)


def fonts(quick: bool = False) -> list[tuple[bytes, int]]:
    rng = np.random.default_rng(SEED)
    faces = [
        lambda s: _cm_font("cmr10.ttf", s),
        lambda s: _cm_font("cmb10.ttf", s),
        lambda s: _cm_font("cmti10.ttf", s),
        lambda s: ImageFont.load_default(s),
    ]
    out = []
    for face in faces:
        for label in range(10):
            for _ in range(3 if quick else 10):
                size = int(rng.integers(24, 120))
                img = Image.new("L", (size * 2, size * 2), 255)
                ImageDraw.Draw(img).text(
                    (size, size),
                    str(label),
                    fill=0,
                    font=face(size),
                    anchor="mm",
                    stroke_width=int(rng.choice([0, 0, 0, 1])),
                    stroke_fill=0,
                )
                shear = float(rng.uniform(-0.2, 0.2))
                img = img.transform(
                    img.size,
                    Image.Transform.AFFINE,
                    (1, shear, -shear * size, 0, 1, 0),
                    Image.Resampling.BILINEAR,
                    fillcolor=255,
                )
                out.append((_png(img), label))
    return out


def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image to a one-pixel skeleton."""
    m = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = [
                np.roll(np.roll(m, -dy, 0), -dx, 1)
                for dy, dx in ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
            ]  # P2..P9
            b = sum(p)
            a = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.uint8) for i in range(8))
            if step == 0:
                c1, c2 = p[0] * p[2] * p[4], p[2] * p[4] * p[6]
            else:
                c1, c2 = p[0] * p[2] * p[6], p[0] * p[4] * p[6]
            remove = (m == 1) & (b >= 2) & (b <= 6) & (a == 1) & (c1 == 0) & (c2 == 0)
            if remove.any():
                m[remove] = 0
                changed = True
        if not changed:
            return m[1:-1, 1:-1].astype(bool)


def tablet(mnist_images: np.ndarray, mnist_labels: np.ndarray, count: int) -> list[tuple[bytes, int]]:
    """MNIST test digits redrawn as a drawing app saves pen strokes (see the module docstring)."""
    rng = np.random.default_rng(SEED + 1)
    out = []
    for index in rng.choice(len(mnist_images), count, replace=False):
        big = np.asarray(Image.fromarray(mnist_images[index]).resize((56, 56), Image.Resampling.BICUBIC))
        skeleton = _thin(big > 100)
        scale = 8  # draw at 448 px, save at 224 px: anti-aliased
        radius = float(rng.choice([rng.uniform(1.5, 4), rng.uniform(4, 12), rng.uniform(12, 22)]))
        transparent = rng.random() < 0.3
        canvas = Image.new("L", (56 * scale, 56 * scale), 0)
        draw = ImageDraw.Draw(canvas)
        points = set(zip(*np.nonzero(skeleton), strict=True))
        for y, x in points:  # the pen's path: a round dab at each skeleton pixel, joined to its neighbours
            cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
            for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
                if (y + dy, x + dx) in points:
                    draw.line((cx, cy, cx + dx * scale, cy + dy * scale), fill=255, width=max(1, round(2 * radius)))
        ink = canvas.resize((224, 224), Image.Resampling.BOX)
        if transparent:  # black strokes on a fully transparent canvas (hidden colour black)
            img = Image.merge("RGBA", (Image.new("L", ink.size, 0),) * 3 + (ink,))
        else:
            img = Image.eval(ink, lambda v: 255 - v)
        out.append((_png(img), int(mnist_labels[index])))
    return out


def postal(mnist_images: np.ndarray, mnist_labels: np.ndarray, count: int) -> list[tuple[bytes, int]]:
    """MNIST test digits the way USPS stores envelope digits: cropped to the ink and stretched to fill a
    16x16 box (narrow 1s keep their width, centred), grey, no margin above or below."""
    rng = np.random.default_rng(SEED + 3)
    out = []
    for index in rng.choice(len(mnist_images), count, replace=False):
        digit = mnist_images[index]
        rows, cols = np.flatnonzero(digit.max(1) > 30), np.flatnonzero(digit.max(0) > 30)
        crop = Image.fromarray(255 - digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        w, h = crop.size
        if w < 0.4 * h:  # a narrow 1 keeps its width, centred in the 16x16 box as USPS has it
            narrow = crop.resize((max(3, round(16 * w / h)), 16), Image.Resampling.BICUBIC)
            box = Image.new("L", (16, 16), 255)
            box.paste(narrow, ((16 - narrow.width) // 2, 0))
        else:
            box = crop.resize((16, 16), Image.Resampling.BICUBIC)
        out.append((_png(box), int(mnist_labels[index])))
    return out


def _generated(kind: str, mnist_images: np.ndarray, mnist_labels: np.ndarray, count: int) -> list[tuple[bytes, int]]:
    from train.synth import degrade, stroke_digit

    rng = np.random.default_rng(SEED + 2)
    out = []
    for i in range(count):
        if kind == "scans":
            j = int(rng.integers(len(mnist_images)))
            page, label = degrade(mnist_images[j], rng), int(mnist_labels[j])
        else:
            label = i % 10
            page = stroke_digit(label, rng)
        out.append((_png(_page(page)), label))
    return out


def unipen_writers(data_dir: Path, count: int | None, eight_points: bool = False) -> list[tuple[bytes, int]]:
    """The held-out UNIPEN writers' digits (the first `count` of a seeded shuffle, all if None), drawn twice
    each cycling through the training's styles, or once each as an 8-point tablet."""
    from train.unipen import RENDER_STYLES, load_unipen, render

    held = load_unipen(data_dir).role("held-out")
    order = np.random.default_rng(SEED + 4).permutation(len(held))[:count]
    rng = np.random.default_rng(SEED + (5 if eight_points else 6))
    out = []
    for k, i in enumerate(order):
        for copy in range(1 if eight_points else 2):
            style = "few-points" if eight_points else RENDER_STYLES[(2 * k + copy) % len(RENDER_STYLES)]
            page = render(held.strokes[i], rng, style, few_points=8 if eight_points else None)
            out.append((_png(_page(page)), int(held.labels[i])))
    return out


def build_sets(
    mnist_images: np.ndarray, mnist_labels: np.ndarray, quick: bool = False, data_dir: Path | None = None
) -> dict[str, list[tuple[bytes, int]]]:
    """The sets above (the UNIPEN ones only when data_dir is given)."""
    n = 300 if quick else 2000
    sets = {
        "uci-writers": uci_writers(),
        "fonts": fonts(quick),
        "tablet": tablet(mnist_images, mnist_labels, n),
        "postal": postal(mnist_images, mnist_labels, n),
        "scans": _generated("scans", mnist_images, mnist_labels, n),
        "styles": _generated("styles", mnist_images, mnist_labels, n // 2),
    }
    if data_dir is not None:
        sets["unipen-writers"] = unipen_writers(data_dir, 150 if quick else None)
        sets["unipen-8-points"] = unipen_writers(data_dir, 300 if quick else None, eight_points=True)
    if quick:
        sets["uci-writers"] = sets["uci-writers"][:400]
    return sets


# -----------------------------------------------------------------------------------------------------------
# scoring


def score(classifier: Classifier, items: list[tuple[bytes, int]] | tuple[np.ndarray, np.ndarray]) -> dict:
    # imported here: train.calibrate needs torch, and the sets above must build without it (.ci/int8_images.py)
    from train.calibrate import ece, error_at_coverage

    if isinstance(items, tuple):  # MNIST as arrays: already in MNIST form
        digits, labels = items[0].astype(np.float32) / 255.0, items[1]
        predictions = classifier.classify(digits)
    else:
        labels = np.array([label for _, label in items])
        predictions = []
        for start in range(0, len(items), 500):
            predictions += classifier.predict_batch([blob for blob, _ in items[start : start + 500]])
    predicted = np.array([p.label for p in predictions])
    confidence = np.array([p.confidence for p in predictions])
    correct = predicted == labels
    per_digit = [float(correct[labels == d].mean()) if (labels == d).any() else float("nan") for d in range(10)]
    confusions = Counter((int(t), int(p)) for t, p in zip(labels[~correct], predicted[~correct], strict=True))
    return {
        "n": len(labels),
        "accuracy": float(correct.mean()),
        "per_digit": per_digit,
        "confusions": confusions.most_common(4),
        "ece": ece(confidence, correct),
        "error": float(1 - correct.mean()),
        "error95": error_at_coverage(confidence, correct),
        "confident_wrong": float(np.mean(~correct & (confidence >= CONFIDENT))),
    }


def evaluate(models: dict[str, Classifier], sets: dict) -> dict[str, dict[str, dict]]:
    return {
        name: {precision: score(classifier, items) for precision, classifier in models.items()}
        for name, items in sets.items()
    }


def report(results: dict[str, dict[str, dict]]) -> str:
    rows, digit_rows = [], []
    for name, by_precision in results.items():
        held = "yes" if name in HELD_OUT else "writers" if name in WRITERS_HELD_OUT else "no"
        fp32 = by_precision["fp32"]
        int8 = by_precision.get("int8")
        confusions = ", ".join(f"{t}→{p} ×{n}" for (t, p), n in fp32["confusions"])
        rows.append(
            [
                name,
                held,
                fp32["n"],
                f"{fp32['accuracy']:.2%}",
                f"{int8['accuracy']:.2%}" if int8 else "–",
                f"{fp32['ece']:.2%}",
                f"{fp32['error']:.2%} → {fp32['error95']:.2%}",
                f"{fp32['confident_wrong']:.2%}",
                confusions or "–",
            ]
        )
        digit_rows.append([name] + [f"{a:.0%}" for a in fp32["per_digit"]])
    main = table(
        [
            "set",
            "held out",
            "images",
            "fp32",
            "int8",
            "ECE (fp32)",
            "error → at 95 % coverage",
            f"wrong at ≥ {CONFIDENT:g}",
            "costliest confusions (true→read)",
        ],
        rows,
    )
    digits = table(["set (fp32)"] + [str(d) for d in range(10)], digit_rows)
    return section("Real-world accuracy", main, "Per digit (fp32):", digits)


# -----------------------------------------------------------------------------------------------------------
# the ablation: what each training source adds

ABLATION = ["--cell", "gru", "--hidden", "64", "--limit-train", "15000", "--seed", "0", "--threads", "1"]


def ablation_variants() -> dict[str, dict[str, float]]:
    """Each variant's sources, and epochs that make every variant see about 140,000 training images (its
    training set is 13,500 MNIST images, plus 13,500 synthetic, plus 8,186 UNIPEN renderings): more data must
    not win merely by more optimiser steps."""
    from train.trainer import preset_recipe

    default = preset_recipe("default", "gru")
    return {
        "MNIST only": {"synthetic": 0.0, "unipen": 0.0, "epochs": 10},
        "+ synthetic": {"synthetic": default.synthetic, "unipen": 0.0, "epochs": 5},
        "+ UNIPEN": {"synthetic": 0.0, "unipen": default.unipen, "epochs": 6},
        "+ both (the default recipe)": {"synthetic": default.synthetic, "unipen": default.unipen, "epochs": 4},
    }


def ablation_commands(data_dir: Path, run: Path, sources: dict[str, float]) -> list[list[str]]:
    """The edge-train and edge-export commands of one variant, as a user would type them."""
    train = ["edge-train", *ABLATION, "--epochs", f"{sources['epochs']:g}"]
    train += ["--synthetic", f"{sources['synthetic']:g}", "--unipen", f"{sources['unipen']:g}"]
    return [
        [*train, "--data-dir", str(data_dir), "--out", str(run), "--quiet"],
        ["edge-export", str(run / "checkpoint.pt"), "--out", str(run / "model.onnx"), "--data-dir", str(data_dir)],
    ]


def ablation(data_dir: Path, out: Path, sets: dict) -> str:
    """Train and export each variant into OUT/ablation-N (reused when its commands are unchanged), score it."""
    rows = []
    for k, (name, sources) in enumerate(ablation_variants().items()):
        run = out / f"ablation-{k}"
        commands = ablation_commands(data_dir, run, sources)
        record = run / "commands.txt"
        text = "\n".join(" ".join(c) for c in commands) + "\n"
        if not (record.is_file() and record.read_text() == text and (run / "model.onnx").is_file()):
            if run.exists():
                import shutil

                shutil.rmtree(run)
            for command in commands:
                module = {"edge-train": "train", "edge-export": "export"}[command[0]]
                print("$", " ".join(command), file=sys.stderr, flush=True)
                subprocess.run([sys.executable, "-m", module, *command[1:]], check=True, stdout=subprocess.DEVNULL)
            record.write_text(text)
        results = evaluate({"fp32": Classifier(run / "model.onnx")}, sets)
        rows.append(
            [name]
            + [f"{results[s]['fp32']['accuracy']:.1%}" for s in sets]
            + [f"{max(r['fp32']['ece'] for r in results.values()):.1%}"]
            + [f"{max(r['fp32']['confident_wrong'] for r in results.values()):.1%}"]
        )
    command = " ".join(ablation_commands(Path("DATA"), Path("RUN"), list(ablation_variants().values())[-1])[0])
    return section(
        "Ablation: what each training source adds",
        f"Each row: `{command}` with its own --epochs/--synthetic/--unipen (about 140,000 training images seen "
        "each), exported (fp32) and scored on the --quick sets.",
        table(["training data"] + list(sets) + ["worst ECE", "worst wrong at ≥ 0.9"], rows),
    )


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--model", type=Path, default=bundled_model_path(False), help="fp32 .onnx (default: bundled)")
    parser.add_argument(
        "--int8-model", type=Path, default=bundled_model_path(True), help="int8 .onnx (default: bundled)"
    )
    parser.add_argument("--ablation", action="store_true", help="train and score the four-source ablation instead")
    args = parser.parse_args()
    quick = args.quick or args.ablation
    header = machine_header("edge-infer real-world accuracy", quick)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import read_idx

    images, labels = read_idx(args.data_dir / "MNIST" / "raw", "t10k")
    print("building the sets ...", file=sys.stderr, flush=True)
    sets: dict = {**build_sets(images, labels, quick, args.data_dir), "mnist": (images, labels)}
    if args.ablation:
        body = ablation(args.data_dir, args.out, sets)
        print(header)
        print(body)
        return
    models = {"fp32": Classifier(args.model), "int8": Classifier(args.int8_model)}
    print("classifying ...", file=sys.stderr, flush=True)
    print(header)
    print(f"Models: `{args.model}`, `{args.int8_model}`.\n")
    print(report(evaluate(models, sets)))


if __name__ == "__main__":
    main()
