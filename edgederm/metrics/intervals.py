"""95% intervals for any metric by the bootstrap over groups (lesions), so rare classes show their noise.

Several images of one lesion are not independent evidence: resampling images would make an
interval too narrow. ``bootstrap_intervals`` resamples whole groups with replacement and
recomputes the statistic on the images of the drawn groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 1000


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, float | None]],
    groups: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """{metric: [low, high]}: percentile intervals of ``statistic(indices)`` over group-resampled index arrays.

    A metric that is undefined (None) on some resamples gets its interval from the others; one that is
    never defined is left out.
    """
    labels, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked = rng.integers(0, len(members), len(members))
        indices = np.concatenate([members[g] for g in picked])
        for name, value in statistic(indices).items():
            if value is not None:
                draws.setdefault(name, []).append(float(value))
    tail = 100 * (1 - level) / 2
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for name, v in draws.items()}
