"""``verify --emulate arm64``: every TFLite and ONNX artifact run again on emulated ARM64 CPUs.

A phone runs ARM64, where XNNPACK and ONNX Runtime choose other kernels than on x86 (an int8
TFLite model can differ by a few thousandths in probability). Without a farm of phones, the closest
check here is the same artifact on the same pixels under QEMU user-mode emulation of a phone's CPU:

- ``cortex-a53``: budget phones and the Raspberry Pi 3 (no dot-product, no fp16 arithmetic);
- ``cortex-a76``: mid and high-end phones (dot-product, fp16).

The environment is a Debian arm64 Python 3.11 sysroot (``mmdebstrap``), the aarch64 wheels of
numpy, Pillow, onnxruntime and ai-edge-litert (``pip --platform``), and this edgederm's torch-free
modules; ``edgederm device setup arm64`` builds it once under ``$EDGEDERM_CACHE`` (default
``~/.cache/edgederm``). Verify writes its preprocessed pixels to an ``.npz`` and runs
``edgederm-bench`` there for each CPU. Emulated times are 30-300x a phone's and are never reported
as latency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import EdgedermError, UsageError
from ...core.log import get_logger, progress

logger = get_logger(__name__)

DEFAULT_CPUS = ("cortex-a53", "cortex-a76")
PYTHON = "python3.11"
SUITE = "bookworm"
WHEELS = ("numpy", "pillow", "onnxruntime", "ai-edge-litert")
# All three tags: manylinux2014 alone resolves onnxruntime 1.16 and finds no ai-edge-litert.
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
# The older TFLite interpreter many apps still ship: it needs numpy<2, so it gets its own site folder.
TFLITE_RUNTIME_WHEELS = ("numpy<2", "pillow", "tflite-runtime")
TFLITE_RUNTIME_PLATFORMS = ("manylinux_2_34_aarch64", *PLATFORMS)
# What QEMU's CPU models offer of edgederm.bench.INT8_FP16_FEATURES (the bench would read the host's /proc/cpuinfo).
EMULATED_FEATURES = {"cortex-a53": [], "cortex-a76": ["asimddp", "asimdhp", "fphp"], "neoverse-n1": ["asimddp", "asimdhp", "fphp"]}
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "mmdebstrap": "mmdebstrap"}
# QEMU runs a 224 px classifier at about 5 s per image; the limit only catches a hung emulator.
BENCH_TIMEOUT_S = 600
BENCH_TIMEOUT_PER_RUN_S = 60


def cache_root() -> Path:
    return Path(os.environ.get("EDGEDERM_CACHE") or Path.home() / ".cache" / "edgederm").expanduser()


def parse_emulate(text: str) -> list[str]:
    """``arm64`` or ``arm64:CPU[,CPU...]`` -> the QEMU CPU models."""
    target, _, cpus = text.partition(":")
    if target != "arm64":
        raise UsageError(f"--emulate {text!r}: only arm64 is emulated", fix="give --emulate arm64 or arm64:cortex-a53,cortex-a76")
    chosen = [c.strip() for c in cpus.split(",") if c.strip()] if cpus else list(DEFAULT_CPUS)
    if not chosen:
        raise UsageError(f"--emulate {text!r} names no CPU", fix="give --emulate arm64:cortex-a53,cortex-a76")
    return list(dict.fromkeys(chosen))


@dataclass(frozen=True)
class Arm64Environment:
    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def tflite_runtime_site(self) -> Path:
        return self.root / "site-tflite-runtime"

    def site_of(self, runtime: str) -> Path:
        """``litert``: numpy 2, ONNX Runtime and ai-edge-litert; ``tflite-runtime``: numpy<2 and tflite-runtime."""
        return {"litert": self.site, "tflite-runtime": self.tflite_runtime_site}[runtime]

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / PYTHON

    def ready(self) -> bool:
        return (self.root / "ready.json").is_file() and self.python.is_file()

    def versions(self) -> dict[str, str]:
        return json.loads((self.root / "ready.json").read_text())["wheels"] if self.ready() else {}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        packages = " ".join(TOOLS.values())
        raise UsageError(f"{name} is not installed; ARM64 emulation needs it", fix=f"sudo apt-get install {packages}")
    return found


def _run(command: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        raise EdgedermError(f"{what} failed: {last[:300]}", fix="run `edgederm device setup arm64` again; --debug shows more")
    return done


def setup_arm64(root: Path | None = None, *, rebuild: bool = False) -> Arm64Environment:
    """Build (or reuse) the emulated aarch64 Python with the runtime's wheels: a one-time step of a minute or so."""
    env = Arm64Environment(root or cache_root() / "arm64")
    qemu, mmdebstrap = _tool("qemu-aarch64-static"), _tool("mmdebstrap")
    if env.ready() and not rebuild:
        return env
    building = env.root.with_name(env.root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    staged = Arm64Environment(building)
    steps = [
        ("Debian arm64 Python", lambda: _build_sysroot(mmdebstrap, staged)),
        ("aarch64 wheels", lambda: _install_wheels(staged)),
        ("check under QEMU", lambda: _check_python(qemu, staged)),
    ]
    for title, step in progress(steps, desc="arm64 environment", unit="step"):
        logger.info("edgederm device: %s", title)
        step()
    from importlib import metadata

    wheels = {dist.metadata["Name"]: dist.version for dist in metadata.distributions(path=[str(staged.site)])}
    (staged.root / "ready.json").write_text(json.dumps({"suite": SUITE, "python": PYTHON, "wheels": wheels}, indent=2))
    shutil.rmtree(env.root, ignore_errors=True)
    os.replace(building, env.root)
    return env


def _build_sysroot(mmdebstrap: str, env: Arm64Environment) -> None:
    include = f"--include={PYTHON},libstdc++6,zlib1g"
    command = [mmdebstrap, "--variant=extract", "--architectures=arm64", include, SUITE, str(env.sysroot)]
    _run(command, "mmdebstrap (the Debian arm64 sysroot)", timeout=1800)
    # onnxruntime and LiteRT read the CPU lists at import and crash (signal 11) on the host's x86 ones.
    cpu = env.sysroot / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present"):
        (cpu / name).write_text("")


def _install_wheels(env: Arm64Environment, site: Path | None = None, wheels=WHEELS, tags=PLATFORMS) -> None:
    platforms = [arg for tag in tags for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "install", "-q", "--target", str(site or env.site), "--only-binary=:all:"]
    command += ["--python-version", "3.11", "--implementation", "cp", *platforms, *wheels]
    _run(command, "pip install of the aarch64 wheels", timeout=1800)


def add_tflite_runtime(env: Arm64Environment) -> dict[str, str]:
    """tflite-runtime (with numpy<2) beside the environment's LiteRT, built once; returns its wheel versions."""
    from importlib import metadata

    site = env.tflite_runtime_site
    marker = site / "ready.json"
    if not marker.is_file():
        building = site.with_name(site.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        _install_wheels(env, building, TFLITE_RUNTIME_WHEELS, TFLITE_RUNTIME_PLATFORMS)
        wheels = {dist.metadata["Name"]: dist.version for dist in metadata.distributions(path=[str(building)])}
        (building / "ready.json").write_text(json.dumps({"wheels": wheels}, indent=2))
        shutil.rmtree(site, ignore_errors=True)
        os.replace(building, site)
    return json.loads(marker.read_text())["wheels"]


def _check_python(qemu: str, env: Arm64Environment) -> None:
    probe = "import json, platform, numpy, PIL, onnxruntime, ai_edge_litert; print(json.dumps(platform.machine()))"
    done = _run(_qemu_command(qemu, env, "cortex-a53", ["-c", probe]), "the emulated Python", env=_child_env(env, None), timeout=600)
    machine = json.loads(done.stdout.strip().splitlines()[-1])
    if machine != "aarch64":
        raise EdgedermError(
            f"the emulated Python reports {machine!r}, not aarch64", fix="sudo apt-get install --reinstall qemu-user-static"
        )


def _qemu_command(qemu: str, env: Arm64Environment, cpu: str, args: list[str]) -> list[str]:
    return [qemu, "-cpu", cpu, "-L", str(env.sysroot), str(env.python), *args]


def _child_env(env: Arm64Environment, source: Path | None, runtime: str = "litert") -> dict[str, str]:
    paths = [str(env.site_of(runtime))] + ([str(source)] if source else [])
    return {"PYTHONPATH": os.pathsep.join(paths), "HOME": str(env.root), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def run_python(env: Arm64Environment, cpu: str, args: list[str], runtime: str = "litert") -> subprocess.CompletedProcess:
    """The emulated Python on ``cpu`` with ``args`` (a script and its arguments), beside ``runtime``'s packages."""
    return _run(
        _qemu_command(_tool("qemu-aarch64-static"), env, cpu, args), f"python on emulated {cpu}", env=_child_env(env, None, runtime)
    )


def _stage_runtime(into: Path) -> Path:
    """A copy of this edgederm's package for the emulated Python; it imports only the torch-free modules."""
    package = Path(__file__).resolve().parents[2]
    shutil.copytree(package, into / "edgederm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def run_bench(
    env: Arm64Environment,
    cpu: str,
    artifacts: list[Path],
    pixels: np.ndarray,
    names: list[str],
    *,
    threads: list[int],
    runs: int,
    warmup: int,
    runtime: str = "litert",
) -> dict[str, Any]:
    """``edgederm-bench`` on ``artifacts`` under QEMU's ``cpu``, on ``pixels``: its device-results document.
    ``runtime`` picks the Python packages beside it (``Arm64Environment.site_of``)."""
    qemu = _tool("qemu-aarch64-static")
    with tempfile.TemporaryDirectory(prefix="edgederm-arm64-") as tmp:
        work = Path(tmp)
        source = _stage_runtime(work / "src")
        inputs = work / "inputs.npz"
        np.savez(inputs, pixels=pixels, names=np.array(names))
        out = work / "device.json"
        args = ["-m", "edgederm.bench", *map(str, artifacts), "--inputs", str(inputs), "--out", str(out), "--quiet"]
        args += ["--threads", ",".join(map(str, threads)), "--runs", str(runs), "--warmup", str(warmup)]
        limit = BENCH_TIMEOUT_S + BENCH_TIMEOUT_PER_RUN_S * len(artifacts) * (len(pixels) + len(threads) * (runs + warmup))
        try:
            done = subprocess.run(
                _qemu_command(qemu, env, cpu, args), capture_output=True, text=True, env=_child_env(env, source, runtime), timeout=limit
            )
        except subprocess.TimeoutExpired:
            raise EdgedermError(
                f"edgederm-bench on emulated {cpu} ran past {limit} s on {len(artifacts)} artifacts x {len(pixels)} images",
                fix="give fewer images with --emulate-images, or run `edgederm device setup arm64 --rebuild` if QEMU hangs",
            ) from None
        if done.returncode != 0 or not out.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or [f"exit status {done.returncode}"]
            raise EdgedermError(
                f"edgederm-bench on emulated {cpu} failed: {lines[-1][:300]}", fix="run `edgederm device setup arm64 --rebuild`"
            )
        result = json.loads(out.read_text())
    result["device"] = {
        **result["device"],
        "name": f"arm64 {cpu} (emulated)" + ("" if runtime == "litert" else f", {runtime}"),
        "machine": "aarch64",
        "cpu": cpu,
        "cpu_features": EMULATED_FEATURES.get(cpu),  # None: a model whose features are not listed here
        "emulated": True,
        "host_cpu": result["device"].get("cpu"),  # QEMU user-mode shows the host's /proc/cpuinfo
    }
    return result
