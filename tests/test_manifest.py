"""manifest.json is checked before an artifact is loaded; format/quant names are validated from one table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgederm.core.errors import ModelError, UsageError
from edgederm.core.formats import FORMATS, parse_formats, parse_quant_modes
from edgederm.core.manifest import MANIFEST, artifact_sha256
from edgederm.export import export_run
from edgederm.runtime import Predictor


@pytest.fixture(scope="module")
def onnx_export(trained_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("manifest") / "export"
    records = export_run(trained_run, [FORMATS["onnx"]], ["fp32", "int8-dynamic"], out)
    assert [r.status for r in records] == ["ok", "skipped"]
    assert "onnx has no int8-dynamic mode" in records[1].message
    return out


def test_manifest_lists_the_artifact_with_its_checksum(onnx_export: Path):
    manifest = json.loads((onnx_export / MANIFEST).read_text())
    row = manifest["artifacts"][0]
    artifact = onnx_export / row["path"]
    assert row["format"] == "onnx" and row["quant"] == "fp32" and row["size"] == artifact.stat().st_size
    assert row["sha256"] == artifact_sha256(artifact)
    assert not [p for p in onnx_export.iterdir() if p.name.startswith(".export-")]  # no temp left behind


def test_changed_artifact_is_refused_against_the_manifest(onnx_export: Path, tmp_path: Path):
    copy = tmp_path / "export"
    shutil.copytree(onnx_export, copy)
    artifact = next(copy.glob("*.onnx"))
    Predictor.load(artifact)  # intact: loads
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match manifest.json") as error:
        Predictor.load(artifact)
    assert str(artifact) in str(error.value) and "\n" not in str(error.value)


def test_format_and_quant_names_come_from_the_table():
    assert [f.name for f in parse_formats("onnx,tflite,onnx")] == ["onnx", "tflite"]
    assert parse_quant_modes("fp32, int8") == ["fp32", "int8"]
    with pytest.raises(UsageError, match="unknown format"):
        parse_formats("tensorrt")
    with pytest.raises(UsageError, match="unknown quantization"):
        parse_quant_modes("int4")
    for fmt in FORMATS.values():
        module, cls = fmt.backend.split(":")
        assert module.endswith("_backend") and cls.endswith("Predictor")
