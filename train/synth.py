"""Real-world-like training digits, made with numpy and Pillow and passed through the runtime's own
preprocessing (`edge_infer.preprocess.to_mnist`), so the model learns from exactly what the runtime feeds it.

Three sources, each a pure function of (inputs, numpy Generator):

  degrade(digit)     an MNIST training digit as a pen, scanner or tablet would have made it: enlarged, elastic
                     distortion (Simard et al. 2003), slant, stroke width changed strongly either way,
                     random breaks, binarised or box-filling like a scanned form, dark ink on paper
  stroke_digit(d)    a digit drawn as pen strokes from style templates, including the continental styles
                     MNIST barely has (crossed 7, 7 with a hook, 1 with a flag and a foot, open 4, straight- or
                     hook-tailed 9), smooth or as a few straight segments, round pens thin to very thick
  printed_digit(d)   a digit rendered in one of matplotlib's STIX / Computer Modern fonts (not the DejaVu fonts
                     the tests use), slanted, bold or light

`build_pool(...)` makes a whole training pool of them as uint8 [N, 28, 28] (ink bright, MNIST form), in a
fixed order for a fixed seed, in worker processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from edge_infer.preprocess import to_mnist

CANVAS = 72  # drawing resolution (pixels) before the runtime's preprocessing scales it down

# ---------------------------------------------------------------------------------------------------------
# degraded MNIST


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A random field varying over about `sigma` pixels, unit standard deviation (coarse noise, enlarged)."""
    coarse = max(2, round(size / sigma))
    field = Image.fromarray(rng.standard_normal((coarse, coarse)).astype(np.float32))
    a = np.asarray(field.resize((size, size), Image.Resampling.BICUBIC))
    return a / (a.std() + 1e-6)


def _blur(page: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float image, through 8 bits (Pillow blurs 8-bit images only; a scanner keeps 8)."""
    img = Image.fromarray(np.round(np.clip(page, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), np.float32) / 255.0


def _warp(ink: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Bilinear resampling of ink at (y + dy, x + dx)."""
    h, w = ink.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = np.clip(xx + dx, 0, w - 1.001), np.clip(yy + dy, 0, h - 1.001)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = x - x0, y - y0
    top = ink[y0, x0] * (1 - fx) + ink[y0, x0 + 1] * fx
    bottom = ink[y0 + 1, x0] * (1 - fx) + ink[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _disc_max(ink: np.ndarray, r: int) -> np.ndarray:
    """Grey dilation by a disc of radius r (a round pen r pixels wider on each side)."""
    if r <= 0:
        return ink
    p = np.pad(ink, r)
    out = ink.copy()
    h, w = ink.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= (r + 0.5) ** 2:
                np.maximum(out, p[r + dy : r + dy + h, r + dx : r + dx + w], out=out)
    return out


def _disc_min(ink: np.ndarray, r: int) -> np.ndarray:
    return 1.0 - _disc_max(1.0 - ink, r) if r > 0 else ink


def degrade(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST digit (uint8 28x28, ink bright) -> a grey page (float, 1.0 = white) as pens and scanners
    make it. The result still has to go through to_mnist, like any input of the runtime."""
    scale = 3
    size = 28 * scale
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0
    ink = np.clip(ink, 0.0, 1.0)
    # elastic distortion plus a random slant and rotation, as one displacement field
    alpha = rng.uniform(0.0, 1.3) * scale
    dx = alpha * _smooth_noise(rng, size, 4.0 * scale)
    dy = alpha * _smooth_noise(rng, size, 4.0 * scale)
    shear, angle = rng.uniform(-0.35, 0.35), rng.uniform(-0.2, 0.2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    dx += shear * yy + angle * yy
    dy += -angle * xx
    ink = _warp(ink, dx, dy)
    # stroke width: thinner or (much) thicker, on the binary-ish core so both directions look like a pen
    width = rng.choice(["thin", "same", "thick", "very thick"], p=[0.25, 0.2, 0.35, 0.2])
    if width == "thin":
        ink = _disc_min(ink, int(rng.integers(1, 3)))
        if ink.max() < 0.3:  # eroded away: keep the original width instead
            ink = _warp(
                np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0,
                dx,
                dy,
            )
    elif width == "thick":
        ink = _disc_max(ink, int(rng.integers(1, 4)))
    elif width == "very thick":
        ink = _disc_max(ink, int(rng.integers(4, 7)))
    if rng.random() < 0.1:  # broken strokes: a pen that skips
        gaps = _smooth_noise(rng, size, 3.0 * scale) > rng.uniform(1.6, 2.2)
        ink = np.where(gaps, 0.0, ink)
    if rng.random() < 0.5:  # binarised scan
        ink = (ink > rng.uniform(0.3, 0.6)).astype(np.float32)
    page = 1.0 - ink * rng.uniform(0.6, 1.0)  # dark ink on paper
    if rng.random() < 0.3:  # box-filling crop, as digits cut from forms and envelopes are
        rows, cols = np.flatnonzero(ink.max(1) > 0.2), np.flatnonzero(ink.max(0) > 0.2)
        if rows.size and cols.size:
            page = page[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _paper(page, rng)


def _paper(page: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paper tone, a little blur and sensor noise, sometimes."""
    if rng.random() < 0.3:
        page = _blur(page, rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        page = page * rng.uniform(0.75, 1.0) + rng.normal(0.0, rng.uniform(0.0, 0.03), page.shape)
    return np.clip(page, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# pen strokes from style templates (unit box, x to the right, y down)


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 12) -> list[tuple]:
    """Points along an elliptical arc, angles in degrees (0 = right, 90 = down)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in np.linspace(start, end, n)
    ]


# Each digit has several styles; each style is a list of strokes; each stroke a list of points.
STYLES: dict[int, list[list[list[tuple]]]] = {
    0: [[_arc(0.5, 0.5, 0.4, 0.5, -90, 275, 20)], [_arc(0.5, 0.5, 0.35, 0.5, -100, 250, 20)]],
    1: [
        [[(0.5, 0.0), (0.5, 1.0)]],
        [[(0.2, 0.3), (0.55, 0.0), (0.55, 1.0)]],  # flag
        [[(0.05, 0.45), (0.6, 0.0), (0.6, 1.0)]],  # long flag
        [[(0.25, 0.25), (0.55, 0.0), (0.55, 1.0)], [(0.2, 1.0), (0.9, 1.0)]],  # flag and foot
        [[(0.3, 0.15), (0.5, 0.0), (0.45, 1.0)]],
        [[(0.05, 0.35), (0.6, 0.0), (0.6, 1.0)], [(0.3, 1.0), (0.9, 1.0)]],  # long flag and foot (serif 1)
        [[(0.35, 0.2), (0.55, 0.0), (0.55, 1.0)], [(0.4, 1.0), (0.7, 1.0)]],
    ],  # short flag, short foot
    2: [
        [_arc(0.5, 0.3, 0.4, 0.3, 170, 380, 9) + [(0.1, 1.0), (0.95, 1.0)]],
        [_arc(0.5, 0.3, 0.4, 0.3, 180, 380, 9) + [(0.15, 0.95), (0.3, 0.85), (0.5, 0.95), (1.0, 1.0)]],  # loop
        [[(0.1, 0.2), (0.5, 0.0), (0.9, 0.2), (0.1, 1.0), (0.9, 1.0)]],
    ],
    3: [
        [_arc(0.45, 0.27, 0.38, 0.27, 200, 450, 9) + _arc(0.45, 0.73, 0.42, 0.27, -90, 160, 9)],
        [[(0.1, 0.0), (0.85, 0.0), (0.4, 0.4)] + _arc(0.45, 0.7, 0.42, 0.3, -80, 160, 9)],
    ],  # flat top
    4: [
        [[(0.75, 1.0), (0.75, 0.0), (0.0, 0.7), (1.0, 0.7)]],
        [[(0.25, 0.0), (0.1, 0.6), (0.95, 0.6)], [(0.7, 0.15), (0.7, 1.0)]],  # open top
        [[(0.3, 0.0), (0.15, 0.55), (0.9, 0.5)], [(0.75, 0.0), (0.65, 1.0)]],
    ],
    5: [
        [[(0.9, 0.0), (0.2, 0.0), (0.15, 0.45)] + _arc(0.5, 0.7, 0.4, 0.3, -120, 160, 10)],
        [[(0.2, 0.0), (0.15, 0.45)] + _arc(0.5, 0.7, 0.4, 0.3, -120, 160, 10), [(0.2, 0.0), (0.9, 0.0)]],
    ],  # bar apart
    6: [
        [[(0.75, 0.0), (0.35, 0.3)] + _arc(0.5, 0.7, 0.35, 0.3, 180, 540, 14)],
        [_arc(0.8, 0.5, 0.65, 0.5, -100, -180, 6) + _arc(0.5, 0.72, 0.32, 0.28, 180, 530, 14)],
    ],
    7: [
        [[(0.0, 0.0), (1.0, 0.0), (0.35, 1.0)]],
        [[(0.0, 0.0), (1.0, 0.0), (0.35, 1.0)], [(0.35, 0.5), (0.9, 0.5)]],  # crossed
        [[(0.0, 0.2), (0.05, 0.0), (1.0, 0.0), (0.4, 1.0)]],  # hook at the top-left
        [[(0.0, 0.2), (0.05, 0.0), (1.0, 0.0), (0.4, 1.0)], [(0.4, 0.5), (0.95, 0.5)]],
        [[(0.0, 0.05), (0.95, 0.0), (0.6, 0.5), (0.5, 1.0)]],
        [[(0.05, 0.0), (1.0, 0.0), (0.65, 0.45), (0.55, 1.0)], [(0.3, 0.5), (0.95, 0.45)]],  # crossed, bent stem
    ],
    8: [
        [_arc(0.5, 0.25, 0.3, 0.25, 90, 450, 14) + _arc(0.5, 0.73, 0.38, 0.27, -90, 270, 14)],
        [[(0.85, 0.1), (0.5, 0.0), (0.15, 0.2), (0.85, 0.75), (0.5, 1.0), (0.15, 0.75), (0.85, 0.25), (0.85, 0.1)]],
    ],
    9: [
        [_arc(0.5, 0.28, 0.4, 0.28, 0, 360, 14) + [(0.9, 0.28), (0.8, 1.0)]],
        [_arc(0.5, 0.28, 0.4, 0.28, 0, 360, 14) + [(0.9, 0.28), (0.9, 1.0)]],  # straight tail
        [_arc(0.5, 0.28, 0.4, 0.28, 0, 360, 14) + [(0.9, 0.3), (0.85, 0.85), (0.6, 1.0), (0.35, 0.9)]],  # curled
        [_arc(0.45, 0.3, 0.38, 0.3, 10, 360, 14) + [(0.83, 0.35), (0.4, 1.0)]],  # slanted tail
        [_arc(0.5, 0.25, 0.38, 0.25, 0, 360, 14) + [(0.88, 0.25), (0.88, 0.9), (0.75, 1.0), (0.55, 0.97)]],
    ],  # hooked tail (continental)
}


def _catmull_rom(points: np.ndarray, per_segment: int = 6) -> np.ndarray:
    """A smooth curve through the points (a hand's path between the template's points)."""
    if len(points) < 3:
        return points
    p = np.vstack([points[:1], points, points[-1:]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(points[-1:])
    return np.vstack(out)


def stroke_digit(label: int, rng: np.random.Generator, style: int | None = None) -> np.ndarray:
    """A digit drawn with a round pen from one of its style templates (random unless given); grey page,
    1.0 = white."""
    pick = int(rng.integers(len(STYLES[label])))
    strokes = STYLES[label][pick if style is None else style]
    aspect = rng.uniform(0.45, 1.0) if label != 1 else rng.uniform(0.15, 0.7)
    shear, angle = rng.uniform(-0.35, 0.3), rng.uniform(-0.15, 0.15)
    jitter = rng.uniform(0.0, 0.05)
    polyline = rng.random() < 0.35  # a few straight segments with sharp corners
    size = CANVAS
    margin = rng.uniform(0.12, 0.3) * size
    pen = rng.uniform(0.02, 0.17) * (size - 2 * margin)  # hairline to very thick, relative to the digit
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    c, s = math.cos(angle), math.sin(angle)
    for stroke in strokes:
        pts = np.array(stroke, np.float64)
        pts = pts + rng.normal(0.0, jitter, pts.shape)
        if polyline and len(pts) >= 8:  # curves become a few straight segments; corners stay corners
            keep = max(6, len(pts) // int(rng.integers(2, 4)))
            pts = pts[np.unique(np.linspace(0, len(pts) - 1, keep).round().astype(int))]
        elif not polyline:
            pts = _catmull_rom(pts)
        x, y = (pts[:, 0] - 0.5) * aspect, pts[:, 1] - 0.5
        x = x - shear * y
        x, y = c * x - s * y, s * x + c * y
        xy = [
            (float(size / 2 + u * (size - 2 * margin)), float(size / 2 + v * (size - 2 * margin)))
            for u, v in zip(x, y, strict=False)
        ]
        draw.line(xy, fill=0, width=max(1, round(pen)), joint="curve")
        r = pen / 2
        for u, v in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((u - r, v - r, u + r, v + r), fill=0)
    page = np.asarray(img, np.float32) / 255.0
    if rng.random() < 0.5:  # anti-aliased as drawing apps save it
        page = _blur(page, rng.uniform(0.4, 1.2))
    return _paper(page, rng)


# ---------------------------------------------------------------------------------------------------------
# printed digits

TRAINING_FONTS = (
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib  # the fonts ship with matplotlib, a training dependency: the same files everywhere

    return ImageFont.truetype(
        os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", name), size
    )


def printed_digit(label: int, rng: np.random.Generator) -> np.ndarray:
    font = _font(TRAINING_FONTS[int(rng.integers(len(TRAINING_FONTS)))], 48)
    img = Image.new("L", (CANVAS, CANVAS), 255)
    bold = int(rng.choice([0, 0, 1, 2]))
    ImageDraw.Draw(img).text(
        (CANVAS // 2, CANVAS // 2), str(label), fill=0, font=font, anchor="mm", stroke_width=bold, stroke_fill=0
    )
    shear = rng.uniform(-0.3, 0.3)
    img = img.transform(
        img.size,
        Image.Transform.AFFINE,
        (1, shear, -shear * CANVAS / 2, 0, 1, 0),
        Image.Resampling.BILINEAR,
        fillcolor=255,
    )
    return _paper(np.asarray(img, np.float32) / 255.0, rng)


# ---------------------------------------------------------------------------------------------------------
# the training pool


@dataclass(frozen=True)
class PoolSpec:
    """How many of each kind the pool holds; `degraded` are drawn from the MNIST images given."""

    degraded: int = 40_000
    strokes: int = 25_000
    printed: int = 5_000
    seed: int = 0


def _as_mnist(page: np.ndarray) -> np.ndarray:
    return np.round(to_mnist(page) * 255.0).astype(np.uint8)


def _make_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    kind, seed, chunk, sources, source_labels, count = args
    rng = np.random.default_rng([seed, chunk, {"degraded": 0, "strokes": 1, "printed": 2}[kind]])
    images = np.zeros((count, 28, 28), np.uint8)
    labels = np.zeros(count, np.int64)
    for i in range(count):
        label = int(source_labels[i]) if kind == "degraded" else int(rng.integers(10))
        for _ in range(5):  # a degradation that left no ink (the runtime would say "no digit") is drawn again
            if kind == "degraded":
                page = degrade(sources[i], rng)
            else:
                page = (stroke_digit if kind == "strokes" else printed_digit)(label, rng)
            images[i] = _as_mnist(page)
            if images[i].any():
                break
        labels[i] = label
    return images, labels


CHUNK = 1000


def build_pool(
    mnist_images: np.ndarray, mnist_labels: np.ndarray, spec: PoolSpec, workers: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The whole synthetic pool, uint8 [N, 28, 28] + labels, identical for identical inputs and spec
    (each chunk has its own seed; chunks are concatenated in order whatever the worker count)."""
    tasks = []
    for kind, total in (("degraded", spec.degraded), ("strokes", spec.strokes), ("printed", spec.printed)):
        for chunk, start in enumerate(range(0, total, CHUNK)):
            count = min(CHUNK, total - start)
            sources: tuple = (None, None)
            if kind == "degraded":  # each chunk gets only its own source digits (cheap to send to a worker)
                pick = np.random.default_rng([spec.seed, chunk, 9]).integers(len(mnist_images), size=count)
                sources = (mnist_images[pick], mnist_labels[pick])
            tasks.append((kind, spec.seed, chunk, *sources, count))
    return run_chunks(_make_chunk, tasks, workers)


def run_chunks(
    make: Callable[[tuple], tuple[np.ndarray, np.ndarray]], tasks: list[tuple], workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """make(task) for every task, in worker processes, concatenated in task order (so the result does not
    depend on the worker count)."""
    if not tasks:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(min(workers, len(tasks))) as pool:
            parts = list(pool.map(make, tasks))
    else:
        parts = [make(t) for t in tasks]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
