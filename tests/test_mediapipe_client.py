"""A real client: MediaPipe Tasks' ImageClassifier and ImageSegmenter run the exported NHWC .tflite unchanged.

MediaPipe 0.10.21 pins numpy<2 and protobuf<5, so it lives in its own venv. It reads the standard
TFLite Metadata (normalisation, labels, segmenter options) that the converter writes. MediaPipe
stretches frames to the input size where edgederm letterboxes, so both are given frames already at
the input size.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, make_venv

from edgederm.core.formats import FORMATS
from edgederm.core.spec import ModelSpec
from edgederm.data.layouts import load_dataset
from edgederm.data.pixels import load_pixels
from edgederm.export import export_run
from edgederm.runtime import Predictor
from edgederm.runtime.readout import lesion_mask, lesion_probabilities
from edgederm.training.classification import TrainConfig, train_classifier
from edgederm.training.segmentation import SegmentConfig, train_segmenter

pytestmark = pytest.mark.slow

CLIENT = r"""
import json, sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]), max_results=-1)
frames = np.load(sys.argv[2])
scores = []
with vision.ImageClassifier.create_from_options(options) as classifier:
    for frame in frames:
        result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
        categories = sorted(result.classifications[0].categories, key=lambda c: c.index)
        scores.append({c.category_name: c.score for c in categories})
print(json.dumps(scores))
"""

SEGMENTER_CLIENT = r"""
import sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
options = vision.ImageSegmenterOptions(
    base_options=BaseOptions(model_asset_path=sys.argv[1]), output_confidence_masks=True, output_category_mask=True
)
confidence, category = [], []
with vision.ImageSegmenter.create_from_options(options) as segmenter:
    for frame in np.load(sys.argv[2]):
        result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
        confidence.append(np.stack([mask.numpy_view() for mask in result.confidence_masks]))
        category.append(result.category_mask.numpy_view())
    labels = segmenter.labels
np.savez(sys.argv[3], confidence=np.stack(confidence), category=np.stack(category), labels=np.array(labels))
"""


@pytest.fixture(scope="module")
def mediapipe_python(tmp_path_factory) -> Path:
    python, error = make_venv(tmp_path_factory.mktemp("mediapipe") / "venv", ["mediapipe==0.10.21", "numpy<2", "protobuf<5"])
    if error:
        pytest.skip(f"could not build the mediapipe 0.10.21 venv (it needs PyPI): {error.splitlines()[-1]}")
    return python


def _frames(data_fallback: str) -> str:
    isic_val = SHARED_DATA / "isic2017" / "val"
    return f"isic2017:{isic_val}" if (isic_val / "labels.csv").is_file() else data_fallback


def _mediapipe_scores(python: Path, artifact: Path, frames: np.ndarray, class_names: list[str], folder: Path) -> np.ndarray:
    """MediaPipe ImageClassifier's scores for ``frames``, (N, C) in the order of ``class_names``."""
    np.save(folder / "frames.npy", frames)
    result = subprocess.run([python, "-c", CLIENT, str(artifact), str(folder / "frames.npy")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return np.array([[scores[name] for name in class_names] for scores in json.loads(result.stdout.strip().splitlines()[-1])])


def test_mediapipe_image_classifier_agrees_with_predictor(mediapipe_python: Path, tmp_path: Path):
    data = _frames("synthetic:60,seed=8")
    run = tmp_path / "run"
    train_classifier(TrainConfig(data="synthetic:120,seed=2", out=run, arch="efficientnet_lite0", img_size=96, mode="head", epochs=10))
    records = export_run(run, [FORMATS["tflite"]], ["fp32", "int8"], tmp_path / "export", calib_data="synthetic:40,seed=5", calib_n=40)
    assert all(r.status == "ok" for r in records), records

    for record in records:
        artifact = tmp_path / "export" / record.path
        predictor = Predictor.load(artifact)
        frames = load_pixels(load_dataset(data), predictor.spec.preprocess).pixels
        mediapipe = _mediapipe_scores(mediapipe_python, artifact, frames, predictor.class_names, tmp_path)
        agreement = np.mean(mediapipe.argmax(1) == predictor.predict_pixels(frames).argmax(1))
        assert agreement == 1.0, f"{record.quant}: MediaPipe and Predictor disagree on {1 - agreement:.1%} of {data}"


def test_mediapipe_image_classifier_takes_per_channel_normalisation(mediapipe_python: Path, trained_run: Path, tmp_path: Path):
    """A MobileNetV3 trained with ImageNet's per-channel mean and std: MediaPipe's scores are the Predictor's probabilities.

    MediaPipe refuses per-channel normalisation, so the file takes one mean and std and makes up the rest in its graph.
    """
    records = export_run(trained_run, [FORMATS["tflite"]], ["fp32"], tmp_path / "export")
    assert records[0].status == "ok", records[0].message
    predictor = Predictor.load(tmp_path / "export" / records[0].path)
    assert len(set(predictor.spec.preprocess.mean)) == 3 and len(set(predictor.spec.input_preprocess.mean)) == 1
    frames = load_pixels(load_dataset(_frames("synthetic:40,seed=8")), predictor.spec.preprocess).pixels
    mediapipe = _mediapipe_scores(mediapipe_python, tmp_path / "export" / records[0].path, frames, predictor.class_names, tmp_path)
    assert np.abs(mediapipe - predictor.predict_pixels(frames)).max() < 1e-4


def test_mediapipe_image_segmenter_agrees_with_predictor(mediapipe_python: Path, tmp_path: Path):
    """MediaPipe's confidence mask is the Predictor's lesion probability, its category mask the probability above 0.5.

    The segmenter is trained with ImageNet's per-channel mean and std, which MediaPipe cannot apply: the file takes
    one mean and std and makes up the rest in its graph. Through edgederm's lesion_mask (the spec's threshold and
    clean-up), MediaPipe's confidence mask gives the Predictor's mask.
    """
    data = _frames("synthetic:40,seed=8")
    run = tmp_path / "run"
    # Unlike the session's 3-epoch segmenter (flat probabilities), 30 epochs (a minute) draw real outlines. At 32 px the
    # attention's softmax over one position lowers to EXP, which ai-edge-quantizer's op table lacks: 64 px.
    train_segmenter(SegmentConfig(data="synthetic:64,seed=6", out=run, arch="tinyseg", img_size=64, epochs=30, adversarial="off"))
    spec = ModelSpec.load(run / "spec.json")
    frames = load_pixels(load_dataset(data), spec.preprocess).pixels
    records = export_run(run, [FORMATS["tflite"]], ["fp32", "int8"], tmp_path / "export", calib_data="synthetic:40,seed=5", calib_n=40)
    assert all(r.status == "ok" for r in records), records
    side = spec.preprocess.input_size
    np.save(tmp_path / "frames.npy", frames)
    for record in records:
        artifact = tmp_path / "export" / record.path
        predictor = Predictor.load(artifact)
        assert predictor.spec.artifact["output"]["shape"] == [1, side, side, 1]
        assert len(set(predictor.spec.artifact["input"]["normalization"]["mean"])) == 1  # ImageNet's means, averaged
        result = subprocess.run(
            [mediapipe_python, "-c", SEGMENTER_CLIENT, str(artifact), str(tmp_path / "frames.npy"), str(tmp_path / "mediapipe.npz")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        mediapipe = np.load(tmp_path / "mediapipe.npz")
        assert mediapipe["labels"].tolist() == ["lesion"] and mediapipe["confidence"].shape == (len(frames), 1, side, side)
        confidence, category = mediapipe["confidence"][:, 0], mediapipe["category"]
        ours = lesion_probabilities(predictor.predict_pixels(frames))
        assert np.abs(confidence - ours).max() < (1e-4 if record.quant == "fp32" else 1e-2), record.quant  # int8: two output steps

        above = ours > 0.5
        assert 0.02 < above.mean() < 0.6, f"{record.quant}: the checks below need lesions in the masks"
        # A one-channel model's category mask: 0 (the label "lesion") above 0.5, 255 elsewhere.
        assert set(np.unique(category)) <= {0, 255}
        assert np.mean((category == 0) == above) >= 0.99, record.quant
        masks = [lesion_mask(p, predictor.spec, (side, side)) for p in ours]
        theirs = [lesion_mask(c, predictor.spec, (side, side)) for c in confidence]
        agreement = np.mean(np.stack(masks) == np.stack(theirs))
        assert agreement >= 0.99, f"{record.quant}: MediaPipe's mask and the Predictor's agree on {agreement:.2%} of pixels of {data}"
