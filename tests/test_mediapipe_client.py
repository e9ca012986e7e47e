"""A real client: MediaPipe Tasks' ImageClassifier runs the exported NHWC .tflite unchanged.

MediaPipe 0.10.21 pins numpy<2 and protobuf<5, so it lives in its own venv. It reads the standard
TFLite Metadata (normalisation, labels) that the converter writes. MediaPipe stretches frames to
the input size where edgederm letterboxes, so both are given frames already at the input size.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, make_venv

from edgederm.data.layouts import load_dataset
from edgederm.data.pixels import load_pixels
from edgederm.export import export_run
from edgederm.formats import FORMATS
from edgederm.runtime import Predictor
from edgederm.training.classification import TrainConfig, train_classifier

pytestmark = pytest.mark.slow

CLIENT = r"""
import json, sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]), max_results=-1)
frames = np.load(sys.argv[2])
tops = []
with vision.ImageClassifier.create_from_options(options) as classifier:
    for frame in frames:
        result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
        best = max(result.classifications[0].categories, key=lambda c: c.score)
        tops.append(best.category_name)
print(json.dumps(tops))
"""


@pytest.fixture(scope="module")
def mediapipe_python(tmp_path_factory) -> Path:
    python, error = make_venv(tmp_path_factory.mktemp("mediapipe") / "venv", ["mediapipe==0.10.21", "numpy<2", "protobuf<5"])
    if error:
        pytest.skip(f"could not build the mediapipe 0.10.21 venv (it needs PyPI): {error.splitlines()[-1]}")
    return python


def test_mediapipe_image_classifier_agrees_with_predictor(mediapipe_python: Path, tmp_path: Path):
    isic_val = SHARED_DATA / "isic2017" / "val"
    data = f"isic2017:{isic_val}" if (isic_val / "labels.csv").is_file() else "synthetic:60,seed=8"
    run = tmp_path / "run"
    train_classifier(
        TrainConfig(data="synthetic:120,seed=2", out=run, arch="efficientnet_lite0", img_size=96, mode="head", epochs=10, quiet=True)
    )
    records = export_run(
        run, [FORMATS["tflite"]], ["fp32", "int8"], tmp_path / "export", calib_data="synthetic:40,seed=5", calib_n=40, quiet=True
    )
    assert all(r.status == "ok" for r in records), records

    for record in records:
        artifact = tmp_path / "export" / record.path
        predictor = Predictor.load(artifact)
        frames = load_pixels(load_dataset(data), predictor.spec.preprocess, quiet=True).pixels
        np.save(tmp_path / "frames.npy", frames)
        result = subprocess.run(
            [mediapipe_python, "-c", CLIENT, str(artifact), str(tmp_path / "frames.npy")], capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]
        mediapipe_top = json.loads(result.stdout.strip().splitlines()[-1])
        ours = [predictor.class_names[i] for i in predictor.predict_pixels(frames).argmax(1)]
        agreement = np.mean([a == b for a, b in zip(mediapipe_top, ours, strict=True)])
        assert agreement == 1.0, f"{record.quant}: MediaPipe and Predictor disagree on {1 - agreement:.1%} of {data}"
