"""The figures edgederm's reports draw, as matplotlib figures, and how they are saved.

The clinician report (``report.py``: one model) and the verify report (``verify/report.py``: every
artifact of an export against its torch reference) both draw confusion matrices, ROC curves and
reliability diagrams; they draw them here, from plain arrays.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..core import atomic
from ..metrics import reliability_bins, roc_auc, roc_curve


def save(fig: Any, path: Path, dpi: int) -> None:
    """The figure as a PNG at ``path`` (written atomically), then closed."""
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)


def _panels(count: int, columns: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``count`` panels, ``columns`` to a row, each ``width`` x ``height`` inches; axes stay off until used."""
    columns = max(1, min(columns, count))
    lines = max(1, -(-count // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(width * columns, height * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def _draw_confusion(ax: Any, matrix: list[list[int]], class_names: list[str], *, compact: bool) -> None:
    """Counts, shaded by their share of the row (the true class); ``compact``: counts only, small type."""
    counts = np.asarray(matrix, float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            text = f"{int(counts[i, j])}" if compact else f"{int(counts[i, j])}\n{share[i, j]:.0%}"
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=6 if compact else 8, color=colour)
    ticks: dict[str, Any] = {"fontsize": 6} if compact else {}
    ax.set_xticks(range(len(class_names)), class_names, **ticks, **({"rotation": 90} if compact else {}))
    ax.set_yticks(range(len(class_names)), class_names, **ticks)


def confusion_matrix(matrix: list[list[int]], class_names: list[str], title: str = "Confusion matrix") -> Any:
    """One model's confusion matrix, each cell with its count and its share of the row."""
    fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2, 1.0 * len(class_names) + 1.5))
    _draw_confusion(ax, matrix, class_names, compact=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row shares sum to 100%)")
    ax.set_title(title)
    return fig


def confusion_grid(matrices: Sequence[tuple[str, list[list[int]]]], class_names: list[str]) -> Any:
    """Several models' confusion matrices, four to a row: (title, matrix) each."""
    fig, axes = _panels(len(matrices), 4, 3.2, 3.2)
    for ax, (title, matrix) in zip(axes, matrices, strict=False):
        ax.axis("on")
        _draw_confusion(ax, matrix, class_names, compact=True)
        ax.set_title(title, fontsize=8)
    return fig


class Curve(NamedTuple):
    """One model's line in a figure that overlays several."""

    name: str
    labels: np.ndarray  # ROC: 1 for the positive class, else 0; reliability: class indices
    scores: np.ndarray  # ROC: the positive class's score; reliability: class probabilities (N, C)
    linewidth: float | None = None  # None: matplotlib's default


def roc(
    curves: Sequence[Curve],
    *,
    title: str,
    figsize: tuple[float, float],
    label: str = "{name} (AUC {auc:.3f})",
    legend_fontsize: float = 8,
    point: tuple[float, float, str] | None = None,
) -> Any:
    """ROC curves over chance's diagonal; a curve whose truth has one class only is left out.

    ``label`` is formatted with the curve's ``name`` and ``auc``; ``point`` marks (1 - specificity,
    sensitivity) with a star and that label.
    """
    fig, ax = plt.subplots(figsize=figsize)
    for curve in curves:
        if curve.labels.all() or not curve.labels.any():
            continue
        fpr, tpr, _ = roc_curve(curve.labels, curve.scores)
        ax.plot(fpr, tpr, linewidth=curve.linewidth, label=label.format(name=curve.name, auc=roc_auc(curve.labels, curve.scores)))
    if point is not None:
        ax.plot(point[0], point[1], "k*", markersize=12, label=point[2])
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=legend_fontsize)
    return fig


def _reliability_axes(ax: Any) -> None:
    ax.set_xlabel("model confidence (top class)")
    ax.set_ylabel("how often the top class was right")
    ax.set_title("Reliability diagram")


def reliability_bars(labels: np.ndarray, probs: np.ndarray) -> Any:
    """One model's reliability diagram: observed accuracy per confidence bin (ten), as bars."""
    bins = reliability_bins(labels, probs, n_bins=10)
    edges = np.asarray(bins["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centres, np.nan_to_num(accuracy), width=edges[1] - edges[0], edgecolor="k", alpha=0.7, label="observed accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    _reliability_axes(ax)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def reliability_lines(curves: Sequence[Curve]) -> Any:
    """Several models' reliability diagrams overlaid: observed accuracy against mean confidence per non-empty bin."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for curve in curves:
        bins = reliability_bins(curve.labels, curve.scores, n_bins=10)
        conf = [c for c, a in zip(bins["mean_confidence"], bins["accuracy"], strict=True) if a is not None]
        acc = [a for a in bins["accuracy"] if a is not None]
        ax.plot(conf, acc, marker=".", linewidth=curve.linewidth, label=curve.name)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    _reliability_axes(ax)
    ax.legend(fontsize=7)
    return fig


def training_curves(metrics_csv: Path) -> Any | None:
    """Loss and validation scores per epoch from a run's metrics.csv; None when it is missing or empty."""
    if not metrics_csv.is_file():
        return None
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
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
    return fig


def latency_bars(names: Sequence[str], by_threads: dict[int, Sequence[dict[str, Any] | None]]) -> Any:
    """Median ms per model with a p90 whisker, a bar per thread count.

    ``by_threads[t][i]``: model i's timing at t threads (``runtime.timing`` fields), None where not timed.
    """
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) * len(by_threads) + 1.5))
    height = 0.8 / len(by_threads)
    for k, (threads, stats) in enumerate(by_threads.items()):
        y = np.arange(len(names)) + k * height
        medians = [s["median_ms"] if s else 0 for s in stats]
        p90 = [(s["p90_ms"] - s["median_ms"]) if s else 0 for s in stats]
        ax.barh(y, medians, height=height, xerr=[np.zeros(len(names)), p90], label=f"{threads} thread{'s' * (threads > 1)}", capsize=2)
    ax.set_yticks(np.arange(len(names)) + 0.4 - height / 2, list(names))
    ax.invert_yaxis()
    ax.set_xlabel("ms per image (batch 1)")
    ax.legend(fontsize=8)
    ax.set_title("Latency on this machine")
    return fig


class ImagePanel(NamedTuple):
    """One image of a grid, with mask outlines (mask, colour) and, optionally, a heat map in [0, 1] over it."""

    image: np.ndarray
    outlines: Sequence[tuple[np.ndarray, str]]
    title: str
    heat: np.ndarray | None = None


def image_grid(images: Sequence[ImagePanel], *, columns: int, size: tuple[float, float], line_width: float, suptitle: str) -> Any:
    """Images ``columns`` to a row, each panel ``size`` inches, outlines ``line_width`` wide."""
    fig, axes = _panels(len(images), columns, *size)
    for ax, panel in zip(axes, images, strict=False):
        ax.imshow(panel.image)
        if panel.heat is not None:
            ax.imshow(panel.heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        for mask, colour in panel.outlines:
            if mask.any() and not mask.all():  # an empty or full mask has no border
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=line_width)
        ax.set_title(panel.title, fontsize=7)
    fig.suptitle(suptitle, fontsize=9)
    return fig
