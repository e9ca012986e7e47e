"""What every converter receives: one ExportJob, and it writes one artifact at ``job.target``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgederm.core.spec import ModelSpec

from ._calibration import Calibration


@dataclass
class ExportJob:
    model: nn.Module  # the run's torch model in eval mode: normalised NCHW float in, logits out (temperature folded)
    spec: ModelSpec  # the run's spec; converters stamp ``artifact_spec(...)`` into the file
    quant: str  # one of the format's quant_modes (edgederm.core.formats)
    target: Path  # write exactly this path (a temp name; the driver renames it into place)
    calibration: Calibration | None = None  # representative inputs, for static int8
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {"nhwc": True} for TFLite, {"max_drop": 0.01} for int8-aa
    details: dict[str, Any] = field(default_factory=dict)  # what the converter decided (e.g. int8-aa's float layers), for the manifest


class ConversionError(RuntimeError):
    """A converter's readable failure (unsupported op, tool error): becomes a status row, not a crash."""
