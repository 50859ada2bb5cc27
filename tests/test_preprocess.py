"""Tests for edge_infer.preprocess: real images in, MNIST-style 28x28 arrays out."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, JpegImagePlugin

from edge_infer.preprocess import (
    MAX_PIXELS,
    ImageError,
    _small_flat_crop,
    _to_mnist_general,
    load_image,
    preprocess,
    preprocess_many,
    to_grey,
    to_mnist,
)

preprocess_module = sys.modules["edge_infer.preprocess"]  # (the package's `preprocess` is the function)
YX = np.arange(28)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# -----------------------------------------------------------------------------
# helpers


def digit(d: str, size=(300, 300), fg=0, bg=255, font_size=None, pos=None, mode="L") -> Image.Image:
    """Render digit d with Pillow's bundled scalable font (Pillow >= 10.1), else DejaVu Sans."""
    img = Image.new(mode, size, bg)
    try:
        font = ImageFont.load_default(size=font_size or int(size[1] * 0.6))
    except TypeError:  # older Pillow: no size argument
        font = ImageFont.truetype("DejaVuSans.ttf", font_size or int(size[1] * 0.6))
    ImageDraw.Draw(img).text(pos or (size[0] / 2, size[1] / 2), d, font=font, fill=fg, anchor="mm")
    return img


def reference(d: str) -> np.ndarray:
    """The clean rendering: black digit, white paper, centred."""
    return preprocess(digit(d))


def com(a: np.ndarray) -> tuple[float, float]:
    m = a.sum()
    return float((a.sum(1) * YX).sum() / m), float((a.sum(0) * YX).sum() / m)


def bbox(a: np.ndarray, thresh: float = 0.0) -> tuple[int, int]:
    """(height, width) of the pixels above thresh."""
    rows, cols = np.flatnonzero((a > thresh).any(1)), np.flatnonzero((a > thresh).any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def match(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity, forgiving the 1 px shift that centre-of-mass rounding can cause."""
    return max(cosine(np.roll(a, (dy, dx), (0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def check_mnist_like(y: np.ndarray) -> None:
    assert y.shape == (28, 28) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert y.max() > 0.9, "stroke cores should be saturated"
    cy, cx = com(y)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert max(bbox(y)) in (19, 20)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def assert_one_line_error(image, match: str) -> None:
    with pytest.raises(ImageError, match=match) as e:
        preprocess(image)
    assert "\n" not in str(e.value) and str(e.value).strip()


# -----------------------------------------------------------------------------
# MNIST itself must pass through unchanged


@pytest.fixture(scope="module")
def mnist_images(mnist_test) -> np.ndarray:
    """The first 500 real MNIST test digits (conftest reads them from the IDX files)."""
    return mnist_test[0][:500]


@pytest.mark.parametrize("variant", ["uint8", "float", "inverted", "png"])
def test_mnist_digits_come_through_unchanged(mnist_images, variant):
    diffs = []
    for x in mnist_images:
        target = x / 255.0
        if variant == "uint8":
            y = preprocess(x)
        elif variant == "float":
            y = preprocess(x.astype(np.float32) / 255)
        elif variant == "inverted":  # black digit on white paper
            y = preprocess(255 - x)
        else:
            y = preprocess(encode(Image.fromarray(x), "PNG"))
        diffs.append(np.abs(y - target).mean())
        assert np.abs(np.subtract(com(y), com(target))).max() <= 1.0
    diffs = np.array(diffs)
    assert diffs.mean() < 0.02
    assert np.mean(diffs < 0.005) > 0.95  # nearly all differ only by the ink-level rescale


def test_fast_path_for_small_clean_images_gives_the_general_paths_output(mnist_images):
    """to_mnist's shortcut for small images on a flat background (_small_flat_crop) against the general path
    (ink_map + _crop, what every image went through before), bit for bit: real MNIST digits as they are,
    inverted, cut off at the border, padded onto grey paper, with noise, faint, blank, and with a dark mark on
    the border (which must leave the shortcut), and the example images shrunk to a small size."""
    rng = np.random.default_rng(0)
    greys = []
    for x in mnist_images[:300]:
        noisy = np.clip(x.astype(np.int16) + rng.integers(0, 3, x.shape), 0, 255).astype(np.uint8)
        marked = 255 - x
        marked[10:14, 0] = 0
        variants = [x, 255 - x, x[2:-3, 1:], np.pad(255 - x, 6, constant_values=200), noisy, x // 64, marked]
        greys += [to_grey(Image.fromarray(v)) for v in variants]
    greys += [np.full((28, 28), 0.5, np.float32), np.zeros((5, 40), np.float32)]
    for path in sorted(EXAMPLES.glob("*.png")):
        image = Image.open(path)
        image.thumbnail((48, 48))
        greys.append(to_grey(image))
    taken = 0
    for grey in greys:
        taken += _small_flat_crop(grey) is not None
        assert to_mnist(grey).tobytes() == _to_mnist_general(grey).tobytes()
    assert taken > len(greys) / 3  # the shortcut really was compared (the clean variants take it)


@pytest.mark.parametrize("stage_pixels", [None, 5000])
def test_preprocess_many_runs_stage_by_stage_with_the_same_results(mnist_images, stage_pixels, monkeypatch):
    """preprocess_many (each stage over a group of images) against preprocess one image at a time: real MNIST
    PNGs, the example photo, scan and drawing, and broken files in between, in one group and in many."""
    if stage_pixels:
        monkeypatch.setattr(preprocess_module, "STAGE_PIXELS", stage_pixels)
    images: list = [encode(Image.fromarray(x), "PNG") for x in mnist_images[:200]]
    for i, path in enumerate(sorted(EXAMPLES.glob("*.png"))):
        images.insert(30 * i + 5, path)
    images.insert(17, b"not an image")
    images.insert(101, EXAMPLES / "missing.png")
    digits, failures = preprocess_many(images)
    assert [f is None for f in failures].count(False) == 2 and len(digits) == len(images) - 2
    expected = iter(digits)
    for image, failure in zip(images, failures, strict=True):
        if failure is None:
            assert next(expected).tobytes() == preprocess(image).tobytes()
        else:
            with pytest.raises(ImageError, match=re.escape(str(failure))):
                preprocess(image)
    with pytest.raises(ImageError, match="not an image"):  # errors="raise": the first bad image's error
        preprocess_many(images, errors="raise")


# -----------------------------------------------------------------------------
# geometry: 20x20 box, aspect ratio, centre of mass


@pytest.mark.parametrize("d", list("0123456789"))
def test_rendered_digits_are_mnist_like(d):
    check_mnist_like(reference(d))


def test_off_centre_small_digit_on_big_page(tmp_path):
    page = digit("4", size=(1200, 900), font_size=120, pos=(1000, 150))
    page.save(tmp_path / "page.png")
    y = preprocess(tmp_path / "page.png")
    check_mnist_like(y)
    assert match(y, reference("4")) > 0.9


def test_aspect_ratio_is_kept():
    img = Image.new("L", (400, 400), 255)
    ImageDraw.Draw(img).ellipse([150, 50, 250, 350], outline=0, width=12)  # 1:3 ellipse
    y = preprocess(img)
    h, w = bbox(y, 0.1)
    assert h in (19, 20) and abs(w - 20 / 3) <= 1.5
    wide = preprocess(img.transpose(Image.Transpose.ROTATE_90))
    assert bbox(wide, 0.1) == (w, h)


def test_small_digit_is_enlarged():
    y = preprocess(digit("2", size=(40, 40), font_size=12))
    assert max(bbox(y)) in (19, 20)


# -----------------------------------------------------------------------------
# polarity, lighting, noise


def test_dark_ink_on_white_and_light_ink_on_black_agree():
    black_on_white = preprocess(digit("5"))
    white_on_black = preprocess(digit("5", fg=255, bg=0))
    assert black_on_white[0, 0] == 0 and black_on_white.max() > 0.9  # ink is bright
    np.testing.assert_allclose(black_on_white, white_on_black, atol=1e-5)


def test_grey_paper_and_grey_ink():
    y = preprocess(digit("7", fg=90, bg=170))
    assert match(y, reference("7")) > 0.98 and y.max() > 0.9


@pytest.mark.parametrize("d", list("0368"))
def test_photo_with_lighting_gradient_and_noise(d, tmp_path):
    rng = np.random.default_rng(int(d))
    cover = 1.0 - np.asarray(digit(d, size=(640, 480)), dtype=np.float32) / 255
    yy, xx = np.mgrid[0:480, 0:640] / 640.0
    light = 0.35 + 0.6 * xx - 0.4 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2)  # gradient + vignetting
    photo = light * (1 - 0.8 * cover) + rng.normal(0, 0.03, cover.shape)
    rgb = np.clip(np.stack([photo, photo * 0.95, photo * 0.85], -1) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=80)
    y = preprocess(tmp_path / "photo.jpg")
    check_mnist_like(y)
    ref = reference(d)
    assert match(y, ref) > 0.9
    assert y[ref == 0].mean() < 0.02  # background is clean, not noise or shading


def test_specks_far_from_the_digit_are_ignored():
    clean = digit("2", size=(800, 800), font_size=300)
    dusty = clean.copy()
    draw = ImageDraw.Draw(dusty)
    draw.rectangle([40, 40, 45, 45], fill=0)
    draw.rectangle([720, 700, 723, 703], fill=30)
    draw.point([(100, 700), (650, 90), (20, 400)], fill=0)
    np.testing.assert_allclose(preprocess(dusty), preprocess(clean), atol=0.05)


def test_digit_filling_its_box_with_a_thick_pen_is_found():
    """Cut from a form or an envelope: a thick digit touching all four sides of a 16x16 box, more ink than
    paper on the border. Only the corners are paper."""
    ys, xs = np.mgrid[0:16, 0:16]
    r = np.hypot(ys - 7.5, xs - 7.5)
    page = np.where((r > 3.5) & (r < 9.2), 0.0, 1.0).astype(np.float32)  # a fat 0 touching every side
    assert page[0].mean() < 0.5 and page[:, 0].mean() < 0.5 and page[0, 0] == 1.0
    digit = preprocess(page)
    assert digit.sum() > 20
    assert digit[14, 14] < 0.2 and digit.max() == 1.0  # the 0's hole stays a hole, the ring is ink


@pytest.mark.parametrize("spacing", [7, 9])
def test_dotted_or_skipping_pen_is_one_digit(spacing):
    """A pen that skips (dots or dashes a few pixels apart) is one digit, not its first dot blown up to
    fill the whole box."""
    page = Image.new("L", (300, 300), 255)
    draw = ImageDraw.Draw(page)
    for y in range(40, 260, spacing):
        draw.ellipse((148, y - 2, 152, y + 2), fill=0)  # a dotted vertical stroke: a 1
    digit = preprocess(page)
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    assert rows.size == 20 and cols.size <= 6  # fits the 20 px box by its height, narrow like a 1


@pytest.mark.parametrize("width", [1, 2])
def test_thin_pen_strokes_are_thickened(width):
    img = Image.new("L", (600, 600), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(150, 120), (450, 120), (240, 510)], fill=0, width=width)  # a "7"
    y = preprocess(img)
    check_mnist_like(y)
    assert (y > 0.5).sum() >= 25  # ~2 px wide strokes, not a faint hairline
    thick = Image.new("L", (600, 600), 255)
    ImageDraw.Draw(thick).line([(150, 120), (450, 120), (240, 510)], fill=0, width=60)
    assert match(y, preprocess(thick)) > 0.85


def test_mnist_like_strokes_are_not_thickened():
    x = np.zeros((28, 28), np.uint8)
    x[3:23, 14:16] = 255  # a "1": 20 px tall, 2 px wide,
    x[3:23, 13] = x[3:23, 16] = 60  # with an anti-aliased rim,
    x[20:23, 11:18] = x[4:6, 11:14] = 255  # a base and a flag; already centred
    np.testing.assert_allclose(com(x / 255.0), (13.54, 14.14), atol=0.01)
    np.testing.assert_allclose(preprocess(x), x / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "image",
    [
        np.full((300, 300), 200, np.uint8),
        np.zeros((28, 28), np.uint8),
        np.ones((28, 28), np.float32),
        np.clip(np.random.default_rng(0).normal(180, 8, (400, 400)), 0, 255).astype(np.uint8),
        np.clip(np.linspace(60, 230, 500) + np.random.default_rng(1).normal(0, 4, (300, 500)), 0, 255).astype(np.uint8),
        Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
    ],
    ids=["grey", "black28", "white28", "noise", "gradient", "transparent"],
)
def test_blank_images_give_zeros(image):
    y = preprocess(image)
    assert y.shape == (28, 28) and y.dtype == np.float32 and y.sum() == 0


def test_blank_jpeg_page_gives_zeros(tmp_path):
    Image.new("RGB", (800, 600), (230, 225, 210)).save(tmp_path / "blank.jpg", quality=60)
    assert preprocess(tmp_path / "blank.jpg").sum() == 0


# -----------------------------------------------------------------------------
# formats and modes


def test_transparent_drawings(tmp_path):
    ref = reference("3")
    black = digit("3", mode="RGBA", fg=(0, 0, 0, 255), bg=(0, 0, 0, 0))  # hidden colour == ink colour
    black.save(tmp_path / "black.png")
    white = digit("3", mode="RGBA", fg=(255, 255, 255, 255), bg=(255, 255, 255, 0))
    la = digit("3", mode="LA", fg=(0, 255), bg=(0, 0))
    pa = black.convert("RGB").convert("P")
    pa.putalpha(black.getchannel("A"))  # (convert("PA") drops the alpha in Pillow 10.0-11.1 at least)
    for img in (tmp_path / "black.png", white, la, pa):
        y = preprocess(img)
        check_mnist_like(y)
        assert match(y, ref) > 0.98


def test_opaque_alpha_is_ignored():
    np.testing.assert_array_equal(preprocess(digit("6").convert("RGBA")), reference("6"))


def test_to_grey_flattens_alpha_against_the_opaque_colour():
    black_strokes = np.zeros((10, 10, 4), np.uint8)
    black_strokes[4:6, :, 3] = 255  # opaque black bar on transparent black
    g = to_grey(Image.fromarray(black_strokes))
    assert g[5].max() == 0.0 and g[0].min() == 1.0


@pytest.mark.parametrize(
    "fmt, mode, kw",
    [
        ("JPEG", "L", {"quality": 75}),
        ("JPEG", "RGB", {"quality": 90}),
        ("JPEG", "CMYK", {}),
        ("PNG", "P", {}),
        ("PNG", "1", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "L", {}),
        ("WEBP", "RGB", {"quality": 90}),
        ("GIF", "P", {}),
    ],
)
def test_file_formats_and_modes(tmp_path, fmt, mode, kw):
    img = digit("8").convert(mode)
    path = tmp_path / f"eight.{fmt.lower()}"
    img.save(path, fmt, **kw)
    with Image.open(path) as check:
        assert check.mode in (mode, "RGB", "L") and check.format == fmt
    y = preprocess(path)
    check_mnist_like(y)
    assert match(y, reference("8")) > 0.95


def test_sixteen_bit_png_uses_the_full_range(tmp_path):
    # paper at 50000, ink at 20000: PIL's 8-bit conversion would clip both to 255 (blank)
    a = (20000 + 30000 * (np.asarray(digit("9"), dtype=np.float64) / 255)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "nine16.png")
    with Image.open(tmp_path / "nine16.png") as img:
        assert img.mode.startswith("I")
        g = to_grey(img)
    assert abs(g.max() - 50000 / 65535) < 1e-3 and abs(g.min() - 20000 / 65535) < 1e-3
    assert match(preprocess(tmp_path / "nine16.png"), reference("9")) > 0.99
    assert match(preprocess(a), reference("9")) > 0.99  # uint16 array too


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [digit("1").convert("P"), digit("0").convert("P"), digit("4").convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as img:
        assert img.n_frames == 3
    y = preprocess(tmp_path / "anim.gif")
    assert match(y, reference("1")) > 0.98 and match(y, reference("0")) < 0.6


@pytest.mark.parametrize(
    "orientation, stored_as",
    [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)],
)
def test_exif_orientation_is_applied(tmp_path, orientation, stored_as):
    upright = digit("7", size=(300, 400)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation  # the camera stored it turned; the tag says how to turn it back
    upright.transpose(stored_as).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    y = preprocess(tmp_path / "rotated.jpg")
    assert match(y, preprocess(upright)) > 0.97


def test_large_jpeg_is_downscaled_early(tmp_path, monkeypatch):
    big = digit("5", size=(3000, 4000)).convert("RGB")
    big.save(tmp_path / "big.jpg", quality=85)
    drafts = []  # spy on JPEG draft mode: the decoder itself should scale down
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: drafts.append(a) or original(self, *a))
    img = load_image(tmp_path / "big.jpg")
    assert drafts and max(drafts[0][1]) <= 1024
    assert max(img.size) <= 512 and abs(img.width / img.height - 0.75) < 0.01
    assert match(preprocess(tmp_path / "big.jpg"), reference("5")) > 0.95


def test_large_array_and_pil_inputs_are_downscaled():
    a = np.asarray(digit("2", size=(2000, 1500)))
    assert max(load_image(a).size) <= 512
    assert max(load_image(Image.fromarray(a)).size) <= 512


@pytest.mark.parametrize(
    "array",
    [
        np.asarray(digit("3")) > 128,  # bool
        np.asarray(digit("3"), dtype=np.float64) / 255,  # float in [0, 1]
        np.asarray(digit("3").convert("RGB")),  # HxWx3
        np.asarray(digit("3").convert("RGBA")),  # HxWx4
        np.asarray(digit("3"))[:, :, None],  # HxWx1
        np.asarray(digit("3").convert("RGB"), dtype=np.float32) / 255,  # float colour
        np.asarray(digit("3")).astype(np.int64),  # plain ints
    ],
    ids=["bool", "float", "rgb", "rgba", "hw1", "float-rgb", "int64"],
)
def test_array_inputs(array):
    y = preprocess(array)
    check_mnist_like(y)
    assert match(y, reference("3")) > 0.97


def test_path_bytes_pil_and_str_agree(tmp_path):
    img = digit("6")
    img.save(tmp_path / "six.png")
    expected = preprocess(img)
    for image in (tmp_path / "six.png", str(tmp_path / "six.png"), (tmp_path / "six.png").read_bytes()):
        np.testing.assert_array_equal(preprocess(image), expected)


def test_caller_image_is_not_modified():
    img = digit("1", size=(900, 900))
    before = np.asarray(img).copy()
    preprocess(img)
    assert img.size == (900, 900) and np.array_equal(np.asarray(img), before)


def test_to_mnist_on_grey_arrays():
    grey = np.asarray(digit("4"), dtype=np.float32) / 255
    np.testing.assert_array_equal(to_mnist(grey), reference("4"))
    with pytest.raises(ValueError):
        to_mnist(np.zeros((3, 3, 3)))


# -----------------------------------------------------------------------------
# bad inputs: one clear line each


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.png", "not found")


def test_empty_file_and_bytes(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_one_line_error(tmp_path / "empty.png", "empty file")
    assert_one_line_error(b"", "empty file")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture\n" * 20)
    assert_one_line_error(tmp_path / "notes.png", "not an image")
    assert_one_line_error(b"\x00\x01garbage" * 10, "not an image")


def test_truncated_png(tmp_path):
    data = encode(digit("2", size=(400, 400)), "PNG")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert_one_line_error(tmp_path / "cut.png", "truncated")


def test_truncated_jpeg(tmp_path):
    data = encode(digit("2", size=(400, 400)).convert("RGB"), "JPEG")
    assert_one_line_error(data[: len(data) // 2], "truncated")


def test_zero_pixel_images():
    assert_one_line_error(np.zeros((0, 5), np.uint8), "no pixels")
    assert_one_line_error(Image.new("L", (0, 0)), "no pixels")


def test_decompression_bomb(bomb_png):
    limit = Image.MAX_IMAGE_PIXELS
    assert bomb_png.stat().st_size < 200_000  # 400 Mpx, a few kB on disk
    assert_one_line_error(bomb_png, "too large")
    assert limit == Image.MAX_IMAGE_PIXELS  # PIL's global limit is left alone


def test_too_many_pixels_below_pils_own_limit(tmp_path):
    side = int(MAX_PIXELS**0.5) + 10  # over our limit, under PIL's warning threshold
    Image.new("1", (side, side)).save(tmp_path / "big.png")
    assert_one_line_error(tmp_path / "big.png", "too large")


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((5, 5, 2), np.uint8), "shape"),
        (np.zeros((2, 5, 5, 3), np.uint8), "shape"),
        (np.zeros(7, np.uint8), "shape"),
        (np.zeros((5, 5), np.complex64), "dtype"),
        (np.full((5, 5), np.nan), "NaN"),
        (np.full((5, 5), -3), "0..65535"),
    ],
)
def test_bad_arrays(array, match):
    assert_one_line_error(array, match)


def test_unsupported_type():
    assert_one_line_error(12345, "unsupported input type")


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)
