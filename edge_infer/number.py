"""Read a whole number: segment one line of handwritten or printed digits into single digits.

    plan = plan_number(image)                 # segmentation candidates, each already in MNIST form
    predictions = classifier.classify(plan.digits)
    reading = decide(plan, predictions)      # NumberReading("40713", ...)

Classifier.read_number / read_numbers run these three steps, with the candidates of many images in one
session.run (CLASSIFY_BATCH at a time, so memory stays bounded). The single-digit preprocessing
(edge_infer.preprocess) is reused: the image is loaded, made grey and turned into an ink map (polarity,
background removal) once, then each digit's own crop of that ink map goes through ink_to_mnist, so every
digit is fitted into 20x20 at its own size.

Segmentation, on the ink map at load_image's working size (<= 512 px):
  0. printed lines (ruling, underlines, a form's box rows, separators and comb ticks) are removed, keeping
     ink that crosses them; on a photographed form they are found at the tilt where the ink lines up;
  1. connected components of the ink (8-connected, pure numpy + a small union-find), specks dropped (at
     most MAX_MARKS of them, else the image is refused);
  2. components whose columns overlap (a 5's detached bar, the pieces of a broken stroke) form one blob
     (a left-to-right sweep); low fragments join a neighbour or are left out; on a form, one blob per box;
  3. a blob too wide for one digit (touching or overlapping digits) gets candidate cuts: the thinnest
     top-to-bottom path near each minimum of its column projection, and for a blob as wide as two digits
     also near fixed shares of its width (the "two digits" hypothesis);
  4. every run of consecutive pieces between two cuts is a candidate digit (at most MAX_CANDIDATES per
     image); the classifier reads them all, and per blob the split whose digits it reads best (sum of log
     confidences, less a cost for cutting through ink and for too-wide digits) wins, or, when the digit
     count is known (digits=N, or a form's filled boxes), the splits of all blobs that give N. Blobs are
     read left to right; the string's confidence includes how sure each blob's digit count was.
Only numpy, Pillow and the standard library are used.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from PIL import Image

from edge_infer.classifier import Prediction
from edge_infer.preprocess import (
    WORK_SIZE,
    ImageError,
    ImageInput,
    _box_sum3,
    ink_map,
    ink_to_mnist,
    load_image,
    to_grey,
)

__all__ = [
    "DigitPrediction",
    "NumberReading",
    "NumberPlan",
    "all_digits",
    "count_digits",
    "decide",
    "decide_all",
    "plan_number",
]

SEG_INK = 0.1  # ink-map level that makes a pixel part of a stroke for labelling (faint rims join later)
SPECK_AREA = 0.04  # components smaller than this fraction of the largest one are specks...
SPECK_SIZE = 0.2  # ... and so are those whose longest side is below this fraction of the tallest one
FRAGMENT = 0.5  # a blob lower than this x the typical one is a fragment or a stray mark...
SLIVER = 0.75  # and so is a thin one (width < 0.35 x its height) lower than this x the typical one (not a 1)
FRAGMENT_GAP = 0.3  # ... joined to a neighbour this x the typical height away at most, else left out
MERGE_OVERLAP = 0.5  # components sharing this fraction of the narrower one's columns are one digit
SPLIT_ASPECT = 0.75  # blobs wider than this x their height may hold several digits
MIN_PART = 0.12  # a piece between two cuts is at least this x the blob height wide (a narrow 1)
MAX_CUTS = 7  # candidate cuts per blob, at most...
CUTS_PER_HEIGHT = 3.0  # ... this many per blob height of its width
CUT_DEPTH = 0.7  # a cut is tried only where the column projection is below this x its maximum
PATH_ROWS = 40  # cut paths are searched at a resolution of at most this many rows per blob
PAIR_ASPECT = (0.9, 2.0)  # a blob this wide for its height may be two touching digits...
PAIR_CUTS = (0.35, 0.42, 0.5, 0.58, 0.65)  # ... cut at these shares of its width, besides the minima's cuts
PAIR_WIDER = 1.3  # ... and, in a line of 3 or more blobs, at least this x as wide as the typical one
MAX_SPAN = 4  # a candidate digit spans at most this many pieces
WIDE_ASPECT = 0.75  # a candidate digit wider than this x its height is likely two digits...
WIDE_COST = 4.0  # ... and costs this much log-score per unit of aspect beyond it
CUT_COST = 1.5  # log-score cost of a cut per stroke width of ink it crosses
SPLIT_COST = 0.0  # and of any cut at all (a confident single digit stays whole)
LINE_SHARE = 0.5  # a printed line (ruling, underline, a box row) spans this share of the ink's width...
LINE_OVER_INK = 1.5  # ... and this many times the height of the rest of the ink
LINE_THICK = 0.2  # ... and is at most this x that height thick
TICK_LENGTH = 0.2  # box separators / comb ticks: vertical strokes from a line at least this x that height...
TICK_SPREAD = 0.1  # ... alike in length (within this share, being printed) and evenly spaced
FILLED_BOX = 0.2  # a form's box holds a digit when it has this share of a typical box's ink
MAX_TILT = 4.0  # printed lines are looked for up to this many degrees off level (a photographed form)...
TILT_GAIN = 1.15  # ... when the ink's rows line up this much better there
MAX_TICKS = 64  # more evenly spaced vertical strokes than this are not a form's boxes
SEG_SHARPNESS = 3.0  # a blob's count certainty: softmax of this x the best score of each digit count
DROP_COST = 6.0  # with a known digit count: log-score cost of reading a blob as no digit (a stray mark)
WIDE_IMAGE = 1.25  # the single-digit CLI counts the digits of images at least this much wider than high...
DIGIT_ASPECT = 0.8  # ... taking a blob as about its width / (this x its height) digits
# Limits (README: Security and limits): an image past one is an ImageError for that image alone, so that a
# dot grid or salt noise costs milliseconds rather than minutes and a page of "combs" no memory spike.
MAX_MARKS = 300  # separate marks (components, specks excluded) per image: no line of digits has this many
MAX_CANDIDATES = 400  # candidate digits per image (a blob gives at most ~27; 15 wide blobs of touching digits)
CLASSIFY_BATCH = 1024  # read_numbers classifies (and frees) the candidates of this many digits at a time


@dataclass(frozen=True)
class DigitPrediction(Prediction):
    """A Prediction of one digit of a number, with where it is: box = (left, top, right, bottom) in the
    input image's pixels after EXIF orientation, right and bottom exclusive (PIL's crop box)."""

    box: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class NumberReading:
    text: str  # the digits left to right, e.g. "40713" ("?" for a digit below min_confidence); "" when no ink
    confidence: float  # the digits' confidences and the segmentation's certainty, multiplied (0.0: no digits)
    digits: tuple[DigitPrediction, ...] = ()
    inputs: np.ndarray = field(  # float32 [len(digits), 28, 28]: what the model saw of each digit
        default_factory=lambda: np.zeros((0, 28, 28), np.float32), compare=False, repr=False
    )


@dataclass
class NumberPlan:
    """The segmentation of one image, before classification.

    digits: float32 [M, 28, 28], every candidate digit in MNIST form; boxes: their boxes (source pixels);
    blobs: per blob, left to right, the number of pieces and the candidate index of each piece span
    (start, end) -> (candidate, extra log-score of that span and of the cut at its left end)."""

    digits: np.ndarray
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    blobs: list[tuple[int, dict[tuple[int, int], tuple[int, float]]]] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)  # per candidate: its width / its height
    pairs: list[list[tuple[int, int, float]]] = field(default_factory=list)  # per blob: two-digit readings
    # (left candidate, right candidate, extra log-score) cut at fixed shares of its width (_pair_splits)
    filled_boxes: int | None = None  # on a form: how many of its boxes hold ink (the digit count, unless given)


def plan_number(image: ImageInput) -> NumberPlan:
    """Load an image of one line of digits and list its candidate digits. Raises ImageError on bad input."""
    img = load_image(image)
    scale = scale_to_source(image, img)
    grey = to_grey(img)
    ink = ink_map(grey)
    plan = NumberPlan(np.zeros((0, 28, 28), np.float32))
    if ink is None:
        return plan
    strong = ink >= SEG_INK
    ruling = _ruling_at_any_tilt(strong)
    fields: list[tuple[int, int]] = []
    if ruling is not None:
        removed, fields = ruling
        strong &= ~removed
        ink = np.where((_box_sum3(removed) > 0) & ~strong, 0.0, ink)  # the lines' anti-aliased rims too
    labels, boxes = _components(strong)
    keep = _not_specks(boxes)
    if not keep:
        return plan
    if len(keep) > MAX_MARKS:
        raise ImageError(
            f"too many separate marks for one line of digits ({len(keep):,}; the limit is {MAX_MARKS}): is it a number?"
        )
    digits: list[np.ndarray] = []
    kept = [boxes[i] for i in keep]
    groups = _with_fragments_joined(_blobs(kept), kept)
    if fields:
        groups, outside = _in_fields(kept, fields)
        mass = np.array([strong[:, a:b].sum() for a, b in fields], float)
        filled = int((mass >= FILLED_BOX * np.median(mass[mass > 0] if mass.any() else mass)).sum())
        plan.filled_boxes = filled + outside
    widths = [max(kept[i][2] for i in g) - min(kept[i][0] for i in g) for g in groups]
    typical_width = float(np.median(widths)) if len(groups) >= 3 else 0.0
    for group, blob_width in zip(groups, widths, strict=True):
        ids = [keep[i] + 1 for i in group]
        x0 = min(boxes[i - 1][0] for i in ids)
        y0 = min(boxes[i - 1][1] for i in ids)
        x1 = max(boxes[i - 1][2] for i in ids)
        y1 = max(boxes[i - 1][3] for i in ids)
        # this blob's ink and its anti-aliased rim (2 px), without other blobs' strokes inside its box
        x0, y0 = max(x0 - 2, 0), max(y0 - 2, 0)
        x1, y1 = min(x1 + 2, ink.shape[1]), min(y1 + 2, ink.shape[0])
        window = labels[y0:y1, x0:x1]
        own = np.isin(window, ids)
        member = (_box_sum3(_box_sum3(own) > 0) > 0) & ~((window > 0) & ~own)
        blob_ink = np.where(member, ink[y0:y1, x0:x1], 0.0).astype(np.float32)
        spans = _split_candidates(blob_ink, own)
        pairs = _pair_splits(blob_ink, own) if blob_width >= PAIR_WIDER * typical_width else []
        if len(digits) + len(spans) + 2 * len(pairs) > MAX_CANDIDATES:
            raise ImageError(
                f"too many candidate digits for one line of digits (over {MAX_CANDIDATES}): is it a number?"
            )

        def candidate(part: np.ndarray, x0: int = x0, y0: int = y0) -> int | None:
            """Add one candidate digit (its ink in the blob's window); its index, None when it holds no ink."""
            rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
            if rows.size == 0:
                return None
            top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            plan.aspects.append((right - left) / (bottom - top))
            digits.append(ink_to_mnist(part[top:bottom, left:right]))
            plan.boxes.append(_source_box((x0 + left, y0 + top, x0 + right, y0 + bottom), scale, grey.shape))
            return len(digits) - 1

        table: dict[tuple[int, int], tuple[int, float]] = {}
        for (start, end), (part, extra) in spans.items():
            index = candidate(part)
            if index is not None:
                table[(start, end)] = (index, extra)
        two: list[tuple[int, int, float]] = []
        for left_part, right_part, extra in pairs:
            i, j = candidate(left_part), candidate(right_part)
            if i is not None and j is not None:
                two.append((i, j, extra))
        if table:
            plan.blobs.append((max(end for _, end in table), table))
            plan.pairs.append(two)
    if digits:
        plan.digits = np.stack(digits)
    return plan


def count_digits(image: ImageInput) -> int:
    """About how many digits an image holds, without the classifier (for the single-digit path's hint):
    on a form its filled boxes, else per blob its width in digits (DIGIT_ASPECT x its height), at least 1.
    0 for an image without ink or past a limit. Raises ImageError on bad input."""
    try:
        plan = plan_number(image)
    except ImageError as error:
        if "too many" in str(error):
            return 0
        raise
    if plan.filled_boxes:
        return plan.filled_boxes
    whole = [table.get((0, pieces)) for pieces, table in plan.blobs]
    return sum(max(1, int(plan.aspects[entry[0]] / DIGIT_ASPECT + 0.5)) for entry in whole if entry is not None)


def decide(plan: NumberPlan, predictions: list[Prediction], digits: int | None = None) -> NumberReading:
    """Pick, per blob, the split whose candidate digits the classifier reads best; return the reading.

    digits: the number's known length (default: on a form, the number of boxes holding ink); then the
    splits are chosen together so that the blobs give that many digits (a blob may give none, at
    DROP_COST: a stray mark), when some choice does. The reading's confidence is the product of the
    digits' confidences and, per blob, of how sure the segmentation is of its digit count (a softmax of
    SEG_SHARPNESS x the best score for each count)."""
    gains = [
        math.log(max(p.confidence, 1e-9)) - WIDE_COST * max(0.0, aspect - WIDE_ASPECT)
        for p, aspect in zip(predictions, plan.aspects, strict=True)
    ]
    per_blob = [_best_splits(table, pieces, gains) for pieces, table in plan.blobs]
    for options, two in zip(per_blob, plan.pairs, strict=True):
        for i, j, extra in two:  # the "two digits" hypothesis, scored by the model like any split
            score = gains[i] + gains[j] + extra
            if score > options.get(2, (-math.inf, []))[0]:
                options[2] = (score, [i, j])
    counts = [max(options, key=lambda k: options[k][0]) if options else 0 for options in per_blob]
    digits = digits or plan.filled_boxes
    if digits:
        counts = _counts_for(per_blob, digits) or counts
    chosen: list[DigitPrediction] = []
    inputs: list[np.ndarray] = []
    certainty = 1.0
    for options, count in zip(per_blob, counts, strict=True):
        if count == 0:
            continue
        scores = np.array([score for score, _ in options.values()])
        certainty *= float(1.0 / np.exp(SEG_SHARPNESS * (scores - options[count][0])).sum())
        for index in options[count][1]:
            p = predictions[index]
            if p.digit_found:
                chosen.append(DigitPrediction(p.label, p.confidence, p.probabilities, p.guess, box=plan.boxes[index]))
                inputs.append(plan.digits[index])
    text = "".join(str(d.label) if d.label >= 0 else "?" for d in chosen)  # "?": below min_confidence
    confidence = math.prod(d.confidence for d in chosen) * certainty if chosen else 0.0
    return NumberReading(
        text, float(confidence), tuple(chosen), np.stack(inputs) if inputs else np.zeros((0, 28, 28), np.float32)
    )


def _best_splits(
    table: dict[tuple[int, int], tuple[int, float]], pieces: int, gains: list[float]
) -> dict[int, tuple[float, list[int]]]:
    """For each digit count k a blob can be read as: the best score (sum of the candidates' gains, their
    log confidences less a cost for width, plus the spans' extra scores) and its candidates, left to right."""
    # best[j][k]: the best score of reading pieces [0, j) as k digits; back[j][k]: where its last one starts
    best = [[-math.inf] * (pieces + 1) for _ in range(pieces + 1)]
    back = [[0] * (pieces + 1) for _ in range(pieces + 1)]
    best[0][0] = 0.0
    for end in range(1, pieces + 1):
        for start in range(end):
            entry = table.get((start, end))  # (only spans of <= MAX_SPAN pieces, and the whole blob)
            if entry is None:
                continue
            index, extra = entry
            gain = gains[index] + extra
            for k in range(end):
                if best[start][k] > -math.inf and best[start][k] + gain > best[end][k + 1]:
                    best[end][k + 1], back[end][k + 1] = best[start][k] + gain, start
    options: dict[int, tuple[float, list[int]]] = {}
    for k in range(1, pieces + 1):
        if best[pieces][k] == -math.inf:
            continue
        spans, end, left = [], pieces, k
        while end > 0:
            spans.append((back[end][left], end))
            end, left = back[end][left], left - 1
        options[k] = (best[pieces][k], [table[span][0] for span in reversed(spans)])
    return options


def _counts_for(per_blob: list[dict[int, tuple[float, list[int]]]], digits: int) -> list[int] | None:
    """Per blob the digit count (0: dropped) that together give `digits` digits with the best total
    score, or None when no choice gives that many."""
    # total[n]: (best score of the blobs so far giving n digits, their counts)
    total: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for options in per_blob:
        step: dict[int, tuple[float, list[int]]] = {}
        for n, (score, counts) in total.items():
            for k, (gain, _) in [(0, (-DROP_COST, []))] + list(options.items()):
                if n + k <= digits and (n + k not in step or score + gain > step[n + k][0]):
                    step[n + k] = (score + gain, counts + [k])
        total = step
    return total[digits][1] if digits in total else None


def all_digits(plans: list[NumberPlan]) -> np.ndarray:
    """The candidate digits of all the plans, in order, for one session.run: float32 [M, 28, 28]."""
    return np.concatenate([plan.digits for plan in plans]) if plans else np.zeros((0, 28, 28), np.float32)


def decide_all(
    plans: list[NumberPlan], predictions: list[Prediction], digits: int | None = None
) -> list[NumberReading]:
    """decide() for each plan, given the predictions of all_digits(plans), in the same order."""
    offsets = np.cumsum([0] + [len(plan.digits) for plan in plans]).tolist()
    return [decide(plan, predictions[offsets[i] : offsets[i + 1]], digits) for i, plan in enumerate(plans)]


# -----------------------------------------------------------------------------
# coordinates


def scale_to_source(image: ImageInput, img: Image.Image) -> tuple[float, float]:
    """(x, y) factors from load_image's working pixels to the input's pixels after EXIF orientation.

    load_image only shrinks images whose longest side exceeds WORK_SIZE (to exactly WORK_SIZE), so
    anything smaller is at its own size; for the others the input's header says how big it was."""
    if max(img.size) < WORK_SIZE:
        return 1.0, 1.0
    try:
        if isinstance(image, np.ndarray):
            size = (image.shape[1], image.shape[0])
        else:
            if isinstance(image, Image.Image):
                source = image
            elif isinstance(image, (bytes, bytearray, memoryview)):
                source = Image.open(io.BytesIO(bytes(image)))
            else:
                source = Image.open(os.fspath(image))  # the header only: load_image has decoded it already
            size = source.size
            # EXIF orientations 5-8 swap the axes (PNG, GIF and BMP: only read when in the header, since
            # Pillow's getexif would decode the whole image to look further)
            if (source.format not in ("PNG", "GIF", "BMP") or "exif" in source.info) and source.getexif().get(
                0x0112
            ) in (5, 6, 7, 8):
                size = size[::-1]
    except (OSError, ValueError, SyntaxError):
        return 1.0, 1.0
    return size[0] / img.width, size[1] / img.height


def _source_box(
    box: tuple[int, int, int, int], scale: tuple[float, float], shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    sx, sy = scale
    h, w = shape
    return (
        int(math.floor(box[0] * sx)),
        int(math.floor(box[1] * sy)),
        int(math.ceil(min(box[2], w) * sx)),
        int(math.ceil(min(box[3], h) * sy)),
    )


# -----------------------------------------------------------------------------
# components


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """8-connected components of a boolean image: labels (0 = background, k = the k-th component) and
    each component's box (x0, y0, x1, y1), ends exclusive.

    Runs of set pixels along each row are the nodes; runs touching in consecutive rows (diagonals
    included) are joined with a union-find. Vectorised except the union-find over the (few) run pairs."""
    h, w = mask.shape
    run = _row_runs(mask)
    n = int(run.max()) if run.size else 0
    if n == 0:
        return np.zeros_like(run), []
    pairs = []
    for a, b in ((run[:-1], run[1:]), (run[:-1, :-1], run[1:, 1:]), (run[:-1, 1:], run[1:, :-1])):
        both = (a > 0) & (b > 0)
        pairs.append(a[both].astype(np.int64) * (n + 1) + b[both])
    edges = np.unique(np.concatenate(pairs))
    parent = list(range(n + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip((edges // (n + 1)).tolist(), (edges % (n + 1)).tolist(), strict=False):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n + 1)])
    _, compact = np.unique(roots, return_inverse=True)  # root 0 (background) stays 0
    labels = compact.astype(np.int32)[run]
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs] - 1
    count = int(compact.max())
    x0 = np.full(count, w)
    y0 = np.full(count, h)
    x1 = np.zeros(count, int)
    y1 = np.zeros(count, int)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs + 1)
    np.maximum.at(y1, ids, ys + 1)
    return labels, list(zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), strict=False))


def _not_specks(boxes: list[tuple[int, int, int, int]]) -> list[int]:
    """Indices of the components that are not specks (by box area and size, relative to the biggest)."""
    if not boxes:
        return []
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]
    tallest = max(y1 - y0 for _, y0, _, y1 in boxes)
    biggest = max(areas)
    return [
        i
        for i, (x0, y0, x1, y1) in enumerate(boxes)
        if areas[i] >= SPECK_AREA * biggest and max(x1 - x0, y1 - y0) >= SPECK_SIZE * tallest
    ]


def _blobs(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Group components into blobs, left to right: those whose columns overlap by at least MERGE_OVERLAP of
    the narrower one's width (transitively) are one.

    A sweep from left to right: each component is compared only with the earlier ones still reaching past
    its left edge, and joined with a union-find, so the work is O(n log n + overlapping pairs), which
    MAX_MARKS bounds."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0], boxes[i][2]))
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    active: list[int] = []  # components whose right edge lies beyond the current left edge
    for i in order:
        x0, _, x1, _ = boxes[i]
        active = [j for j in active if boxes[j][2] > x0]
        for j in active:
            b0, b1 = boxes[j][0], boxes[j][2]
            if min(x1, b1) - max(x0, b0) >= MERGE_OVERLAP * min(x1 - x0, b1 - b0):
                ri, rj = root(i), root(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
        active.append(i)
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: min(boxes[i][0] for i in g))


def _with_fragments_joined(groups: list[list[int]], boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """A blob less than FRAGMENT x the typical blob height high (or a SLIVER) is a piece of a digit that broke apart
    (a loop's end, the top of a 5) or a stray mark: it joins the nearer neighbour within FRAGMENT_GAP x
    that height, or is left out (a full stop, a dot of dust), rather than read as a digit of its own."""
    if len(groups) < 2:
        return groups
    spans = [
        (
            min(boxes[i][0] for i in g),
            min(boxes[i][1] for i in g),
            max(boxes[i][2] for i in g),
            max(boxes[i][3] for i in g),
        )
        for g in groups
    ]
    typical = float(np.median([y1 - y0 for _, y0, _, y1 in spans]))
    full = [
        k
        for k, (x0, y0, x1, y1) in enumerate(spans)
        if y1 - y0 >= FRAGMENT * typical and not (y1 - y0 < SLIVER * typical and x1 - x0 < 0.35 * (y1 - y0))
    ]
    if not full:
        return groups
    joined = {k: list(groups[k]) for k in full}
    for k, (x0, _, x1, _) in enumerate(spans):
        if k in joined:
            continue
        gap, nearest = min((max(spans[j][0] - x1, x0 - spans[j][2], 0), j) for j in full)
        if gap <= FRAGMENT_GAP * typical:
            joined[nearest] += groups[k]
    return [joined[k] for k in full]


def _in_fields(boxes: list[tuple[int, int, int, int]], fields: list[tuple[int, int]]) -> tuple[list[list[int]], int]:
    """Group components by the form box (x0, x1) their middle lies in: one blob per box, read box by box;
    components outside every box are grouped as usual (_blobs). Returns the groups and how many of them
    lie outside the boxes."""
    inside: dict[int, list[int]] = {}
    outside: list[int] = []
    for i, (x0, _, x1, _) in enumerate(boxes):
        middle = (x0 + x1) / 2
        slot = next((k for k, (a, b) in enumerate(fields) if a <= middle < b), None)
        if slot is None:
            outside.append(i)
        else:
            inside.setdefault(slot, []).append(i)
    others = [[outside[i] for i in g] for g in _blobs([boxes[i] for i in outside])]
    return sorted(list(inside.values()) + others, key=lambda g: min(boxes[i][0] for i in g)), len(others)


# -----------------------------------------------------------------------------
# printed lines: ruling, underlines, form boxes and comb fields


def _row_runs(mask: np.ndarray) -> np.ndarray:
    """Each set pixel's run along its row, numbered from 1 in reading order (0: not set)."""
    h, w = mask.shape
    starts = mask.copy()
    starts[:, 1:] &= ~mask[:, :-1]
    return cast(np.ndarray, (np.cumsum(starts.ravel(), dtype=np.int32).reshape(h, w) * mask).astype(np.int32))


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Each set pixel's run length along its row (0 where not set)."""
    runs = _row_runs(mask)
    lengths = np.bincount(runs.ravel())
    lengths[0] = 0
    return cast(np.ndarray, lengths[runs])


def _bands(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _ruling(strong: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """Printed lines in the stroke mask: (the pixels to remove, the form boxes as column ranges (x0, x1)
    left to right, empty when the lines form no boxes), or None when there are no lines.

    A line is a long thin horizontal run (LINE_SHARE of the ink's width, LINE_OVER_INK x the rest's
    height; a 1-px step of a slightly tilted line is bridged). Where lines exist, vertical strokes standing
    on them, alike in length and evenly spaced, are box separators or a comb's ticks. Line pixels where
    ink continues on both sides (a digit crossing the line) stay."""
    cols = np.flatnonzero(strong.any(0))
    if cols.size == 0:
        return None
    h, w = strong.shape
    near = strong.copy()
    near[1:] |= strong[:-1]
    near[:-1] |= strong[1:]
    long = (_run_lengths(near) >= max(8.0, LINE_SHARE * (cols[-1] + 1 - cols[0]))) & strong
    rest_rows = np.flatnonzero((strong & ~long).any(1))
    if rest_rows.size == 0 or not long.any():
        return None
    rest_height = rest_rows[-1] + 1 - rest_rows[0]
    lines = np.zeros_like(strong)
    thickness = 1
    for r0, r1 in _bands(long.sum(1) >= 8):
        span = np.flatnonzero(long[r0:r1].any(0))
        length = span[-1] + 1 - span[0]
        if r1 - r0 <= max(2.0, LINE_THICK * rest_height) and length >= LINE_OVER_INK * rest_height:
            lines[r0:r1] |= long[r0:r1]
            # and its rim: the faint edge rows of a blurred line break into specks that would join up
            a, b = max(r0 - 1, 0), min(r1 + 1, lines.shape[0])
            lines[a:b, span[0] : span[-1] + 1] |= strong[a:b, span[0] : span[-1] + 1]
            thickness = max(thickness, r1 - r0)
    if not lines.any():
        return None
    ticks, fields = _ticks(strong, lines, rest_height, thickness)
    removed = (lines & ~_crossing(strong, lines | ticks, lines)) | (
        ticks & ~_crossing(strong.T, (lines | ticks).T, ticks.T).T
    )
    return removed, fields


def _evenly_spaced(middles: list[float], least_gap: float) -> tuple[float, float] | None:
    """The lattice (first position, gap) that at least 3 of the positions (sorted) lie on, within a tenth
    of the gap, one after the other with at most one missing between two (a tick hidden in a digit);
    positions off it (a digit's stroke standing on the line) are skipped. The lattice with the most."""
    best: tuple[int, float, float] = (2, 0.0, 0.0)
    for i, first in enumerate(middles):
        if len(middles) - i <= best[0]:
            break
        for j in range(i + 1, len(middles)):
            gap = middles[j] - first
            if gap < least_gap:
                continue
            hits, expected, missing, last = 1, first + gap, 0, first
            for k in range(j, len(middles)):
                while middles[k] > expected + 0.1 * gap and missing < 1:
                    expected, missing = expected + gap, missing + 1
                if abs(middles[k] - expected) <= 0.1 * gap:
                    hits, expected, missing, last = hits + 1, middles[k] + gap, 0, middles[k]
                elif middles[k] > expected + 0.1 * gap:
                    break
            if hits > best[0]:
                best = (hits, first, (last - first) / round((last - first) / gap))
    return (best[1], best[2]) if best[0] >= 3 else None


def _ruling_at_any_tilt(strong: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """_ruling on a photographed form: when the ink's rows line up best at a tilt (up to MAX_TILT degrees,
    the peak of the row projection at least TILT_GAIN x the untilted one), on the mask straightened by
    two shears (each a bijection, so no pixel is lost or doubled), mapped back."""
    ys, xs = np.nonzero(strong)
    if ys.size == 0:
        return None
    peaks = {}
    for degrees in np.arange(-MAX_TILT, MAX_TILT + 0.01, 0.5):
        shifted = ys - np.round(xs * math.tan(math.radians(degrees))).astype(np.int64)
        peaks[float(degrees)] = int(np.bincount(shifted - shifted.min()).max())
    tilt = max(peaks, key=lambda d: (peaks[d], -abs(d)))
    if tilt == 0.0 or peaks[tilt] < TILT_GAIN * peaks[0.0]:
        return _ruling(strong)
    t = math.tan(math.radians(tilt))
    yy, xx = np.indices(strong.shape)
    x1 = xx + np.round(yy * t).astype(np.int64)  # verticals upright (row by row: a bijection)...
    x1 -= x1.min()
    y2 = yy - np.round(x1 * t).astype(np.int64)  # ... then rows level (column by column)
    y2 -= y2.min()
    straight = np.zeros((int(y2.max()) + 1, int(x1.max()) + 1), bool)
    straight[y2, x1] = strong
    found = _ruling(straight)
    if found is None:
        return None
    removed, fields = found
    shift = int(x1[int(ys.mean()), 0])  # a box's columns, at the ink's middle row
    return removed[y2, x1], [(a - shift, b - shift) for a, b in fields]


def _crossing(strong: np.ndarray, printed: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """The pixels of horizontal `lines` that ink crosses: other ink within 2 px above and below them
    (per band of line rows; transpose everything for vertical lines)."""
    other = strong & ~printed
    keep = np.zeros_like(lines)
    for r0, r1 in _bands(np.asarray(lines.any(1))):
        above = other[max(r0 - 2, 0) : r0].any(0)
        below = other[r1 : r1 + 2].any(0)
        both = above & below
        both[1:] |= both[:-1].copy()
        both[:-1] |= both[1:].copy()
        keep[r0:r1] = lines[r0:r1] & both
    return keep


def _ticks(
    strong: np.ndarray, lines: np.ndarray, height: int, thickness: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Box separators or comb ticks: vertical strokes touching a line, alike and evenly spaced (a digit's
    stem that touches a line is neither). Returns their pixels and the boxes between them."""
    down, printed = strong.T, lines.T  # runs down each column
    runs = _row_runs(down)
    ends = down.copy()  # the top and bottom pixel of each run
    ends[:, 1:-1] &= ~(down[:, :-2] & down[:, 2:])
    # a run that ends in a line stands on it (a digit's stroke crossing the line ends beyond it)
    standing = np.bincount(runs[ends & printed], minlength=int(runs.max()) + 1) > 0
    standing[0] = False
    lengths = np.bincount(runs.ravel())
    on_line = standing[runs] & (lengths[runs] - printed.sum(1, keepdims=True) >= TICK_LENGTH * height)
    column_length = np.where(on_line, lengths[runs], 0).max(1)
    segments = [(x0, x1, int(column_length[x0:x1].max())) for x0, x1 in _bands(column_length > 0)]
    none: tuple[np.ndarray, list[tuple[int, int]]] = (np.zeros_like(strong), [])
    thin = [s for s in segments if s[1] - s[0] <= 2 * thickness + 2]
    if not 3 <= len(thin) <= MAX_TICKS:
        return none
    typical = float(np.median([n for _, _, n in thin]))
    alike = [s for s in thin if abs(s[2] - typical) <= max(2.0, TICK_SPREAD * typical)]  # printed: one length
    found = _evenly_spaced([(a + b) / 2 for a, b, _ in alike], TICK_LENGTH * height)
    if found is None:
        return none
    first, gap = found
    # the lattice over the lines' extent, which a form's lines end on (an underline with three alike
    # strokes standing on it by chance does not); ticks a digit crosses are found at their place
    cols = np.flatnonzero(lines.any(0))
    k0 = math.ceil((cols[0] - first) / gap - 0.2)
    k1 = math.floor((cols[-1] + 1 - first) / gap + 0.2)
    places = [first + k * gap for k in range(k0, k1 + 1)]
    tolerance = 0.15 * gap + thickness
    if len(places) < 3 or abs(places[0] - cols[0]) > tolerance or abs(places[-1] - cols[-1] - 1) > tolerance:
        return none
    ticks = np.zeros_like(strong)
    for x0, x1, _ in segments:
        if x1 - x0 <= 6 * thickness + 6 and min(abs((x0 + x1) / 2 - p) for p in places) <= 0.1 * gap + 1:
            rows = np.flatnonzero(on_line[x0:x1].any(0))  # the tick's extent, and its rim column each side
            a, b = max(x0 - 1, 0), x1 + 1
            ticks[rows[0] : rows[-1] + 1, a:b] = strong[rows[0] : rows[-1] + 1, a:b]
    fields = [(int(places[k]) + 1, int(places[k + 1])) for k in range(len(places) - 1)]
    return ticks, fields


# -----------------------------------------------------------------------------
# splitting a blob


def _split_candidates(ink: np.ndarray, own: np.ndarray) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
    """Candidate digits of one blob: (first piece, end piece) -> (its ink, extra log-score).

    The pieces lie between the candidate cuts; the extra score charges the cut at the span's left end
    (none for the blob's left edge) for the ink it crosses."""
    rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
    height = rows[-1] + 1 - rows[0]
    width = cols[-1] + 1 - cols[0]
    whole = {(0, 1): (ink, 0.0)}
    if width < SPLIT_ASPECT * height:
        return whole
    paths, costs = _cuts(ink, own, height, cols[0], cols[-1] + 1)
    if not paths:
        return whole
    h, w = ink.shape
    xx = np.arange(w)[None, :]
    bounds = [np.full(h, -1)] + paths + [np.full(h, w)]
    cut_costs = [0.0] + costs + [0.0]
    # drop cuts that leave (next to) nothing between them: each piece needs a share of the blob's strokes
    least = MIN_PART * float(own.sum()) / 2
    i = 1
    while i < len(bounds) - 1:
        between = (xx > bounds[i - 1][:, None]) & (xx <= bounds[i][:, None])
        if (own & between).sum() < least or (i == len(bounds) - 2 and (own & (xx > bounds[i][:, None])).sum() < least):
            del bounds[i], cut_costs[i]
        else:
            i += 1
    pieces = len(bounds) - 1
    out = {}
    for start in range(pieces):
        for end in range(start + 1, pieces + 1):
            if end - start > MAX_SPAN and (start, end) != (0, pieces):
                continue
            inside = (xx > bounds[start][:, None]) & (xx <= bounds[end][:, None])
            out[(start, end)] = (np.where(inside, ink, 0.0), -cut_costs[start])
    return out


def _pair_splits(ink: np.ndarray, own: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """A blob as wide as two touching digits (PAIR_ASPECT) read as two, cut at each of PAIR_CUTS of its
    width (where the projection has no minimum, e.g. a 7's bar running into a 0): per cut the left and right
    ink and the cut's extra log-score. The thinnest path near each place is taken, as for _cuts."""
    rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
    height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    if not PAIR_ASPECT[0] <= width / height <= PAIR_ASPECT[1]:
        return []
    radius = max(1, int(0.04 * width))
    places = [cols[0] + int(share * width) for share in PAIR_CUTS]
    paths, crossed = _thinnest_paths(ink, [(x - radius, x + radius + 1) for x in places])
    stroke = _stroke(own)
    xx = np.arange(ink.shape[1])[None, :]
    least = MIN_PART * float(own.sum()) / 2
    out = []
    for path, cost in zip(paths, crossed, strict=True):
        left = xx <= path[:, None]
        if (own & left).sum() >= least and (own & ~left).sum() >= least:
            out.append((np.where(left, ink, 0.0), np.where(left, 0.0, ink), -CUT_COST * cost / stroke - SPLIT_COST))
    return out


def _stroke(own: np.ndarray) -> float:
    """The stroke width of a blob: its area over half its perimeter."""
    return max(1.0, float(own.sum()) / max(1.0, float(_edges(own)) / 2))


def _cuts(ink: np.ndarray, own: np.ndarray, height: int, left: int, right: int) -> tuple[list[np.ndarray], list[float]]:
    """Candidate cuts, left to right: per cut the column x(y) of each row (pixels at x <= x(y) go left)
    and its cost (ink crossed, in stroke widths, times CUT_COST, plus SPLIT_COST).

    Near each minimum of the column projection, the cheapest 8-connected top-to-bottom path through the
    ink is taken (it follows a gap or the thinnest place where two digits touch or overlap)."""
    profile = own.sum(0).astype(np.float32)
    smooth = np.convolve(np.pad(profile, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    margin = max(2, int(round(MIN_PART * height)))
    lo, hi = left + margin, right - margin
    if hi <= lo:
        return [], []
    inner = smooth[lo:hi]
    is_min = np.ones(inner.shape, bool)
    is_min[1:] &= inner[1:] <= inner[:-1]
    is_min[:-1] &= inner[:-1] <= inner[1:]
    candidates = np.flatnonzero(is_min) + lo
    # the lowest minima first, at least `margin` apart
    chosen: list[int] = []
    most = min(MAX_CUTS, max(1, int(CUTS_PER_HEIGHT * (right - left) / height)))
    for c in sorted(candidates.tolist(), key=lambda c: (smooth[c], c)):
        if smooth[c] > CUT_DEPTH * smooth.max() or len(chosen) == most:
            break
        if all(abs(c - d) >= margin for d in chosen):
            chosen.append(c)
    chosen.sort()
    stroke = _stroke(own)
    radius = max(1, int(round(0.15 * height)))
    windows = [(max(c - radius, lo), min(c + radius + 1, hi)) for c in chosen]
    paths: list[np.ndarray] = []
    costs: list[float] = []
    for path, crossed in zip(*_thinnest_paths(ink, windows), strict=False):
        if paths:
            path = np.maximum(path, paths[-1])  # cuts must not cross
        paths.append(path)
        costs.append(CUT_COST * crossed / stroke + SPLIT_COST)
    return paths, costs


def _edges(m: np.ndarray) -> int:
    return int(
        (m[1:] != m[:-1]).sum()
        + (m[:, 1:] != m[:, :-1]).sum()
        + m[0].sum()
        + m[-1].sum()
        + m[:, 0].sum()
        + m[:, -1].sum()
    )


def _thinnest_paths(ink: np.ndarray, windows: list[tuple[int, int]]) -> tuple[list[np.ndarray], list[float]]:
    """Per window of columns [lo, hi): the top-to-bottom path inside it that crosses the least ink (moving
    at most one column per row; a small cost per step keeps it straight where no ink is in the way), as
    its column in each row, and the ink it crosses (in pixels of full ink).

    All windows are solved together, on a copy of the ink averaged over f x f blocks so that the row loop
    runs at most PATH_ROWS times (f = 1 for small blobs)."""
    if not windows:
        return [], []
    h, w = ink.shape
    f = max(1, -(-h // PATH_ROWS))
    padded = np.pad(ink, ((0, -h % f), (0, -w % f)))
    pooled = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).mean(axis=(1, 3))
    rows, width = pooled.shape
    los = np.array([lo // f for lo, _ in windows])
    his = np.array([max(-(-hi // f), lo // f + 1) for lo, hi in windows])
    n = int((his - los).max())
    cols = los[:, None] + np.arange(n)[None, :]  # [K, n]
    valid = cols < his[:, None]
    cost = np.where(valid[None], pooled[:, np.minimum(cols, width - 1)], np.inf)  # [rows, K, n]
    total = cost[0].copy()
    back = np.zeros(cost.shape, np.int8)
    for y in range(1, rows):
        best, move = total.copy(), np.zeros(total.shape, np.int8)
        from_left = total[:, :-1] + 0.01
        better = from_left < best[:, 1:]
        best[:, 1:][better], move[:, 1:][better] = from_left[better], -1
        from_right = total[:, 1:] + 0.01
        better = from_right < best[:, :-1]
        best[:, :-1][better], move[:, :-1][better] = from_right[better], 1
        total = best + cost[y]
        back[y] = move
    k = np.arange(len(windows))
    x = total.argmin(1)
    low = np.empty((len(windows), rows), np.int64)
    crossed = np.zeros(len(windows))
    for y in range(rows - 1, -1, -1):
        low[:, y] = x
        crossed += cost[y, k, x]
        x = x + back[y, k, x]
    paths = []
    for i, (lo, hi) in enumerate(windows):
        full = np.repeat((cols[i, low[i]]) * f + f // 2, f)[:h]
        paths.append(np.clip(full, lo, hi - 1))
    return paths, (crossed * f).tolist()
