"""On-device latency of every selected artifact, in the file format ``edgederm verify --device-results`` merges.

Each artifact is loaded once per thread count and timed with ``edgederm.runtime.timing.measure_latency``
on the same input as ``edgederm verify``: one preprocessed image at batch 1, probabilities out.
The keys written here are a contract with verify: change them only together.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgederm.core.errors import UsageError
from edgederm.core.formats import format_for_path
from edgederm.core.manifest import artifact_sha256
from edgederm.runtime.timing import DEFAULT_RUNS, DEFAULT_WARMUP, measure_latency

from .android_tflite import load_predictor, on_android

Progress = Callable[[str], None]
LATENCY_KEYS = ("threads", "median_ms", "p90_ms", "min_ms", "runs", "warmup")
ARTIFACT_KEYS = ("path", "name", "sha256", "format", "quant", "latency")


def device_info() -> dict[str, str]:
    return {"name": _device_name(), "platform": platform.platform(), "machine": platform.machine()}


def benchmark_artifact(
    path: str | Path,
    threads_list: Iterable[int],
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    progress: Progress | None = None,
) -> dict[str, Any]:
    path = Path(path)
    latency, spec = [], None
    for threads in threads_list:
        predictor = load_predictor(path, threads=threads)
        spec = predictor.spec
        pixels = _input_pixels(spec.preprocess.input_size)
        stats = measure_latency(lambda predictor=predictor, pixels=pixels: predictor.predict_pixels(pixels), runs=runs, warmup=warmup)
        latency.append({"threads": threads, **stats})
        if progress:
            progress(f"{path.name}: {stats['median_ms']:.1f} ms median at {threads} thread(s)")
    if spec is None:
        raise UsageError("no thread counts to benchmark", fix="give --threads-list such as 1,2")
    fmt = format_for_path(path.name)
    return {
        "path": str(path),
        "name": path.name,
        "sha256": artifact_sha256(path),
        "format": spec.artifact.get("format") or (fmt.name if fmt else None),
        "quant": spec.artifact.get("quant"),
        "latency": latency,
    }


def run_benchmark(
    paths: Iterable[str | Path],
    threads_list: Iterable[int] = (1,),
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    progress: Progress | None = None,
) -> dict[str, Any]:
    threads_list = list(threads_list)
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        raise UsageError("no model artifacts to benchmark", fix="choose a classifier (--model) or put artifacts in the models folder")
    return {
        "device": device_info(),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "artifacts": [benchmark_artifact(p, threads_list, runs=runs, warmup=warmup, progress=progress) for p in paths],
    }


def write_benchmark(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def parse_threads_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"bad thread list {text!r}", fix="give positive integers separated by commas, e.g. 1,2,4")
    return list(dict.fromkeys(values))


def _input_pixels(side: int) -> np.ndarray:
    """A fixed photo-like input (batch 1): timings do not depend on pixel values, but keep them repeatable."""
    return np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)


def _device_name() -> str:
    if on_android():
        try:
            from jnius import autoclass  # type: ignore[import-not-found]

            build = autoclass("android.os.Build")
            return f"{build.MANUFACTURER} {build.MODEL}"
        except Exception:  # noqa: BLE001 - any pyjnius failure just means a less precise name
            pass
    return platform.node() or platform.machine() or "unknown"
