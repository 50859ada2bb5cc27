"""Turn a real-world image of one digit into a 28x28 MNIST-style array.

MNIST itself was made like this: binary NIST digits were scaled to fit a 20x20
box (keeping the aspect ratio, anti-aliased, hence grey levels), then placed in
a 28x28 field so that their centre of mass sits at the centre. The functions
below redo that for photos, scans, drawings and rendered fonts:

    load_image  decode, first frame, EXIF orientation, early downscale to <= 512 px
    to_grey     any PIL mode -> float grey, transparency flattened
    to_mnist    polarity + background removal, crop, thicken thin strokes, fit 20x20,
                centre of mass to the centre of 28x28; its two halves, ink_map (polarity +
                background removal) and ink_to_mnist (one digit's crop -> 28x28), also serve
                edge_infer.number, which reads several digits from one image

Only numpy, Pillow and the standard library are used, and everything is pure.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import struct
import warnings
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_infer.files import HEAD_BYTES, FileRefused, read_regular_file

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "ImageError",
    "ImageInput",
    "as_image_error",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "load_image",
    "to_grey",
    "to_mnist",
    "ink_map",
    "ink_to_mnist",
    "preprocess",
    "preprocess_many",
]

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray

MAX_PIXELS = 40_000_000  # refuse anything larger before decoding: ~a 7000x6000 photo is already generous
WORK_SIZE = 512  # longest side we compute on; a digit filling 1/8 of the frame keeps ~60 px
# A larger image whose short side would be shrunk below this is refused (more than 64 times as long as high):
# nothing in it could be read (an 800-digit 20000x50 strip would be 1 px high, and read as "no digit").
MIN_WORK_SIDE = 8
BOX, CANVAS = 20, 28  # MNIST: digit fits a 20x20 box inside a 28x28 field
CENTRE = 14.0  # MNIST centre of mass, in pixel-index coordinates (measured: 14.0 +- 0.3)
NOISE_SIGMAS = 3.5  # background residuals below this many sigmas are noise, not ink
MIN_CONTRAST = 0.05  # ink weaker than this (on a 0..1 scale) is not a digit, e.g. a blank JPEG page
INK_PERCENTILE = 95  # this percentile of ink maps to 1.0 (MNIST stroke cores are saturated)
STRONG_INK = 0.25  # pixels at least this inky decide the crop on large images
BORDER_NOT_PAPER = 0.3  # a fitted background this far (0..1 scale) from agreeing corners is ink, not paper
MIN_GAP = 0.02  # gaps in the ink up to this fraction of the image always belong to one digit
THIN_W20 = 0.7  # strokes thinner than this at the 20 px scale get thickened (MNIST's thinnest: 0.81)
TARGET_W20 = 2.2  # ... up to about this width (MNIST: median 2.5, lower quartile 2.1)
THICKEN_SIZE = 4 * BOX  # intermediate resolution at which thin strokes are thickened
STAGE_PIXELS = 2**20  # preprocess_many runs each stage over groups of up to this many pixels (4 MiB as float)
SMALL_SIDE = 64  # images up to this size keep every grey level of their ink in the crop (see _crop)


class ImageError(ValueError):
    """A one-line, user-facing reason an input can't be read as an image (without the path: whoever shows
    the message beside the input's name adds it)."""


# -----------------------------------------------------------------------------
# loading

MAX_FILE_BYTES = 256 * 2**20  # image files larger than this are refused before reading (a 40 MP 16-bit TIFF fits)
# JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), so a photo far larger than MAX_PIXELS is
# still cheap; this bounds the full-size header a JPEG may claim (a 200 MP phone sensor fits).
MAX_JPEG_PIXELS = 200_000_000
# The formats edge-infer reads, by Pillow format name -> the one Pillow plugin that decodes it. Only these
# plugins are ever imported or used here (no EPS -> Ghostscript and the like), which also keeps start-up short.
FORMAT_PLUGINS = {
    "PNG": "PngImagePlugin",
    "JPEG": "JpegImagePlugin",
    "GIF": "GifImagePlugin",
    "BMP": "BmpImagePlugin",
    "TIFF": "TiffImagePlugin",
    "WEBP": "WebPImagePlugin",
    "PPM": "PpmImagePlugin",
    "ICO": "IcoImagePlugin",
    "TGA": "TgaImagePlugin",
}
_EXIF_ORIENTATION = 0x0112
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}  # alpha-premultiplied modes -> their straight-alpha twins
KNOWN_MODES = frozenset(
    {
        "1",
        "L",
        "P",
        "RGB",
        "RGBA",
        "LA",
        "PA",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I",
        "F",
        "I;16",
        "I;16L",
        "I;16B",
        "I;16N",
        "RGBX",
    }
)


def sniff_format(head: bytes) -> str:
    """The format of an image file from its first bytes (FORMAT_PLUGINS' names); raises ImageError for
    anything else, before the rest of the file is read or any decoder sees it."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) >= 24 and head[12:16] == b"IHDR" and (head[16:20] == b"\0\0\0\0" or head[20:24] == b"\0\0\0\0"):
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            raise ImageError(f"image has no pixels ({width}x{height})")
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6", b"f") and head[2:3].isspace():
        return "PPM"
    if head.startswith(b"\0\0\1\0"):
        return "ICO"
    if head[4:8] == b"ftyp" and head[8:12] in (
        b"heic",
        b"heix",
        b"heim",
        b"heis",
        b"hevc",
        b"hevx",
        b"mif1",
        b"msf1",
        b"avif",
        b"avis",
    ):
        raise ImageError("HEIC/HEIF/AVIF images are not supported; convert it to JPEG or PNG")
    # TGA has no signature: accept only a plausible header (colour map 0/1, a known image type, a known depth)
    if (
        len(head) >= 18
        and head[1] in (0, 1)
        and head[2] in (1, 2, 3, 9, 10, 11)
        and head[16] in (1, 8, 15, 16, 24, 32)
        and head[12:14] != b"\0\0"
        and head[14:16] != b"\0\0"
    ):
        return "TGA"
    raise ImageError("not an image (unrecognised format)")


def load_image(image: ImageInput) -> Image.Image:
    """Decode a path, file bytes, PIL image or numpy array into a (small enough) PIL image.

    Takes the first frame of animations, applies EXIF orientation and shrinks huge
    images so the longest side is at most WORK_SIZE. Raises ImageError on bad input.
    """
    source: object = image  # untyped callers may pass anything: refused below, not assumed away
    if isinstance(source, np.ndarray):
        img = _from_array(source)
    elif isinstance(source, Image.Image):
        img = _from_pil(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = _decode(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = read_regular_file(source, MAX_FILE_BYTES, sniff_format)
        except FileRefused as e:
            raise ImageError(str(e)) from None
        img = _decode(data)
    else:
        kind = type(source).__name__
        raise ImageError(f"unsupported input type {kind}; expected a path, bytes, PIL image or numpy array")

    if img.width == 0 or img.height == 0:
        raise ImageError(f"image has no pixels ({img.width}x{img.height})")
    if img.mode in _PREMULTIPLIED:
        img = img.convert(_PREMULTIPLIED[img.mode])
    elif img.mode not in KNOWN_MODES:
        raise ImageError(f"unsupported image mode {img.mode!r}")
    if img.mode == "F" and not np.isfinite(np.asarray(img)).all():
        raise ImageError("image contains NaN or infinite values")
    if max(img.size) > WORK_SIZE:
        if min(img.size) * WORK_SIZE < MIN_WORK_SIDE * max(img.size):
            raise ImageError(
                f"image too long and thin to read ({img.width}x{img.height}; once over {WORK_SIZE} px, a side may "
                f"be at most {WORK_SIZE // MIN_WORK_SIDE} times the other): crop it into shorter pieces"
            )
        img = _shrink(img)
    return img


def _from_pil(image: Image.Image) -> Image.Image:
    """A caller's PIL image -> its first frame, loaded, EXIF orientation applied; the caller's image is
    never modified (a later frame it is positioned at is restored)."""
    _check_size(image.size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = image.tell()
            if frame:
                image.seek(0)
            # Pillow (13.0) memory-maps an uncompressed TIFF opened from a file name at its size after the EXIF
            # orientation, which for 5-8 (width and height swapped) scrambles the rows before it turns them:
            # without the file name it reads the file instead, as for a path or bytes given to us.
            unmapped = image.format == "TIFF" and bool(getattr(image, "tile", None))  # (not loaded yet)
            filename = getattr(image, "filename", "") if unmapped else ""
            try:
                if filename:
                    image.filename = ""  # type: ignore[attr-defined]
                image.load()  # lazily opened images may still be truncated
                img = _orient(image, copy=True)
            finally:
                if filename:
                    image.filename = filename  # type: ignore[attr-defined]
                if frame:
                    image.seek(frame)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        raise ImageError(f"image data is truncated or corrupt ({_one_line(e)})") from None
    return img


def _orient(img: Image.Image, copy: bool) -> Image.Image:
    """Apply the EXIF orientation tag (1-8) to the pixels. copy=True never returns img itself."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block is not worth refusing the image for
        orientation = 1
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation if isinstance(orientation, int) else 1)
    if method is None:
        return img.copy() if copy else img
    return img.transpose(method)


def _decode(data: bytes) -> Image.Image:
    """Sniff, size-check and fully decode one image file's bytes, EXIF orientation applied; every failure
    becomes ImageError. (Bytes in memory: nothing stays open, and no copy is needed.)"""
    if not data:
        raise ImageError("empty file")
    fmt = sniff_format(data[:HEAD_BYTES])
    try:
        factory = _opener(fmt)
    except ImportError:
        raise ImageError(f"this Pillow cannot read {fmt} images") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about odd files are not the user's business
            # The plugin's own opener, not Image.open: only this format is tried, and the size limits
            # below are ours (Image.open would refuse a big JPEG before it can be drafted to a small scale).
            img = factory(io.BytesIO(data), "")
            if fmt == "JPEG":  # (MPO, phones' multi-picture JPEG, is opened as a JPEG subclass)
                _check_size(img.size, "JPEG")
                if max(img.size) > WORK_SIZE:
                    # decode straight to grey at 1/2, 1/4 or 1/8 scale (still >= WORK_SIZE): far cheaper
                    img.draft("L" if img.mode in ("L", "RGB") else None, (WORK_SIZE, WORK_SIZE))
            _check_size(img.size)  # header only (after any drafting): nothing decoded yet
            if img.tell():
                img.seek(0)  # first frame of animations
            img.load()  # force the full decode here so truncation is caught here
            if "exif" in img.info or fmt not in ("PNG", "GIF", "BMP"):  # (those keep EXIF only there)
                img = _orient(img, copy=False)
            return img
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large to decode safely") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        KeyError,
        struct.error,
        MemoryError,
        OverflowError,
        ZeroDivisionError,
    ) as e:
        raise ImageError(f"image data is truncated or corrupt ({_one_line(e)[:200]})") from None


def _opener(fmt: str) -> Callable[[io.BytesIO, str], Image.Image]:
    """The Pillow plugin's open function for fmt, importing that plugin (and only it) on first use."""
    importlib.import_module(f"PIL.{FORMAT_PLUGINS[fmt]}")
    return Image.OPEN[fmt][0]


def _check_size(size: tuple[int, int], fmt: str | None = None) -> None:
    """Refuse images with too many pixels to decode safely: MAX_PIXELS, or MAX_JPEG_PIXELS for a JPEG's
    full size (it is decoded at reduced scale, and checked against MAX_PIXELS again at that scale)."""
    w, h = size
    limit = MAX_JPEG_PIXELS if fmt in ("JPEG", "MPO") else MAX_PIXELS
    if w * h > limit:
        raise ImageError(
            f"image too large ({w}x{h} pixels; limit {MAX_PIXELS:,}, or {MAX_JPEG_PIXELS:,} "
            f"for JPEG, which is decoded at reduced scale)"
        )


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _from_array(a: np.ndarray) -> Image.Image:
    """Wrap an HxW or HxWxC (C in 1,3,4) array as a PIL image, keeping 16-bit and float precision."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(f"array must be HxW or HxWxC with C in 1, 3, 4; got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image has no pixels (array shape {a.shape})")
    _check_size((a.shape[1], a.shape[0]))
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("array contains NaN or infinite values")
        a = np.clip(a, 0.0, 1.0)  # documented range; clipping beats guessing a scale
        if a.ndim == 2:
            return Image.fromarray(a.astype(np.float32))  # mode "F": keeps full precision
        a = np.round(a * 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise ImageError(f"integer array values must lie in 0..65535; got {lo}..{hi}")
        if a.dtype != np.uint8 and (a.dtype == np.uint16 or hi > 255):
            if a.ndim == 2:
                return Image.fromarray(a.astype(np.uint16))  # mode "I;16"
            a = np.round(a / 257.0).astype(np.uint8)  # PIL has no 16-bit colour mode
        a = a.astype(np.uint8)
    else:
        raise ImageError(f"unsupported array dtype {a.dtype}; use uint8, uint16, bool or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(a))  # mode L, RGB or RGBA from the shape


def _shrink(img: Image.Image) -> Image.Image:
    """Make the longest side <= WORK_SIZE with area averaging (keeps thin strokes' ink mass).

    Mode conversions and the integer box reduction run on bands of rows, so no full-size copy is made
    beside the decoded image (a 40 MP RGBA PNG peaked at 360 MB with one, 210 MB without)."""
    mode = img.mode
    if "transparency" in img.info or mode in ("PA", "La", "RGBa"):
        mode = "RGBA"  # colour-key or palette transparency can't be averaged; alpha can
    elif mode in ("1", "P"):
        mode = "L"  # nor can bits or palette indices (to_grey would make a palette grey anyway)
    elif mode.startswith("I"):
        mode = "I"  # 16/32-bit integers are averaged as 32-bit integers, then scaled like to_grey does
    elif mode not in ("L", "LA", "RGB", "RGBA", "F"):
        mode = "RGB"  # CMYK, YCbCr, LAB, HSV
    wide = img.mode.startswith("I") and (img.mode != "I" or img.getextrema()[1] > 255)  # type: ignore[operator]
    divisor = 65535.0 if wide else 255.0
    scale = WORK_SIZE / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    factor = int(1 / scale)
    if factor >= 2:  # fast integer box reduction first (alpha-premultiplied, like resize), band by band
        rows = factor * max(1, 2**20 // (img.width * factor))  # ~1 megapixel per band
        small = Image.new(mode, (-(-img.width // factor), -(-img.height // factor)))
        for top in range(0, img.height, rows):
            band = img.crop((0, top, img.width, min(top + rows, img.height)))
            small.paste((band if band.mode == mode else band.convert(mode)).reduce(factor), (0, top // factor))
        img = small
    elif img.mode != mode:
        img = img.convert(mode)
    if mode == "I":
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) / divisor, 0.0, 1.0))
    return img.resize(size, Image.Resampling.BOX)


# -----------------------------------------------------------------------------
# grey conversion


def to_grey(img: Image.Image) -> np.ndarray:
    """Return a float32 HxW array in [0, 1] (1.0 = white), flattening any transparency."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.float32) / 65535.0  # the full 16-bit range, not clipped at 255
    if mode == "I":
        a = np.asarray(img).astype(np.float32)
        return cast(np.ndarray, np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0.0, 1.0))  # 16-bit PNGs open as "I"
    if mode == "F":  # expected in [0, 1]; floats on a 0..255 scale are recognised and rescaled
        a = np.nan_to_num(np.asarray(img, dtype=np.float32))
        return np.clip(a / 255.0 if a.max() > 1.0 else a, 0.0, 1.0)

    has_alpha = (
        mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (mode == "P" and "transparency" in img.info)
        or (mode in ("L", "RGB") and "transparency" in img.info)
    )
    if not has_alpha:
        if mode == "L":  # (from the bytes themselves: np.asarray(img) costs ~2x more per small image)
            grey = np.frombuffer(img.tobytes(), np.uint8).astype(np.float32).reshape(img.height, img.width)
            grey /= 255.0
            return grey
        if mode not in ("1", "L", "P", "RGB"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV -> RGB first
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0

    rgba = img.convert("RGBA")
    grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    return _flatten_alpha(grey, alpha)


def _flatten_alpha(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite onto white or black, whichever contrasts with the opaque pixels.

    Drawings often have black (or white) strokes on a fully transparent background whose
    hidden colour is arbitrary (often (0,0,0,0)); a fixed white or black background would
    erase one of the two cases.
    """
    if alpha.min() >= 1.0 - 0.5 / 255:
        return grey  # fully opaque: alpha carries no information
    total = float(alpha.sum())
    if total == 0.0:
        return np.ones_like(grey)  # fully transparent: nothing to see
    ink = float((grey * alpha).sum()) / total  # alpha-weighted mean luminance of what is drawn
    background = 1.0 if ink < 0.5 else 0.0
    return cast(np.ndarray, grey * alpha + background * (1.0 - alpha))


# -----------------------------------------------------------------------------
# grey -> MNIST


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """Grey image (1.0 = white, any polarity) -> float32 28x28, ink 1.0 on a 0.0 background.

    Returns all zeros when no ink is found.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {grey.shape}")
    crop = _small_flat_crop(grey) if max(grey.shape) <= SMALL_SIDE else None
    if crop is None:  # not the fast case: the general path decides everything
        return _to_mnist_general(grey)
    return ink_to_mnist(crop)


def _to_mnist_general(grey: np.ndarray) -> np.ndarray:
    """to_mnist without the fast path for small clean images (which must give exactly this)."""
    ink = ink_map(grey)
    crop = None if ink is None else _crop(ink)
    if crop is None:
        return np.zeros((CANVAS, CANVAS), np.float32)
    return ink_to_mnist(crop)


def _small_flat_crop(g: np.ndarray) -> np.ndarray | None:
    """The crop of ink_map(g) that _crop takes, for a small image whose border ring is one grey level (MNIST,
    renders, clean scans and drawings) and that has ink against it; None otherwise (then ink_map may still
    find ink against the corners).

    Same arithmetic as ink_map + _crop with a flat background and zero noise, so the same values, but in a
    third of the numpy calls (their overhead, not arithmetic, is a small image's cost): one comparison with
    the paper's level gives the border check, the bounding box and (mostly) the corners' check, and the float
    work is done on the crop only."""
    h, w = g.shape
    level = g[0, 0]
    differs = g != level  # (NaN differs from everything, so a NaN border leaves the fast path)
    rows_differ, cols_differ = differs.any(1), differs.any(0)
    k = max(1, min(h, w) // 20)  # _fit_background's ring (its sample is g itself below 96 px): constant?
    if k == 1:
        if rows_differ[0] or rows_differ[-1] or cols_differ[0] or cols_differ[-1]:
            return None
    elif rows_differ[:k].any() or rows_differ[-k:].any() or cols_differ[:k].any() or cols_differ[-k:].any():
        return None
    rows, cols = rows_differ.nonzero()[0], cols_differ.nonzero()[0]
    if rows.size == 0:
        return None  # blank: ink_map's own rules (the corners) say what that is
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    corner = max(1, min(h, w) // 8)  # _corner_patches' size: only where the box reaches a corner patch ...
    near_corner = (top < corner or bottom > h - corner) and (left < corner or right > w - corner)
    if near_corner and float(np.abs(_corner_patches(g) - float(level)).max()) > BORDER_NOT_PAPER:
        return None  # ... may a corner overrule the fit (ink_map decides)
    crop = g[top:bottom, left:right]
    lowest = crop.min()  # (everything outside the crop is at the level)
    if lowest != lowest:  # NaN inside: the general path keeps its own rules for that
        return None
    dark = False
    if lowest < level:  # (as _ink_against: with nothing below the paper the ink is light, without sums)
        brighter, darker = _brighter_darker(g - level, 1e-4)
        dark = darker > brighter
        if not dark or crop.max() > level:  # ink on one side of the paper only: its box is the box above
            mask = g < level if dark else g > level  # where _ink_against's ink is > 0 (noise floor 0)
            rows_inked, cols_inked = mask.any(1).nonzero()[0], mask.any(0).nonzero()[0]
            if rows_inked.size == 0:
                return None
            top, bottom = int(rows_inked[0]), int(rows_inked[-1]) + 1
            left, right = int(cols_inked[0]), int(cols_inked[-1]) + 1
            crop = g[top:bottom, left:right]
    r = crop - level
    ink = np.subtract(-0.0, r, out=r) if dark else np.subtract(r, 0.0, out=r)  # (the noise floor, 0 here)
    np.maximum(ink, 0.0, out=ink)
    inky = ink[ink > 0]
    top_ink = _percentile(inky, INK_PERCENTILE)
    if top_ink < MIN_CONTRAST:
        return None
    ink /= top_ink
    return cast(np.ndarray, np.minimum(ink, 1.0, out=ink))


def ink_to_mnist(crop: np.ndarray) -> np.ndarray:
    """A tight crop of one digit's ink map (0..1, 1 = full ink) -> float32 28x28 MNIST form: thin strokes
    thickened, fitted into 20x20 keeping the aspect ratio, centre of mass at the centre. All zeros if empty."""
    box = _fit_box(crop)
    if box.sum() <= 0:
        return np.zeros((CANVAS, CANVAS), np.float32)
    return _centre(box)


def preprocess(image: ImageInput) -> np.ndarray:
    """Any image of one digit -> float32 [28, 28] in [0, 1], bright ink on black (zeros if no digit)."""
    return to_mnist(to_grey(load_image(image)))


def preprocess_many(
    images: Iterable[ImageInput], errors: Literal["raise", "return"] = "return"
) -> tuple[np.ndarray, list[ImageError | None]]:
    """preprocess for many images: the digits of the readable ones (float32 [n, 28, 28], in order) and, per
    image, None or the ImageError that refused it.

    errors="raise": raise the first unreadable image's ImageError. errors="return": one bad image never
    stops the others (a decoder bug's exception becomes an ImageError too). Messages name no path.

    Each stage runs over a group of images (up to STAGE_PIXELS loaded pixels) before the next stage: the
    same results as preprocess one image at a time, for ~30 % less CPU time per small image (measured: 190
    vs 280 us per MNIST PNG), as each stage's code and data stay in the caches.
    """
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    results: list[np.ndarray | Exception | None] = []
    group: list[tuple[int, Image.Image]] = []  # loaded images waiting for the later stages: (index, image)
    pixels = 0
    for image in images:
        try:
            loaded = load_image(image)
        except Exception as error:
            results.append(error)
            if errors == "raise":
                _finish_group(group, results, errors)  # an earlier image's failure comes first
                raise
            continue
        group.append((len(results), loaded))
        results.append(None)
        pixels += loaded.width * loaded.height
        if pixels >= STAGE_PIXELS:
            _finish_group(group, results, errors)
            pixels = 0
    _finish_group(group, results, errors)
    digits = [r for r in results if isinstance(r, np.ndarray)]
    failures = [None if isinstance(r, np.ndarray) else as_image_error(r) for r in results]
    return (np.stack(digits) if digits else np.zeros((0, CANVAS, CANVAS), np.float32)), failures


def _finish_group(
    group: list[tuple[int, Image.Image]], results: list[np.ndarray | Exception | None], errors: str
) -> None:
    """to_grey, then to_mnist, over a group of loaded images, into results[index]; the group is emptied.
    With errors="raise", the group's first failure (by index) is raised once all of it is done."""
    greys = []
    for index, loaded in group:
        try:
            greys.append((index, to_grey(loaded)))
        except Exception as error:
            results[index] = error
    for index, grey in greys:
        try:
            results[index] = to_mnist(grey)
        except Exception as error:
            results[index] = error
    if errors == "raise":
        for index, _ in group:
            failure = results[index]
            if isinstance(failure, Exception):
                raise failure
    group.clear()


def as_image_error(error: Exception | None) -> ImageError:
    """An unreadable image's exception as an ImageError (a decoder bug's too): one line, no path."""
    if isinstance(error, ImageError):
        return error
    text = str(error).strip()
    first = text.splitlines()[0][:200] if text else type(error).__name__
    return ImageError(f"unexpected {type(error).__name__} while reading the image: {first}")


def ink_map(g: np.ndarray) -> np.ndarray | None:
    """Polarity + background removal: return ink in [0, 1] (1 = full ink), or None if there is none.

    The background (paper and its lighting) is a smooth surface fitted robustly to the
    pixels that are not ink; ink is whatever sticks out of it. Which side it sticks out
    on decides the polarity, which is more reliable than comparing a border to the whole
    image when the lighting falls off towards the border.

    A digit that fills its box (cut from a form or an envelope, thick pen) covers so much of
    the border that no background can be fitted there; the corners, which digits rarely
    reach, are then the paper.
    """
    surface, sigma = _fit_background(g)
    patches = _corner_patches(g)
    fitted = float(surface if surface.ndim == 0 else surface[[0, 0, -1, -1], [0, -1, 0, -1]].mean())
    # The corners can only overrule the fit when some corner pixel lies far from it (the median of values that
    # are all within BORDER_NOT_PAPER of the fit is too), so the common case costs no medians.
    if float(np.abs(patches - fitted).max()) > BORDER_NOT_PAPER:
        corners = _corner_background(patches)
        if corners is not None and abs(fitted - float(corners[0])) > BORDER_NOT_PAPER:  # the fit took the ink
            return _ink_against(g, *corners)
    ink = _ink_against(g, surface, sigma)
    if ink is None:  # no ink against the fit (all of it counted as border noise): try the corners as the paper
        corners = _corner_background(patches)
        if corners is not None:
            ink = _ink_against(g, *corners)
    return ink


def _corner_patches(g: np.ndarray) -> np.ndarray:
    """The four corner patches' pixels (each sampled at most 8x8), where digits rarely reach."""
    h, w = g.shape
    k = max(1, min(h, w) // 8)
    step = max(1, k // 8)
    return np.concatenate(
        [
            g[:k:step, :k:step].ravel(),
            g[:k:step, -k::step].ravel(),
            g[-k::step, :k:step].ravel(),
            g[-k::step, -k::step].ravel(),
        ]
    )


def _corner_background(patches: np.ndarray) -> tuple[np.ndarray, float] | None:
    """A constant background from the corner patches' pixels (_corner_patches), if they agree."""
    level = float(np.median(patches))
    spread = 1.4826 * float(np.median(np.abs(patches - level)))
    if spread > 0.05:  # the corners disagree: no paper to be found
        return None
    return np.array(level, np.float32), spread


def _ink_against(g: np.ndarray, surface: np.ndarray, sigma: float) -> np.ndarray | None:
    """The ink of g against a background surface with noise sigma (see ink_map)."""
    flat = surface.ndim == 0  # a constant background (see _fit_background)
    r = g - surface
    tol = NOISE_SIGMAS * sigma + 1e-4
    if flat and g.min() >= surface:  # nothing below a flat background (MNIST): light ink, no sums needed
        darker = brighter = 0.0
    else:
        brighter, darker = _brighter_darker(r, tol)
    if darker > brighter:  # dark pen on paper -> invert
        ink = np.subtract(-NOISE_SIGMAS * sigma, r, out=r)  # -r minus the noise floor
        np.maximum(ink, 0.0, out=ink)  # exactly 0 for clean images
        inked = ink > 0
        if not flat:
            # Pen on paper reflects a fraction of the light that falls on it, so in shadow its
            # contrast shrinks with the paper's brightness: divide that out (relative to the
            # typical paper level, to keep the units). The surface is smooth, so the median over
            # the fit's strided sample grid is its median; only inked pixels need the division.
            step = _sample_step(surface.shape)
            typical = float(np.median(np.maximum(surface[::step, ::step], 0.05)))
            ink[inked] *= typical / np.maximum(surface[inked], 0.05)
    else:  # light ink on a dark background (MNIST, chalk, screens): additive
        ink = np.subtract(r, NOISE_SIGMAS * sigma, out=r)
        np.maximum(ink, 0.0, out=ink)
        inked = ink > 0

    inky = ink[inked]
    if inky.size == 0:
        return None
    level = _percentile(inky, INK_PERCENTILE)
    if level < max(MIN_CONTRAST, 3.0 * sigma):  # a few noise specks are not a digit
        return None
    ink /= level
    return cast(np.ndarray, np.minimum(ink, 1.0, out=ink))


def _brighter_darker(r: np.ndarray, tol: float) -> tuple[float, float]:
    """sum(max(r - tol, 0)) and sum(max(-r - tol, 0)), as sum(max(r, tol)) - n tol etc.: two full-resolution
    passes each instead of four (float64 sums keep the difference exact enough). These passes, and the
    in-place ones in _ink_map, are most of a photo's preprocessing time."""
    n_tol = r.size * tol
    return (
        float(np.maximum(r, tol).sum(dtype=np.float64) - n_tol),
        float(-np.minimum(r, -tol).sum(dtype=np.float64) - n_tol),
    )


def _sample_step(shape: tuple[int, ...]) -> int:
    """Stride of the <= ~96x96 sample grid the background is fitted on."""
    return max(1, -(-max(shape) // 96))


def _fit_background(g: np.ndarray) -> tuple[np.ndarray, float]:
    """Robustly fit a smooth surface to the background; return it (a 0-d array when it is a constant)
    and the noise sigma around it.

    Works on a strided (not averaged, so the noise level stays true) sample of <= ~96x96
    pixels. Starts from the border ring, which is mostly background, then alternates
    least squares with rejecting pixels more than 3 sigma away on either side (ink).
    Small images get a plane, larger ones a quadratic (vignetting, curved lighting).
    """
    h, w = g.shape
    step = _sample_step(g.shape)
    s = g[::step, ::step]
    k = max(1, min(s.shape) // 20)
    ring = np.concatenate([s[:k].ravel(), s[-k:].ravel(), s[k:-k, :k].ravel(), s[k:-k, -k:].ravel()])
    lo, hi = ring.min(), ring.max()
    if lo == hi:
        level, spread = float(lo), 0.0  # the common clean case, without the two medians
    else:
        level = np.median(ring)
        spread = 1.4826 * np.median(np.abs(ring - level))
    if spread == 0.0:
        # A perfectly flat border (MNIST, renders, clean scans): the fit below would use only pixels
        # within 1e-3 of this level and return it as a constant with sigma ~0, so skip the work.
        return np.array(level, np.float32), 0.0

    Y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    X = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    yy, xx = Y[::step], X[:, ::step]
    quadratic = min(h, w) >= 64
    terms = [np.ones_like(xx), xx, yy] + ([xx * xx, xx * yy, yy * yy] if quadratic else [])
    A = np.stack([np.broadcast_to(t, s.shape).ravel() for t in terms], axis=1).astype(np.float64)
    v = s.ravel()
    mask = np.abs(v - level) <= 3.0 * spread + 1e-3
    coef = np.zeros(A.shape[1])
    coef[0] = level
    sigma = spread
    for _ in range(5):
        if mask.sum() < 2 * A.shape[1]:
            break  # too little background to fit a surface; keep the last estimate
        Am = A[mask]
        try:  # normal equations: a 6x6 solve, much faster than lstsq's SVD for this well-scaled basis
            coef = np.linalg.solve(Am.T @ Am, Am.T @ v[mask])
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(Am, v[mask], rcond=None)[0]
        res = v - A @ coef
        sigma = 1.4826 * float(np.median(np.abs(res[mask])))
        new = np.abs(res) <= 3.0 * sigma + 1e-3
        if (new == mask).all():
            break
        mask = new

    # Evaluate the surface at full resolution. It is separable per row: c0 + c2 y + c5 y^2 + x (c1 + c4 y)
    # + c3 x^2, so three full-size passes instead of one per term.
    c = coef.astype(np.float32)
    if not quadratic:
        c = np.concatenate([c, np.zeros(3, np.float32)])
    surface = X * (c[1] + c[4] * Y)
    surface += c[0] + c[2] * Y + c[5] * Y * Y
    surface += c[3] * X * X
    return surface, float(sigma)


def _crop(ink: np.ndarray) -> np.ndarray | None:
    """Crop to the digit's bounding box; on large images ignore noise specks and distant marks."""
    h, w = ink.shape
    if max(h, w) <= SMALL_SIDE:  # small (MNIST-like) inputs: every grey level counts, nothing is filtered
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        if rows.size == 0:
            return None
        return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    # drop specks: strong pixels with fewer than 2 strong neighbours (a 1 px line keeps 2)
    strong = ink >= STRONG_INK
    mask = strong & (_box_sum3(strong) >= 3)
    if not mask.any():
        return None
    # then keep the main cluster along each axis in turn (an X-Y cut), so that dust or a
    # stray mark elsewhere on the page doesn't stretch the box
    r0, r1, c0, c1 = 0, h, 0, w
    for _ in range(2):
        a, b = _main_run(mask[r0:r1, c0:c1].sum(1))
        r0, r1 = r0 + a, r0 + b
        a, b = _main_run(mask[r0:r1, c0:c1].sum(0))
        c0, c1 = c0 + a, c0 + b
    # take the faint anti-aliased rim along too, but no empty margin
    crop = ink[max(r0 - 2, 0) : min(r1 + 2, h), max(c0 - 2, 0) : min(c1 + 2, w)]
    rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
    return crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _main_run(profile: np.ndarray) -> tuple[int, int]:
    """[start, end) of the heaviest run of non-zero entries, grown over nearby runs.

    Runs closer than half the current extent are parts of the same digit (a broken
    stroke, a detached bar); farther ones are something else. Gaps up to MIN_GAP of the
    profile's length always join, so a dotted or skipping pen grows from its first dot.
    """
    min_gap = max(2.0, MIN_GAP * profile.size)
    idx = np.flatnonzero(profile)
    cut = np.flatnonzero(np.diff(idx) > 1)
    starts, ends = idx[np.r_[0, cut + 1]], idx[np.r_[cut, idx.size - 1]] + 1
    mass = np.array([profile[s:e].sum() for s, e in zip(starts, ends, strict=False)])
    i = j = int(mass.argmax())
    while True:
        extent = ends[j] - starts[i]
        if i > 0 and starts[i] - ends[i - 1] <= max(extent / 2, min_gap):
            i -= 1
        elif j < len(starts) - 1 and starts[j + 1] - ends[j] <= max(extent / 2, min_gap):
            j += 1
        else:
            return int(starts[i]), int(ends[j])


def _box_sum3(m: np.ndarray) -> np.ndarray:
    """Number of set pixels in each 3x3 neighbourhood (including the pixel itself)."""
    p = np.pad(m.astype(np.uint8), 1)
    rows = p[:-2] + p[1:-1] + p[2:]
    return cast(np.ndarray, rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:])


def _percentile(a: np.ndarray, q: float) -> float:
    """np.percentile(a, q) (linear interpolation) via a partial sort: ~5x faster on small arrays."""
    pos = (a.size - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, a.size - 1)
    part = np.partition(a, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


def _stroke_width(a: np.ndarray) -> float:
    """Mean stroke width in pixels: ink area / (perimeter / 2).

    The area is the ink mass, which stays right for anti-aliased hairlines whose pixels are
    all half-grey; the perimeter is that of the >= 0.3 mask, counted in pixel edges, which
    overestimate a true perimeter by 4/pi on average over directions.
    """
    m = a >= 0.3
    # transitions inside, plus the mask's own pixels on the four borders (edges against the outside);
    # count_nonzero on two strided views of the borders: per-call overhead is this function's cost
    rows, cols = m.shape
    edges = (
        np.count_nonzero(m[1:] != m[:-1])
        + np.count_nonzero(m[:, 1:] != m[:, :-1])
        + np.count_nonzero(m[:: max(1, rows - 1)]) * (2 if rows == 1 else 1)
        + np.count_nonzero(m[:, :: max(1, cols - 1)]) * (2 if cols == 1 else 1)
    )
    return 0.0 if edges == 0 else float(2.0 * a.sum() / (edges * np.pi / 4))


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Scale the crop to fit BOX x BOX (aspect kept, anti-aliased), thickening thin strokes."""
    side = max(crop.shape)
    if _stroke_width(crop) * BOX / side < THIN_W20:
        crop = _thicken(crop)
        side = max(crop.shape)
    if side == BOX:
        return crop  # already MNIST-sized (e.g. an MNIST digit): resampling would only blur it
    scale = BOX / side
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    # BOX = area averaging when shrinking (what anti-aliasing a binary digit means, no ringing);
    # bilinear when enlarging a tiny digit, where BOX would be blocky nearest-neighbour.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return cast(np.ndarray, np.clip(_resize(crop, size, resample), 0.0, 1.0))


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a float array to size = (width, height) with PIL, in float ("F") precision."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=np.float32)).resize(size, resample))


def _thicken(crop: np.ndarray) -> np.ndarray:
    """Bring thin strokes to ~TARGET_W20 at the 20 px scale, working at THICKEN_SIZE resolution.

    Large crops are max-pooled down (a 1 px line survives at full strength instead of
    being averaged into a faint hairline), small ones enlarged; then a max filter
    widens the strokes.
    """
    side = max(crop.shape)
    if side > THICKEN_SIZE:
        f = -(-side // THICKEN_SIZE)
        h, w = crop.shape
        p = np.pad(crop, ((0, -h % f), (0, -w % f)))
        crop = p.reshape(p.shape[0] // f, f, p.shape[1] // f, f).max(axis=(1, 3))
    elif side < THICKEN_SIZE:
        scale = THICKEN_SIZE / side
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = _resize(crop, size, Image.Resampling.BILINEAR)
    # a hairline rarely covers a whole pixel, so its pixels are grey: count half-covered
    # ones as full ink (the strokes are about to be widened anyway)
    crop = np.clip(2.0 * crop, 0.0, 1.0)
    side = max(crop.shape)
    r = int(round((TARGET_W20 * side / BOX - _stroke_width(crop)) / 2))  # a radius-r disc adds 2r
    if r < 1:
        return crop
    # max filter over a disc: widens strokes equally in every direction (a square would
    # widen diagonals by sqrt(2) more than verticals) and leaves pen-like round ends
    radius = r + 0.5
    p = np.pad(crop, r)  # room for the strokes to grow past the old border
    out: np.ndarray = p.copy()
    h, w = crop.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                view = out[r + dy : r + dy + h, r + dx : r + dx + w]
                np.maximum(view, crop, out=view)  # stamp the crop shifted by (dy, dx)
    return out


_INDEX = np.arange(CANVAS, dtype=np.float32)  # pixel indices for _centre's moments (made once: small images)


def _centre(box: np.ndarray) -> np.ndarray:
    """Place the box in a 28x28 canvas with its centre of mass at (14, 14), by an integer shift."""
    h, w = box.shape
    rows, cols = box.sum(1), box.sum(0)
    mass = float(rows.sum())
    index = _INDEX if rows.dtype == np.float32 and max(h, w) <= _INDEX.size else np.arange(max(h, w), dtype=rows.dtype)
    cy = float(rows @ index[:h]) / mass
    cx = float(cols @ index[:w]) / mass
    # round half up, then keep the whole digit inside the canvas
    top = min(max(math.floor(CENTRE - cy + 0.5), 0), CANVAS - h)
    left = min(max(math.floor(CENTRE - cx + 0.5), 0), CANVAS - w)
    out = np.zeros((CANVAS, CANVAS), np.float32)
    out[top : top + h, left : left + w] = box
    return out
