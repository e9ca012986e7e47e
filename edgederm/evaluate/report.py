"""A report a clinician can read: metrics in words, a confusion matrix, ROC curves and calibration."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..core import atomic
from ..core.labels import full_name
from ..metrics import reliability_bins, roc_auc, roc_curve


def _save(fig, path: Path) -> None:
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str = "Confusion matrix") -> None:
    counts = np.asarray(matrix, float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2, 1.0 * len(class_names) + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row shares sum to 100%)")
    ax.set_title(title)
    _save(fig, path)


def plot_roc_curves(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for index, name in enumerate(class_names):
        positives = labels == index
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives.astype(int), probs[:, index])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(positives.astype(int), probs[:, index]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, one class against the rest")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: Path) -> None:
    bins = reliability_bins(labels, probs, n_bins=10)
    edges = np.asarray(bins["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centres, np.nan_to_num(accuracy), width=edges[1] - edges[0], edgecolor="k", alpha=0.7, label="observed accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    ax.set_xlabel("model confidence (top class)")
    ax.set_ylabel("how often the top class was right")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_training_curves(metrics_csv: Path, path: Path) -> bool:
    if not metrics_csv.is_file():
        return False
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return False
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("train_loss", "val_loss"):
        if key in rows[0]:
            loss_ax.plot(epochs, [float(r[key]) for r in rows], marker=".", label=key)
    for key in ("val_accuracy", "val_balanced_accuracy", "val_macro_auc"):
        if key in rows[0]:
            score_ax.plot(epochs, [float(r[key]) for r in rows], marker=".", label=key)
    loss_ax.set_xlabel("epoch")
    score_ax.set_xlabel("epoch")
    loss_ax.legend()
    score_ax.legend()
    loss_ax.set_title("loss")
    score_ax.set_title("validation")
    _save(fig, path)
    return True


RULE_EXPLAINED = (
    "The model names the class with the highest probability divided by that class's training frequency to the power tau, "
    "so rare classes such as melanoma are named more often than the most probable class alone would be; "
    "the probabilities, AUC and calibration are unchanged."
)


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
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, out_dir / "confusion_matrix.png")
    plot_roc_curves(labels, probs, class_names, out_dir / "roc.png")
    plot_reliability(labels, probs, out_dir / "reliability.png")
    has_curves = metrics_csv is not None and plot_training_curves(metrics_csv, out_dir / "training_curves.png")
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
        *([f"- Named class: {rule}. {RULE_EXPLAINED}"] if (rule := metrics.get("decision", "argmax")) != "argmax" else []),
        f"- Accuracy: {_fmt(metrics['accuracy'])} (share of images whose named class was right)",
        f"- Balanced accuracy: {_fmt(metrics['balanced_accuracy'])} (average of the per-class sensitivities; not flattered by the common classes)",
        f"- Macro AUC: {_fmt(metrics['macro_auc'])} (how well each class is ranked above the others, 0.5 = chance, 1 = perfect)",
        f"- Melanoma sensitivity: {_fmt(mel)}"
        + (" (share of melanomas the model called melanoma)" if mel is not None else " (no melanoma in this model or set)"),
        f"- Calibration error (ECE): {_fmt(metrics['ece'])} (0 = the stated confidence matches how often it is right)",
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
    if has_curves:
        lines += ["", "![training curves](training_curves.png)"]
    lines += appendix_lines or []
    report = out_dir / "report.md"
    atomic.write_text(report, "\n".join(lines) + "\n")
    return report
