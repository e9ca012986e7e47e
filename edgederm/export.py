"""``edgederm export``: one run directory -> artifacts for every format x quantization, plus manifest.json.

Each artifact is written under a temporary name and renamed into place only when complete, and
the manifest is rewritten after every artifact, so an interrupted export (or a full disk) leaves
the earlier artifacts intact and listed. A format that fails becomes a status row with a readable
message (``failed``, or ``skipped`` for a mode the format lacks or cannot make of this model, with
the reason); the other formats still export.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .core import atomic
from .core.errors import DataError, EdgedermError, UsageError
from .core.formats import QUANT_MODES, Format
from .core.log import get_logger
from .core.manifest import MANIFEST, artifact_sha256, artifact_size

logger = get_logger(__name__)


@dataclass
class ArtifactRecord:
    format: str
    quant: str
    path: str | None  # relative to the export directory
    status: str  # ok | failed | skipped
    message: str = ""
    size: int | None = None
    sha256: str | None = None
    seconds: float | None = None
    runtime: str = ""
    details: dict | None = None  # the converter's decisions, e.g. which layers int8-aa kept in float


def artifact_name(spec_arch: str, fmt: Format, quant: str) -> str:
    return f"{spec_arch}_{quant}{fmt.suffix}"


def _move_into_place(tmp: Path, final: Path) -> None:
    if tmp.is_dir():
        if final.exists():
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    else:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 400 else text[:397] + "..."


def _details(job) -> dict | None:
    details = dict(job.details)
    if QUANT_MODES[job.quant].needs_calibration and job.calibration is not None:
        details["calibration"] = {"data": job.calibration.source, "images": len(job.calibration)}
    return details or None


def write_manifest(out_dir: Path, run_dir: Path, records: list[ArtifactRecord], spec_sha: str | None) -> None:
    manifest = {
        "edgederm_manifest": 1,
        "source": str(run_dir),
        "source_sha256": spec_sha,
        "artifacts": [asdict(r) for r in records],
    }
    atomic.write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _earlier_records(out_dir: Path, planned: set[tuple[str, str]], source_sha: str | None) -> list[ArtifactRecord]:
    """Artifacts of the same model already in out_dir that this export does not redo: kept in the manifest."""
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        rows = manifest["artifacts"] if manifest.get("source_sha256") == source_sha else []
        earlier = [ArtifactRecord(**row) for row in rows]
    except (OSError, ValueError, TypeError, KeyError):
        return []  # no manifest, or one this export will replace
    return [r for r in earlier if r.status == "ok" and (r.format, r.quant) not in planned and r.path and (out_dir / r.path).exists()]


def _calibration(run_dir: Path, spec, calib_data: str | None, calib_n: int):
    """By default the run's own training data; either way restricted to the run's train split when the images are the
    same ones (a run trained elsewhere is calibrated on ``--calib-data`` pointing at the local copy, never on its test images).
    """
    from .converters._calibration import load_calibration

    recorded = spec.training.get("data", {}).get("spec")
    source = calib_data or recorded
    if not source:
        raise UsageError("int8 export needs representative images", fix="pass --calib-data SPEC (e.g. the training data)")
    splits = run_dir / "splits.csv"
    try:
        return load_calibration(
            source,
            spec.preprocess,
            n=calib_n,
            splits_csv=splits if splits.is_file() else None,
            other_data_ok=calib_data is not None,
        )
    except DataError as error:
        if calib_data is not None:
            raise
        raise DataError(
            f"int8 calibration uses the run's training data {recorded}, which cannot be read here ({error.message})",
            path=run_dir / "spec.json",
            fix="pass --calib-data SPEC with a local copy of the training data (its train split is still used)",
        ) from None


def export_run(
    run_dir: Path,
    formats: list[Format],
    quant_modes: list[str],
    out_dir: Path,
    *,
    calib_data: str | None = None,
    calib_n: int = 300,
    options: dict | None = None,
) -> list[ArtifactRecord]:
    from .converters._job import ConversionSkipped, ExportJob, tool_output_hidden
    from .models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".export-*"):  # left by an export that was killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    needs_calibration = any(q in f.quant_modes and f.needs_calibration(q) for f in formats for q in quant_modes)
    calibration = _calibration(run_dir, spec, calib_data, calib_n) if needs_calibration else None
    kept = _earlier_records(out_dir, {(f.name, q) for f in formats for q in quant_modes}, spec.source_sha256)
    # Unless edgederm logs at INFO (the CLI without --quiet), the converters' tools show no progress bars or warnings;
    # a converter's failure still surfaces: it is raised, and becomes the artifact's status row.
    tools_output = contextlib.nullcontext if logger.isEnabledFor(logging.INFO) else tool_output_hidden
    records: list[ArtifactRecord] = []
    for fmt in formats:
        converter = importlib.import_module(f"edgederm.converters.{fmt.converter}")
        for quant in quant_modes:
            if quant not in fmt.quant_modes:
                records.append(
                    ArtifactRecord(
                        fmt.name, quant, None, "skipped", f"{fmt.name} has no {quant} mode (it has {', '.join(fmt.quant_modes)})"
                    )
                )
                write_manifest(out_dir, run_dir, kept + records, spec.source_sha256)
                continue
            final = out_dir / artifact_name(spec.arch, fmt, quant)
            tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
            tmp = tmp_dir / final.name  # converters may check the suffix
            started = time.time()
            logger.info(f"exporting {fmt.name} {quant} -> {final}")
            try:
                job = ExportJob(model=model, spec=spec, quant=quant, target=tmp, calibration=calibration, options=dict(options or {}))
                with tools_output():
                    converter.export(job)
                if not tmp.exists():
                    raise RuntimeError(f"the {fmt.name} converter wrote nothing")
                _move_into_place(tmp, final)
                record = ArtifactRecord(
                    fmt.name,
                    quant,
                    final.name,
                    "ok",
                    "",
                    artifact_size(final),
                    artifact_sha256(final),
                    round(time.time() - started, 2),
                    fmt.runtime,
                    _details(job),
                )
            except OSError as error:
                if error.errno == 28:  # ENOSPC: stop, keeping what was written
                    shutil.rmtree(tmp_dir, ignore_errors=True)
                    records.append(ArtifactRecord(fmt.name, quant, None, "failed", "no space left on the device"))
                    write_manifest(out_dir, run_dir, kept + records, spec.source_sha256)
                    raise EdgedermError(
                        "no space left on the device", path=out_dir, fix="free disk space; the artifacts listed in manifest.json are intact"
                    ) from None
                record = ArtifactRecord(fmt.name, quant, None, "failed", _one_line(error), seconds=round(time.time() - started, 2))
            except ConversionSkipped as error:
                record = ArtifactRecord(fmt.name, quant, None, "skipped", _one_line(error), seconds=round(time.time() - started, 2))
            except Exception as error:  # noqa: BLE001 - a failing format is a status row, not a crash
                record = ArtifactRecord(
                    fmt.name, quant, None, "failed", f"{type(error).__name__}: {_one_line(error)}", seconds=round(time.time() - started, 2)
                )
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            records.append(record)
            write_manifest(out_dir, run_dir, kept + records, spec.source_sha256)
            logger.info(f"  {record.status}: {record.message or f'{record.size} bytes in {record.seconds} s'}")
    return records
