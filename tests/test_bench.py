"""edgederm-bench: the torch-free device bench, its outputs against the host's, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env, corrupt_jpeg, write_images
from PIL import Image

from edgederm.bench import ARTIFACT_KEYS, DEVICE_KEYS, LATENCY_KEYS, Inputs, expand_artifacts, run_benchmark, unpack_masks
from edgederm.core.errors import EdgedermError
from edgederm.core.formats import FORMATS
from edgederm.evaluate.verify.device_results import read_device_results
from edgederm.export import export_run
from edgederm.runtime import Predictor
from edgederm.runtime.postprocess import postprocess_mask
from edgederm.runtime.readout import lesion_probabilities

# Runs the bench's CLI with torch made unimportable: any `import torch` on its path raises.
NO_TORCH = "import sys; sys.modules['torch'] = None; from edgederm.bench import main; rc = main(sys.argv[1:]); "
NO_TORCH += "assert 'torchvision' not in sys.modules and 'timm' not in sys.modules; sys.exit(rc)"


@pytest.fixture(scope="module")
def export_dir(trained_run: Path) -> Path:
    out = trained_run.parent / "bench_export"
    records = export_run(trained_run, [FORMATS["tflite"], FORMATS["onnx"]], ["fp32"], out)
    assert all(r.status == "ok" for r in records), [(r.path, r.message) for r in records]
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench_photos")
    write_images(folder, 5, seed=3)
    return folder / "images"


def _bench(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True, env=cli_env(), timeout=600)


def test_bench_runs_without_torch_and_its_outputs_match_the_host(export_dir: Path, photos: Path, tmp_path: Path):
    out = tmp_path / "device.json"
    done = _bench(export_dir, "--inputs", photos, "--threads", "1,2", "--runs", "3", "--warmup", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert tuple(result["device"]) == DEVICE_KEYS and result["device"]["cpu"] and result["device"]["runtimes"]["numpy"] == np.__version__
    assert result["inputs"] == {"path": str(photos), "n": 5}
    assert sorted(a["format"] for a in result["artifacts"]) == ["onnx", "tflite"], "the export dir's manifest artifacts"
    names = sorted(p.name for p in photos.iterdir())
    for artifact in result["artifacts"]:
        assert tuple(artifact) == (*ARTIFACT_KEYS, "outputs")
        assert [row["threads"] for row in artifact["latency"]] == [1, 2]
        for row in artifact["latency"]:
            assert tuple(row) == LATENCY_KEYS
            assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"] and row["load_ms"] > 0 and row["peak_rss_mb"] > 10
        host = Predictor.load(artifact["path"])
        pixels = np.stack([host.spec.preprocess.fit(Image.open(photos / n).convert("RGB")) for n in names])
        assert artifact["outputs"]["names"] == names and artifact["outputs"]["class_names"] == host.class_names
        np.testing.assert_allclose(np.array(artifact["outputs"]["probabilities"]), host.predict_pixels(pixels), atol=1e-6)
    merged = read_device_results(out)  # what `edgederm verify --device-results` reads
    assert merged["device_label"] == result["device"]["name"] and len(merged["artifacts"]) == 2


def test_npz_inputs_give_the_same_outputs_as_the_images(export_dir: Path, photos: Path, tmp_path: Path):
    artifact = export_dir / next(
        a["path"] for a in json.loads((export_dir / "manifest.json").read_text())["artifacts"] if a["path"].endswith(".onnx")
    )
    host = Predictor.load(artifact)
    names = sorted(p.name for p in photos.iterdir())
    npz = tmp_path / "inputs.npz"
    np.savez(npz, pixels=np.stack([host.spec.preprocess.fit(Image.open(photos / n).convert("RGB")) for n in names]), names=np.array(names))
    from_npz = run_benchmark([artifact], [1], Inputs(npz), runs=2, warmup=0)["artifacts"][0]["outputs"]
    from_dir = run_benchmark([artifact], [1], Inputs(photos), runs=2, warmup=0)["artifacts"][0]["outputs"]
    assert from_npz == from_dir


def test_segmenter_masks_round_trip(trained_segmenter: Path, photos: Path):
    out = trained_segmenter.parent / "bench_seg_export"
    (record,) = export_run(trained_segmenter, [FORMATS["tflite"]], ["fp32"], out)
    assert record.status == "ok", record.message
    entry = run_benchmark([out / record.path], [1], Inputs(photos), runs=2, warmup=0)["artifacts"][0]
    assert entry["task"] == "segmentation"
    host = Predictor.load(out / record.path)
    names = sorted(p.name for p in photos.iterdir())
    pixels = np.stack([host.spec.preprocess.fit(Image.open(photos / n).convert("RGB")) for n in names])
    expected = np.stack([postprocess_mask(p, host.spec.postprocess) for p in lesion_probabilities(host.predict_pixels(pixels))])
    masks = unpack_masks(entry["outputs"])
    assert masks.shape == expected.shape == (5, *entry["outputs"]["mask_shape"])
    np.testing.assert_array_equal(masks, expected)


def test_bad_inputs_are_one_line_errors(export_dir: Path, photos: Path, tmp_path: Path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((2, 8, 8, 3), np.float32))
    small = tmp_path / "small.npz"
    np.savez(small, pixels=np.zeros((2, 8, 8, 3), np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(small.read_bytes()[:100])
    broken = tmp_path / "photos"
    broken.mkdir()
    corrupt_jpeg(broken / "bad.jpg")
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes(next(export_dir.glob("*.onnx")).read_bytes()[:500])
    cases = {
        (export_dir, "--inputs", wrong): "not uint8 (N, S, S, 3)",
        (export_dir, "--inputs", small): "the inputs are 8 px",
        (export_dir, "--inputs", cut): "not an inputs .npz",
        (export_dir, "--inputs", broken): "bad.jpg",
        (export_dir, "--inputs", tmp_path / "none.npz"): "no such inputs file",
        (tmp_path / "missing.tflite",): "no such artifact",
        (truncated,): "model.onnx",
        (export_dir, "--threads", "0"): "bad thread list",
    }
    for args, expected in cases.items():
        done = _bench(*args, "--runs", "1", "--quiet", "--out", tmp_path / "x.json")
        assert done.returncode != 0, args
        # The TFLite interpreter's own C++ log line ("INFO: Created TensorFlow Lite XNNPACK delegate") is not edgederm's.
        lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("INFO: ")]
        assert len(lines) == 1 and lines[0].startswith("edgederm-bench: error:") and expected in lines[0], (args, done.stderr)
    assert not (tmp_path / "x.json").exists()


def test_an_export_dir_gives_the_artifacts_that_run_here(export_dir: Path):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert sorted(p.name for p in expand_artifacts([export_dir])) == sorted(a["path"] for a in manifest["artifacts"] if a["status"] == "ok")
    with pytest.raises(EdgedermError, match="no artifact"):
        coreml_only = export_dir.parent / "coreml_only"
        coreml_only.mkdir(exist_ok=True)
        (coreml_only / "manifest.json").write_text(json.dumps({"artifacts": [{"path": "m.mlpackage", "status": "ok"}]}))
        expand_artifacts([coreml_only])


def test_an_export_dir_leaves_out_executorch_programs(tmp_path: Path):
    """The bench runs without torch, and ExecuTorch's Python runtime loads libtorch: a .pte is benchmarked only when named."""
    rows = [{"path": "m_fp32.pte", "status": "ok"}, {"path": "m_fp32.onnx", "status": "ok"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": rows}))
    assert [p.name for p in expand_artifacts([tmp_path])] == ["m_fp32.onnx"]
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": rows[:1]}))
    with pytest.raises(EdgedermError, match=r"no artifact .* runs on this platform") as caught:
        expand_artifacts([tmp_path])
    assert ".pte" not in str(caught.value) and ".onnx" in str(caught.value)
