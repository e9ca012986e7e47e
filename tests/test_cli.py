"""The command line: predictions.csv format, evaluate's report, models listing, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env, corrupt_jpeg
from PIL import Image

from edgederm.cli import main
from edgederm.core.spec import ModelSpec
from edgederm.data.synthetic import plan_synthetic, render_synthetic
from edgederm.models import list_models
from edgederm.runtime.readout import decide


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_models_json_lists_task_params_and_macs(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    classifiers = [r for r in rows if r["task"] == "classification"]
    assert [r["name"] for r in classifiers] == list_models(task="classification")  # the names: tests/test_models.py
    for row in classifiers:
        assert row["params"] > 1e6 and row["macs"] > 5e7 and row["input_size"] == 224
    assert {r["name"] for r in rows if r["task"] == "segmentation"} == {"mobilegan", "tinyseg"}
    assert main(["models"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out


def test_predict_images_and_folders_with_a_bad_image(trained_run: Path, tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for item in plan_synthetic(3, seed=9):
        render_synthetic(item)[0].save(folder / f"{item.image_id}.jpg")
    bad = corrupt_jpeg(folder / "zz_broken.jpg")
    single = tmp_path / "single.png"
    Image.new("RGB", (40, 30), (120, 80, 60)).save(single)
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), str(folder), str(single), "--out", str(out), "--quiet"]) == 0
    spec = ModelSpec.load(trained_run / "spec.json")
    with open(out / "predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["image", "label", *spec.class_names, "predicted", "error"]
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 5
    for row in rows:
        if row["image"] == str(bad):
            assert row["error"] and str(bad) in row["error"] and all(row[c] == "" for c in spec.class_names)
        else:
            assert row["error"] == "" and row["label"] == ""
            assert sum(float(row[c]) for c in spec.class_names) == pytest.approx(1.0, abs=1e-4)
            probs = np.array([[float(row[c]) for c in spec.class_names]])
            assert row["predicted"] == spec.class_names[int(decide(spec.decision, probs)[0])]


def test_predict_dataset_split_keeps_true_labels(trained_run: Path, tmp_path: Path):
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), "--data", "synthetic:60,seed=4", "--split", "test", "--out", str(out), "--quiet"]) == 0
    rows = _rows(out / "predictions.csv")
    splits = _rows(trained_run / "splits.csv")
    test_ids = {r["image_id"]: r["label"] for r in splits if r["split"] == "test"}
    assert {r["image"] for r in rows} == set(test_ids)
    assert all(r["label"] == test_ids[r["image"]] for r in rows)


def test_evaluate_writes_metrics_and_a_report(trained_run: Path, tmp_path: Path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--data", "synthetic:60,seed=4", "--split", "test", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == sum(r["split"] == "test" for r in _rows(trained_run / "splits.csv"))
    assert 0 <= metrics["balanced_accuracy"] <= 1 and len(metrics["confusion_matrix"]) == 4
    report = (out / "report.md").read_text()
    assert "Balanced accuracy" in report and "not a diagnosis" in report
    for png in ("confusion_matrix.png", "roc.png", "reliability.png", "training_curves.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 200 and len(set(image.convert("L").get_flattened_data())) > 10, png  # a drawn plot, not blank


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "classify", "--data", "imagenet:/x", "--out", "OUT"], "unknown data spec"),
        (["train", "classify", "--data", "ham10000:/no/such/dir", "--out", "OUT"], "/no/such/dir: no such directory"),
        (["train", "classify", "--data", "synthetic:20", "--arch", "resnet9000", "--out", "OUT"], "unknown model 'resnet9000'"),
        (["predict", "/no/model", "x.jpg", "--out", "OUT"], "/no/model: no such model file or run directory"),
        (["train", "classify", "--data", "synthetic:20"], "the following arguments are required: --out"),
        (["train", "classify", "--data", "synthetic:20", "--out", "OUT", "--epochs", "0"], "must be positive"),
        (["export", "zoo:tinyseg-isic2017", "--weight-rounding", "sometimes", "--out", "OUT"], "invalid choice: 'sometimes'"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, expected, tmp_path: Path):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    result = subprocess.run([sys.executable, "-m", "edgederm", *argv], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and "Traceback" not in result.stderr


def test_predict_input_errors_name_the_problem(trained_run: Path, tmp_path: Path, capsys):
    assert main(["predict", str(trained_run), "--data", "synthetic:5", "x.jpg", "--out", str(tmp_path)]) == 2
    assert "either --data SPEC or image files" in capsys.readouterr().err
    assert main(["predict", str(trained_run), str(tmp_path / "absent.jpg"), "--out", str(tmp_path)]) == 2
    assert "absent.jpg: no such file or folder" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "edgederm", "--debug", "train", "classify", "--data", "imagenet:/x", "--out", str(tmp_path)],
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_corrupt_checkpoint_is_one_line(trained_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text("{not json")
    (run / "model.safetensors").write_bytes(b"\x00" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "edgederm", "predict", str(run), str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "spec.json: not a valid edgederm model spec" in result.stderr
