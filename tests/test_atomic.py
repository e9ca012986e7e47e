"""Atomic writes: a crash or kill -9 mid-write never leaves a partial file under the final name."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env

from edgederm.core import atomic

WRITER = r"""
import sys
from edgederm.core import atomic
def slow(tmp):
    with open(tmp, "wb") as handle:
        for _ in range(2000):
            handle.write(b"x" * 65536)
            handle.flush()
atomic.write_with(sys.argv[1], slow)
"""


def test_a_failing_writer_leaves_the_old_file(tmp_path: Path):
    target = tmp_path / "model.safetensors"
    atomic.write_bytes(target, b"old and complete")

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, crash)
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_written_file_gets_the_umask_permissions_even_when_the_writer_replaces_it(tmp_path: Path):
    import os

    from safetensors.numpy import save_file

    old = os.umask(0o022)
    try:
        atomic.write_with(tmp_path / "model.safetensors", lambda tmp: save_file({"w": np.zeros(2, np.float32)}, str(tmp)))
        atomic.write_text(tmp_path / "spec.json", "{}")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "spec.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_kill_9_mid_write_leaves_no_partial_file(tmp_path: Path):
    target = tmp_path / "big.bin"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=cli_env())
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".tmp") and p.stat().st_size > 1 << 20 for p in tmp_path.iterdir()):
        assert process.poll() is None, "the writer exited before it was killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists()  # only the hidden temp file was ever partial


def test_empty_class_in_a_split_is_warned(tmp_path: Path, capfd):
    from edgederm.training.classification import TrainConfig, train_classifier

    # 12 images of 4 classes: a 0.5 val share cannot hold every class's lesions on both sides.
    train_classifier(
        TrainConfig(
            data="synthetic:12,seed=1",
            out=tmp_path / "run",
            arch="mobilenetv3_small_100",
            img_size=48,
            mode="head",
            epochs=1,
            weights="none",
            val_fraction=0.5,
        )
    )
    err = capfd.readouterr().err
    assert "warning: the" in err and "split has no samples of" in err
