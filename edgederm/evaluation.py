"""Scoring predictions against labels and writing the clinician-readable report."""

from __future__ import annotations

from pathlib import Path

from .predict import Predictions, labelled_metrics, labelled_rows, write_metrics_json, write_predictions_csv
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
