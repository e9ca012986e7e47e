"""Latency measurement shared by ``edgederm verify``, the benchmarks and the app's benchmark screen.

One function, one set of field names, so a phone's results file merges into a verify report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.errors import UsageError

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


def parse_threads_list(text: str) -> list[int]:
    """``"1, 2,2,4"`` -> ``[1, 2, 4]``: the thread counts of ``--threads`` (verify, edgederm-bench, the app)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"bad thread list {text!r}", fix="give positive integers separated by commas, e.g. 1,2,4")
    return list(dict.fromkeys(values))
