"""verify --emulate arm64: every TFLite/ONNX artifact again on emulated Cortex-A53 and Cortex-A76 CPUs (QEMU user-mode).

Needs qemu-user-static and mmdebstrap (``.ci/run`` installs them with apt) and reachable Debian and
PyPI mirrors for the one-time environment build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env

from edgederm.core.errors import EdgedermError
from edgederm.core.formats import FORMATS
from edgederm.evaluate.verify.emulation import DEFAULT_CPUS, EMULATED_FEATURES, parse_emulate
from edgederm.export import export_run

MISSING = [tool for tool in ("qemu-aarch64-static", "mmdebstrap") if shutil.which(tool) is None]
needs_qemu = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed (apt-get install qemu-user-static mmdebstrap)")


def _edgederm(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgederm", *map(str, args)], capture_output=True, text=True, env=env or cli_env(), timeout=1800
    )


def test_emulate_takes_arm64_and_its_cpus():
    assert parse_emulate("arm64") == list(DEFAULT_CPUS) == ["cortex-a53", "cortex-a76"]
    assert parse_emulate("arm64:cortex-a76, max,cortex-a76") == ["cortex-a76", "max"]
    for bad in ("x86", "riscv64:foo", "arm64:,"):
        with pytest.raises(EdgedermError, match="--emulate"):
            parse_emulate(bad)


def test_missing_qemu_is_one_line_naming_the_apt_packages(tmp_path: Path):
    env = {**cli_env(), "PATH": str(Path(sys.executable).parent), "EDGEDERM_CACHE": str(tmp_path)}
    done = _edgederm("device", "setup", "arm64", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not installed" in lines[0] and "apt-get install qemu-user-static mmdebstrap" in lines[0], done.stderr


@needs_qemu
def test_verify_on_emulated_arm64_cpus(trained_run: Path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("edgederm_cache")
    env = {**cli_env(), "EDGEDERM_CACHE": str(cache)}
    setup = _edgederm("device", "setup", "arm64", env=env)
    assert setup.returncode == 0, setup.stderr[-2000:]
    assert "arm64 environment ready" in setup.stdout and (cache / "arm64" / "ready.json").is_file()

    out = trained_run.parent / "emulate_export"
    records = export_run(trained_run, [FORMATS["tflite"], FORMATS["onnx"]], ["fp32"], out)
    assert all(r.status == "ok" for r in records), [(r.path, r.message) for r in records]
    data = "synthetic:60,seed=4"  # the run's own data; its test split is what verify reads
    done = _edgederm(
        "verify", out, "--data", data, "--split", "test", "--runs", "2", "--warmup", "0", "--saliency", "0", "--emulate", "arm64",
        "--emulate-images", "5", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "verify.json").read_text())
    emulated = [d for d in result["device_results"] if d.get("emulated")]
    assert [d["device"]["cpu"] for d in emulated] == ["cortex-a53", "cortex-a76"]
    for device in emulated:
        assert device["device"]["machine"] == "aarch64" and device["device"]["emulated"] is True
        # the emulated model's int8/fp16 extensions, not the host's /proc/cpuinfo that QEMU shows
        assert device["device"]["cpu_features"] == EMULATED_FEATURES[device["device"]["cpu"]]
        assert sorted(a["name"] for a in device["artifacts"]) == sorted(r.path for r in records)
        for artifact in device["artifacts"]:
            assert artifact["status"] == "pass", artifact["checks"]
            agree = artifact["agreement"]
            # fp32 on ARM64 kernels: the same named class on every image, probabilities within float rounding
            assert agree["top1_vs_host"] == 1.0 and agree["max_abs_prob_diff_vs_host"] < 1e-4
            assert abs(artifact["deltas_vs_host"]["balanced_accuracy"]) < 1e-9
        # the emulated images: 5 evenly spaced ones of the test split, and torch's metrics on the same 5
        assert device["n_images"] == 5 < device["of_images"] == result["n_images"]
        assert device["image_indices"] == sorted(set(device["image_indices"])) and device["image_indices"][0] == 0
        assert set(device["reference_metrics"]) >= {"balanced_accuracy", "accuracy"}
    report = (out / "verify" / "verify.md").read_text()
    assert "on ARM64 (emulated)" in report and "cortex-a53" in report and "not a phone's latency" in report


def test_the_emulated_images_are_evenly_spaced_and_the_same_every_time():
    from edgederm.evaluate.verify.runner import emulation_subset

    assert emulation_subset(1275, 300).tolist() == emulation_subset(1275, 300).tolist()
    chosen = emulation_subset(1275, 300)
    assert len(chosen) == 300 and chosen[0] == 0 and chosen[-1] == 1274 and np.all(np.diff(chosen) > 0)
    assert emulation_subset(10, None).tolist() == emulation_subset(10, 50).tolist() == list(range(10))


def test_emulate_images_needs_emulate(tmp_path: Path):
    done = _edgederm("verify", tmp_path, "--data", "synthetic:8", "--emulate-images", "5")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "--emulate-images" in done.stderr, done.stderr


def test_a_failure_on_an_emulated_cpu_fails_the_run():
    from edgederm.evaluate.verify.runner import exit_code

    result = {
        "artifacts": [{"status": "pass"}],
        "device_results": [{"emulated": True, "artifacts": [{"status": "fail"}]}, {"artifacts": [{"status": "fail"}]}],
    }
    assert exit_code(result) == 1
    result["device_results"][0]["artifacts"][0]["status"] = "pass"
    assert exit_code(result) == 0, "a phone's latency file carries no status; only emulated entries are judged"


def test_only_torch_free_artifacts_go_to_the_emulated_cpus(tmp_path: Path, monkeypatch):
    """The ARM64 environment holds the runtimes' wheels and no torch: ExecuTorch programs stay on the host."""
    from types import SimpleNamespace

    from edgederm.evaluate.verify import emulation
    from edgederm.evaluate.verify.runner import VerifyOptions, _verify_on_arm64

    class Benched(Exception):
        pass

    def run_bench(env, cpu, artifacts, pixels, names, **kwargs):
        raise Benched([Path(a).name for a in artifacts])

    monkeypatch.setattr(emulation, "setup_arm64", lambda: None)
    monkeypatch.setattr(emulation, "run_bench", run_bench)
    probs = np.zeros((2, 4), np.float32)
    rows = [
        {"name": name, "path": name, "probs": probs, "emulated": False}
        for name in ("m_fp32.tflite", "m_fp32.onnx", "m_fp32.pte", "m_int8.pte")
    ]
    options = VerifyOptions(data="synthetic:2", emulate=["cortex-a53"])
    with pytest.raises(Benched) as benched:
        _verify_on_arm64(tmp_path, rows, SimpleNamespace(pixels=np.zeros((2, 8, 8, 3), np.uint8)), None, None, None, options)
    assert benched.value.args[0] == ["m_fp32.tflite", "m_fp32.onnx"]


def test_a_hung_emulator_is_one_line_with_a_limit_that_grows_with_the_work(tmp_path: Path, monkeypatch):
    from edgederm.evaluate.verify import emulation

    limits = []

    def hang(command, timeout, **kwargs):
        limits.append(timeout)
        raise subprocess.TimeoutExpired(command, timeout)

    monkeypatch.setattr(emulation, "_tool", lambda name: name)
    monkeypatch.setattr(emulation.subprocess, "run", hang)
    env = emulation.Arm64Environment(tmp_path)
    for images in (2, 20):
        pixels = np.zeros((images, 8, 8, 3), np.uint8)
        with pytest.raises(EdgedermError, match=r"on emulated cortex-a53 ran past \d+ s") as error:
            emulation.run_bench(env, "cortex-a53", [tmp_path / "m.tflite"], pixels, ["x"] * images, threads=[1], runs=3, warmup=1)
        assert "--emulate-images" in error.value.fix and "\n" not in str(error.value)
    assert limits[1] - limits[0] == 18 * emulation.BENCH_TIMEOUT_PER_RUN_S
