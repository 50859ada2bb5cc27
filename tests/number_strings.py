"""Images of whole numbers with their truth, for edge_infer.number: made from real MNIST *test* digits (never
training ones) or rendered fonts. Used by tests/test_number.py, benchmarks/whole_numbers.py and
examples/make_examples.py.

    number = mnist_number(images, labels, rng, length=5, spacing="touching", background="paper")
    number.image, number.text, number.boxes

Spacing between neighbours: "apart" (a gap of 0.12-0.5 digit heights, now and then more than a digit's
width), "touching" (the next digit slid left until its ink meets its neighbour's) or "overlapping" (slid
8-20 % of its width further); with share < 1, only that share of neighbour pairs touch or overlap and the
others are apart. Each digit has its own height (0.8-1.15 of the line's), the baseline jitters and slopes
(up to about 4.5 degrees). Backgrounds: dark ink on photo-like paper (uneven light, noise, a slight blur,
RGB), on white (L), or drawn on a transparent canvas (RGBA).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SPACINGS = ("apart", "touching", "overlapping")
BACKGROUNDS = ("paper", "white", "transparent")
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


@dataclass
class NumberImage:
    image: Image.Image
    text: str
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # each digit's ink, (l, t, r, b) exclusive
    spacings: list[str] = field(default_factory=list)  # what each neighbour pair got


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    out = np.zeros_like(m)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + m.shape[0], dx : dx + m.shape[1]]
    return out


def mnist_number(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    length: int = 5,
    spacing: str = "apart",
    share: float = 1.0,
    background: str = "white",
    height: float | None = None,
    indices: list[int] | None = None,
) -> NumberImage:
    """A line of `length` MNIST test digits (random ones, or `indices`)."""
    if indices is None:
        indices = rng.integers(0, len(images), length).tolist()
    height = height or float(rng.uniform(24, 64))
    slope = float(rng.uniform(-0.08, 0.08))
    digits = []
    for index in indices:
        ink = images[index].astype(np.float32) / 255
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        scale = height * float(rng.uniform(0.8, 1.15)) / ink.shape[0]
        size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
        digits.append(np.clip(np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BILINEAR)), 0, 1))
    margin = int(2 * height)
    canvas = np.zeros((int(4 * height), sum(d.shape[1] for d in digits) + margin * (length + 2)), np.float32)
    baseline = 2.5 * height
    boxes: list[tuple[int, int, int, int]] = []
    kinds: list[str] = []
    right = margin
    for k, d in enumerate(digits):
        h, w = d.shape
        mode = "apart" if k == 0 or rng.random() >= share else spacing
        if k == 0:
            x = margin
        elif mode == "apart":
            gap = rng.uniform(1.0, 2.0) if rng.random() < 0.1 else rng.uniform(0.12, 0.5)
            x = right + int(round(gap * height))
        else:
            x = right + 1
        y = int(round(baseline + slope * (x - margin) + rng.normal(0, 0.04 * height))) - h
        y = min(max(y, 0), canvas.shape[0] - h)
        if mode != "apart":
            placed = _dilate(canvas > 0.3)
            mine = d > 0.3
            while x > boxes[-1][0] and not (placed[y : y + h, x : x + w] & mine).any():
                x -= 1
            if mode == "overlapping":
                x = max(boxes[-1][0] + 1, x - int(round(rng.uniform(0.08, 0.2) * w)))
        kinds.append(mode)
        np.maximum(canvas[y : y + h, x : x + w], d, out=canvas[y : y + h, x : x + w])
        boxes.append((x, y, x + w, y + h))
        right = max(right, x + w)
    # crop to the ink plus a margin of 0.3-1 digit heights
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    pad = [int(rng.uniform(0.3, 1.0) * height) for _ in range(4)]
    left, top = max(x0 - pad[0], 0), max(y0 - pad[1], 0)
    canvas = canvas[top : min(y1 + pad[3], canvas.shape[0]), left : x1 + pad[2]]
    boxes = [(a - left, b - top, c - left, d - top) for a, b, c, d in boxes]
    text = "".join(str(int(labels[i])) for i in indices)
    return NumberImage(render(canvas, background, rng), text, boxes, kinds[1:])


def render(ink: np.ndarray, background: str, rng: np.random.Generator) -> Image.Image:
    """Ink (1 = full) as dark ink on photo-like paper, on white, or on a transparent canvas."""
    if background == "white":
        return Image.fromarray(np.round(255 * (1 - 0.9 * ink)).astype(np.uint8))
    if background == "transparent":
        rgba = np.zeros(ink.shape + (4,), np.uint8)  # the hidden colour is black, as drawing apps leave it
        rgba[..., :3] = (20, 20, 35)
        rgba[..., 3] = np.round(255 * ink).astype(np.uint8)
        return Image.fromarray(rgba)
    if background != "paper":
        raise ValueError(f"unknown background {background!r}")
    h, w = ink.shape
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = float(rng.uniform(0.05, 0.3))
    paper = 0.92 - gradient * (0.6 * xx / w + 0.4 * yy / h)
    grey = paper * (1 - 0.85 * ink) + rng.normal(0, 0.02, ink.shape)
    image = Image.fromarray(np.clip(grey * 255, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return image.convert("RGB")


def font_paths() -> list[Path]:
    return sorted(FONT_DIR.glob("DejaVu*.ttf"))


def font_number(
    text: str,
    font_path: Path,
    rng: np.random.Generator,
    size: int = 64,
    background: str = "white",
    tracking: tuple[float, float] = (0.0, 0.25),
) -> NumberImage:
    """A printed number: each character drawn at its advance plus tracking (a share of the font size)."""
    font = ImageFont.truetype(str(font_path), size)
    layer = Image.new("L", (int(size * (len(text) + 2) * 1.4), size * 3), 0)
    pen = ImageDraw.Draw(layer)
    x, y = size / 2, size
    boxes = []
    for ch in text:
        pen.text((x, y), ch, fill=255, font=font, anchor="ls")
        box = pen.textbbox((x, y), ch, font=font, anchor="ls")
        boxes.append(tuple(int(v) for v in box))
        x += font.getlength(ch) + rng.uniform(*tracking) * size
    ink = np.asarray(layer, np.float32) / 255
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    pad = size // 3
    top, left = max(rows[0] - pad, 0), max(cols[0] - pad, 0)
    ink = ink[top : rows[-1] + pad, left : cols[-1] + pad]
    boxes = [(a - left, b - top, c - left, d - top) for a, b, c, d in boxes]
    return NumberImage(render(ink, background, rng), text, boxes, ["apart"] * (len(text) - 1))


def digits_matched(truth: str, read: str) -> int:
    """How many of the true digits were read, in order: the longest common subsequence."""
    row = [0] * (len(read) + 1)
    for a in truth:
        previous = 0
        for j, b in enumerate(read, 1):
            previous, row[j] = row[j], previous + 1 if a == b else max(row[j], row[j - 1])
    return row[-1]


FORM_STYLES = ("boxes", "comb", "underline", "ruled")
LINE_COLOURS = (  # black, grey, and the light red, blue and green of forms' dropout inks
    (0, 0, 0),
    (90, 90, 90),
    (235, 120, 120),
    (120, 160, 235),
    (110, 190, 120),
)


def _mnist_ink(images: np.ndarray, index: int, height: float) -> np.ndarray:
    ink = images[index].astype(np.float32) / 255
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = height / ink.shape[0]
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    return np.clip(np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BILINEAR)), 0, 1)


def form_number(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    length: int = 5,
    style: str = "boxes",
    crossing: float = 0.3,
    line_width: int | None = None,
    colour: tuple[int, int, int] | None = None,
) -> NumberImage:
    """MNIST test digits written on a form: one per box of a row of boxes ("boxes"), per cell of a comb
    field (a base line with ticks between cells, "comb"), on an underline, or on ruled paper ("ruled":
    lines above and below too). Lines 1-4 px wide in black, grey or a dropout colour; with probability
    `crossing` a digit runs over a line (below the base line, or into the next box's separator)."""
    if style not in FORM_STYLES:
        raise ValueError(f"unknown style {style!r}")
    indices = rng.integers(0, len(images), length).tolist()
    cell = float(rng.uniform(34, 70))  # a box's width
    box_h = cell * float(rng.uniform(1.1, 1.35))
    width = line_width or int(rng.integers(1, 5))
    colour = colour or LINE_COLOURS[int(rng.integers(len(LINE_COLOURS)))]
    margin = int(cell)
    canvas_w = int(margin * 2 + cell * length + (0 if style in ("boxes", "comb") else cell * 0.5 * length))
    canvas_h = int(box_h * 3.4)  # (ruled paper: a line a box below the base line, inside the page)
    top, base = int(box_h), int(2 * box_h)  # the field's top and base line
    ink = np.zeros((canvas_h, canvas_w), np.float32)
    lines = np.zeros_like(ink)
    boxes = []
    pitch = cell if style in ("boxes", "comb") else cell * 1.5
    for k, index in enumerate(indices):
        d = _mnist_ink(images, index, box_h * float(rng.uniform(0.55, 0.8)))
        h, w = d.shape
        x = int(margin + k * pitch + (pitch - w) / 2 + rng.normal(0, 0.06 * cell))
        y = int(base - h - rng.uniform(0.05, 0.2) * box_h)
        if rng.random() < crossing:  # over the base line, or into the box to the right
            if style != "boxes" or rng.random() < 0.5:
                y = base - h + int(rng.uniform(0.1, 0.25) * h)
            else:
                x += int(rng.uniform(0.15, 0.3) * w)
        x = min(max(x, 0), canvas_w - w)
        y = min(max(y, 0), canvas_h - h)
        np.maximum(ink[y : y + h, x : x + w], d, out=ink[y : y + h, x : x + w])
        boxes.append((x, y, x + w, y + h))
    half = width // 2
    left, right = margin - 2, int(margin + pitch * length + 2)
    rows = [base]
    if style == "boxes":
        rows.append(top)
    if style == "ruled":
        rows += [base - int(box_h), base + int(box_h)]
        left, right = 0, canvas_w
    for y in rows:
        lines[y - half : y - half + width, left:right] = 1
    if style in ("boxes", "comb"):
        tick = top if style == "boxes" else base - int(box_h * float(rng.uniform(0.25, 0.45)))
        for k in range(length + 1):
            x = int(round(margin + k * cell))
            lines[tick : base + width - half, x - half : x - half + width] = 1
    # paper, then the printed lines in their colour, then the pen (dark blue-black) over both
    paper = np.ones((canvas_h, canvas_w, 3), np.float32) * 0.96
    tint = np.array(colour, np.float32) / 255
    paper = paper * (1 - lines[..., None]) + tint * lines[..., None]
    pen = np.array([0.08, 0.08, 0.2], np.float32)
    rgb = paper * (1 - 0.95 * ink[..., None]) + pen * 0.95 * ink[..., None]
    rgb += rng.normal(0, 0.01, rgb.shape)
    image = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    text = "".join(str(int(labels[i])) for i in indices)
    return NumberImage(image, text, boxes, ["apart"] * (length - 1))


def photograph(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An image as a phone would give it: tilted up to 3 degrees, enlarged 2-3x (the digits fill a fifth
    of a big frame, so load_image shrinks it back), a warm cast and JPEG at quality 60-85."""
    a = np.asarray(image.convert("RGB"))
    # more paper around it first (its edge continued), so that the tilt uncovers no blank corners
    pad = int(np.ceil(np.sin(np.radians(3)) * max(a.shape))) + 2
    padded = Image.fromarray(np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    tilted = padded.rotate(float(rng.uniform(-3, 3)), Image.Resampling.BICUBIC)
    tilted = tilted.crop((pad // 2, pad // 2, tilted.width - pad // 2, tilted.height - pad // 2))
    factor = float(rng.uniform(2, 3))
    big = tilted.resize((int(tilted.width * factor), int(tilted.height * factor)), Image.Resampling.BICUBIC)
    cast = np.asarray(big, np.float32) * np.array([1.0, 0.97, 0.9], np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(cast, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(60, 86)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def unipen_digits(path: Path, held_out: bool = True, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """UNIPEN 1a digits drawn as images (uint8 [N, size, size], ink bright, as MNIST) and their labels,
    from the writers held out here (writer % 6 == 5: about a sixth, never a digit of the others), or
    the others. Each digit's pen strokes are fitted into 80 % of the frame at a 3-5 % pen width."""
    data = np.load(path)
    points, strokes, samples = data["points"], data["stroke_offsets"], data["sample_offsets"]
    keep = np.flatnonzero((data["writer"] % 6 == 5) == held_out)
    out = np.zeros((len(keep), size, size), np.uint8)
    for row, i in enumerate(keep):
        xy = points[strokes[samples[i]] : strokes[samples[i + 1]]]
        low, high = xy.min(0), xy.max(0)
        scale = 0.8 * size / max(float((high - low).max()), 1e-6)
        layer = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(layer)
        width = max(1, round(size * (0.03 + 0.02 * (i % 3) / 2)))
        offset = (size - (high - low) * scale) / 2
        for j in range(samples[i], samples[i + 1]):
            stroke = points[strokes[j] : strokes[j + 1]]
            xs = (stroke[:, 0] - low[0]) * scale + offset[0]
            ys = size - ((stroke[:, 1] - low[1]) * scale + offset[1])  # y up in the tablet's units
            line = list(zip(xs.tolist(), ys.tolist(), strict=True))
            if len(line) == 1:
                pen.ellipse([xs[0] - width / 2, ys[0] - width / 2, xs[0] + width / 2, ys[0] + width / 2], fill=255)
            else:
                pen.line(line, fill=255, width=width, joint="curve")
        out[row] = np.asarray(layer)
    return out, data["labels"][keep]
