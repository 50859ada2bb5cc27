"""Real pen trajectories (UNIPEN 1a digits, 183 writers) drawn many ways into MNIST-form training digits.

The share lives in DATA_DIR/unipen/unipen-1a-digits.npz (format, licence and attribution in its README.md):
the pen-down strokes of each digit, as x, y points (y up). `render` draws one digit as a pen, a scanner, a
camera or a tablet app would show it, and `build_unipen_pool` draws many through the runtime's own
preprocessing (`edge_infer.preprocess.to_mnist`), as train.synth does for the synthetic digits.

Writers, never digits, are split (`writer_roles`): a seeded order of the writers, the first ones up to
HELD_OUT_SHARE of the digits held out for reporting only (benchmarks/realworld.py, "unipen-writers"), the
next ones up to CALIBRATION_SHARE for fitting the temperature, the rest for training.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from train.data import DataError
from train.synth import CANVAS, _as_mnist, _blur, _paper, _smooth_noise, run_chunks

UNIPEN_FILE = Path("unipen") / "unipen-1a-digits.npz"
SPLIT_SEED = 20261206
HELD_OUT_SHARE = 0.15  # of the digits: writers never trained on, reported on
CALIBRATION_SHARE = 0.08  # of the digits: writers used only to fit the temperature
ROLES = ("train", "calibration", "held-out")
ATTRIBUTION = (
    "UNIPEN train_r01_v07 section 1a (The International Unipen Foundation), CC BY 4.0: Unipen consortium "
    '(1999), "Unipen data set of on-line (vectorial) handwriting - train_r01_v07", doi:10.5281/zenodo.1195803; '
    'I. Guyon, L. Schomaker, R. Plamondon, M. Liberman, S. Janet, "UNIPEN project of on-line data exchange '
    'and recognizer benchmarks", ICPR 1994'
)

# How a digit is drawn, and how often (training draws them at random with these weights).
RENDER_STYLES = ("pen", "pressure", "ballpoint", "marker", "scan", "photo", "few-points")
RENDER_WEIGHTS = (0.17, 0.15, 0.12, 0.1, 0.17, 0.14, 0.15)


@dataclass(frozen=True)
class Unipen:
    strokes: list[list[np.ndarray]]  # per digit: its pen-down strokes, float [P, 2], x right, y *down*
    labels: np.ndarray  # int64 [N]
    writers: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Unipen:
        return Unipen([self.strokes[i] for i in index], self.labels[index], self.writers[index])

    def role(self, role: str) -> Unipen:
        """The digits of the writers with that role ('train', 'calibration' or 'held-out')."""
        roles = writer_roles(self.writers)
        return self.subset(np.flatnonzero(np.array([roles[int(w)] == role for w in self.writers], bool)))


def unipen_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / UNIPEN_FILE


def load_unipen(data_dir: str | Path) -> Unipen:
    """The UNIPEN share under data_dir; DataError with one line when it is missing or unreadable."""
    path = unipen_path(data_dir)
    if not path.is_file():
        raise DataError(
            f"UNIPEN not found: expected {path} (the recipe draws UNIPEN digits); point --data-dir at the folder "
            "holding unipen/, or train without it (--unipen 0)"
        )
    try:
        with np.load(path) as npz:
            points, strokes, samples = npz["points"], npz["stroke_offsets"], npz["sample_offsets"]
            labels, writers = npz["labels"].astype(np.int64), npz["writer"].astype(np.int64)
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path} is not the UNIPEN share ({type(error).__name__}: {error})") from None
    if len(samples) != len(labels) + 1 or len(writers) != len(labels) or labels.max(initial=0) > 9:
        raise DataError(f"{path} is not the UNIPEN share: its arrays do not fit together")
    flipped = points * np.array([1.0, -1.0], np.float32)  # y up (tablet) -> y down (image)
    digits = [
        [flipped[strokes[j] : strokes[j + 1]] for j in range(samples[i], samples[i + 1])] for i in range(len(labels))
    ]
    return Unipen(digits, labels, writers)


def writer_roles(writers: np.ndarray) -> dict[int, str]:
    """Each writer's role: writers in a fixed seeded order; the first ones up to HELD_OUT_SHARE of the digits
    are 'held-out', the next up to CALIBRATION_SHARE 'calibration', the rest 'train'."""
    ids, counts = np.unique(writers, return_counts=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    total, done, roles = counts.sum(), 0, {}
    for k in order:
        if done < HELD_OUT_SHARE * total:
            roles[int(ids[k])] = "held-out"
        elif done < (HELD_OUT_SHARE + CALIBRATION_SHARE) * total:
            roles[int(ids[k])] = "calibration"
        else:
            roles[int(ids[k])] = "train"
        done += counts[k]
    return roles


# ---------------------------------------------------------------------------------------------------------
# drawing one digit


def _normalised(strokes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Strokes in a unit box (height 1, centred on 0), with a random slant, rotation and aspect."""
    allpts = np.concatenate(strokes).astype(np.float64)
    lo, hi = allpts.min(0), allpts.max(0)
    scale = max(hi[1] - lo[1], 0.25 * (hi[0] - lo[0]), 1e-6)  # a flat stroke (a dash) keeps a sane size
    centre = (lo + hi) / 2
    aspect = rng.uniform(0.75, 1.3)
    shear, angle = rng.uniform(-0.35, 0.35), rng.uniform(-0.14, 0.14)
    c, s = math.cos(angle), math.sin(angle)
    out = []
    for stroke in strokes:
        p = (stroke.astype(np.float64) - centre) / scale
        x, y = p[:, 0] * aspect, p[:, 1]
        x = x - shear * y
        out.append(np.stack([c * x - s * y, s * x + c * y], 1))
    return out


def _resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """n points evenly spaced along the polyline's length (a tablet that keeps only a few samples)."""
    steps = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    length = np.concatenate([[0.0], np.cumsum(steps)])
    if length[-1] <= 0:
        return np.repeat(polyline[:1], n, axis=0)
    at = np.linspace(0.0, length[-1], n)
    return np.stack([np.interp(at, length, polyline[:, k]) for k in (0, 1)], 1)


def _widths(n: int, base: float, rng: np.random.Generator, pressure: bool) -> np.ndarray:
    """Pen width at each point: constant, or swelling and thinning along the stroke like pen pressure."""
    if not pressure or n < 3:
        return np.full(n, base)
    knots = rng.uniform(0.35, 1.6, size=max(2, n // 12 + 2))
    return base * np.interp(np.linspace(0, len(knots) - 1, n), np.arange(len(knots)), knots)


def render(
    strokes: list[np.ndarray], rng: np.random.Generator, style: str | None = None, few_points: int | None = None
) -> np.ndarray:
    """One UNIPEN digit (strokes, y down) drawn in a style (random if None, see RENDER_STYLES) on a grey page
    (float, 1.0 = white); it still has to go through to_mnist, like any input of the runtime. `few_points`:
    how many points the 'few-points' style keeps (random, 5-12, if None)."""
    if style is None:
        style = str(rng.choice(RENDER_STYLES, p=RENDER_WEIGHTS))
    strokes = _normalised(strokes, rng)
    if style == "few-points":  # pen lifts drawn as lines, then only a few samples kept: sharp corners
        keep = few_points or int(rng.choice([5, 6, 7, 8, 8, 8, 10, 12]))
        strokes = [_resample(np.concatenate(strokes), keep)]
    scale = 2  # drawn at twice the size and reduced: anti-aliased
    size = CANVAS * scale
    margin = rng.uniform(0.1, 0.28) * size
    box = size - 2 * margin
    extent = max(1.0, max(float(np.abs(np.concatenate(strokes)[:, 0]).max()) * 2, 1.0))  # wide digits fit too
    unit = box / extent
    base = {
        "pen": rng.uniform(0.02, 0.12),
        "pressure": rng.uniform(0.04, 0.14),
        "ballpoint": rng.uniform(0.015, 0.05),
        "marker": rng.uniform(0.12, 0.22),
        "scan": rng.uniform(0.03, 0.18),
        "photo": rng.uniform(0.03, 0.15),
        "few-points": rng.uniform(0.015, 0.12),
    }[style] * box
    img = Image.new("L", (size, size), 0)  # ink bright while drawing
    draw = ImageDraw.Draw(img)
    ink = 255 if style != "ballpoint" else int(rng.integers(150, 256))
    for stroke in strokes:
        xy = stroke * unit + size / 2
        widths = _widths(len(xy), base, rng, pressure=style in ("pressure", "ballpoint"))
        skip = style == "ballpoint" and rng.random() < 0.6  # the ball skips: short gaps along the stroke
        for i in range(len(xy)):
            if skip and rng.random() < 0.08:
                continue
            r = max(0.6, widths[i] / 2)
            u, v = float(xy[i, 0]), float(xy[i, 1])
            if i + 1 < len(xy):
                draw.line([(u, v), (float(xy[i + 1, 0]), float(xy[i + 1, 1]))], fill=ink, width=max(1, round(2 * r)))
            draw.ellipse((u - r, v - r, u + r, v + r), fill=ink)  # round joints and ends
    page = 1.0 - np.asarray(img.resize((CANVAS, CANVAS), Image.Resampling.BOX), np.float32) / 255.0
    if style == "scan":  # binarised, sometimes cropped to the ink as digits cut from forms are
        page = (page > rng.uniform(0.35, 0.7)).astype(np.float32)
        if rng.random() < 0.35:
            rows, cols = np.flatnonzero(page.min(1) < 0.5), np.flatnonzero(page.min(0) < 0.5)
            if rows.size and cols.size:
                page = page[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    elif style == "photo":  # uneven light, lens blur, sensor noise, JPEG
        light = rng.uniform(0.75, 1.0) + 0.04 * _smooth_noise(rng, CANVAS, CANVAS / 2)
        page = (1.0 - (1.0 - page) * rng.uniform(0.6, 0.95)) * light
        page = _blur(page, rng.uniform(0.6, 2.0))
        page = page + rng.normal(0.0, rng.uniform(0.0, 0.04), page.shape)
        page = _jpeg(page, int(rng.integers(15, 70)))
    return _paper(page, rng)


def _jpeg(page: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(page, 0, 1) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------
# many digits


def _render_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    seed, chunk, strokes, labels, style = args
    rng = np.random.default_rng([seed, chunk, 7])
    images = np.zeros((len(labels), 28, 28), np.uint8)
    for i, digit in enumerate(strokes):
        for _ in range(5):  # a rendering that left no ink is drawn again
            images[i] = _as_mnist(render(digit, rng, style))
            if images[i].any():
                break
    return images, np.asarray(labels, np.int64)


CHUNK = 500


def build_unipen_pool(
    unipen: Unipen, copies: float, seed: int, workers: int = 2, style: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """round(copies * N) renderings of the digits (each digit floor(copies) times, the rest a seeded pick),
    uint8 [M, 28, 28] + labels, identical for identical inputs whatever the worker count."""
    total = round(copies * len(unipen))
    whole, rest = divmod(total, len(unipen)) if len(unipen) else (0, 0)
    pick = np.concatenate(
        [np.tile(np.arange(len(unipen)), whole), np.random.default_rng([seed, 8]).permutation(len(unipen))[:rest]]
    ).astype(np.int64)
    tasks = [
        (
            seed,
            chunk,
            [unipen.strokes[i] for i in pick[start : start + CHUNK]],
            unipen.labels[pick[start : start + CHUNK]],
            style,
        )
        for chunk, start in enumerate(range(0, len(pick), CHUNK))
    ]
    return run_chunks(_render_chunk, tasks, workers)
