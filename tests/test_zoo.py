"""The model zoo: shipped entries load offline with their checksums, and ``zoo:NAME`` works wherever a run does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, cli_env, write_images
from PIL import Image

from edgederm.core import zoo
from edgederm.core.errors import ModelError, UsageError
from edgederm.core.manifest import artifact_sha256
from edgederm.runtime import Predictor

REQUIRED = ("lite0-ham10000", "tinyseg-isic2017", "mobilegan-isic2017")  # the app and the docs name these
SHIPPED = tuple(sorted(zoo.entries()))
ZOO_BUDGET_BYTES = 40_000_000


def _cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgederm", *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True, text=True)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo_photo")
    write_images(folder, 1, seed=3, size=(200, 150))
    return sorted((folder / "images").glob("*.jpg"))[0]


# -- the shipped entries --------------------------------------------------------------------------


def test_the_zoo_ships_its_entries_within_budget():
    entries = zoo.entries()
    assert set(REQUIRED) <= set(entries), f"missing zoo entries: {set(REQUIRED) - set(entries)}"
    total = sum(entry.size_bytes for entry in entries.values())
    assert total <= ZOO_BUDGET_BYTES, f"the zoo is {total / 1e6:.1f} MB"
    for entry in entries.values():
        assert entry.license and ("CC BY-NC" in entry.license or "CC-0" in entry.license)
        assert {"model.safetensors", "spec.json", "splits.csv", "numerics.json", "perf.json", entry.phone_artifact} <= set(entry.files)
        for name in entry.files:
            entry.file(name)  # every checksum holds


@pytest.mark.parametrize("name", SHIPPED)
def test_every_entry_loads_offline_and_its_phone_artifact_matches_it(name, photo):
    reference = Predictor.load(f"zoo:{name}")
    entry = zoo.get(name)
    assert reference.spec.task == entry.task and reference.spec.arch == entry.arch
    phone = Predictor.load(entry.file(entry.phone_artifact))
    assert phone.spec.source_sha256 == entry.files["model.safetensors"], "the phone artifact was exported from these weights"
    image = Image.open(photo).convert("RGB")
    if entry.task == "classification":
        a, b = reference.predict_image(image), phone.predict_image(image)
        assert a.shape == b.shape == (len(reference.spec.class_names),)
        assert abs(a.sum() - 1) < 1e-4 and np.abs(a - b).max() < 0.2  # int8 against fp32: close, not equal
    else:
        a, b = reference.predict_mask(image), phone.predict_mask(image)
        assert a.shape == b.shape == (image.height, image.width)
    numerics = json.loads(entry.file("numerics.json").read_text())
    perf = json.loads(entry.file("perf.json").read_text())
    for block in numerics["sets"].values():
        assert {"torch fp32", "tflite int8", "onnx int8"} <= set(block["artifacts"])
        for measured in block["artifacts"].values():
            headline = "jaccard" if entry.task == "segmentation" else "balanced_accuracy"
            low, high = measured["metrics"][headline]["ci95"]
            assert low <= measured["metrics"][headline]["value"] <= high
    assert {"1", "2"} <= set(perf["artifacts"]["tflite int8"]["latency_ms"])


def test_zoo_list_shows_every_entry_with_its_license():
    done = _cli("zoo", "list")
    assert done.returncode == 0, done.stderr
    for name in SHIPPED:
        assert f"zoo:{name}" in done.stdout
    assert "CC BY-NC 4.0" in done.stdout and "CC-0" in done.stdout
    listed = json.loads(_cli("zoo", "list", "--json").stdout)
    assert {row["name"] for row in listed} >= set(SHIPPED) and all(row["size_bytes"] > 0 for row in listed)


def test_predict_with_a_zoo_classifier(photo, tmp_path):
    done = _cli("predict", "zoo:lite0-ham10000", photo, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and "predicted" in rows[0]


def test_predict_with_a_zoo_segmenter_writes_masks(tmp_path):
    done = _cli("predict", "zoo:tinyseg-isic2017", "--data", "synthetic:3,seed=2", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    masks = sorted((tmp_path / "out").rglob("*.png"))
    assert len(masks) == 3 and set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}


def test_export_a_zoo_entry(tmp_path):
    done = _cli("export", "zoo:tinyseg-isic2017", "--formats", "onnx", "--quant", "fp32", "--out", tmp_path / "export")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert [a["status"] for a in manifest["artifacts"]] == ["ok"]


def test_training_options_take_zoo_names():
    from edgederm.training.classification import TrainConfig

    config = TrainConfig(data="synthetic:8", out="unused", mode="full", init_from="zoo:lite0-ham10000", distill_from="zoo:lite0-ham10000")
    assert config.init_from == str(zoo.get("lite0-ham10000").path) == config.distill_from


# -- bad names and damaged files ------------------------------------------------------------------


@pytest.fixture
def scratch_zoo(tmp_path, monkeypatch, trained_run):
    """A zoo of one entry, made from the session's tiny run, in a temporary folder."""
    folder = tmp_path / "zoo" / "tiny"
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "spec.json", "splits.csv"):
        shutil.copyfile(trained_run / name, folder / name)
    files = {name: artifact_sha256(folder / name) for name in ("model.safetensors", "spec.json", "splits.csv")}
    card = {
        "name": "tiny",
        "task": "classification",
        "arch": "mobilenetv3_small_100",
        "img_size": 64,
        "description": "a test entry",
        "data": "synthetic",
        "license": "CC-0",
        "phone_artifact": "model.safetensors",
        "files": files,
    }
    (folder / zoo.CARD).write_text(json.dumps(card))
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    return folder


def test_zoo_name_resolves_to_the_checkpoint(scratch_zoo):
    assert Predictor.load("zoo:tiny").spec.arch == "mobilenetv3_small_100"
    assert zoo.resolve("runs/x") == zoo.resolve(zoo.Path("runs/x"))  # other paths pass through


def test_a_checksum_mismatch_is_one_line(scratch_zoo):
    weights = scratch_zoo / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as error:
        Predictor.load("zoo:tiny")
    assert "checksum mismatch" in str(error.value) and "\n" not in str(error.value) and str(weights) in str(error.value)


def test_a_missing_zoo_file_is_one_line(scratch_zoo):
    (scratch_zoo / "spec.json").unlink()
    with pytest.raises(ModelError, match="missing spec.json"):
        zoo.resolve("zoo:tiny")


def test_an_unknown_zoo_name_lists_the_known_ones(scratch_zoo):
    with pytest.raises(UsageError, match="no zoo entry 'nope'.*choose from tiny"):
        zoo.resolve("zoo:nope")


def test_the_cli_reports_an_unknown_zoo_name_in_one_line(photo):
    done = _cli("predict", "zoo:nope", photo, "--out", "unused")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no zoo entry 'nope'" in done.stderr


# -- the committed numerics, re-scored where the data is -------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("name", SHIPPED)
def test_numerics_json_matches_a_rescored_subset(name):
    from edgederm.data.layouts import load_dataset
    from edgederm.data.pixels import load_pixels
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import load_truth, score

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    entry = zoo.get(name)
    check = json.loads(entry.file("numerics.json").read_text())["check_subset"]
    dataset = load_dataset(check["data"].replace("../shared/data", str(SHARED_DATA)))
    by_id = {s.image_id: i for i, s in enumerate(dataset.samples)}
    subset = dataset.subset([by_id[i] for i in check["image_ids"]])
    predictors = {"torch fp32": Predictor.load(f"zoo:{name}"), "tflite int8": Predictor.load(entry.file(entry.phone_artifact))}
    spec = predictors["torch fp32"].spec
    cache = load_pixels(subset, spec.preprocess, desc=None)
    truth = load_truth(spec, subset, cache)
    for label, predictor in predictors.items():
        scored = score(spec, truth, measure(predictor, cache.pixels, None, spec).probs)
        for key, committed in check["metrics"][label].items():
            assert scored[key] == pytest.approx(committed, abs=1e-6), f"{name} {label} {key}"
