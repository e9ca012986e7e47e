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


def test_import_runtime_alone_does_not_import_torch():
    code = "import sys, edgederm.runtime, edgederm.core.formats; print(sorted(m for m in ('torch', 'timm', 'coremltools') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
