"""``edgederm verify``: every artifact against the torch reference, statuses, exit codes, report, device results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VERIFY_DATA, cli_env

from edgederm.core.formats import FORMATS
from edgederm.evaluate.verify.guards import parse_guard
from edgederm.evaluate.verify.runner import VerifyOptions, exit_code, verify_export
from edgederm.export import export_run


@pytest.fixture(scope="module")
def export_dir(trained_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify_export")
    formats = [FORMATS["tflite"], FORMATS["onnx"], FORMATS["coreml"]]
    records = export_run(trained_run, formats, ["fp32", "int8"], out, calib_data="synthetic:40,seed=5", calib_n=40)
    assert all(r.status == "ok" for r in records), [(r.format, r.quant, r.message) for r in records]
    return out


@pytest.fixture(scope="module")
def result(export_dir: Path) -> dict:
    options = VerifyOptions(data=VERIFY_DATA, max_drop=1.0, threads=[1, 2], runs=5, warmup=1, emulate_coreml=False)
    return verify_export(export_dir, options)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgederm", *args], capture_output=True, text=True, env=cli_env(), timeout=600)


def test_every_manifest_artifact_gets_a_row(result: dict, export_dir: Path):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert [(a["format"], a["quant"]) for a in result["artifacts"]] == [(a["format"], a["quant"]) for a in manifest["artifacts"]]
    assert result["task"] == "classification"
    assert result["n_images"] == 40


def test_float_artifacts_match_the_reference(result: dict):
    for row in result["artifacts"]:
        if row["format"] in ("tflite", "onnx") and row["quant"] == "fp32":
            assert row["status"] == "pass"
            assert row["agreement"]["top1"] == 1.0
            assert row["agreement"]["max_abs_prob_diff"] < 1e-3
            assert abs(row["deltas"]["balanced_accuracy"]) < 1e-9


def test_measure_gives_the_numbers_verify_reports(trained_run: Path, export_dir: Path, result: dict):
    from edgederm.data.pixels import load_pixels
    from edgederm.data.selection import resolve_inputs
    from edgederm.evaluate.verify.measure import load_artifact, measure
    from edgederm.evaluate.verify.scoring import load_truth
    from edgederm.runtime import Predictor

    reference = Predictor.load(trained_run)
    dataset = resolve_inputs(VERIFY_DATA, [], None, trained_run / "splits.csv")
    cache = load_pixels(dataset, reference.spec.preprocess, desc=None)
    truth = load_truth(reference.spec, dataset, cache)
    torch_fp32 = measure(reference, cache.pixels, truth)
    row = next(r for r in result["artifacts"] if (r["format"], r["quant"]) == ("onnx", "int8"))
    artifact = load_artifact(export_dir / row["path"], threads=1)
    onnx = measure(artifact, cache.pixels, truth, reference.spec, reference=torch_fp32, threads=[1], runs=2, warmup=0)
    for key in ("accuracy", "balanced_accuracy", "confusion_matrix"):
        assert torch_fp32.metrics[key] == result["reference"]["metrics"][key]
        assert onnx.metrics[key] == row["metrics"][key]
    assert onnx.agreement["top1"] == row["agreement"]["top1"]
    assert onnx.agreement["max_abs_prob_diff"] == pytest.approx(row["agreement"]["max_abs_prob_diff"], abs=1e-5)
    assert onnx.deltas["balanced_accuracy"] == pytest.approx(row["deltas"]["balanced_accuracy"])
    assert [t["threads"] for t in onnx.latency] == [1] and onnx.latency[0]["runs"] == 2
    assert torch_fp32.agreement is None and torch_fp32.latency == []


def test_rows_have_the_documented_fields(result: dict):
    ref = result["reference"]
    for key in ("accuracy", "balanced_accuracy", "macro_auc", "ece", "mel_sensitivity", "sensitivity_mel"):
        assert key in ref["metrics"]
    for row in result["artifacts"]:
        assert row["status"] in ("pass", "fail", "error", "unverified")
        assert row["size_bytes"] > 0 and len(row["sha256"]) == 64
        if row["status"] == "pass":
            assert [t["threads"] for t in row["latency"]] == [1, 2]
            for timing in row["latency"]:
                assert timing["runs"] == 5 and 0 < timing["median_ms"] <= timing["p90_ms"]


def test_coreml_is_unverified_off_apple_without_emulation(result: dict):
    if sys.platform == "darwin":
        pytest.skip("CoreML runs natively on macOS, so it is verified there")
    rows = [r for r in result["artifacts"] if r["format"] == "coreml"]
    assert rows and all(r["status"] == "unverified" and "Apple" in r["message"] for r in rows)
    assert exit_code(result) == 0  # unverified never fails a run


def test_operating_point_is_stored_and_remeasured(trained_run: Path, result: dict):
    spec = json.loads((trained_run / "spec.json").read_text())
    point = spec["operating_point"]
    assert point["target_sensitivity"] == 0.9 and point["sensitivity"] >= 0.9
    assert result["operating_point"]["threshold"] == point["threshold"]
    assert 0 <= result["reference"]["metrics"]["op_sensitivity"] <= 1


def test_impossible_bound_exits_1_and_sane_bound_exits_0(export_dir: Path, tmp_path: Path):
    common = [str(export_dir), "--data", VERIFY_DATA, "--runs", "3", "--warmup", "0", "--no-emulate-coreml", "--quiet"]
    bad = run_cli("verify", *common, "--max-drop", "-1", "--json", str(tmp_path / "bad.json"), "--report", str(tmp_path / "bad"))
    assert bad.returncode == 1, bad.stderr
    rows = json.loads((tmp_path / "bad.json").read_text())["artifacts"]
    assert {r["status"] for r in rows if r["format"] != "coreml"} == {"fail"}
    assert all("balanced_accuracy dropped" in r["checks"][0] for r in rows if r["status"] == "fail")
    good = run_cli("verify", *common, "--max-drop", "0.5", "--json", str(tmp_path / "good.json"), "--report", str(tmp_path / "good"))
    assert good.returncode == 0, good.stderr
    for name in ("verify.md", "verify.html", "latency.png", "roc.png", "reliability.png", "confusion.png"):
        assert (tmp_path / "good" / name).stat().st_size > 1000, name
    html = (tmp_path / "good" / "verify.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # self-contained: every plot inline, Grad-CAM included
    assert "onnx int8" in (tmp_path / "good" / "verify.md").read_text()


def test_class_changes_count_each_disagreement_once(result: dict):
    n = result["n_images"]
    for row in result["artifacts"]:
        changes = (row.get("agreement") or {}).get("class_changes")
        if changes is None:
            continue
        assert len(changes) == len(result["reference"]["metrics"]["confusion_matrix"])
        disagreeing = round((1 - row["agreement"]["top1"]) * n)
        assert sum(c["lost"] for c in changes.values()) == sum(c["gained"] for c in changes.values()) == disagreeing
        for change in changes.values():
            assert 0 <= change["lost_true"] <= change["lost"] and 0 <= change["gained_true"] <= change["gained"]


def test_class_changes_name_the_class_an_artifact_loses():
    from edgederm.core.spec import ModelSpec, Preprocess
    from edgederm.evaluate.verify.report import class_change_lines, class_change_table
    from edgederm.evaluate.verify.scoring import Truth, agreement

    spec = ModelSpec("classification", "x", ["mel", "nv", "bcc"], Preprocess(input_size=32))
    reference = np.array([[0.6, 0.3, 0.1], [0.55, 0.4, 0.05], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    moved = np.array([[0.6, 0.3, 0.1], [0.45, 0.5, 0.05], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])  # image 1: mel -> nv
    truth = Truth(labels=np.array([0, 0, 1, 2]))
    changes = agreement(spec, truth, reference, moved)["class_changes"]
    assert changes["mel"] == {
        "lost": 1,
        "gained": 0,
        "lost_true": 1,
        "gained_true": 0,
        "mean_dlogp": pytest.approx(np.log(0.45 / 0.55) / 4),
    }
    assert (changes["nv"]["lost"], changes["nv"]["gained"], changes["nv"]["gained_true"]) == (0, 1, 0)
    assert changes["bcc"]["lost"] == changes["bcc"]["gained"] == 0
    same = {"format": "onnx", "quant": "fp32", "agreement": agreement(spec, truth, reference, reference)}
    int8 = {"format": "tflite", "quant": "int8", "agreement": agreement(spec, truth, reference, moved)}
    header, rows = class_change_table({"reference": {}, "artifacts": [same, int8]})
    assert header == ["artifact", "mel", "nv", "bcc"]
    assert [r[0] for r in rows] == ["tflite int8"]  # an artifact that changes nothing gets no row
    assert rows[0][1].startswith("-1 +0 (-1 +0)")
    assert class_change_lines({"reference": {}, "artifacts": [same]}) == []


def test_guard_breaks_only_when_the_metric_drops_more():
    guard = parse_guard("mel_sensitivity=0.02")
    assert guard.check({"mel_sensitivity": 0.80}, {"mel_sensitivity": 0.79}) is None
    assert "mel_sensitivity dropped 0.0500" in guard.check({"mel_sensitivity": 0.80}, {"mel_sensitivity": 0.75})
    assert guard.check({"mel_sensitivity": None}, {"mel_sensitivity": 0.5}) is None


@pytest.mark.parametrize("text", ["mel_sensitivity", "=0.1", "mel_sensitivity=x"])
def test_malformed_guard_is_a_one_line_error(text: str, export_dir: Path):
    proc = run_cli("verify", str(export_dir), "--data", VERIFY_DATA, "--guard", text)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "METRIC=MAX_DROP" in proc.stderr


def test_unknown_guard_metric_names_the_choices(export_dir: Path):
    proc = run_cli("verify", str(export_dir), "--data", VERIFY_DATA, "--guard", "wizardry=0.1", "--runs", "1", "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "wizardry" in proc.stderr and "balanced_accuracy" in proc.stderr


def test_tampered_artifact_is_an_error_row_and_fails_the_run(export_dir: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    onnx_file = next(copy.glob("*_fp32.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-100])
    result = verify_export(copy, VerifyOptions(data=VERIFY_DATA, runs=2, warmup=0, emulate_coreml=False))
    row = next(r for r in result["artifacts"] if r["path"] == onnx_file.name)
    assert row["status"] == "error" and "sha256" in row["message"] and onnx_file.name in row["message"]
    assert exit_code(result) == 1


def test_missing_source_run_asks_for_reference(export_dir: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("verify", str(copy), "--data", VERIFY_DATA)
    assert proc.returncode == 2 and "--reference" in proc.stderr and proc.stderr.count("\n") == 1


def test_device_results_merge_as_columns(export_dir: Path, result: dict, tmp_path: Path):
    from edgederm.evaluate.verify.device_results import read_device_results
    from edgederm.evaluate.verify.report import table_rows

    onnx_row = next(r for r in result["artifacts"] if r["format"] == "onnx" and r["quant"] == "int8")
    phone = {
        "device": {"name": "Pixel 7", "platform": "android", "machine": "aarch64"},
        "created": "2026-11-22T00:00:00+00:00",
        "artifacts": [
            {"name": onnx_row["name"], "sha256": onnx_row["sha256"], "latency": [{"threads": 4, "median_ms": 1.5, "p90_ms": 2.0}]}
        ],
    }
    path = tmp_path / "pixel7.json"
    path.write_text(json.dumps(phone))
    merged = dict(result, device_results=[read_device_results(path)])
    header, rows = table_rows(merged)
    column = header.index("Pixel 7 (device)")
    assert [r[column] for r in rows if r[0] == "onnx int8"] == ["1.50 ms @4"]
    assert sum(bool(r[column]) for r in rows) == 1


def test_bad_device_results_fail_before_the_run(export_dir: Path, tmp_path: Path):
    bad = tmp_path / "phone.json"
    bad.write_text('{"artifacts": [{"latency": [{"threads": 1}]}]}')
    proc = run_cli("verify", str(export_dir), "--data", VERIFY_DATA, "--device-results", str(bad))
    assert proc.returncode != 0 and str(bad) in proc.stderr and proc.stderr.count("\n") == 1


def test_json_has_no_arrays_only_plain_values(result: dict, tmp_path: Path):
    from edgederm.evaluate.verify.report import write_json

    write_json(result, tmp_path / "v.json")
    data = json.loads((tmp_path / "v.json").read_text())
    assert set(data) >= {"task", "reference", "artifacts", "threads", "max_drop", "headline_metric"}
    assert "probs" not in data["reference"] and all("probs" not in a for a in data["artifacts"])
    assert isinstance(np.asarray(data["reference"]["metrics"]["confusion_matrix"]).sum(), np.integer)


def test_operating_point_command_rewrites_the_threshold(trained_run: Path, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = run_cli("operating-point", str(run), "--data", "synthetic:60,seed=4", "--split", "val", "--target-sensitivity", "1.0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    point = json.loads((run / "spec.json").read_text())["operating_point"]
    assert point["target_sensitivity"] == 1.0 and point["sensitivity"] == 1.0
    assert "refer when" in proc.stdout and point["chosen_on"] == "validation"
    from edgederm.runtime import Predictor

    Predictor.load(run)  # the weights' checksum still matches the rewritten spec
    bad = run_cli("operating-point", str(run), "--data", "synthetic:60,seed=4", "--target-sensitivity", "1.5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_segmenter_export_verifies_with_mask_metrics(trained_segmenter: Path, tmp_path: Path):
    out = tmp_path / "seg_export"
    formats = [FORMATS["tflite"], FORMATS["onnx"]]
    records = export_run(trained_segmenter, formats, ["fp32", "int8"], out, calib_n=24)
    assert all(r.status == "ok" for r in records), [(r.format, r.quant, r.message) for r in records]
    common = [str(out), "--data", "synthetic:48,seed=6", "--split", "test", "--runs", "3", "--warmup", "0", "--quiet"]
    good = run_cli("verify", *common, "--max-drop", "0.2", "--json", str(tmp_path / "v.json"), "--report", str(tmp_path / "r"))
    assert good.returncode == 0, good.stderr
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["task"] == "segmentation" and result["headline_metric"] == "jaccard"
    for key in ("jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity"):
        assert 0 <= result["reference"]["metrics"][key] <= 1
    fp32 = [a for a in result["artifacts"] if a["quant"] == "fp32"]
    assert all(a["agreement"]["mask_iou"] > 0.99 and abs(a["deltas"]["jaccard"]) < 1e-3 for a in fp32)
    assert (tmp_path / "r" / "overlays.png").stat().st_size > 1000
    assert "Jaccard (Δ)" in (tmp_path / "r" / "verify.md").read_text()
    bad = run_cli("verify", *common, "--max-drop", "-1", "--json", str(tmp_path / "b.json"), "--report", str(tmp_path / "b"))
    assert bad.returncode == 1


def test_saliency_is_measured_against_the_lesion_masks(result: dict, tmp_path: Path):
    from edgederm.evaluate.verify.report import write_report
    from edgederm.evaluate.verify.runner import to_json

    saliency = result["saliency"]
    assert saliency["images"] == 40  # every synthetic image has an exact mask
    assert 0 <= saliency["mean_share_inside_lesion"] <= 1 and 0 < saliency["mean_lesion_area"] < 1
    for item in saliency["items"]:
        assert item.cam.shape == item.mask.shape == item.pixels.shape[:2]
        assert item.cam.min() >= 0 and item.cam.max() <= 1 + 1e-6
    shares = sorted(i.inside for i in saliency["items"])
    assert [m["share_inside"] for m in saliency["mostly_outside"]] == [round(s, 3) for s in shares if s < 0.5]
    assert "items" not in to_json(result)["saliency"]
    from edgederm.core.spec import ModelSpec

    markdown, _ = write_report(result, ModelSpec.load(Path(result["reference"]["name"]) / "spec.json"), tmp_path)
    assert (tmp_path / "saliency.png").stat().st_size > 1000 and "What the reference model keys on" in markdown.read_text()
