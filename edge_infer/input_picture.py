"""What the model saw: one picture per image with the original, the 28x28 MNIST-form input the model
received (enlarged without smoothing, so each pixel shows), and the prediction's top-3 probabilities.

    from edge_infer import explain
    explain("digit.jpg").save("digit-explained.png")

Pillow only (the runtime has no matplotlib).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw

from edge_infer.classifier import Classifier, Prediction
from edge_infer.draw_graph import load_font
from edge_infer.files import save_new_file
from edge_infer.preprocess import ImageInput, load_image, preprocess

__all__ = ["PANEL", "SCALE", "explain", "input_pixels", "model_input_box", "save_explanation", "save_picture"]

SCALE = 6  # each model-input pixel becomes SCALE x SCALE screen pixels
PANEL = 28 * SCALE  # every panel is PANEL x PANEL
MARGIN, TITLE = 14, 26
BACKGROUND, PANEL_BACKGROUND, INK = (255, 255, 255), (236, 236, 236), (30, 30, 30)
BAR, BAR_TOP = (160, 180, 210), (46, 98, 170)
TOP_K = 3
MAX_STEM = 200  # characters of the image's name kept in the picture's (a file name is at most 255 bytes)


def model_input_box() -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the middle panel: the model input, SCALE x nearest-neighbour."""
    left = MARGIN * 2 + PANEL
    return left, TITLE + MARGIN, left + PANEL, TITLE + MARGIN + PANEL


def explain(
    image: ImageInput, classifier: Classifier | None = None, *, prediction: Prediction | None = None
) -> Image.Image:
    """A picture of `image` as given, as the model received it, and what the model made of it.

    classifier: the model to ask (default: the bundled fp32 model); not needed when `prediction` (for
    this image) is given. Raises ImageError for unreadable images, like preprocess.
    """
    digit = preprocess(image)
    if prediction is None:
        prediction = (classifier or _default_classifier()).classify(digit[None])[0]
    original = load_image(image)
    if original.mode in ("RGBA", "LA", "PA") or "transparency" in original.info:
        rgba = original.convert("RGBA")
        original = Image.new("RGB", rgba.size, (255, 255, 255))
        original.paste(rgba, mask=rgba.getchannel("A"))
    original = original.convert("RGB")
    original.thumbnail(
        (PANEL, PANEL), Image.Resampling.LANCZOS if max(original.size) > PANEL else Image.Resampling.NEAREST
    )
    if max(original.size) < PANEL:  # small images (a 28x28 MNIST digit): enlarge so they can be seen
        factor = PANEL // max(original.size)
        original = original.resize((original.width * factor, original.height * factor), Image.Resampling.NEAREST)

    width = MARGIN * 4 + PANEL * 3 + 24  # room for "100.00%" after the longest bar
    canvas = Image.new("RGB", (width, TITLE + MARGIN * 2 + PANEL + 8), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, bold = load_font(14), load_font(14, bold=True)
    top = TITLE + MARGIN

    # 1. the original, downscaled, centred in its panel
    draw.rectangle([MARGIN, top, MARGIN + PANEL - 1, top + PANEL - 1], fill=PANEL_BACKGROUND)
    canvas.paste(original, (MARGIN + (PANEL - original.width) // 2, top + (PANEL - original.height) // 2))
    draw.text((MARGIN, 6), "original", fill=INK, font=font)

    # 2. the model input: exactly the preprocessed array, each pixel a SCALE x SCALE square
    left, top, _, _ = model_input_box()
    pixels = Image.fromarray(input_pixels(digit)).resize((PANEL, PANEL), Image.Resampling.NEAREST)
    canvas.paste(pixels.convert("RGB"), (left, top))
    draw.text((left, 6), "model input 28×28", fill=INK, font=font)

    # 3. the prediction: top-3 probabilities as bars
    left = MARGIN * 3 + PANEL * 2
    if prediction.digit_found:
        draw.text((left, 6), f"prediction: {prediction.label}", fill=INK, font=bold)
        bar_h = (PANEL - 2 * MARGIN) // TOP_K
        for rank, (label, probability) in enumerate(prediction.top_k(TOP_K)):
            y = top + MARGIN + rank * bar_h
            length = max(1, round((PANEL - 80) * probability))
            draw.text((left, y + bar_h // 2 - 9), str(label), fill=INK, font=bold)
            draw.rectangle([left + 18, y + 8, left + 18 + length, y + bar_h - 8], fill=BAR_TOP if rank == 0 else BAR)
            draw.text((left + 24 + length, y + bar_h // 2 - 9), f"{probability:.2%}", fill=INK, font=font)
    else:
        draw.text((left, 6), "prediction: none", fill=INK, font=bold)
        draw.text((left, top + MARGIN), "no digit found\n(the image is blank)", fill=INK, font=font)
    return canvas


def save_explanation(
    image: ImageInput,
    display_path: str,
    prediction: Prediction,
    out_dir: str | os.PathLike[str],
    used: dict[str, int] | None = None,
) -> Path:
    """explain() into a new file out_dir/<image name>.png ('stdin.png' for '-'): see save_picture."""
    return save_picture(explain(image, prediction=prediction), display_path, out_dir, used)


def save_picture(
    picture: Image.Image, display_path: str, out_dir: str | os.PathLike[str], used: dict[str, int] | None = None
) -> Path:
    """A picture about one input into a new file out_dir/<image name>.png ('stdin.png' for '-'). A name already
    taken (by an earlier image, an earlier run, or anything else in out_dir) gets -2, -3, ...: nothing there is
    ever replaced or written through (edge_infer.files.save_new_file). `used` (stem -> next number to try)
    saves retrying the names this run took already."""
    stem = ("stdin" if display_path == "-" else Path(display_path).stem or "image")[:MAX_STEM]
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    used = {} if used is None else used
    name, count = save_new_file(out_dir, stem, ".png", buffer.getvalue(), used.get(stem, 1))
    used[stem] = count + 1
    return Path(out_dir) / name


def input_pixels(digit: np.ndarray) -> np.ndarray:
    """The model input [28, 28] in [0, 1] as the 8-bit grey levels drawn (1.0 -> 255, bright ink)."""
    return cast(np.ndarray, np.round(np.clip(digit, 0.0, 1.0) * 255).astype(np.uint8))


_classifier: Classifier | None = None


def _default_classifier() -> Classifier:
    global _classifier
    if _classifier is None:
        _classifier = Classifier()
    return _classifier
