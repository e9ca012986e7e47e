"""Load untrusted image and mask files safely as upright 8-bit RGB images and 0/255 masks.

Every file is treated as hostile: the pixel count is checked from the header before any decode,
only the formats named in ``IMAGE_SUFFIXES`` are parsed, the whole file is decoded up front so
truncation is caught here rather than later, and every failure becomes a one-line ``ImageError``
naming the file and a fix. Pillow's global settings are never changed.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

from ..core.errors import ImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "image_size",
    "is_image_file",
    "load_image",
    "load_mask",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
MAX_IMAGE_PIXELS: int = 64_000_000

# Pillow plugins allowed to parse a file. Restricting them keeps exotic parsers (and EPS, which
# runs Ghostscript) away from untrusted input. Phone MPO files come through the JPEG plugin
# ("MPO" is not an open format: naming it here makes Image.open raise KeyError).
_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
_FORMAT_NAMES = "JPEG, PNG, BMP, TIFF or WebP"

_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"})
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_BIT_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}

_ORIENTATION = ExifTags.Base.Orientation
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 or 270 degrees

# What Pillow raises on malformed input besides OSError (its parsers are not uniform about it).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ArithmeticError,
)

_FIX_RECOPY = "re-copy or re-export the file; it was probably cut off or damaged in transfer"
_FIX_REEXPORT = "re-export the image as 8-bit RGB PNG or JPEG"


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image suffix accepted when scanning folders (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an upright 8-bit RGB image.

    EXIF orientation is applied. Transparent pixels are composited onto white. 16-bit greyscale is
    scaled by its bit range (``value >> 8``), 16-bit RGB PNGs keep their high byte, mode ``I`` must
    hold 16-bit values, and float (``F``) images are read as 0..1 when every value lies in
    [0, 1], otherwise as 0..255 (clipped). Any unreadable, truncated, oversized (more than
    ``max_pixels`` pixels) or unsupported file raises ``ImageError``.
    """
    path = Path(path)
    with _open(path, max_pixels) as img:
        upright = _decode_upright(img, path)
    with _pil_errors(path, "cannot convert the image to RGB", _FIX_REEXPORT):
        return _to_rgb(upright, path)


def load_mask(path: str | Path, *, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a lesion mask as a uint8 ``(H, W)`` array of 0 and 255.

    The upright mask's greyscale (luminance for colour, palette and RGBA masks; alpha ignored) is
    thresholded at 128. With ``expected_size=(w, h)``, a mask of another size raises ``ImageError``.
    """
    path = Path(path)
    with _open(path, MAX_IMAGE_PIXELS) as img:
        upright = _decode_upright(img, path)
    with _pil_errors(path, "cannot convert the mask to greyscale", _FIX_REEXPORT):
        grey = _to_grey(upright, path)
    if expected_size is not None and grey.size != tuple(expected_size):
        width, height = grey.size
        raise ImageError(
            f"mask is {width}x{height} but its image is {expected_size[0]}x{expected_size[1]}",
            path=path,
            fix="masks must have the image's size",
        )
    return np.where(np.asarray(grey) >= 128, 255, 0).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of ``path`` after EXIF orientation, read without decoding the pixels."""
    path = Path(path)
    with (
        _open(path, max_pixels=None) as img,
        _pil_errors(path, "cannot read the image's EXIF metadata", _FIX_REEXPORT),
    ):
        return _oriented_size(img, path)


@contextmanager
def _pil_errors(path: Path, what: str, fix: str) -> Iterator[None]:
    """Turn what Pillow raises on a bad file into one ``ImageError`` line: ``what (detail)``."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception when warnings are errors (e.g. ``-W error``).
        raise ImageError(
            f"image is too large to decode safely: {exc}",
            path=path,
            fix="downscale the image before loading it",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"not a {_FORMAT_NAMES} image (the contents are not a recognised image format)",
            path=path,
            fix="check the file really is an image (its suffix alone does not make it one) and re-export it as PNG or JPEG",
        ) from exc
    except _DECODE_ERRORS as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ImageError(f"{what} ({detail})", path=path, fix=fix) from exc


def _check_file(path: Path) -> None:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageError("file not found", path=path, fix="check the path and its case") from exc
    except OSError as exc:
        raise ImageError(
            f"cannot access the file ({exc.strerror or exc})",
            path=path,
            fix="check the file's permissions",
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file", path=path, fix="pass an image file, not a folder")
    if info.st_size == 0:
        raise ImageError("file is empty (0 bytes)", path=path, fix=_FIX_RECOPY)


def _open(path: Path, max_pixels: int | None) -> ImageFile.ImageFile:
    """Open ``path`` lazily (header only) and check its dimensions; the caller closes it."""
    _check_file(path)
    with _pil_errors(path, "cannot read the image header", _FIX_RECOPY):
        img = Image.open(path, formats=_FORMATS)
    try:
        _check_dimensions(img, path, max_pixels)
    except ImageError:
        img.close()
        raise
    return img


def _check_dimensions(img: Image.Image, path: Path, max_pixels: int | None) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has a zero-size dimension ({width}x{height})", path=path, fix=_FIX_RECOPY)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of max_pixels={max_pixels} (possible decompression bomb)",
            path=path,
            fix=f"downscale it to at most {max_pixels} pixels, or raise max_pixels if you trust it",
        )


def _decode_upright(img: ImageFile.ImageFile, path: Path) -> Image.Image:
    """Decode every pixel (so truncation is detected now) and apply the EXIF orientation."""
    with _pil_errors(path, "image data is truncated or corrupt", _FIX_RECOPY):
        img.load()
    with _pil_errors(path, "cannot apply the image's EXIF orientation", _FIX_REEXPORT):
        ImageOps.exif_transpose(img, in_place=True)  # no copy: the caller converts it anyway
    return img


def _oriented_size(img: ImageFile.ImageFile, path: Path) -> tuple[int, int]:
    width, height = img.size
    if _header_orientation(img, path) not in _SWAPS_AXES:
        return width, height
    if isinstance(img, TiffImagePlugin.TiffImageFile):
        stored = (
            img.tag_v2.get(TiffImagePlugin.IMAGEWIDTH),
            img.tag_v2.get(TiffImagePlugin.IMAGELENGTH),
        )
        if stored != (width, height):
            return width, height  # recent Pillow's TIFF plugin already reports the oriented size
    return height, width


def _header_orientation(img: ImageFile.ImageFile, path: Path) -> int:
    if img.format != "PNG":
        return img.getexif().get(_ORIENTATION, 1)
    # PngImageFile.getexif() decodes the whole image when no eXIf chunk precedes the pixel data,
    # so look for a trailing one ourselves and use the base (metadata-only) implementation.
    if "exif" not in img.info:
        trailing = _png_trailing_exif(path)
        if trailing is not None:
            img.info["exif"] = trailing
    return Image.Image.getexif(img).get(_ORIENTATION, 1)


def _png_trailing_exif(path: Path) -> bytes | None:
    """The payload of the first eXIf chunk of a PNG, walking chunk headers only."""
    with path.open("rb") as handle:
        size = path.stat().st_size
        handle.seek(8)  # PNG signature
        while (header := handle.read(8)) and len(header) == 8:
            length, kind = struct.unpack(">I4s", header)
            if length > size - handle.tell():  # a length past the end: truncated or hostile
                return None
            if kind == b"eXIf":
                return b"Exif\x00\x00" + handle.read(length)
            if kind == b"IEND":
                return None
            handle.seek(length + 4, 1)  # chunk data and CRC
    return None


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    if img.mode in _HIGH_BIT_MODES:
        img = _high_bit_to_grey(img, path, keep_transparency=True)
    elif img.mode not in _EIGHT_BIT_MODES | _ALPHA_MODES:
        raise _unsupported_mode(img, path)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_white(img)
    return img.convert("RGB")


def _to_grey(img: Image.Image, path: Path) -> Image.Image:
    if img.mode in _HIGH_BIT_MODES:
        return _high_bit_to_grey(img, path, keep_transparency=False)
    if img.mode not in _EIGHT_BIT_MODES | _ALPHA_MODES:
        raise _unsupported_mode(img, path)
    return img.convert("L")


def _composite_on_white(img: Image.Image) -> Image.Image:
    # White, not black: transparent areas are cut-away background, and black would mimic the
    # dermatoscope's dark vignette and pigmented structures that models key on.
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _high_bit_to_grey(img: Image.Image, path: Path, *, keep_transparency: bool) -> Image.Image:
    """An ``L`` image (``LA`` for a transparent colour key) from a 16-bit, ``I`` or ``F`` image."""
    values = np.asarray(img)
    if img.mode == "F":
        grey = _float_to_uint8(values, path)
    else:
        if img.mode == "I":
            _require_16_bit_range(values, path)
        # Pillow's own convert("L") clips 16-bit values at 255 instead of scaling them.
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
    key = img.info.get("transparency")
    if not keep_transparency or not isinstance(key, int):
        return Image.fromarray(grey)
    alpha = np.where(values == key, 0, 255).astype(np.uint8)
    return Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha)))


def _require_16_bit_range(values: np.ndarray, path: Path) -> None:
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(
            f"32-bit integer image with values {values.min()}..{values.max()} outside 0..65535",
            path=path,
            fix="export it as 8- or 16-bit greyscale or RGB",
        )


def _float_to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ImageError(
            "floating-point image contains NaN or infinite values",
            path=path,
            fix="export it as 8- or 16-bit greyscale or RGB",
        )
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _unsupported_mode(img: Image.Image, path: Path) -> ImageError:
    return ImageError(f"unsupported image mode {img.mode!r}", path=path, fix=_FIX_REEXPORT)
