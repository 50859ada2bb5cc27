"""What --number saw: the image with each digit's box and label, and below it each digit's 28x28 input as
the model received it (enlarged without smoothing), with its label and confidence.

    from edge_infer.number_picture import explain_number
    explain_number("meter.jpg", classifier.read_number("meter.jpg")).save("meter-explained.png")

Pillow only.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from edge_infer.draw_graph import load_font
from edge_infer.input_picture import BACKGROUND, INK, MARGIN, PANEL_BACKGROUND, input_pixels
from edge_infer.number import NumberReading, scale_to_source
from edge_infer.preprocess import ImageInput, load_image

__all__ = ["explain_number", "input_panel_box"]

IMAGE_WIDTH = 640  # the image is drawn at most this wide...
IMAGE_HEIGHT = 240  # ... and this high
DIGIT_SCALE = 3  # each model-input pixel becomes 3 x 3 screen pixels
DIGIT = 28 * DIGIT_SCALE
TITLE = 22
PER_ROW = 10  # digit inputs per row of the picture
BOX, UNSURE = (214, 40, 40), (200, 120, 0)  # a digit's box; one below min_confidence ("?")


def explain_number(image: ImageInput, reading: NumberReading) -> Image.Image:
    """A picture of how `image` was read as `reading` (its read_number result). Raises ImageError for
    unreadable images."""
    original = load_image(image)
    if original.mode in ("RGBA", "LA", "PA") or "transparency" in original.info:
        rgba = original.convert("RGBA")
        original = Image.new("RGB", rgba.size, BACKGROUND)
        original.paste(rgba, mask=rgba.getchannel("A"))
    original = original.convert("RGB")
    scale_to_drawn = min(IMAGE_WIDTH / original.width, IMAGE_HEIGHT / original.height, 4.0)
    drawn = original.resize(
        (max(1, round(original.width * scale_to_drawn)), max(1, round(original.height * scale_to_drawn))),
        Image.Resampling.LANCZOS if scale_to_drawn < 1 else Image.Resampling.NEAREST,
    )
    count = len(reading.digits)
    font, bold = load_font(13), load_font(16, bold=True)
    width = max(drawn.width, min(count, PER_ROW) * (DIGIT + MARGIN) - MARGIN, 260) + 2 * MARGIN
    height = input_panel_box(max(count - 1, 0), drawn.height)[3] + TITLE + MARGIN
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    text = reading.text or "(no digits)"
    draw.text((MARGIN, 4), f"read: {text}   confidence {reading.confidence:.4f}", fill=INK, font=bold)
    top = TITLE + MARGIN // 2
    canvas.paste(drawn, (MARGIN, top))
    # boxes are in the input's pixels (after EXIF orientation); load_image may have shrunk it to <= 512 px
    factor = drawn.width / (original.width * scale_to_source(image, original)[0])
    for digit in reading.digits:
        colour = BOX if digit.label >= 0 else UNSURE
        left, upper, right, lower = (round(v * factor) for v in digit.box)
        draw.rectangle([MARGIN + left, top + upper, MARGIN + right - 1, top + lower - 1], outline=colour, width=2)
        draw.text((MARGIN + left + 2, max(top + upper - 19, TITLE)), _label(digit.label), fill=colour, font=bold)
    for k, (digit, pixels) in enumerate(zip(reading.digits, reading.inputs, strict=False)):
        left, top, _, _ = input_panel_box(k, drawn.height)
        panel = Image.fromarray(input_pixels(pixels)).resize((DIGIT, DIGIT), Image.Resampling.NEAREST)
        draw.rectangle([left - 1, top - 1, left + DIGIT, top + DIGIT], outline=PANEL_BACKGROUND)
        canvas.paste(panel.convert("RGB"), (left, top))
        draw.text((left, top + DIGIT + 3), f"{_label(digit.label)} {digit.confidence:.2f}", fill=INK, font=font)
    return canvas


def input_panel_box(k: int, drawn_height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the k-th digit's 28x28 input, DIGIT_SCALE x nearest-neighbour, in a
    picture whose image part is drawn_height high."""
    row, column = divmod(k, PER_ROW)
    left = MARGIN + column * (DIGIT + MARGIN)
    top = TITLE + MARGIN // 2 + drawn_height + MARGIN + row * (DIGIT + TITLE + MARGIN)
    return left, top, left + DIGIT, top + DIGIT


def _label(label: int) -> str:
    return str(label) if label >= 0 else "?"
