"""What ``edgederm decision`` and ``edgederm operating-point`` share: a classifier run's probabilities on
labelled data, and storing what was chosen from them in the run's spec.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _atomic
from .errors import UsageError
from .runtime import Predictor
from .spec import ModelSpec


def load_classifier_run(run_dir: str | Path, purpose: str) -> Predictor:
    """The run's torch Predictor; a one-line error for anything that is not a classifier's run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "spec.json").is_file():
        raise UsageError("not a run directory (no spec.json)", fix="give the run directory made by `edgederm train classify`")
    predictor = Predictor.load(run_dir)
    if predictor.spec.task != "classification":
        raise UsageError(f"{purpose} is for classifiers", fix="give a classifier's run directory")
    return predictor


def labelled_probs(
    predictor: Predictor, run_dir: str | Path, data: str, split: str | None, quiet: bool = False
) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, probabilities, where) for the labelled images of ``data`` (``split`` of the run's splits.csv)."""
    from .predict import labelled_rows, resolve_inputs, run_predictor

    predictions = run_predictor(predictor, resolve_inputs(data, [], split, Path(run_dir) / "splits.csv"), quiet=quiet)
    keep, labels = labelled_rows(predictions)
    return labels, predictions.probs[keep], f"{data}" + (f" [{split}]" if split else "")


def store_spec(run_dir: str | Path, spec: ModelSpec) -> None:
    _atomic.write_text(Path(run_dir) / "spec.json", spec.to_json())
