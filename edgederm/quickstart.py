"""``edgederm quickstart``: the embedded default, offline, in a few minutes on two CPU cores.

Synthetic dermoscopy-like images -> grouped split -> head training on ImageNet EfficientNet-Lite0
features -> calibrated model -> evaluation and predictions on the held-out lesions -> report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .evaluation import evaluate_and_report
from .predict import resolve_inputs, run_predictor
from .runtime import Predictor
from .training.classification import TrainConfig, train_classifier


def quickstart(
    out: Path, *, n: int = 480, arch: str = "efficientnet_lite0", img_size: int = 160, seed: int = 0, quiet: bool = False
) -> Path:
    started = time.time()
    data = f"synthetic:{n},seed={seed}"
    run_dir = out / "run"
    print(f"edgederm quickstart: {data} -> {arch} at {img_size}px -> {out}", file=sys.stderr, flush=True)
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
    report = evaluate_and_report(
        predictions,
        out / "report",
        model=run_dir,
        title="edgederm quickstart: synthetic lesions, held-out test lesions",
        extra_lines=[
            "- The images are procedurally drawn, not real patients: this run proves the pipeline, not clinical accuracy.",
            f"- Total time: {time.time() - started:.0f} s",
        ],
    )
    print(f"edgederm quickstart: done in {time.time() - started:.0f} s; report: {report}", file=sys.stderr, flush=True)
    return report
