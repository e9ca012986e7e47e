"""Tests for edgederm.data.images: safe decoding of untrusted image and mask files."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFile

from edgederm.core.errors import ImageError
from edgederm.data.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    image_size,
    is_image_file,
    load_image,
    load_mask,
)

ORIENTATION_TAG = 0x0112


# ---------------------------------------------------------------------------- helpers


def save(tmp_path: Path, name: str, img: Image.Image, **params) -> Path:
    path = tmp_path / name
    img.save(path, **params)
    return path


def pixels(img: Image.Image) -> list:
    return np.asarray(img).tolist()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int, colour_type: int, rows: bytes, after_idat: bytes = b"") -> bytes:
    """A minimal PNG built by hand, for files Pillow cannot write (16-bit RGB, lying headers)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows)) + after_idat + png_chunk(b"IEND", b"")
    )


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif


def error_for(call, *args, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        call(*args, **kwargs)
    return info.value


def assert_one_line_naming(error: ImageError, path: Path) -> None:
    text = str(error)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert error.path == str(path)
    assert "(fix: " in text


# ---------------------------------------------------------------------------- suffixes


def test_image_suffixes_are_lowercase_and_complete():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_SUFFIXES
    assert MAX_IMAGE_PIXELS == 64_000_000


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("a.JPG", True),
        ("b.Jpeg", True),
        ("c.tiff", True),
        ("d.WebP", True),
        ("e.gif", False),
        ("f.txt", False),
        ("jpg", False),
        ("g.jpg.txt", False),
    ],
)
def test_is_image_file_by_suffix_case_insensitive(name, expected):
    assert is_image_file(Path(name)) is expected


# ---------------------------------------------------------------------------- modes


def test_rgb_png_round_trips_exactly(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    img = load_image(save(tmp_path, "rgb.png", Image.fromarray(data)))
    assert img.mode == "RGB"
    assert img.size == (5, 4)
    np.testing.assert_array_equal(np.asarray(img), data)


def test_accepts_str_path_and_returns_loaded_image(tmp_path):
    path = save(tmp_path, "x.png", Image.new("RGB", (3, 2), (10, 20, 30)))
    img = load_image(str(path))
    path.unlink()  # the returned image must not depend on the file any more
    assert pixels(img.getpixel((2, 1))) == [10, 20, 30]


def test_one_bit(tmp_path):
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    out = load_image(save(tmp_path, "bits.png", img))
    assert out.mode == "RGB"
    assert pixels(out) == [[[0, 0, 0], [255, 255, 255]]]


def test_greyscale(tmp_path):
    img = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert pixels(load_image(save(tmp_path, "l.png", img))) == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def test_greyscale_alpha_composited_on_white(tmp_path):
    img = Image.new("LA", (3, 1))
    img.putdata([(50, 255), (50, 0), (0, 128)])
    out = load_image(save(tmp_path, "la.png", img))
    assert out.mode == "RGB"
    first, second, third = np.asarray(out)[0]
    assert first.tolist() == [50, 50, 50]
    assert second.tolist() == [255, 255, 255]
    assert np.all(np.abs(third.astype(int) - 127) <= 1)


def test_palette_colours_preserved(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([200, 30, 40, 10, 220, 30, 5, 6, 250])
    img.putdata([0, 1, 2])
    out = load_image(save(tmp_path, "p.png", img))
    assert out.mode == "RGB"
    assert pixels(out) == [[[200, 30, 40], [10, 220, 30], [5, 6, 250]]]


@pytest.mark.parametrize("transparency", [1, bytes([255, 0, 0])])
def test_palette_transparency_composited_on_white(tmp_path, transparency):
    img = Image.new("P", (3, 1))
    img.putpalette([200, 30, 40, 10, 220, 30, 5, 6, 250])
    img.putdata([0, 1, 2])
    out = load_image(save(tmp_path, "pt.png", img, transparency=transparency))
    expected_last = [255, 255, 255] if isinstance(transparency, bytes) else [5, 6, 250]
    assert pixels(out) == [[[200, 30, 40], [255, 255, 255], expected_last]]


def test_rgba_fully_transparent_becomes_white(tmp_path):
    img = Image.new("RGBA", (4, 3), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    out = load_image(save(tmp_path, "rgba.png", img))
    data = np.asarray(out)
    assert out.mode == "RGB"
    assert data[0, 0].tolist() == [10, 20, 30]
    assert (data.reshape(-1, 3)[1:] == 255).all()


def test_colour_key_transparency_composited(tmp_path):
    grey = Image.fromarray(np.array([[0, 100]], dtype=np.uint8))
    rgb = Image.fromarray(np.array([[[1, 2, 3], [10, 20, 30]]], dtype=np.uint8))
    assert pixels(load_image(save(tmp_path, "l.png", grey, transparency=100))) == [[[0, 0, 0], [255, 255, 255]]]
    assert pixels(load_image(save(tmp_path, "rgb.png", rgb, transparency=(10, 20, 30)))) == [[[1, 2, 3], [255, 255, 255]]]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_cyan_comes_back_cyan(tmp_path, suffix):
    path = save(tmp_path, f"cmyk{suffix}", Image.new("CMYK", (8, 8), (255, 0, 0, 0)))
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    red, green, blue = np.asarray(load_image(path)).reshape(-1, 3).mean(axis=0)
    assert red < 30 and green > 225 and blue > 225


def test_ycbcr_tiff(tmp_path):
    path = save(tmp_path, "ycc.tif", Image.new("RGB", (4, 4), (220, 20, 30)).convert("YCbCr"))
    with Image.open(path) as check:
        assert check.mode == "YCbCr"
    out = load_image(path)
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out).astype(int) - [220, 20, 30]).max() <= 4


SIXTEEN = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
SIXTEEN_AS_8 = [0, 0, 1, 128, 255]


def test_sixteen_bit_png_scaled_not_clipped(tmp_path):
    path = save(tmp_path, "i16.png", Image.fromarray(SIXTEEN))
    with Image.open(path) as check:
        assert check.mode == "I;16"
    out = load_image(path)
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == SIXTEEN_AS_8
    assert (np.asarray(out) == np.asarray(out)[..., :1]).all()


def test_sixteen_bit_big_endian_tiff(tmp_path):
    img = Image.frombytes("I;16B", (5, 1), SIXTEEN.astype(">u2").tobytes())
    path = save(tmp_path, "i16b.tif", img)
    with Image.open(path) as check:
        assert check.mode == "I;16B"
    assert np.asarray(load_image(path))[0, :, 1].tolist() == SIXTEEN_AS_8


def test_mode_i_holding_16_bit_values(tmp_path):
    path = save(tmp_path, "i32.tif", Image.fromarray(SIXTEEN.astype(np.int32)))
    with Image.open(path) as check:
        assert check.mode == "I"
    assert np.asarray(load_image(path))[0, :, 2].tolist() == SIXTEEN_AS_8


def test_mode_i_beyond_16_bits_is_unsupported(tmp_path):
    path = save(tmp_path, "i32.tif", Image.fromarray(np.array([[0, 70000]], dtype=np.int32)))
    error = error_for(load_image, path)
    assert "70000" in str(error)
    assert_one_line_naming(error, path)


def test_sixteen_bit_colour_key_transparency(tmp_path):
    path = save(tmp_path, "i16t.png", Image.fromarray(SIXTEEN), transparency=32768)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 0, 1, 255, 255]


def test_sixteen_bit_rgb_png(tmp_path):
    values = np.array([[[65535, 32768, 0], [256, 255, 4660]]], dtype=">u2")
    rows = b"\x00" + values.tobytes()
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, rows))
    assert pixels(load_image(path)) == [[[255, 128, 0], [1, 0, 18]]]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 127.6, 300.0], [0, 128, 255])],
)
def test_float_images(tmp_path, values, expected):
    path = save(tmp_path, "f.tif", Image.fromarray(np.array([values], dtype=np.float32)))
    with Image.open(path) as check:
        assert check.mode == "F"
    assert np.asarray(load_image(path))[0, :, 0].tolist() == expected


def test_float_nan_rejected(tmp_path):
    path = save(tmp_path, "nan.tif", Image.fromarray(np.array([[0.0, np.nan]], np.float32)))
    error = error_for(load_image, path)
    assert "NaN" in str(error)
    assert_one_line_naming(error, path)


def test_unsupported_mode(tmp_path):
    path = save(tmp_path, "lab.tif", Image.new("LAB", (2, 2)))
    error = error_for(load_image, path)
    assert "unsupported image mode 'LAB'" in str(error)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize(
    ("name", "params"),
    [("x.jpg", {"quality": 95}), ("x.bmp", {}), ("x.webp", {"lossless": True}), ("x.tif", {})],
)
def test_other_formats_decode(tmp_path, name, params):
    path = save(tmp_path, name, Image.new("RGB", (6, 4), (30, 120, 200)), **params)
    out = load_image(path)
    assert out.size == (6, 4)
    assert np.abs(np.asarray(out).astype(int) - [30, 120, 200]).max() <= 3


# ---------------------------------------------------------------------------- orientation

# Stored pixels that each EXIF orientation turns into UPRIGHT, written out from the EXIF spec
# ("row 0 is at the visual ..., column 0 at the visual ...") with numpy rather than Pillow.
UPRIGHT = np.array(
    [
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        [[255, 255, 0], [0, 255, 255], [40, 40, 40]],
    ],
    dtype=np.uint8,
)
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # displayed after rotating 90 degrees clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", {}),
        (".tif", {}),
        (".tif", {"compression": "tiff_lzw"}),
        (".webp", {"lossless": True}),
    ],
)
def test_exif_orientation_lossless(tmp_path, orientation, suffix, params):
    stored = np.ascontiguousarray(STORED[orientation](UPRIGHT))
    path = save(
        tmp_path,
        f"o{orientation}{suffix}",
        Image.fromarray(stored),
        exif=exif_with_orientation(orientation),
        **params,
    )
    out = load_image(path)
    np.testing.assert_array_equal(np.asarray(out), UPRIGHT)
    assert image_size(path) == (3, 2)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(tmp_path, orientation):
    blocks = np.kron(UPRIGHT, np.ones((16, 16, 1), dtype=np.uint8))  # 48x32, JPEG-friendly
    stored = np.ascontiguousarray(STORED[orientation](blocks))
    path = save(
        tmp_path,
        f"o{orientation}.jpg",
        Image.fromarray(stored),
        exif=exif_with_orientation(orientation),
        quality=95,
    )
    out = np.asarray(load_image(path)).astype(int)
    assert out.shape == (32, 48, 3)
    centres = out[8::16, 8::16]
    assert np.abs(centres - UPRIGHT).max() <= 12
    assert image_size(path) == (48, 32)


def test_orientation_with_palette_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([200, 30, 40, 10, 220, 30])
    img.putdata([0, 1])
    path = save(tmp_path, "pt6.png", img, transparency=1, exif=exif_with_orientation(6))
    assert pixels(load_image(path)) == [[[200, 30, 40]], [[255, 255, 255]]]


def test_image_size_sees_exif_chunk_after_pixel_data(tmp_path):
    stored = np.ascontiguousarray(STORED[6](UPRIGHT))
    raw = exif_with_orientation(6).tobytes()
    assert raw.startswith(b"Exif\x00\x00")
    rows = b"".join(b"\x00" + row.tobytes() for row in stored)
    path = tmp_path / "late_exif.png"
    height, width = stored.shape[:2]
    path.write_bytes(png_bytes(width, height, 8, 2, rows, png_chunk(b"eXIf", raw[6:])))
    with Image.open(path) as check:
        assert "exif" not in check.info  # Pillow only finds it after decoding
    assert image_size(path) == (3, 2)
    np.testing.assert_array_equal(np.asarray(load_image(path)), UPRIGHT)


def test_image_size_does_not_decode(tmp_path):
    # A header-only PNG with no pixel data: decoding would fail, reading the size must not.
    path = tmp_path / "header_only.png"
    path.write_bytes(png_bytes(300, 200, 8, 2, b""))
    assert image_size(path) == (300, 200)
    assert_one_line_naming(error_for(load_image, path), path)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(1, 1), (4000, 1), (1, 4000)])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_tiny_and_elongated(tmp_path, size, suffix):
    path = save(tmp_path, f"s{suffix}", Image.new("RGB", size, (250, 250, 250)))
    out = load_image(path)
    assert out.size == size
    assert out.mode == "RGB"
    assert np.asarray(out).min() >= 240
    assert image_size(path) == size


# ---------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    for call in (load_image, load_mask, image_size):
        error = error_for(call, path)
        assert "not found" in str(error)
        assert_one_line_naming(error, path)


def test_directory(tmp_path):
    path = tmp_path / "folder.png"
    path.mkdir()
    error = error_for(load_image, path)
    assert "not a regular file" in str(error)
    assert_one_line_naming(error, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    for call in (load_image, load_mask, image_size):
        error = error_for(call, path)
        assert "empty" in str(error)
        assert_one_line_naming(error, path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("patient 12, left forearm\nsecond line\n")
    for call in (load_image, load_mask, image_size):
        error = error_for(call, path)
        assert "not a JPEG" in str(error)
        assert_one_line_naming(error, path)


def test_format_outside_the_allow_list_is_refused(tmp_path):
    path = save(tmp_path, "anim.gif", Image.new("RGB", (4, 4), (1, 2, 3)))
    assert_one_line_naming(error_for(load_image, path), path)


def noisy(width: int = 64, height: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_truncated_files(tmp_path, suffix):
    path = save(tmp_path, f"cut{suffix}", noisy())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = error_for(load_image, path)
    assert_one_line_naming(error, path)
    assert_one_line_naming(error_for(load_mask, path), path)


def test_corrupt_png_data(tmp_path):
    path = save(tmp_path, "bad.png", noisy())
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 20 : start + 60] = bytes(40)  # wreck the deflate stream
    path.write_bytes(bytes(data))
    assert_one_line_naming(error_for(load_image, path), path)


def test_bomb_by_max_pixels(tmp_path):
    path = save(tmp_path, "big.png", Image.new("RGB", (100, 100)))
    error = error_for(load_image, path, max_pixels=5000)
    assert "10000 pixels" in str(error)
    assert "5000" in str(error)
    assert_one_line_naming(error, path)
    assert load_image(path, max_pixels=10000).size == (100, 100)


def test_bomb_header_claims_huge_size(tmp_path):
    # 9000x9000 = 81M pixels: above our default limit but below Pillow's own warning threshold.
    path = tmp_path / "claims_huge.png"
    path.write_bytes(png_bytes(9000, 9000, 8, 0, b""))
    assert path.stat().st_size < 200
    error = error_for(load_image, path)
    assert "81000000 pixels" in str(error)
    assert str(MAX_IMAGE_PIXELS) in str(error)
    assert_one_line_naming(error, path)


def test_bomb_beyond_pillows_own_limit(tmp_path):
    path = tmp_path / "claims_enormous.png"
    path.write_bytes(png_bytes(100_000, 100_000, 8, 0, b""))
    error = error_for(load_image, path, max_pixels=10**12)
    assert "limit" in str(error)
    assert_one_line_naming(error, path)


def test_pillow_bomb_warning_as_error(tmp_path):
    path = tmp_path / "claims_large.png"
    path.write_bytes(png_bytes(10_000, 10_000, 8, 0, b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        error = error_for(load_image, path, max_pixels=10**9)
    assert "limit" in str(error)
    assert_one_line_naming(error, path)


def test_zero_size_dimension(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(png_bytes(0, 5, 8, 0, b""))
    assert_one_line_naming(error_for(load_image, path), path)
    assert_one_line_naming(error_for(image_size, path), path)


def test_global_pillow_state_untouched(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    good = save(tmp_path, "ok.png", Image.new("RGB", (3, 3)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    load_image(good, max_pixels=10**10)
    with pytest.raises(ImageError):
        load_image(bad)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


# ---------------------------------------------------------------------------- masks


def test_mask_threshold_at_128(tmp_path):
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    mask = load_mask(save(tmp_path, "m.png", Image.fromarray(grey)))
    assert mask.dtype == np.uint8
    assert mask.shape == (1, 4)
    assert mask.tolist() == [[0, 0, 255, 255]]


def test_mask_palette_and_one_bit(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 100, 100, 100, 200, 200, 200])
    palette.putdata([0, 1, 2])
    assert load_mask(save(tmp_path, "p.png", palette)).tolist() == [[0, 0, 255]]
    bits = Image.new("1", (2, 1))
    bits.putpixel((0, 0), 1)
    assert load_mask(save(tmp_path, "b.png", bits)).tolist() == [[255, 0]]


def test_mask_rgba_uses_luminance_not_alpha(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 255, 255, 0), (0, 0, 0, 255), (255, 0, 0, 255)])  # red luminance = 76
    assert load_mask(save(tmp_path, "m.png", img)).tolist() == [[255, 0, 0]]


def test_mask_greyscale_alpha_ignores_alpha(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(200, 0), (20, 255)])
    assert load_mask(save(tmp_path, "la.png", img)).tolist() == [[255, 0]]


def test_mask_sixteen_bit(tmp_path):
    mask = load_mask(save(tmp_path, "m16.png", Image.fromarray(SIXTEEN)))
    assert mask.tolist() == [[0, 0, 0, 255, 255]]


def test_mask_exif_orientation(tmp_path):
    upright = np.array([[255, 0, 0], [0, 0, 0]], dtype=np.uint8)
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    path = save(tmp_path, "m6.png", Image.fromarray(stored), exif=exif_with_orientation(6))
    assert load_mask(path, expected_size=(3, 2)).tolist() == upright.tolist()


def test_mask_size_mismatch(tmp_path):
    path = save(tmp_path, "m.png", Image.new("L", (4, 3)))
    assert load_mask(path, expected_size=(4, 3)).shape == (3, 4)
    error = error_for(load_mask, path, expected_size=(3, 4))
    assert "4x3" in str(error) and "3x4" in str(error)
    assert "masks must have the image's size" in str(error)
    assert_one_line_naming(error, path)


# ---------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=arrays(
        np.uint8,
        st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3)),
        elements=st.integers(0, 255),
    )
)
def test_rgb_png_round_trip_property(tmp_path, data):
    path = save(tmp_path, "prop.png", Image.fromarray(data))
    np.testing.assert_array_equal(np.asarray(load_image(path)), data)
    assert image_size(path) == (data.shape[1], data.shape[0])
    assert set(np.unique(load_mask(path)).tolist()) <= {0, 255}
