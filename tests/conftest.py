"""Shared fixtures: small datasets in every official layout, drawn by the synthetic generator."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

from edgederm.data.synthetic import plan_synthetic, render_synthetic

# Property tests draw the same examples on every run, so a CI result is repeatable
# (HYPOTHESIS_PROFILE=explore draws fresh random ones).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# Under pytest-xdist each worker is a process: share the cores between the workers (and the CLI
# subprocesses they start) instead of every torch starting a thread per core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VERIFY_DATA = "synthetic:40,seed=11"  # labelled images for verifying exports of trained_run (another seed than its training data)


def write_images(folder: Path, n: int, seed: int = 0, size=(96, 72)) -> list[dict]:
    """Render n synthetic lesions into folder as <image_id>.jpg plus masks/; return their rows."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for item in plan_synthetic(n, seed):
        image, mask = render_synthetic(item, size=size)
        image.save(folder / "images" / f"{item.image_id}.jpg", quality=92)
        Image.fromarray(mask).save(folder / "masks" / f"{item.image_id}_segmentation.png")
        rows.append({"image_id": item.image_id, "label": item.label, "group": item.group})
    return rows


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def ham_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ham10000")
    rows = write_images(root, 40, seed=1)
    write_csv(
        root / "HAM10000_metadata.csv",
        ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
        [[r["group"], r["image_id"], r["label"], "histo", 50, "female", "back"] for r in rows],
    )
    return root


@pytest.fixture(scope="session")
def isic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic2017")
    rows = write_images(root, 24, seed=2)
    write_csv(
        root / "labels.csv",
        ["image_id", "melanoma", "seborrheic_keratosis"],
        [[r["image_id"], float(r["label"] == "mel"), float(r["label"] == "bkl")] for r in rows],
    )
    return root


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for item in plan_synthetic(24, 3):
        (root / item.label).mkdir(exist_ok=True)
        render_synthetic(item, size=(96, 72))[0].save(root / item.label / f"{item.image_id}.png")
    return root


@pytest.fixture(scope="session")
def manifest_csv(ham_dir: Path) -> Path:
    rows = []
    for row in csv.DictReader(open(ham_dir / "HAM10000_metadata.csv")):
        image_id = row["image_id"]
        rows.append([f"images/{image_id}.jpg", row["dx"], f"masks/{image_id}_segmentation.png", row["lesion_id"]])
    return write_csv(ham_dir / "manifest.csv", ["image", "label", "mask", "group"], rows)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny model trained once per session (head mode on random-init MobileNetV3-Small)."""
    from edgederm.training.classification import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("run") / "run"
    train_classifier(
        TrainConfig(
            data="synthetic:60,seed=4",
            out=out,
            arch="mobilenetv3_small_100",
            img_size=64,
            mode="head",
            epochs=3,
            test_fraction=0.2,
        )
    )
    return out


@pytest.fixture(scope="session")
def trained_segmenter(tmp_path_factory) -> Path:
    """A tiny lesion segmenter trained once per session (tinyseg, synthetic masks, 64 px)."""
    from edgederm.training.segmentation import SegmentConfig, train_segmenter

    out = tmp_path_factory.mktemp("segrun") / "run"
    train_segmenter(SegmentConfig(data="synthetic:48,seed=6", out=out, arch="tinyseg", img_size=64, epochs=3, test_fraction=0.2))
    return out


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def make_venv(root: Path, packages: list[str], timeout: int = 900) -> tuple[Path, str]:
    """A fresh venv with ``packages`` from PyPI: (its python, pip's error text or '')."""
    import subprocess
    import venv

    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    result = subprocess.run([python, "-m", "pip", "install", "-q", *packages], capture_output=True, text=True, timeout=timeout)
    return python, "" if result.returncode == 0 else result.stderr.strip()


def corrupt_jpeg(path: Path) -> Path:
    data = (np.random.default_rng(0).integers(0, 255, (32, 32, 3))).astype(np.uint8)
    Image.fromarray(data).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path
