"""Scoring predictions against labels and writing the clinician-readable report."""

from __future__ import annotations

from pathlib import Path

from ..core import atomic
from .predict import (
    SEGMENTATION_METRICS,
    MaskPredictions,
    Predictions,
    labelled_metrics,
    labelled_rows,
    mask_metrics,
    write_mask_predictions_csv,
    write_metrics_json,
    write_predictions_csv,
)
from .report import write_classification_report


def evaluate_and_report(
    predictions: Predictions,
    out_dir: Path,
    *,
    model: Path,
    title: str | None = None,
    extra_lines: list[str] | None = None,
    appendix_lines: list[str] | None = None,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = labelled_metrics(predictions)
    write_metrics_json(metrics, out_dir / "metrics.json")
    write_predictions_csv(predictions, out_dir / "predictions.csv")
    keep, labels = labelled_rows(predictions)
    metrics_csv = model / "metrics.csv" if model.is_dir() else None
    return write_classification_report(
        out_dir,
        metrics,
        labels,
        predictions.probs[keep],
        predictions.class_names,
        title=title or f"edgederm evaluation: {model}",
        context_lines=[f"- Model: `{model}`", f"- Data: `{predictions.dataset.spec}`", *(extra_lines or [])],
        metrics_csv=metrics_csv,
        appendix_lines=appendix_lines,
    )


def evaluate_segmentation(predictions: MaskPredictions, out_dir: Path, *, model: Path) -> Path:
    """metrics.json, predictions.csv (with per-image Jaccard and Dice) and a short report.md for a segmenter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = mask_metrics(predictions)
    metrics["postprocess"] = predictions.postprocess
    write_metrics_json(metrics, out_dir / "metrics.json")
    write_mask_predictions_csv(predictions, out_dir / "predictions.csv")
    rows = [f"| {name.replace('_', ' ')} | {metrics[name]:.3f} |" for name in SEGMENTATION_METRICS]
    lines = [
        f"# edgederm segmentation evaluation: {model}",
        "",
        f"- Model: `{model}`",
        f"- Data: `{predictions.dataset.spec}` ({metrics['n']} images scored, {metrics['failed_images']} unreadable)",
        f"- Post-processing: `{metrics['postprocess'] or 'threshold only'}`",
        "- Each image's mask is predicted, mapped back to the image's original size, thresholded at 0.5 and",
        "  scored against its true mask; the metrics are the means over images (ISIC 2017 convention).",
        "- A screening aid, not a diagnosis.",
        "",
        "| metric | mean over images |",
        "|---|---:|",
        *rows,
        "",
        "Predicted masks: `masks/`; per-image scores: `predictions.csv`.",
        "",
    ]
    report = out_dir / "report.md"
    atomic.write_text(report, "\n".join(lines))
    return report
