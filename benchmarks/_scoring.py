"""What the benchmarks that compare runs share: export a run, predict the same images with every
artifact, and score each against the run's own torch fp32 model."""

from __future__ import annotations

from pathlib import Path


def export_and_predict(run: Path, images, work: Path, calib: str, quants: tuple[str, ...] = ("int8",), threads: int | None = None):
    """(spec, labels, pixels, {name: probabilities}, {name: Predictor}) for torch fp32 and every TFLite and ONNX artifact."""
    import numpy as np

    from edgederm.core.formats import FORMATS
    from edgederm.data.pixels import load_pixels
    from edgederm.export import export_run
    from edgederm.runtime import Predictor

    reference = Predictor.load(run)
    names = reference.spec.class_names
    pixels = load_pixels(images, reference.spec.preprocess, desc=None)
    labels = np.array([names.index(images.samples[i].label) for i in pixels.kept])
    records = export_run(
        run, [FORMATS["tflite"], FORMATS["onnx"]], list(quants), work / run.name, calib_data=calib, calib_n=100
    )
    predictors = {"torch fp32": reference}
    for record in records:
        if record.status != "ok":
            raise RuntimeError(f"{run}: {record.format} {record.quant}: {record.message}")
        predictors[f"{record.format} {record.quant}"] = Predictor.load(work / run.name / record.path, threads=threads)
    probs = {name: predictor.predict_pixels(pixels.pixels) for name, predictor in predictors.items()}
    return reference.spec, labels, pixels.pixels, probs, predictors


def metric_row(spec, labels, probs, reference_probs) -> dict:
    """Task metrics by the run's stored decision rule, plus agreement and max |dprob| against ``reference_probs``."""
    import numpy as np

    from edgederm.metrics import classification_metrics
    from edgederm.runtime.readout import decide

    metrics = classification_metrics(labels, probs, spec.class_names, decision=spec.decision)
    return {
        "accuracy": metrics.accuracy,
        "balanced_accuracy": metrics.balanced_accuracy,
        "mel_sensitivity": metrics.melanoma_sensitivity,
        "macro_auc": metrics.macro_auc,
        "agreement": float((decide(spec.decision, probs) == decide(spec.decision, reference_probs)).mean()),
        "max_abs_dprob": float(np.abs(probs - reference_probs).max()),
    }
