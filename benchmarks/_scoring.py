"""What the benchmarks that compare runs share: export a run, then measure its torch fp32 model and every
artifact on the same pixels with ``edgederm.evaluate.verify.measure``, each against that torch model; and
the fidelity row (drops, top-1 agreement with its Wilson interval, mean |Δp|) of a verified file."""

from __future__ import annotations

import math
from pathlib import Path


def export_and_measure(
    run: Path,
    images,
    work: Path,
    calib: str,
    quants: tuple[str, ...] = ("int8",),
    latency_runs: int | None = None,
    formats: tuple[str, ...] = ("tflite", "onnx"),
    calib_n: int = 100,
):
    """(spec, {name: (Predictor, Measurement)}) for torch fp32 and every artifact of ``formats`` at ``quants``.

    With ``latency_runs``, each is timed at batch 1 on 1 thread (the artifacts are loaded so; torch's
    thread count is the caller's to set).
    """
    from edgederm.core.formats import FORMATS
    from edgederm.data.pixels import load_pixels
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import load_truth
    from edgederm.export import export_run
    from edgederm.runtime import Predictor

    reference = Predictor.load(run)
    spec = reference.spec
    pixels = load_pixels(images, spec.preprocess, desc=None)
    truth = load_truth(spec, images, pixels)
    records = export_run(run, [FORMATS[name] for name in formats], list(quants), work / run.name, calib_data=calib, calib_n=calib_n)
    timing = {"threads": [1], "runs": latency_runs} if latency_runs else {}
    torch_fp32 = measure(reference, pixels.pixels, truth, **timing)
    measured = {"torch fp32": (reference, torch_fp32)}
    for record in records:
        if record.status != "ok":
            raise RuntimeError(f"{run}: {record.format} {record.quant}: {record.message}")
        predictor = Predictor.load(work / run.name / record.path, threads=1 if latency_runs else None)
        artifact = measure(predictor, pixels.pixels, truth, spec, reference=torch_fp32, **timing)
        measured[f"{record.format} {record.quant}"] = (predictor, artifact)
    return spec, measured


def metric_row(measured) -> dict:
    """One model's task metrics (by the run's stored decision rule), top-1 agreement and max |dprob| against the
    run's torch fp32 model; that model's own row agrees with itself."""
    metrics, agreement = measured.metrics, measured.agreement or {"top1": 1.0, "max_abs_prob_diff": 0.0}
    return {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "mel_sensitivity": metrics["mel_sensitivity"],
        "macro_auc": metrics["macro_auc"],
        "agreement": agreement["top1"],
        "max_abs_dprob": agreement["max_abs_prob_diff"],
    }


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (top-1 agreement over n images)."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def fidelity(artifact: dict, images: int) -> dict:
    """A verified file against torch fp32: the metric drops, top-1 agreement with its 95% interval, and mean |Δp|."""
    agreement = artifact["agreement"]["top1"]
    return {
        "balanced_accuracy_delta": artifact["deltas"]["balanced_accuracy"],
        "mel_sensitivity_delta": artifact["deltas"]["mel_sensitivity"],
        "agreement": agreement,
        "agreement_ci95": wilson(agreement, images),
        "mean_abs_dp": artifact["agreement"]["mean_abs_prob_diff"],
    }
