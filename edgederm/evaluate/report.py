"""A report a clinician can read: metrics in words, a confusion matrix, ROC curves and calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import atomic
from ..core.labels import full_name
from . import plots

DPI = 110


def explain_rule(rule: str) -> str:
    """Plain words for a decision rule as ``edgederm.runtime.readout.describe`` names it."""
    parts = []
    if rule.startswith("balanced"):
        parts.append(
            "The model names the class with the highest probability divided by that class's training frequency to the power tau, "
            "so rare classes such as melanoma are named more often than the most probable class alone would be."
        )
    if " named at >= " in rule:
        parts.append(
            "That class is then named more readily still, until at least that share of its images in the choosing data are named as it."
        )
    parts.append("The probabilities, AUC and calibration are unchanged.")
    return " ".join(parts)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_classification_report(
    out_dir: Path,
    metrics: dict,
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    *,
    title: str,
    context_lines: list[str],
    metrics_csv: Path | None = None,
    appendix_lines: list[str] | None = None,
) -> Path:
    """Write report.md with its PNG plots into out_dir and return the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.save(plots.confusion_matrix(metrics["confusion_matrix"], class_names), out_dir / "confusion_matrix.png", DPI)
    one_vs_rest = [plots.Curve(name, (labels == index).astype(int), probs[:, index]) for index, name in enumerate(class_names)]
    plots.save(plots.roc(one_vs_rest, title="ROC, one class against the rest", figsize=(5.5, 5)), out_dir / "roc.png", DPI)
    plots.save(plots.reliability_bars(labels, probs), out_dir / "reliability.png", DPI)
    curves = plots.training_curves(metrics_csv) if metrics_csv is not None else None
    if curves is not None:
        plots.save(curves, out_dir / "training_curves.png", DPI)
    mel = metrics.get("melanoma_sensitivity")
    lines = [
        f"# {title}",
        "",
        "**A screening aid, not a diagnosis.** These figures describe how the model did on the images below; "
        "they are not a guarantee for other cameras, skin types or clinics.",
        "",
        *context_lines,
        "",
        "## Headline",
        "",
        f"- Images evaluated: {metrics['n']}"
        + (f" ({metrics['failed_images']} could not be read)" if metrics.get("failed_images") else ""),
        *([f"- Named class: {rule}. {explain_rule(rule)}"] if (rule := metrics.get("decision", "argmax")) != "argmax" else []),
        f"- Accuracy: {_fmt(metrics['accuracy'])} (share of images whose named class was right)",
        f"- Balanced accuracy: {_fmt(metrics['balanced_accuracy'])} (average of the per-class sensitivities; not flattered by the common classes)",
        f"- Macro AUC: {_fmt(metrics['macro_auc'])} (how well each class is ranked above the others, 0.5 = chance, 1 = perfect)",
        f"- Melanoma sensitivity: {_fmt(mel)}"
        + (" (share of melanomas the model called melanoma)" if mel is not None else " (no melanoma in this model or set)"),
        f"- Calibration error (ECE): {_fmt(metrics['ece'])} (0 = the stated confidence matches how often it is right)",
        *_argmax_line(metrics.get("argmax")),
        "",
        "## Per class",
        "",
        "| class | diagnosis | images | sensitivity | specificity | AUC |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in class_names:
        row = metrics["per_class"][name]
        lines.append(
            f"| {name} | {full_name(name)} | {row['support']} | {_fmt(row['sensitivity'])} | {_fmt(row['specificity'])} | {_fmt(row['auc'])} |"
        )
    lines += [
        "",
        "Sensitivity: of the lesions that truly are this class, the share the model found. "
        "Specificity: of the lesions that are not, the share it correctly left out.",
        "",
        "## Plots",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![ROC curves](roc.png)",
        "",
        "![reliability diagram](reliability.png)",
    ]
    if curves is not None:
        lines += ["", "![training curves](training_curves.png)"]
    lines += appendix_lines or []
    report = out_dir / "report.md"
    atomic.write_text(report, "\n".join(lines) + "\n")
    return report


def _argmax_line(argmax: dict | None) -> list[str]:
    """The same images named by the most probable class, for comparison with models that use no rule."""
    if not argmax:
        return []
    return [
        f"- By the most probable class instead (arg-max): accuracy {_fmt(argmax['accuracy'])}, balanced accuracy "
        f"{_fmt(argmax['balanced_accuracy'])}, melanoma sensitivity {_fmt(argmax['melanoma_sensitivity'])}"
    ]
