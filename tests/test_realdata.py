"""Real dermoscopy checks on ../shared/data (skipped, with the reason, in a user's clone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from edgederm.data.layouts import load_dataset
from edgederm.training.classification import TrainConfig, train_classifier

pytestmark = pytest.mark.realdata
HAM = SHARED_DATA / "ham10000"
ISIC = SHARED_DATA / "isic2017"


@pytest.fixture(scope="module")
def ham_dir() -> Path:
    if not (HAM / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 not present at {HAM}")
    return HAM


def test_ham10000_head_training_learns_real_lesions(ham_dir: Path, tmp_path: Path):
    """A linear probe on ImageNet Lite0 features, lesion-disjoint validation: well above chance."""
    result = train_classifier(
        TrainConfig(data=f"ham10000:{ham_dir}", out=tmp_path / "run", arch="efficientnet_lite0", img_size=128, mode="head", epochs=15)
    )
    val = result.metrics["val"]
    assert result.spec.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert val["n"] > 1000
    assert val["balanced_accuracy"] > 0.40  # chance is 1/7
    assert val["macro_auc"] > 0.80  # chance is 0.5
    assert val["melanoma_sensitivity"] > 0.25
    splits = (tmp_path / "run" / "splits.csv").read_text().splitlines()[1:]
    sides: dict[str, str] = {}
    for line in splits:
        _, group, _, split, _ = line.split(",")
        assert sides.setdefault(group, split) == split  # lesion-disjoint
    json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_isic2017_train_and_val_layouts():
    if not (ISIC / "train" / "labels.csv").is_file():
        pytest.skip(f"real ISIC 2017 not present at {ISIC}")
    train, val = load_dataset(f"isic2017:{ISIC / 'train'}"), load_dataset(f"isic2017:{ISIC / 'val'}")
    assert (len(train), len(val)) == (2000, 150)
    assert all(s.mask_path is not None for s in train)
    image = train[0].load_image()
    mask = train[0].load_mask(expected_size=image.size)
    assert mask.shape == (image.size[1], image.size[0]) and 0 < (mask > 0).mean() < 1
