"""The one Preprocess: geometry that keeps the aspect ratio, normalisation, and its round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgederm.core.preprocess import Preprocess


def test_letterbox_keeps_aspect_and_pads_with_the_mean():
    pre = Preprocess(input_size=64, resize="letterbox")
    pixels = pre.fit(Image.new("RGB", (200, 100), (255, 0, 0)))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[0, 0]) == pre.pad_rgb  # padding above the 2:1 image
    assert tuple(pixels[32, 32]) == (255, 0, 0)
    assert (pixels[:, :, 0] == 255).sum() == 64 * 32  # the image fills a 64x32 band
    # Padding normalises to (almost) zero, so it carries no signal.
    assert np.abs(pre(Image.new("RGB", (200, 100)))[:, 0, 0]).max() < 0.01 + np.abs(pre.normalize(np.zeros((1, 1, 3), np.uint8))).max()


def test_center_crop_fills_the_square():
    pre = Preprocess(input_size=32, resize="center_crop")
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((0, 255, 0), (0, 0, 75, 100))  # inside the left third, which is cropped away
    pixels = pre.fit(image)
    assert pixels.shape == (32, 32, 3) and (pixels[..., 2] > 250).all()


def test_normalize_matches_the_formula_and_layouts():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    pre = Preprocess(input_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    nchw = pre.normalize(pixels)
    assert nchw.shape == (2, 3, 8, 8) and nchw.dtype == np.float32
    expected = (pixels[1, 3, 4, 2] / 255 - 0.3) / 0.5
    assert nchw[1, 2, 3, 4] == pytest.approx(expected, abs=1e-6)
    nhwc = Preprocess(input_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), layout="NHWC").normalize(pixels)
    np.testing.assert_allclose(np.moveaxis(nhwc, -1, 1), nchw)


@pytest.mark.parametrize("mean, std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((127 / 255,) * 3, (128 / 255,) * 3)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_the_byte_table_is_bit_identical_to_the_float_formula(mean, std, layout):
    every_byte = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    pixels = np.concatenate([every_byte, np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)])
    pre = Preprocess(input_size=16, mean=mean, std=std, layout=layout)
    formula = (pixels.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    for asked in ("NCHW", "NHWC"):
        got = pre.normalize(pixels, layout=asked)
        expected = np.moveaxis(formula, -1, 1) if asked == "NCHW" else formula
        assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, expected)
    assert np.array_equal(pre.normalize(pixels.astype(np.float32)), pre.normalize(pixels))  # non-byte input: the formula itself
    assert pre.normalize(pixels[:0]).shape[0] == 0


@pytest.mark.parametrize("size", [(1, 1), (4000, 1), (1, 4000), (3, 2)])
def test_extreme_shapes_still_give_a_full_input(size):
    pre = Preprocess(input_size=32)
    assert pre(Image.new("RGB", size, (10, 20, 30))).shape == (3, 32, 32)


@pytest.mark.parametrize("resize", ["letterbox", "center_crop"])
def test_mask_geometry_round_trip(resize):
    pre = Preprocess(input_size=96, resize=resize)
    mask = np.zeros((150, 200), np.uint8)
    mask[40:110, 60:150] = 255  # a central lesion survives both policies
    back = pre.unfit_mask(pre.fit_mask(mask), (200, 150))
    assert back.shape == mask.shape
    assert (back == mask).mean() > 0.98


def test_round_trips_through_json_and_validates():
    pre = Preprocess(input_size=192, resize="center_crop", mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    for bad in ({"input_size": 4}, {"resize": "squash"}, {"layout": "CHW"}, {"std": (0, 1, 1)}):
        with pytest.raises(ValueError):
            Preprocess(**bad)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(16, 80), st.sampled_from(["letterbox", "center_crop"]))
def test_property_any_image_size_gives_the_input_shape(width, height, side, resize):
    pre = Preprocess(input_size=side, resize=resize)
    out = pre(Image.new("RGB", (width, height), (200, 100, 50)))
    assert out.shape == (3, side, side) and np.isfinite(out).all()
    geo = pre.geometry(width, height)
    if resize == "letterbox":
        assert max(geo.scaled_size) == side and min(geo.scaled_size) >= 1
    else:
        assert min(geo.scaled_size) == side
