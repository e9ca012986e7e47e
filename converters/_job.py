"""What every converter shares: the ExportJob it receives (it writes one artifact at ``job.target``), the
checks of its quant mode against the formats table, and ``conversion_step``, the one way a converter runs a
step of a library and turns its failure into a ConversionError."""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgederm.core.formats import Format
from edgederm.core.log import get_logger
from edgederm.core.spec import ModelSpec

from ._calibration import Calibration

logger = get_logger(__name__)


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


class ConversionSkipped(ConversionError):
    """The format cannot make this mode of this model as the mode promises (e.g. ops its backend does not run at that
    precision): a ``skipped`` status row with the reason, and no artifact."""


def check_job(job: ExportJob, fmt: Format) -> None:
    """The job's quant mode is one of ``fmt``'s, with calibration images where the mode needs them."""
    if job.quant not in fmt.quant_modes:
        raise ConversionError(f"{fmt.title} has no {job.quant!r} mode (it has {', '.join(fmt.quant_modes)})")
    if fmt.needs_calibration(job.quant) and not job.calibration:
        raise ConversionError(f"{fmt.title} {job.quant} needs calibration images (pass --calib-data)")


@contextlib.contextmanager
def conversion_step(what: str, *, needs: str | None = None) -> Iterator[None]:
    """One step of a conversion, timed and logged (DEBUG); a library's exception inside becomes one ConversionError line.

    The message is ``"<what> failed: <ExceptionType>: <first line of its message>"``; with ``needs`` (the
    packages the step imports), a missing one is ``"<what> needs <needs> (<the ImportError>)"``. A
    ConversionError raised inside (the converter's own, or a nested step's) passes unchanged, and so does an
    OSError: a full disk stops the whole export (the driver's rule), it is no failure of one format.
    """
    started = time.perf_counter()
    try:
        yield
    except (ConversionError, OSError):
        raise
    except Exception as error:  # the tools raise many types: one readable line, the full error in the debug log
        logger.debug(f"  {what} failed after {time.perf_counter() - started:.1f} s", exc_info=True)
        if needs and isinstance(error, ImportError):
            raise ConversionError(f"{what} needs {needs} ({error})") from error
        raise ConversionError(f"{what} failed: {one_line(error)}") from error
    logger.debug(f"  {what}: {time.perf_counter() - started:.1f} s")


def one_line(error: BaseException) -> str:
    """``ExceptionType: first line of the message``, at most 300 characters (tool errors carry pages of IR dumps)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


@contextlib.contextmanager
def tool_output_hidden() -> Iterator[None]:
    """Hide the conversion libraries' own progress bars, stderr prints and warnings; edgederm's log reports each artifact."""
    variable = "LITERT_TORCH_SHOW_PROGRESS"  # litert-torch reads its progress switch from the environment
    before = os.environ.get(variable)
    os.environ[variable] = "n"
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
