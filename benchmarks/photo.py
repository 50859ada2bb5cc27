"""One photo: `Classifier.predict(path)` of a 1000x800 JPEG beside decoding that file, in one process.

    python benchmarks/photo.py [--data-dir ../shared/data] [--out bench-out] [--quick]

The photos are made from real MNIST test digits (written once to OUT/photos/, reused): 1000x800 RGB JPEGs
(quality 85) of dark ink on paper, in three kinds of light. Per photo, these take turns (warm, in-process,
files in the page cache): Pillow's full decode of the file (`Image.open(path).load()`, what any program pays
to get the pixels), `predict(path)`, and its parts (load_image, to_grey + to_mnist); medians. The target is
on the ratio predict / decode, per photo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchlib import add_common_args, machine_header, median, section, table, target, timed

SIZE = (1000, 800)  # width, height
DIGITS = (0, 1, 2)  # MNIST test indices used for each kind
REPS = 60  # timed calls of each thing per photo; --quick: a tenth
TARGET_RATIO = 2.5


def _page(
    digit: np.ndarray,
    rng: np.random.Generator,
    side: int,
    light_lo: float,
    light_hi: float,
    noise: float,
    texture: float = 0.0,
) -> np.ndarray:
    from PIL import Image

    w, h = SIZE
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    cover = np.zeros((h, w), np.float32)
    y, x = int(rng.integers(20, h - side - 20)), int(rng.integers(20, w - side - 20))
    cover[y : y + side, x : x + side] = ink
    yy, xx = np.mgrid[0:h, 0:w] / w
    light = light_lo + (light_hi - light_lo) * xx - 0.4 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2)  # gradient, vignetting
    paper = light * (1 + texture * rng.normal(0, 1, (h // 8 + 1, w // 8 + 1)).repeat(8, 0).repeat(8, 1)[:h, :w])
    grey = paper * (1 - 0.8 * cover) + rng.normal(0, noise, cover.shape)
    return np.clip(np.stack([grey, grey * 0.95, grey * 0.85], -1) * 255, 0, 255).astype(np.uint8)


KINDS = {
    "shaded page, big digit": {"side": 420, "light_lo": 0.35, "light_hi": 0.95, "noise": 0.03},
    "small off-centre digit, paper texture": {
        "side": 160,
        "light_lo": 0.5,
        "light_hi": 0.9,
        "noise": 0.02,
        "texture": 0.03,
    },
    "dim and noisy": {"side": 360, "light_lo": 0.25, "light_hi": 0.5, "noise": 0.06},
}


def write_photos(data_dir: Path, directory: Path) -> list[tuple[str, Path, int]]:
    """(kind, path, label) for every photo, written once."""
    from PIL import Image

    from train.data import load_mnist

    _, test = load_mnist(data_dir, download=False)
    directory.mkdir(parents=True, exist_ok=True)
    photos = []
    for k, (kind, params) in enumerate(KINDS.items()):
        for index in DIGITS:
            path = directory / f"kind{k}-{index}.jpg"
            if not path.exists():
                rng = np.random.default_rng(1000 * k + index)
                Image.fromarray(_page(test.images[index].numpy(), rng, **params)).save(path, "JPEG", quality=85)
            photos.append((kind, path, int(test.labels[index])))
    return photos


def run(data_dir: Path, out: Path, quick: bool) -> str:
    from PIL import Image

    from edge_infer import Classifier
    from edge_infer.preprocess import load_image, to_grey, to_mnist

    photos = write_photos(data_dir, out / "photos")
    classifier = Classifier()
    rows, ratios, right = [], [], 0
    for kind, path, label in photos:
        image = load_image(path)
        calls = {
            "decode": lambda path=path: Image.open(path).load(),
            "predict": lambda path=path: classifier.predict(path),
            "load_image": lambda path=path: load_image(path),
            "mnist": lambda image=image: to_mnist(to_grey(image)),
        }
        seconds = {k: median(s) for k, s in timed(calls, reps=REPS // (10 if quick else 1)).items()}
        ratio = seconds["predict"] / seconds["decode"]
        ratios.append(ratio)
        prediction = classifier.predict(path)
        right += prediction.label == label
        rows.append(
            [
                f"{path.name} ({kind})",
                f"{seconds['decode'] * 1e3:.2f}",
                f"{seconds['load_image'] * 1e3:.2f}",
                f"{seconds['mnist'] * 1e3:.2f}",
                f"{seconds['predict'] * 1e3:.2f}",
                f"{ratio:.2f}x",
                f"{prediction.label} ({label})",
            ]
        )
    results = table(
        [
            "photo",
            "decode ms",
            "load_image ms",
            "to_grey + to_mnist ms",
            "predict ms",
            "predict / decode",
            "label (true)",
        ],
        rows,
    )
    about = (
        f"{len(photos)} photos of real MNIST test digits, {SIZE[0]}x{SIZE[1]} RGB JPEG (quality 85), made by "
        "this script in `" + str(out / "photos") + "`. Per photo, in one process and taking turns in 10 rounds: "
        "`Image.open(path).load()` (decode), `edge_infer.preprocess.load_image(path)` (decode to grey + "
        "shrink to <= 512 px), `to_mnist(to_grey(image))` on the loaded image, and `Classifier().predict(path)` "
        "(all of it plus the bundled fp32 model); medians."
    )
    check = target(
        f"one 1000x800 JPEG photo: predict <= {TARGET_RATIO:g}x its decode time",
        f"{max(ratios):.2f}x at worst, median {median(ratios):.2f}x over {len(photos)} photos "
        f"({right}/{len(photos)} labels right)",
        max(ratios) <= TARGET_RATIO,
    )
    return section("3b. One photo: predict vs decode", about, results, check)


def main() -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    print(machine_header("edge-infer one photo", args.quick) + "\n" + run(args.data_dir, args.out, args.quick))


if __name__ == "__main__":
    main()
