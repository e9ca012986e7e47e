"""One model on one set of preprocessed pixels: its outputs, their scores, their agreement with a reference, its latency.

``edgederm verify`` measures the torch reference and then every artifact of an export this way,
and so do the benchmarks that compare exported artifacts, so their numbers mean the same thing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import DataError
from ...core.formats import format_for_path
from ...core.spec import ModelSpec
from ...runtime import Predictor
from ...runtime.timing import DEFAULT_RUNS, DEFAULT_WARMUP, measure_latency
from .scoring import Truth, agreement, normalise, score

BATCH = 32


@dataclass
class Measurement:
    probs: np.ndarray  # classification (N, C); segmentation (N, S, S) lesion probabilities
    metrics: dict[str, Any] | None = None  # scoring.score against the truth; None without one
    deltas: dict[str, float] | None = None  # each numeric metric minus the reference's
    agreement: dict[str, Any] | None = None  # scoring.agreement with the reference's outputs
    latency: list[dict[str, Any]] = field(default_factory=list)  # batch 1: {"threads", **runtime.timing fields} per thread count


def load_artifact(path: Path, threads: int | None = None) -> Predictor:
    """An exported file, loaded as an app would load it.

    A format with no runtime on this platform (CoreML off Apple) runs on its emulated backend, with
    torch's process-wide thread count left as it is; BackendUnavailable when there is none.
    """
    fmt = format_for_path(Path(path).name)
    if fmt is None or fmt.runs_here():
        return Predictor.load(path, threads=threads)
    # coremltools announces on import that its native runtime is missing: true, and not news to the caller
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return Predictor.load(path, emulate=True)


def _numbers(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)


def metric_deltas(metrics: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Each numeric metric minus the reference's (metrics either lacks, or that are not numbers, are left out)."""
    return {k: v - reference[k] for k, v in metrics.items() if _numbers(v, reference.get(k))}


def measure(
    predictor: Predictor,
    pixels: np.ndarray,
    truth: Truth | None = None,
    spec: ModelSpec | None = None,
    *,
    reference: Measurement | None = None,
    threads: Sequence[int] = (),
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    reload: Callable[[int], Predictor] | None = None,
) -> Measurement:
    """Predict ``pixels`` (uint8, through ``spec.preprocess.fit``) with ``predictor``, an artifact or the torch reference.

    ``spec`` (default: the predictor's) reads and scores the outputs; its preprocessing must be the
    predictor's. With ``truth`` the outputs are scored (``scoring.score``); with ``reference``, the
    reference model's measurement on the same pixels, they get deltas and agreement. Latency is
    batch 1 at each of ``threads``: the first count times ``predictor`` itself (loaded with that
    many threads), every other one ``reload(count)``.
    """
    spec = spec or predictor.spec
    if len(threads) > 1 and reload is None:
        raise ValueError("timing at more than one thread count needs reload")
    if reference is not None and truth is None and spec.task == "segmentation":
        raise ValueError("a segmenter's agreement compares masks at each image's size: give the truth")
    if predictor.spec.preprocess.to_dict() != spec.preprocess.to_dict():
        raise DataError("its preprocessing differs from the reference model's", path=predictor.path, fix="re-export it from the same run")
    outputs = [predictor.predict_pixels(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
    probs = normalise(spec, np.concatenate(outputs)).astype(np.float32)
    result = Measurement(probs, metrics=score(spec, truth, probs) if truth is not None else None)
    if reference is not None:
        result.agreement = agreement(spec, truth or Truth(), reference.probs, probs)
        if result.metrics is not None and reference.metrics is not None:
            result.deltas = metric_deltas(result.metrics, reference.metrics)
    one = pixels[:1]
    for count in threads:
        timed = predictor if count == threads[0] else reload(count)
        result.latency.append(
            {"threads": count, **measure_latency(lambda timed=timed: timed.predict_pixels(one), runs=runs, warmup=warmup)}
        )
    return result
