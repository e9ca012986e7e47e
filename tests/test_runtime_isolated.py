"""The runtime runs with only numpy, Pillow and a TFLite / ONNX runtime: no torch, no timm.

Builds a separate venv holding `numpy<2`, `pillow`, `tflite-runtime` and `onnxruntime`, installs
edgederm there with `--no-deps`, predicts with an exported .tflite and .onnx, and checks that torch
never entered `sys.modules`. Phones and Raspberry Pis run edgederm.runtime exactly like this.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_venv
from PIL import Image

from edgederm.core.formats import FORMATS
from edgederm.export import export_run
from edgederm.runtime import Predictor
from edgederm.training.classification import TrainConfig, train_classifier

pytestmark = pytest.mark.slow

CHECK = r"""
import json, sys
import numpy as np
from PIL import Image
import edgederm.runtime as runtime
out = {}
for path in sys.argv[2:]:
    predictor = runtime.Predictor.load(path)
    image = Image.open(sys.argv[1]).convert("RGB")
    out[path] = {"probs": predictor.predict_image(image).tolist(), "backend": getattr(predictor, "backend_name", "")}
out["torch_loaded"] = "torch" in sys.modules or "timm" in sys.modules
out["numpy"] = np.__version__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    python, error = make_venv(tmp_path_factory.mktemp("light") / "venv", ["numpy<2", "pillow", "tflite-runtime", "onnxruntime"])
    if error:
        pytest.fail(f"could not build the light venv (needs PyPI): {error[-1500:]}")
    own = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(REPO)], capture_output=True, text=True, timeout=900)
    assert own.returncode == 0, own.stderr[-1500:]
    return python


def test_runtime_predicts_without_torch(light_venv: Path, tmp_path: Path):
    run = tmp_path / "run"
    train_classifier(TrainConfig(data="synthetic:40,seed=1", out=run, arch="mobilenetv3_small_100", img_size=64, mode="head", epochs=1))
    records = export_run(run, [FORMATS["tflite"], FORMATS["onnx"]], ["fp32"], tmp_path / "export")
    assert all(r.status == "ok" for r in records), records
    artifacts = [str(tmp_path / "export" / r.path) for r in records]
    image = tmp_path / "lesion.png"
    from edgederm.data.synthetic import plan_synthetic, render_synthetic

    render_synthetic(plan_synthetic(1, seed=3)[0])[0].save(image)

    result = subprocess.run([light_venv, "-c", CHECK, str(image), *artifacts], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    assert out["numpy"].startswith("1.")
    assert out[artifacts[0]]["backend"] == "tflite_runtime"  # the real tflite-runtime works beside numpy 1
    from PIL import Image

    reference = Predictor.load(run).predict_image(Image.open(image).convert("RGB"))
    for path in artifacts:
        np.testing.assert_allclose(out[path]["probs"], reference, atol=1e-4)


def test_device_bench_runs_in_the_light_venv(light_venv: Path, trained_run: Path, tmp_path: Path):
    records = export_run(trained_run, [FORMATS["tflite"], FORMATS["onnx"]], ["fp32"], tmp_path / "export")
    assert all(r.status == "ok" for r in records), records
    photos = tmp_path / "photos"
    photos.mkdir()
    from edgederm.data.synthetic import plan_synthetic, render_synthetic

    for item in plan_synthetic(3, seed=5):
        render_synthetic(item)[0].save(photos / f"{item.image_id}.png")
    bench = Path(light_venv).parent / "edgederm-bench"  # the console script pip installed beside the venv's python
    out = tmp_path / "device.json"
    done = subprocess.run(
        [bench, tmp_path / "export", "--inputs", photos, "--runs", "2", "--warmup", "0", "--out", out],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"]["runtimes"]["tflite-runtime"] and result["device"]["runtimes"]["numpy"].startswith("1.")
    assert "torch" not in result["device"]["runtimes"]
    for artifact in result["artifacts"]:
        host = Predictor.load(artifact["path"])
        pixels = np.stack([host.spec.preprocess.fit(Image.open(photos / n).convert("RGB")) for n in artifact["outputs"]["names"]])
        np.testing.assert_allclose(artifact["outputs"]["probabilities"], host.predict_pixels(pixels), atol=1e-4)
    # the script itself says whether torch was imported: it was not installed, so any import would have failed the run
    missing = subprocess.run(
        [light_venv, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"], capture_output=True, text=True
    )
    assert missing.stdout.strip() == "True"


def test_import_runtime_alone_does_not_import_torch():
    code = "import sys, edgederm.runtime, edgederm.core.formats; print(sorted(m for m in ('torch', 'timm', 'coremltools') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
