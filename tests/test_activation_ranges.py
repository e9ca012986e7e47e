"""Activation ranges for static int8: percentiles of per-image extremes, chosen by agreement with fp32."""

from __future__ import annotations

import numpy as np
import pytest
from edgederm.converters._ranges import PERCENTILES, choose, from_extremes


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
