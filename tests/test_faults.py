"""Faults during export: a full disk and a kill -9 never leave a half-written artifact under its final name."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env

from edgederm.core.errors import EdgedermError
from edgederm.core.formats import FORMATS
from edgederm.core.manifest import MANIFEST, artifact_sha256
from edgederm.export import export_run


def _listed_and_intact(out: Path) -> dict[str, str]:
    """Every artifact file under a final name is in the manifest with a matching sha256."""
    manifest = json.loads((out / MANIFEST).read_text())
    listed = {a["path"]: a["sha256"] for a in manifest["artifacts"] if a["status"] == "ok"}
    on_disk = {p.name for p in out.iterdir() if p.suffix in (".onnx", ".tflite", ".mlpackage")}
    assert on_disk == set(listed), (on_disk, listed)
    for name, sha in listed.items():
        assert artifact_sha256(out / name) == sha
    return listed


def test_disk_full_keeps_earlier_artifacts(trained_run: Path, tmp_path: Path, monkeypatch):
    import edgederm.converters.onnx as onnx_converter

    real_export = onnx_converter.export

    def export_until_the_disk_fills(job):
        if job.quant == "fp16":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_export(job)

    monkeypatch.setattr(onnx_converter, "export", export_until_the_disk_fills)
    out = tmp_path / "export"
    with pytest.raises(EdgedermError, match="no space left on the device") as error:
        export_run(trained_run, [FORMATS["onnx"]], ["fp32", "fp16"], out)
    assert str(out) in str(error.value)
    assert list(_listed_and_intact(out)) == ["mobilenetv3_small_100_fp32.onnx"]
    statuses = [a["status"] for a in json.loads((out / MANIFEST).read_text())["artifacts"]]
    assert statuses == ["ok", "failed"]
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]


def test_kill_during_export_leaves_no_partial_artifact(trained_run: Path, tmp_path: Path):
    out = tmp_path / "export"
    command = [
        sys.executable,
        "-m",
        "edgederm",
        "export",
        str(trained_run),
        "--formats",
        "onnx",
        "--quant",
        "fp32,fp16",
        "--out",
        str(out),
        "--quiet",
    ]
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Wait until the second artifact is being written (its temp folder exists after the first finished).
    while time.time() < deadline and not ((out / MANIFEST).is_file() and any(p.name.startswith(".export-") for p in out.iterdir())):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    listed = _listed_and_intact(out)
    assert "mobilenetv3_small_100_fp16.onnx" not in listed
    # Exporting the missing one finishes the job, keeps fp32 listed, and clears the killed run's temp folder.
    export_run(trained_run, [FORMATS["onnx"]], ["fp16"], out)
    assert sorted(_listed_and_intact(out)) == ["mobilenetv3_small_100_fp16.onnx", "mobilenetv3_small_100_fp32.onnx"]
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]
