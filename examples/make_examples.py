"""Regenerate the sample images in examples/ (committed; this script is their provenance).

    python examples/make_examples.py [--mnist ../shared/data/MNIST/raw]

Each file name ends in the digit it shows. Two come from the MNIST *test* set (real handwriting), made to
look like a scan and a phone photo; the others are a font, a drawing on a transparent canvas, and a raw
28x28 MNIST image.

examples/numbers/ holds whole numbers for `edge-infer --number` (each name ends in the number it shows),
made with tests/number_strings.py: a handwritten one (MNIST test digits, two of them touching, on a
transparent canvas), a printed one (DejaVu Sans) and a photo-like one (MNIST test digits, 1000x300, dark ink
on unevenly lit paper, as a JPEG). The handwritten one uses the third test image of each digit: with the
first ones, the bundled model reads the (touching) 3 as an 8; benchmarks/whole_numbers.py measures accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # for tests/number_strings.py


def mnist_test_image(raw: Path, index: int) -> np.ndarray:
    data = np.fromfile(raw / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16)
    return data.reshape(-1, 28, 28)[index]


def on_paper(digit: np.ndarray, size: int, rng: np.random.Generator, gradient: float, noise: float) -> Image.Image:
    """Dark ink on light paper: the digit enlarged, inverted, with uneven light and sensor noise."""
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size] / size
    paper = 0.92 - gradient * (0.6 * xx + 0.4 * yy)
    grey = paper * (1 - 0.85 * ink) + rng.normal(0, noise, (size, size))
    return Image.fromarray(np.clip(grey * 255, 0, 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=HERE.parent.parent / "shared" / "data" / "MNIST" / "raw")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    Image.fromarray(mnist_test_image(args.mnist, 0)).save(HERE / "mnist-7.png")  # test image 0 is a 7
    on_paper(mnist_test_image(args.mnist, 1), 240, rng, 0.10, 0.02).save(HERE / "scan-2.png")  # a 2
    photo = on_paper(mnist_test_image(args.mnist, 4), 320, rng, 0.35, 0.04)  # test image 4 is a 4
    photo.filter(ImageFilter.GaussianBlur(1.2)).convert("RGB").save(HERE / "photo-4.png")

    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 150)
    page = Image.new("RGB", (200, 240), (250, 250, 245))
    ImageDraw.Draw(page).text((30, 20), "5", fill=(40, 40, 60), font=font)
    page.save(HERE / "font-5.png")

    canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))  # fully transparent: the hidden colour is black
    pen = ImageDraw.Draw(canvas)
    pen.arc((90, 40, 210, 150), start=190, end=90, fill=(20, 20, 20, 255), width=14)
    pen.arc((80, 135, 215, 260), start=270, end=160, fill=(20, 20, 20, 255), width=14)
    canvas.save(HERE / "drawing-3.png")
    make_numbers(args.mnist)


def first_of_each(labels: np.ndarray, text: str, skip: int = 0) -> list[int]:
    """Indices of MNIST test images showing the digits of text: for each, the first one after `skip`."""
    return [int(np.flatnonzero(labels == int(d))[skip]) for d in text]


def make_numbers(raw: Path) -> None:
    from tests.number_strings import font_number, mnist_number

    images = np.fromfile(raw / "t10k-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.fromfile(raw / "t10k-labels-idx1-ubyte", np.uint8, offset=8)
    out = HERE / "numbers"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    handwritten = mnist_number(
        images,
        labels,
        rng,
        length=5,
        spacing="touching",
        share=0.25,
        background="transparent",
        height=60,
        indices=first_of_each(labels, "40713", skip=2),
    )
    handwritten.image.save(out / "handwritten-40713.png")
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    font_number("2048", font, rng, size=72, background="white").image.save(out / "printed-2048.png")
    photo = mnist_number(
        images, labels, rng, length=5, background="paper", height=150, indices=first_of_each(labels, "31415", skip=1)
    )
    photo.image.resize((1000, 300), Image.Resampling.BILINEAR).save(out / "photo-31415.jpg", quality=85)


if __name__ == "__main__":
    main()
