"""``--guard METRIC=MAX_DROP``: a bound on how far one metric may fall against the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.errors import UsageError

HEADLINE = {"classification": "balanced_accuracy", "segmentation": "jaccard"}


def headline_metric(task: str) -> str:
    return HEADLINE[task]


@dataclass(frozen=True)
class Guard:
    metric: str
    max_drop: float
    text: str

    def check(self, reference: dict[str, Any], metrics: dict[str, Any]) -> str | None:
        """A one-line problem, or None when the metric held (or cannot be measured on this data)."""
        before, after = reference.get(self.metric), metrics.get(self.metric)
        if before is None or after is None:
            return None
        drop = before - after
        return f"{self.metric} dropped {drop:.4f} > {self.max_drop:g}" if drop > self.max_drop else None


def parse_guard(text: str) -> Guard:
    metric, sep, value = text.partition("=")
    try:
        bound = float(value)
    except ValueError:
        bound = None
    if not sep or not metric.strip() or bound is None:
        raise UsageError(f"--guard {text!r} is not METRIC=MAX_DROP", fix="e.g. --guard mel_sensitivity=0.02")
    return Guard(metric.strip(), bound, text)


def check_guard_metrics(guards: list[Guard], reference_metrics: dict[str, Any]) -> None:
    known = sorted(k for k, v in reference_metrics.items() if isinstance(v, int | float))
    unknown = [g.metric for g in guards if g.metric not in reference_metrics]
    if unknown:
        raise UsageError(f"--guard metric(s) {unknown} are not measured for this model", fix=f"choose from {', '.join(known)}")
