"""On-device latency of every selected artifact, through ``edgederm-bench``'s own functions (``edgederm.bench``).

The app's benchmark screen and ``--benchmark-and-exit`` write the same device-results file as
``edgederm-bench`` on a board: one preprocessed photo-like input at batch 1 per artifact and thread
count, load time and peak memory, and, given inputs (``--inputs``), each artifact's outputs on them,
in the format ``edgederm verify --device-results`` merges. The app adds only its own loader
(Google's Java TFLite interpreter where an Android build has no Python TFLite runtime) and the
phone's name.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgederm import bench
from edgederm.bench import ARTIFACT_KEYS, LATENCY_KEYS, parse_threads_list, write_benchmark
from edgederm.runtime.timing import DEFAULT_RUNS, DEFAULT_WARMUP

from .android_tflite import load_predictor, on_android

__all__ = ["ARTIFACT_KEYS", "LATENCY_KEYS", "device_info", "parse_threads_list", "run_benchmark", "write_benchmark"]

Progress = Callable[[str], None]


def device_info() -> dict[str, Any]:
    return {**bench.device_info(), "name": _device_name()}


def run_benchmark(
    paths: Iterable[str | Path],
    threads_list: Iterable[int] = (1,),
    inputs: str | Path | None = None,
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``edgederm.bench.run_benchmark`` with the app's loader and device name; ``inputs`` is what ``edgederm-bench --inputs`` takes."""
    return bench.run_benchmark(
        paths,
        threads_list,
        bench.Inputs(inputs) if inputs else None,
        runs=runs,
        warmup=warmup,
        load=load_predictor,
        on_result=progress,
        device=device_info(),
    )


def _device_name() -> str:
    if on_android():
        try:
            from jnius import autoclass  # type: ignore[import-not-found]

            build = autoclass("android.os.Build")
            return f"{build.MANUFACTURER} {build.MODEL}"
        except Exception:  # noqa: BLE001 - any pyjnius failure just means a less precise name
            pass
    return platform.node() or platform.machine() or "unknown"
