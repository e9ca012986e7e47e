"""What the result screen shows, as plain data: the Kivy layer draws it and the headless JSON line prints it.

Both read this one ``ResultView``, so the JSON line is exactly what a person sees on the screen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .capture import CaptureResult

DISCLAIMER = "A screening aid, not a diagnosis. See a clinician about any lesion that worries you, whatever this app says."
REFER_TITLE = "Refer to a clinician"
NO_REFER_TITLE = "No referral signal"


@dataclass(frozen=True)
class ClassRow:
    label: str  # dx code
    name: str  # full name
    probability: float

    @property
    def percent(self) -> str:
        return f"{self.probability:.0%}"


@dataclass(frozen=True)
class ResultView:
    refer: bool
    banner_title: str
    reason: str
    malignant_score: float
    threshold: float | None
    rows: tuple[ClassRow, ...]  # top 3, most probable first
    predicted: ClassRow  # the class the model names under its decision rule (edgederm.runtime.readout), as `edgederm predict` does
    lesion_area_fraction: float | None
    latency_ms: float
    classifier_ms: float
    segmenter_ms: float | None

    @property
    def latency_text(self) -> str:
        parts = f"classifier {_ms(self.classifier_ms)}"
        if self.segmenter_ms is not None:
            parts += f", segmenter {_ms(self.segmenter_ms)}"
        return f"Inference {_ms(self.latency_ms)} ({parts}), on this device, offline"

    @property
    def area_text(self) -> str:
        if self.lesion_area_fraction is None:
            return "No segmenter selected: no lesion outline"
        return f"Lesion covers {self.lesion_area_fraction:.1%} of the photo"

    @property
    def summary(self) -> str:
        """One line for the history list."""
        return f"{'REFER' if self.refer else 'no referral'} - {self.predicted.name} {self.predicted.percent}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted.label,
            "predicted_name": self.predicted.name,
            "top3": [{"label": r.label, "name": r.name, "probability": r.probability} for r in self.rows],
            "refer": self.refer,
            "banner": self.banner_title,
            "reason": self.reason,
            "malignant_score": self.malignant_score,
            "threshold": self.threshold,
            "lesion_area_fraction": self.lesion_area_fraction,
            "latency_ms": self.latency_ms,
            "classifier_ms": self.classifier_ms,
            "segmenter_ms": self.segmenter_ms,
        }


def result_view(result: CaptureResult) -> ResultView:
    screening = result.screening
    return ResultView(
        refer=screening.refer,
        banner_title=REFER_TITLE if screening.refer else NO_REFER_TITLE,
        reason=screening.reason,
        malignant_score=screening.malignant_score,
        threshold=screening.threshold,
        rows=tuple(ClassRow(code, name, probability) for code, name, probability in screening.top),
        predicted=ClassRow(
            screening.predicted, screening.predicted_name, result.probabilities[result.class_names.index(screening.predicted)]
        ),
        lesion_area_fraction=result.lesion_area_fraction,
        latency_ms=result.latency_ms,
        classifier_ms=result.classifier_ms,
        segmenter_ms=result.segmenter_ms,
    )


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def json_line(view: ResultView, **context: Any) -> str:
    """The headless hook's one stdout line: the view plus where it came from (model, source, screenshot...)."""
    return json.dumps({**view.to_dict(), **context}, sort_keys=False)
