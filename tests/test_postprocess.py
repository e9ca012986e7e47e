"""Mask post-processing (numpy only): largest component, hole filling, thresholding, edge cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import cli_env

from edgederm.runtime.postprocess import fill_holes, largest_component, postprocess_mask

ALL = {"threshold": 0.5, "largest_component": True, "fill_holes": True}


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_largest_component_keeps_the_biggest_blob_only():
    big, small = _disk((40, 50), (20, 15), 8), _disk((40, 50), (10, 42), 3)
    assert np.array_equal(largest_component(big | small), big)


def test_connectivity_decides_whether_diagonal_pixels_join():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    mask[0, 4] = True
    diagonal = mask.copy()
    diagonal[0, 4] = False
    assert largest_component(mask, connectivity=4).sum() == 1
    assert np.array_equal(largest_component(mask, connectivity=8), diagonal)


def test_a_tie_keeps_the_first_component_in_raster_order():
    mask = np.zeros((6, 6), bool)
    mask[4:6, 0:2] = True  # 4 pixels, later in raster order
    mask[0:2, 4:6] = True  # 4 pixels, first
    expected = np.zeros_like(mask)
    expected[0:2, 4:6] = True
    assert np.array_equal(largest_component(mask), expected)


def test_fill_holes_fills_enclosed_background_only():
    ring = _disk((30, 30), (15, 15), 10) & ~_disk((30, 30), (15, 15), 4)
    assert np.array_equal(fill_holes(ring), _disk((30, 30), (15, 15), 10))
    # A notch open to the border is background, not a hole.
    notched = np.ones((10, 10), bool)
    notched[0:5, 4:6] = False
    assert np.array_equal(fill_holes(notched), notched)
    # A hole touching only diagonally is still enclosed under 4-connectivity.
    square = np.ones((5, 5), bool)
    square[2, 2] = False
    assert fill_holes(square).all()


@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_masks(fill: bool):
    for mask in (np.zeros((7, 9), bool), np.ones((7, 9), bool)):
        for step in (largest_component, fill_holes):
            out = step(mask)
            assert out.dtype == bool and out.shape == mask.shape and np.array_equal(out, mask)
        probs = mask.astype(np.float32)
        assert np.array_equal(postprocess_mask(probs, {**ALL, "fill_holes": fill}), mask)
    assert np.array_equal(postprocess_mask(np.zeros((1, 1), np.float32), ALL), np.zeros((1, 1), bool))
    assert np.array_equal(postprocess_mask(np.ones((1, 1), np.float32), ALL), np.ones((1, 1), bool))


def test_same_input_same_output_and_the_input_is_untouched():
    rng = np.random.default_rng(0)
    probs = rng.random((64, 48)).astype(np.float32)
    before = probs.copy()
    first, second = postprocess_mask(probs, ALL), postprocess_mask(probs.copy(), ALL)
    assert np.array_equal(first, second) and np.array_equal(probs, before)


def test_threshold_is_at_one_half_and_options_are_checked():
    probs = np.array([[0.4999, 0.5, 0.9]], np.float32)
    assert postprocess_mask(probs, {}).tolist() == [[False, True, True]]
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess_mask(probs, {"dilate": 3})
    with pytest.raises(ValueError, match="connectivity"):
        postprocess_mask(probs, {"connectivity": 6})
    with pytest.raises(ValueError, match="2-D"):
        largest_component(np.zeros((2, 2, 2), bool))


def test_matches_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    for _ in range(150):
        mask = rng.random(tuple(rng.integers(1, 30, 2))) < rng.uniform(0.2, 0.8)
        for connectivity, structure in ((4, None), (8, np.ones((3, 3)))):
            labels, count = ndimage.label(mask, structure=structure)
            expected = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1 if count else np.zeros_like(mask)
            assert np.array_equal(largest_component(mask, connectivity), expected)
            assert np.array_equal(fill_holes(mask, connectivity), ndimage.binary_fill_holes(mask, structure=structure))


def test_postprocess_and_the_runtime_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['scipy'] = None\n"
        "import numpy as np, edgederm.runtime.postprocess as p, edgederm.runtime.predictor\n"
        "print(int(p.postprocess_mask(np.ones((4, 4), np.float32), {'fill_holes': True}).sum()))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "16"
