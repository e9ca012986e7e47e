"""Latency measurement shared by ``edgederm verify``, the benchmarks and the app's benchmark screen.

One function, one set of field names, so a phone's results file merges into a verify report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5


def measure_latency(run_once: Callable[[], Any], *, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP) -> dict[str, float | int]:
    """Wall time of ``run_once()`` in ms: ``{"median_ms", "p90_ms", "min_ms", "runs", "warmup"}``."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        run_once()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        run_once()
        times[i] = (time.perf_counter() - start) * 1e3
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(times.min()),
        "runs": runs,
        "warmup": warmup,
    }
