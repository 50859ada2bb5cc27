"""Whole numbers (edge_infer.number): accuracy of `Classifier.read_numbers` on lines of real MNIST *test*
digits and of rendered fonts, by spacing, and the cost of reading a number against a single-digit predict.

    python benchmarks/whole_numbers.py [--data-dir ../shared/data] [--quick] [--strings 300]

Strings come from tests/number_strings.py (seeded, so every run reads the same images): per spacing
(apart; a fifth of neighbour pairs touching; a fifth overlapping by 8-20 % of a digit's width), N strings
of 5 MNIST digits and N of 1-10 digits, the backgrounds taking turns (photo-like paper, white,
transparent); printed numbers in every DejaVu font; and issue 19's harder conditions, N strings each:
forms (a row of boxes, a comb field, an underline, ruled paper), 40 % of neighbours touching or
overlapping, photographed strings, and UNIPEN writers held out here (when ../shared/data/unipen exists).
Per-digit accuracy counts the true digits read in order (longest common subsequence) over all true digits.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
from benchlib import ROOT, add_common_args, machine_header, median, section, table, target, timed
from PIL import Image

from edge_infer import Classifier

sys.path.insert(0, str(ROOT))
from tests.conftest import read_idx
from tests.number_strings import (
    BACKGROUNDS,
    digits_matched,
    font_number,
    font_paths,
    form_number,
    mnist_number,
    photograph,
    unipen_digits,
)

CONDITIONS = (
    ("apart", "apart", 1.0),
    ("a fifth touching", "touching", 0.2),
    ("a fifth overlapping", "overlapping", 0.2),
)


def _score(classifier: Classifier, numbers: list) -> dict[str, float]:
    readings = []
    for start in range(0, len(numbers), 64):  # a batch of images per read_numbers, as the CLI does
        readings += classifier.read_numbers([n.image for n in numbers[start : start + 64]])
    digits = sum(len(n.text) for n in numbers)
    return {
        "strings": len(numbers),
        "digit": sum(digits_matched(n.text, r.text) for n, r in zip(numbers, readings, strict=False)) / digits,
        "whole": float(np.mean([n.text == r.text for n, r in zip(numbers, readings, strict=False)])),
        "count": float(np.mean([len(n.text) != len(r.text) for n, r in zip(numbers, readings, strict=False)])),
    }


def accuracy(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray, strings: int
) -> tuple[str, dict[str, dict[str, float]]]:
    rows, results = [], {}
    for name, spacing, share in CONDITIONS:
        for lengths in ("5", "1-10"):
            rng = np.random.default_rng(len(rows))  # the same strings in every run
            numbers = [
                mnist_number(
                    images,
                    labels,
                    rng,
                    length=5 if lengths == "5" else int(rng.integers(1, 11)),
                    spacing=spacing,
                    share=share,
                    background=BACKGROUNDS[i % 3],
                )
                for i in range(strings)
            ]
            touching = sum(s != "apart" for n in numbers for s in n.spacings)
            pairs = sum(len(n.spacings) for n in numbers)
            r = _score(classifier, numbers)
            results[f"{spacing}/{lengths}"] = r
            rows.append(
                [
                    f"MNIST test, {lengths} digits",
                    name,
                    f"{touching / max(pairs, 1):.0%}",
                    r["strings"],
                    f"{r['digit']:.1%}",
                    f"{r['whole']:.1%}",
                    f"{r['count']:.1%}",
                ]
            )
    rng = np.random.default_rng(99)
    fonts = font_paths()
    numbers = [
        font_number(
            "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(1, 11)))),
            fonts[i % len(fonts)],
            rng,
            size=int(rng.integers(28, 90)),
            background=BACKGROUNDS[i % 3],
        )
        for i in range(max(len(fonts), strings // 3))
    ]
    r = _score(classifier, numbers)
    results["fonts"] = r
    rows.append(
        [
            f"{len(fonts)} DejaVu fonts, 1-10 digits",
            "as printed (+0-25 % tracking)",
            "",
            r["strings"],
            f"{r['digit']:.1%}",
            f"{r['whole']:.1%}",
            f"{r['count']:.1%}",
        ]
    )
    text = table(["strings", "spacing", "pairs touching", "n", "per-digit", "whole string", "wrong digit count"], rows)
    return text, results


def _row(name: str, condition: str, r: dict[str, float]) -> list[object]:
    return [name, condition, "", r["strings"], f"{r['digit']:.1%}", f"{r['whole']:.1%}", f"{r['count']:.1%}"]


def hard(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray, strings: int, data_dir
) -> tuple[list[list[object]], dict[str, dict[str, float]]]:
    """Issue 19's conditions: forms (boxes, comb fields, underlines, ruled paper; lines 1-4 px in black,
    grey or a dropout colour, a third of the digits crossing a line; boxes and comb fields photographed
    too), 40 % of neighbours touching or
    overlapping, photographed strings, and UNIPEN writers held out here (writer % 6 == 5)."""
    rows, results = [], {}
    forms = (
        ("boxes", "a row of boxes"),
        ("comb", "a comb field"),
        ("underline", "an underline"),
        ("ruled", "ruled paper"),
    )
    for k, (style, name) in enumerate(forms):
        rng = np.random.default_rng(200 + k)
        numbers = [form_number(images, labels, rng, style=style) for _ in range(strings)]
        results[style] = r = _score(classifier, numbers)
        rows.append(_row("MNIST test, 5 digits", f"on {name}, 1/3 crossing a line", r))
    for k, (style, name) in enumerate(forms[:2]):
        rng = np.random.default_rng(240 + k)
        numbers = [form_number(images, labels, rng, style=style) for _ in range(strings)]
        for number in numbers:
            number.image = photograph(number.image, rng)
        results[f"{style} photographed"] = r = _score(classifier, numbers)
        rows.append(_row("MNIST test, 5 digits", f"on {name}, photographed", r))
    for k, spacing in enumerate(("touching", "overlapping")):
        rng = np.random.default_rng(210 + k)
        numbers = [
            mnist_number(images, labels, rng, spacing=spacing, share=0.4, background=BACKGROUNDS[i % 3])
            for i in range(strings)
        ]
        results[f"{spacing}40"] = r = _score(classifier, numbers)
        rows.append(_row("MNIST test, 5 digits", f"40 % {spacing}", r))
    rng = np.random.default_rng(220)
    numbers = [
        mnist_number(images, labels, rng, background="paper", height=float(rng.uniform(40, 90))) for _ in range(strings)
    ]
    for number in numbers:
        number.image = photograph(number.image, rng)
    results["photo"] = r = _score(classifier, numbers)
    rows.append(_row("MNIST test, 5 digits", "photographed: tilted, 2-3x, JPEG 60-85", r))
    unipen = data_dir / "unipen" / "unipen-1a-digits.npz"
    if unipen.is_file():
        pen_images, pen_labels = unipen_digits(unipen, held_out=True)
        rng = np.random.default_rng(230)
        numbers = [mnist_number(pen_images, pen_labels, rng, background=BACKGROUNDS[i % 3]) for i in range(strings)]
        results["unipen"] = r = _score(classifier, numbers)
        rows.append(_row("UNIPEN held-out writers, 5 digits", "apart", r))
    return rows, results


def speed(classifier: Classifier, images: np.ndarray, labels: np.ndarray, quick: bool) -> tuple[str, bool]:
    """A 1000x300 photo-like PNG of 5 MNIST test digits: read_number vs predict, the same file bytes."""
    rng = np.random.default_rng(7)
    number = mnist_number(images, labels, rng, length=5, height=150, background="paper")
    while not (900 <= number.image.width <= 1100 and number.image.height >= 250):
        number = mnist_number(images, labels, rng, length=5, height=150, background="paper")
    photo = number.image.resize((1000, 300), Image.Resampling.BILINEAR)  # a slight stretch at most
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    data = buffer.getvalue()
    reading = classifier.read_number(data)
    samples = timed(
        {"predict": lambda: classifier.predict(data), "read_number": lambda: classifier.read_number(data)},
        reps=40 if quick else 300,
    )
    single, whole = median(samples["predict"]), median(samples["read_number"])
    ratio = whole / single
    rows = [
        ["`predict` (one digit)", f"{single * 1e3:.2f} ms", "1.00"],
        [f"`read_number` (read {reading.text!r}, truth {number.text!r})", f"{whole * 1e3:.2f} ms", f"{ratio:.2f}"],
    ]
    return table([f"{photo.width}x{photo.height} photo-like PNG", "median", "x predict"], rows) + "\n" + target(
        "read_number of a 5-digit 1000x300 photo <= 3x predict", f"{ratio:.2f}x", ratio <= 3.0
    ), ratio <= 3.0


def run(data_dir, quick: bool, strings: int | None = None) -> str:
    images, labels = read_idx(data_dir / "MNIST" / "raw", "t10k")
    classifier = Classifier()
    strings = strings or (60 if quick else 300)
    text, results = accuracy(classifier, images, labels, strings)
    hard_rows, hard_results = hard(classifier, images, labels, strings, data_dir)
    text += "\n" + table(
        ["strings", "conditions", "", "n", "per-digit", "whole string", "wrong digit count"], hard_rows
    )
    apart, touching = results["apart/5"], hard_results["touching40"]
    boxes = {key: hard_results[key] for key in ("boxes", "comb")}
    targets = (
        target("5 MNIST digits apart: whole string >= 97 %", f"{apart['whole']:.1%}", apart["whole"] >= 0.97)
        + target(
            "5 MNIST digits, 40 % touching: whole string >= 85 %", f"{touching['whole']:.1%}", touching["whole"] >= 0.85
        )
        + "".join(
            target(f"5 MNIST digits in {key}: whole string >= 85 %", f"{r['whole']:.1%}", r["whole"] >= 0.85)
            + target(f"5 MNIST digits in {key}: wrong digit count <= 2 %", f"{r['count']:.1%}", r["count"] <= 0.02)
            for key, r in boxes.items()
        )
        + target("5 MNIST digits apart: wrong digit count <= 2 %", f"{apart['count']:.1%}", apart["count"] <= 0.02)
        + target(
            "5 MNIST digits, 40 % touching: wrong digit count <= 8 %",
            f"{touching['count']:.1%}",
            touching["count"] <= 0.08,
        )
    )
    speed_text, _ = speed(classifier, images, labels, quick)
    return section("6. Whole numbers (`read_numbers`)", text, targets, speed_text)


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--strings", type=int, default=None, help="strings per row (default 300; 60 with --quick)")
    args = parser.parse_args()
    header = machine_header("edge-infer: whole numbers", args.quick)
    started = time.perf_counter()
    body = run(args.data_dir, args.quick, args.strings)
    print(
        header + f"\nCommand: `python benchmarks/whole_numbers.py{' --quick' if args.quick else ''}"
        f"{f' --strings {args.strings}' if args.strings else ''}`; took {time.perf_counter() - started:.0f} s.\n"
    )
    print(body)


if __name__ == "__main__":
    main()
