"""Activation ranges for static int8: percentiles of per-image extremes, chosen by agreement with fp32."""

from __future__ import annotations

import numpy as np
import pytest
from edgederm.converters._ranges import PERCENTILES, choose, decisions, disagreement, from_extremes


def test_min_max_is_the_hundredth_percentile_and_lower_ones_clip_an_outlier_image():
    mins = np.array([[-1.0], [-1.2], [-0.9], [-30.0]] + [[-1.1]] * 96)  # (images, channels)
    maxs = np.array([[2.0], [2.5], [40.0], [1.9]] + [[2.2]] * 96)
    low, high = from_extremes(mins, maxs, 100)
    assert low.tolist() == [-30.0] and high.tolist() == [40.0]
    low, high = from_extremes(mins, maxs, 95)
    assert -1.2 <= low[0] <= -1.0 and 2.2 <= high[0] <= 2.5  # the one far image no longer sets the int8 grid
    assert low.dtype == high.dtype == np.float32


def _choose(error: dict[float, float]):
    """``choose`` over models that are their own error: each moves the first image's probabilities by it."""
    reference = np.array([[0.8, 0.2], [0.3, 0.7]])
    return choose(lambda p: error[p], lambda e: reference + [[-e, e], [0, 0]], reference)


def test_choose_keeps_the_candidate_closest_to_fp32_and_the_wider_range_on_a_tie():
    percentile, model, choice = _choose({100.0: 0.2, 99.0: 0.05, 95.0: 0.05, 90.0: 0.4})
    assert percentile == 99.0 and model == 0.05
    assert set(choice.scores) == {"min/max", "p99", "p95", "p90"}
    assert choice.scores["min/max"]["mean_abs_dp"] == pytest.approx(0.1)
    assert choice.scores["p90"]["disagreement"] == 0.5  # 0.8 - 0.4 < 0.2 + 0.4: the first image flips
    assert "p99" in choice.summary()


def test_min_max_stays_unless_a_clipped_range_is_clearly_closer():
    percentile, model, choice = _choose({100.0: 0.10, 99.0: 0.09, 95.0: 0.08, 90.0: 0.2})  # 20% closer at best
    assert percentile == 100.0 and model == 0.10
    assert choice.scores["p95"]["mean_abs_dp"] < choice.scores["min/max"]["mean_abs_dp"]  # scored, not chosen
    percentile, _, _ = _choose({100.0: 0.10, 99.0: 0.09, 95.0: 0.07, 90.0: 0.2})  # 30% closer
    assert percentile == 95.0


def test_the_candidates_start_at_min_max():
    assert PERCENTILES[0] == 100 and list(PERCENTILES) == sorted(PERCENTILES, reverse=True)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_a_segmenter_is_judged_by_its_mask_pixels_in_any_layout(layout: str):
    reference = np.full((3, 8, 8), 0.2)
    reference[:, 2:6, 2:6] = 0.9  # a 16-pixel lesion in each image
    moved = reference.copy()
    moved[0, 2, 2:6] = 0.4  # 4 of image 0's lesion pixels fall below 0.5
    moved[1, 0, 0] = 0.3  # a background pixel moves, still below 0.5
    shape = {"nchw": (3, 1, 8, 8), "nhwc": (3, 8, 8, 1), "nhw": (3, 8, 8)}[layout]
    reference, moved = reference.reshape(shape), moved.reshape(shape)
    assert disagreement(moved, reference) == pytest.approx(4 / (3 * 64))
    percentile, _, choice = choose(lambda p: p, lambda p: moved if p < 100 else reference, reference, (100.0, 99.0))
    assert percentile == 100.0 and choice.scores["p99"]["disagreement"] == pytest.approx(4 / 192, abs=1e-6)
    assert "mask pixel disagreement 0.0%" in choice.summary()


def test_a_classifier_is_judged_by_its_top1_class():
    reference = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert disagreement(np.array([[0.4, 0.6], [0.3, 0.7]]), reference) == 0.5
    assert decisions(reference) == "top-1"
