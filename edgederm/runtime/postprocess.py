"""Mask post-processing for segmenters, in numpy only: keep the largest lesion, fill its holes.

The steps a model wants are recorded in ``ModelSpec.postprocess`` (for example
``{"threshold": 0.5, "largest_component": true, "fill_holes": true}``) and every runtime calls
``postprocess_mask`` with them, so a phone and the PyTorch reference produce the same mask.
An empty dict (old specs) means thresholding only.

Connected components are found on horizontal runs of pixels with a small union-find, which is
fast in pure Python because a lesion mask has few runs per row. Connectivity is 4 by default (as
``scipy.ndimage.label`` and ``binary_fill_holes`` with their default structure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.5
STEPS = ("threshold", "largest_component", "fill_holes", "connectivity")


def check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown post-processing step(s) {unknown}; this edgederm knows {list(STEPS)}")
    if int(options.get("connectivity", 4)) not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    if not 0.0 < float(options.get("threshold", DEFAULT_THRESHOLD)) < 1.0:
        raise ValueError("threshold must be between 0 and 1")


def postprocess_mask(probabilities: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """Lesion probabilities (H, W) -> a bool mask, thresholded and cleaned as ``options`` say."""
    check_options(options)
    mask = np.asarray(probabilities, np.float32) >= float(options.get("threshold", DEFAULT_THRESHOLD))
    connectivity = int(options.get("connectivity", 4))
    if options.get("largest_component"):
        mask = largest_component(mask, connectivity)
    if options.get("fill_holes"):
        mask = fill_holes(mask, connectivity)
    return mask


def largest_component(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Only the largest connected region (the first in raster order on a tie); empty stays empty."""
    runs = _runs(np.asarray(mask, bool))
    if not len(runs):
        return np.zeros(np.shape(mask), bool)
    roots = _component_roots(runs, connectivity)
    sizes = np.bincount(roots, weights=runs[:, 2] - runs[:, 1])
    keep = roots == int(np.argmax(sizes))  # argmax picks the lowest root on a tie: the first run in raster order
    return _paint(runs[keep], np.shape(mask))


def fill_holes(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Set background regions that do not touch the image border to foreground."""
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    runs = _runs(~mask)
    if not len(runs):
        return mask.copy()
    roots = _component_roots(runs, connectivity)
    touches = (runs[:, 0] == 0) | (runs[:, 0] == height - 1) | (runs[:, 1] == 0) | (runs[:, 2] == width)
    outside = np.unique(roots[touches])
    holes = ~np.isin(roots, outside)
    return mask | _paint(runs[holes], mask.shape)


def _runs(mask: np.ndarray) -> np.ndarray:
    """Horizontal runs of True as rows (row, start, end exclusive), in raster order."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    edges = np.diff(mask.astype(np.int8), axis=1, prepend=0, append=0)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return np.stack([rows, starts, ends], axis=1).astype(np.int64)


def _component_roots(runs: np.ndarray, connectivity: int) -> np.ndarray:
    """For each run, the index of the first run of its connected component."""
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reach = 1 if connectivity == 8 else 0  # 8-connectivity also joins runs that touch diagonally
    row_of = runs[:, 0].tolist()
    starts, ends = runs[:, 1].tolist(), runs[:, 2].tolist()
    row_begin = np.searchsorted(runs[:, 0], np.arange(row_of[-1] + 2)).tolist()
    for row in range(1, row_of[-1] + 1):
        # Both rows' runs are sorted and disjoint: a merge-style sweep finds every overlap once.
        j, previous_end = row_begin[row - 1], row_begin[row]
        for i in range(row_begin[row], row_begin[row + 1]):
            while j < previous_end and ends[j] + reach <= starts[i]:
                j += 1
            k = j
            while k < previous_end and starts[k] < ends[i] + reach:
                a, b = find(i), find(k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    return np.array([find(i) for i in range(len(runs))], np.int64)


def _paint(runs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    delta = np.zeros((shape[0], shape[1] + 1), np.int32)
    np.add.at(delta, (runs[:, 0], runs[:, 1]), 1)
    np.add.at(delta, (runs[:, 0], runs[:, 2]), -1)
    return np.cumsum(delta, axis=1)[:, :-1] > 0
