"""``edgederm quickstart``: the embedded default, offline, in a few minutes on two CPU cores.

Synthetic dermoscopy-like images -> grouped split -> head training on ImageNet EfficientNet-Lite0
features -> calibrated model -> TFLite / ONNX / CoreML export at fp32 and int8 -> every runnable
artifact checked against torch on the held-out lesions -> report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .evaluation import evaluate_and_report
from .formats import FORMATS
from .predict import Predictions, resolve_inputs, run_predictor
from .runtime import Predictor
from .training.classification import TrainConfig, train_classifier


def _log(message: str) -> None:
    print(f"edgederm quickstart: {message}", file=sys.stderr, flush=True)


def _artifact_lines(reference: Predictions, export_dir: Path, records, quiet: bool) -> list[str]:
    """A Markdown table: each artifact against the torch model on the same test images."""
    lines = [
        "",
        "## Exported artifacts, checked against the PyTorch model on the same test images",
        "",
        "| format | quant | size (MB) | top-1 agreement | max abs difference in probability | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    ok = reference.ok
    for record in records:
        size = f"{record.size / 1e6:.2f}" if record.size else ""
        if record.status != "ok":
            lines.append(f"| {record.format} | {record.quant} | | | | {record.status}: {record.message} |")
            continue
        if not FORMATS[record.format].runs_on_linux and sys.platform != "darwin":
            lines.append(
                f"| {record.format} | {record.quant} | {size} | | | exported; CoreML runs only on Apple platforms, not verified here |"
            )
            continue
        probs = run_predictor(Predictor.load(export_dir / record.path), reference.dataset, quiet=quiet).probs
        agreement = float((probs[ok].argmax(1) == reference.probs[ok].argmax(1)).mean())
        delta = float(np.abs(probs[ok] - reference.probs[ok]).max())
        lines.append(f"| {record.format} | {record.quant} | {size} | {agreement:.1%} | {delta:.4f} | |")
    return lines


def quickstart(
    out: Path,
    *,
    n: int = 480,
    arch: str = "efficientnet_lite0",
    img_size: int = 160,
    seed: int = 0,
    quiet: bool = False,
    export: bool = True,
) -> Path:
    from .export import export_run

    started = time.time()
    data = f"synthetic:{n},seed={seed}"
    run_dir = out / "run"
    _log(f"{data} -> {arch} at {img_size}px -> {out}")
    train_classifier(
        TrainConfig(
            data=data,
            out=run_dir,
            arch=arch,
            img_size=img_size,
            mode="head",
            epochs=40,
            val_fraction=0.15,
            test_fraction=0.2,
            seed=seed,
            quiet=quiet,
        )
    )
    test = resolve_inputs(data, [], "test", run_dir / "splits.csv")
    predictions = run_predictor(Predictor.load(run_dir), test, quiet=quiet)
    extra: list[str] = []
    if export:
        _log("exporting to TFLite, ONNX and CoreML at fp32 and int8")
        export_dir = out / "export"  # calibration images are fresh lesions, never the test ones
        records = export_run(
            run_dir,
            list(FORMATS.values()),
            ["fp32", "int8"],
            export_dir,
            calib_data=f"synthetic:100,seed={seed + 1}",
            calib_n=100,
            quiet=quiet,
        )
        extra = _artifact_lines(predictions, export_dir, records, quiet)
    report = evaluate_and_report(
        predictions,
        out / "report",
        model=run_dir,
        title="edgederm quickstart: synthetic lesions, held-out test lesions",
        extra_lines=[
            "- The images are procedurally drawn, not real patients: this run proves the pipeline, not clinical accuracy.",
            f"- Total time: {time.time() - started:.0f} s",
        ],
        appendix_lines=extra,
    )
    _log(f"done in {time.time() - started:.0f} s; report: {report}")
    return report
