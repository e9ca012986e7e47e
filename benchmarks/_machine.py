"""Where a training benchmark ran, recorded with its results and said in their Markdown."""

from __future__ import annotations

import platform


def training_machine() -> dict:
    import torch

    machine = {"platform": platform.platform(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def where(machine: dict) -> str:
    return machine.get("gpu") or f"{machine['cpu_threads']} CPU threads"
