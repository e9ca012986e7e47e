"""The CUDA path: AMP training, nccl under torchrun, GPU-trained checkpoints served on the CPU.

These run only where torch sees a GPU; a CPU-only machine skips them with that reason. They pass on
one NVIDIA H100 (see tests/README.md); CI has no GPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env

from edgederm.core.spec import ModelSpec
from edgederm.data.layouts import load_dataset
from edgederm.models.checkpoint import load_checkpoint
from edgederm.runtime import Predictor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")

# No --quiet: the tests read INFO lines such as "device cuda:0".
CLASSIFY = [
    "train", "classify", "--data", "synthetic:48,seed=3", "--arch", "mobilenetv3_small_100", "--img-size", "48",
    "--mode", "full", "--epochs", "2", "--batch-size", "8", "--augment", "affine",
]  # fmt: skip


def _edgederm(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgederm", *args], env=cli_env(), capture_output=True, text=True, timeout=timeout)


def test_full_training_runs_on_cuda_with_amp_and_serves_on_cpu(tmp_path: Path):
    out = tmp_path / "cuda"
    result = _edgederm(*CLASSIFY, "--device", "cuda", "--amp", "on", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device cuda:0" in result.stderr
    spec = ModelSpec.load(out / "spec.json")
    assert spec.training["recipe"]["device"] == "cuda" and spec.training["recipe"]["amp"] == "on"

    # The checkpoint is device-free: the CPU predictor and the model moved to the GPU agree.
    model, loaded = load_checkpoint(out)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    cpu = Predictor.load(out).predict_pixels(pixels)
    with torch.no_grad():
        gpu = torch.softmax(model.cuda().eval()(torch.from_numpy(loaded.preprocess.normalize(pixels)).cuda()).float(), 1).cpu().numpy()
    np.testing.assert_allclose(cpu, gpu, atol=2e-3)


def test_segmenter_trains_on_cuda(tmp_path: Path):
    out = tmp_path / "seg"
    result = _edgederm(
        "train", "segment", "--data", "synthetic:24,seed=4", "--arch", "tinyseg", "--img-size", "64",
        "--epochs", "1", "--batch-size", "8", "--device", "cuda", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device cuda" in result.stderr
    mask = Predictor.load(out).predict_mask(load_dataset("synthetic:1,seed=5")[0].load_image())
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_torchrun_uses_nccl_with_one_process_per_gpu(tmp_path: Path):
    out = tmp_path / "ddp"
    count = torch.cuda.device_count()
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={count}", "--master_port=29531",
        "-m", "edgederm", *CLASSIFY, "--device", "cuda", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"world size {count}" in result.stderr
    assert ModelSpec.load(out / "spec.json").training["world_size"] == count


def test_more_processes_than_gpus_is_a_one_line_error(tmp_path: Path):
    count = torch.cuda.device_count()
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={count + 1}", "--master_port=29533",
        "-m", "edgederm", *CLASSIFY, "--device", "cuda", "--out", str(tmp_path / "too_many"),
    ]  # fmt: skip
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert f"this machine has {count} CUDA device(s)" in result.stderr
    assert f"--nproc_per_node={count}" in result.stderr
