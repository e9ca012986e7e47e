"""``edgederm verify``: every artifact of an export, run on the same images as the torch fp32 model.

The reference is the run directory the export came from (``manifest.json``'s ``source``), run by
torch in fp32. Each artifact goes through ``Predictor`` exactly as an app would load it, on the
same preprocessed pixels, and gets its task metrics, the deltas against the reference, top-1
agreement, the largest probability difference, latency at each thread count, size and a status:

- ``pass``: ran, and the headline metric dropped no more than ``max_drop`` and no guard broke;
- ``fail``: ran, and dropped more than allowed;
- ``error``: could not be loaded or run (the message says why);
- ``unverified``: cannot run on this machine (CoreML off Apple platforms without the emulator).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...core.errors import BackendUnavailable, DataError, EdgedermError, UsageError
from ...core.formats import FORMATS, format_for_path
from ...core.log import get_logger, progress
from ...core.manifest import read_manifest
from ...core.spec import ModelSpec
from ...data.pixels import PixelCache, load_pixels
from ...data.selection import resolve_inputs
from ...runtime import Predictor
from ...runtime.timing import DEFAULT_RUNS, DEFAULT_WARMUP
from .guards import Guard, check_guard_metrics, headline_metric
from .measure import Measurement, load_artifact, measure, metric_deltas
from .scoring import Truth, agreement, load_truth, normalise, score

STATUSES = ("pass", "fail", "error", "unverified")

logger = get_logger(__name__)


@dataclass
class VerifyOptions:
    data: str
    split: str | None = None
    max_drop: float = 0.01
    guards: list[Guard] = field(default_factory=list)
    threads: list[int] = field(default_factory=lambda: [1])
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    reference: Path | None = None  # default: the manifest's source run directory
    emulate_coreml: bool = True
    saliency_images: int = 64  # Grad-CAM sample when the data has lesion masks (0: off)
    emulate: list[str] = field(default_factory=list)  # QEMU ARM64 CPU models to run every TFLite/ONNX artifact on again
    emulate_images: int | None = None  # emulate on this many of the images (evenly spaced); None: all


def _log(message: str) -> None:
    logger.info(f"edgederm verify: {message}")


def _reference_dir(export_dir: Path, manifest: dict, override: Path | None) -> Path:
    if override is not None:
        return override
    source = manifest.get("source")
    candidates = [Path(source), export_dir / source] if source else []
    for candidate in candidates:
        if (candidate / "spec.json").is_file():
            return candidate
    raise UsageError(
        f"the export's source run directory {source!r} is not here",
        fix="give the run directory the export was made from with --reference RUN_DIR",
    )


def _timed(
    predictor: Predictor,
    cache: PixelCache,
    truth: Truth,
    spec: ModelSpec,
    options: VerifyOptions,
    reload: Callable[[int], Predictor],
    reference: Measurement | None = None,
) -> Measurement:
    """``measure``, timed at batch 1 at every thread count of the options."""
    timing = {"threads": options.threads, "runs": options.runs, "warmup": options.warmup}
    measured = measure(predictor, cache.pixels, truth, spec, reference=reference, reload=reload, **timing)
    _log(f"{predictor.path.name}: " + ", ".join(f"{t['median_ms']:.2f} ms @ {t['threads']} thr" for t in measured.latency))
    return measured


def _torch_predictor(run_dir: Path, threads: int) -> Predictor:
    import torch

    torch.set_num_threads(threads)
    return Predictor.load(run_dir, device="cpu")


def _reference(run_dir: Path, cache: PixelCache, truth: Truth, spec: ModelSpec, options: VerifyOptions) -> Measurement:
    import torch

    before = torch.get_num_threads()
    try:
        predictor = _torch_predictor(run_dir, options.threads[0])
        return _timed(predictor, cache, truth, spec, options, lambda t: _torch_predictor(run_dir, t))
    finally:
        torch.set_num_threads(before)


def _coreml_predictor(path: Path, options: VerifyOptions) -> tuple[Predictor | None, str]:
    """A real CoreML predictor on macOS; elsewhere the format's emulated backend, if asked for and available."""
    fmt = format_for_path(path.name)
    if not fmt.runs_here() and not options.emulate_coreml:
        return None, "CoreML runs only on Apple platforms; emulation switched off (--no-emulate-coreml)"
    try:
        return load_artifact(path), ""
    except BackendUnavailable as exc:
        return None, f"CoreML runs only on Apple platforms, and the MIL emulator is unavailable ({exc.message})"


def _artifact_row(export_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    path = export_dir / record["path"] if record.get("path") else None
    return {
        "name": Path(record["path"]).name if record.get("path") else None,
        "path": record.get("path"),
        "format": record.get("format"),
        "quant": record.get("quant"),
        "size_bytes": record.get("size"),
        "sha256": record.get("sha256"),
        "runtime": FORMATS[record["format"]].runtime if record.get("format") in FORMATS else "",
        "emulated": False,
        "status": "error",
        "message": "" if path is None or path.exists() else "listed in manifest.json but missing",
        "metrics": None,
        "deltas": None,
        "agreement": None,
        "latency": [],
        "checks": [],
        "details": record.get("details"),  # e.g. which layers int8-aa kept in float
    }


def _judge(row: dict[str, Any], reference: dict[str, Any], task: str, options: VerifyOptions) -> None:
    headline = headline_metric(task)
    ref_value, value = reference["metrics"].get(headline), row["metrics"].get(headline)
    broken = []
    if ref_value is not None and value is not None and ref_value - value > options.max_drop:
        broken.append(f"{headline} dropped {ref_value - value:.4f} > {options.max_drop:g}")
    for guard in options.guards:
        problem = guard.check(reference["metrics"], row["metrics"])
        if problem:
            broken.append(problem)
    row["checks"] = broken
    row["status"] = "fail" if broken else "pass"


def _verify_artifact(
    export_dir: Path,
    record: dict[str, Any],
    cache: PixelCache,
    truth: Truth,
    reference: dict[str, Any],
    ref_out: Measurement,
    spec: ModelSpec,
    options: VerifyOptions,
) -> dict[str, Any]:
    row = _artifact_row(export_dir, record)
    if record.get("status") != "ok" or row["message"]:
        row["message"] = row["message"] or f"export {record.get('status')}: {record.get('message', '')}"
        return row
    path = export_dir / record["path"]
    fmt = format_for_path(path.name)
    try:
        if fmt is not None and not fmt.runs_on_linux:
            predictor, why = _coreml_predictor(path, options)
            if predictor is None:
                row["status"], row["message"] = "unverified", why
                return row
            row["emulated"] = bool(getattr(predictor, "emulated", False))
        else:
            predictor = load_artifact(path, threads=options.threads[0])
        if row["emulated"]:  # emulator latency says nothing about a phone
            outputs = measure(predictor, cache.pixels, truth, spec, reference=ref_out)
        else:
            outputs = _timed(predictor, cache, truth, spec, options, lambda t: load_artifact(path, threads=t), reference=ref_out)
    except EdgedermError as error:
        row["message"] = str(error)
        return row
    except Exception as error:  # noqa: BLE001 - a runtime's own failure becomes this artifact's error row
        row["message"] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        return row
    row["metrics"], row["deltas"], row["agreement"] = outputs.metrics, outputs.deltas, outputs.agreement
    row["latency"] = outputs.latency
    row["probs"] = outputs.probs  # kept for the report's plots, dropped from the JSON
    _judge(row, reference, spec.task, options)
    return row


EMULATED_RUNS = 3  # emulated times mean nothing for a phone; a few runs show the bench ran


def device_probs(spec: ModelSpec, outputs: dict[str, Any]) -> np.ndarray:
    """A bench's outputs as verify's probabilities: class probabilities, or its 0/1 masks (already thresholded)."""
    if spec.task == "segmentation":
        from ...bench import unpack_masks

        return unpack_masks(outputs).astype(np.float32)
    return normalise(spec, np.asarray(outputs["probabilities"], np.float32)).astype(np.float32)


def as_device_output(spec: ModelSpec, probs: np.ndarray) -> np.ndarray:
    """Host outputs as edgederm-bench sends them: probabilities, or a segmenter's post-processed 0/1 masks."""
    if spec.task != "segmentation":
        return probs
    from ...runtime.postprocess import postprocess_mask

    return np.stack([postprocess_mask(p, spec.postprocess) for p in probs]).astype(np.float32)


def emulation_subset(n: int, limit: int | None) -> np.ndarray:
    """The images emulated: all of them, or ``limit`` evenly spaced ones (the same ones on every CPU and run)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def _emulated_entry(
    row: dict[str, Any],
    got: dict[str, Any],
    truth: Truth,
    chosen: np.ndarray,
    ref_probs: np.ndarray,
    ref_metrics: dict[str, Any],
    spec: ModelSpec,
    options: VerifyOptions,
) -> dict[str, Any]:
    """One artifact's bench outputs on an emulated CPU, scored against torch and against the same artifact on this host,
    both on the emulated images."""
    probs = device_probs(spec, got["outputs"])
    host_probs = row["probs"][chosen]
    metrics = score(spec, truth, probs)
    # a segmenter's bench sends its post-processed 1-bit masks: compare them with the host's masks, pixel for pixel
    vs_host = agreement(spec, truth, as_device_output(spec, host_probs), probs)
    vs_reference = agreement(spec, truth, as_device_output(spec, ref_probs), probs)
    share = "mask_iou" if spec.task == "segmentation" else "top1"
    entry = {k: got.get(k) for k in ("name", "sha256", "format", "quant", "latency", "peak_rss_per_artifact")}
    entry.update(
        emulated=True,
        probs=probs,
        metrics=metrics,
        deltas=metric_deltas(metrics, ref_metrics),
        deltas_vs_host=metric_deltas(metrics, score(spec, truth, host_probs)),
        agreement={
            share: vs_reference[share],
            f"{share}_vs_host": vs_host[share],
            **(
                {"pixels_differing": vs_reference["mean_abs_prob_diff"], "pixels_differing_vs_host": vs_host["mean_abs_prob_diff"]}
                if spec.task == "segmentation"
                else {"max_abs_prob_diff": vs_reference["max_abs_prob_diff"], "max_abs_prob_diff_vs_host": vs_host["max_abs_prob_diff"]}
            ),
        },
    )
    _judge(entry, {"metrics": ref_metrics}, spec.task, options)
    return entry


def _verify_on_arm64(
    export_dir: Path,
    rows: list[dict[str, Any]],
    cache: PixelCache,
    truth: Truth,
    reference: dict[str, Any],
    spec: ModelSpec,
    options: VerifyOptions,
) -> list[dict[str, Any]]:
    """Every torch-free artifact (TFLite, ONNX) that ran here, again on each emulated ARM64 CPU: one device_results entry per
    CPU. The emulated environment holds the runtime's wheels and no torch, which ExecuTorch's Python runtime needs."""
    from .emulation import run_bench, setup_arm64

    def emulated(row: dict[str, Any]) -> bool:
        fmt = format_for_path(row["name"])
        return row.get("probs") is not None and not row["emulated"] and fmt.runs_on_linux and fmt.torch_free

    runnable = [r for r in rows if emulated(r)]
    if not runnable:
        return []
    env = setup_arm64()
    chosen = emulation_subset(len(cache.pixels), options.emulate_images)
    names = [str(i) for i in chosen]
    paths = [export_dir / r["path"] for r in runnable]

    def on_cpu(cpu: str) -> dict[str, Any]:
        _log(f"{len(runnable)} artifacts on {len(names)} of {len(cache.pixels)} images on emulated {cpu} (slow: QEMU)")
        bench = run_bench(env, cpu, paths, cache.pixels[chosen], names, threads=options.threads, runs=EMULATED_RUNS, warmup=1)
        by_name = {a["name"]: a for a in bench["artifacts"]}
        on_subset, ref_probs = truth.subset(chosen), reference["probs"][chosen]
        ref_metrics = score(spec, on_subset, ref_probs)
        entries = [_emulated_entry(row, by_name[row["name"]], on_subset, chosen, ref_probs, ref_metrics, spec, options) for row in runnable]
        share = "mask_iou" if spec.task == "segmentation" else "top1"
        for entry in entries:
            agree = entry["agreement"]
            diff = agree.get("max_abs_prob_diff_vs_host", agree.get("pixels_differing_vs_host"))
            what = "max |dp|" if "max_abs_prob_diff_vs_host" in agree else "pixels differing"
            _log(f"{entry['name']} on {cpu}: {entry['status']}, {share} vs host {agree[share + '_vs_host']:.1%}, {what} vs host {diff:.2g}")
        return {
            "device": bench["device"],
            "created": bench["created"],
            "device_label": bench["device"]["name"],
            "emulated": True,
            "n_images": len(chosen),
            "of_images": len(cache.pixels),
            "image_indices": [int(i) for i in chosen],
            "reference_metrics": ref_metrics,
            "artifacts": entries,
        }

    # One QEMU process per CPU model, side by side: each is single-threaded at its first thread count.
    with ThreadPoolExecutor(max_workers=max(1, min(len(options.emulate), os.cpu_count() or 1))) as pool:
        devices = list(pool.map(on_cpu, options.emulate))
    return devices


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}


def verify_export(export_dir: Path, options: VerifyOptions) -> dict[str, Any]:
    """Run every artifact in ``export_dir/manifest.json``; the result follows the documented JSON schema."""
    started = time.time()
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    run_dir = _reference_dir(export_dir, manifest, options.reference)
    spec = ModelSpec.load(run_dir / "spec.json")
    dataset = resolve_inputs(options.data, [], options.split, run_dir / "splits.csv")
    cache = load_pixels(dataset, spec.preprocess, desc="verification images")
    if not cache.kept:
        raise DataError("no image of the verification data could be read", path=dataset.spec)
    truth = load_truth(spec, dataset, cache)
    _log(f"{len(cache.kept)} images ({len(cache.failures)} unreadable) from {dataset.spec}; reference {run_dir}")
    ref_out = _reference(run_dir, cache, truth, spec, options)
    reference = {
        "name": str(run_dir),
        "format": "torch",
        "quant": "fp32",
        "runtime": "torch eager (CPU)",
        "metrics": ref_out.metrics,
        "latency": ref_out.latency,
        "probs": ref_out.probs,
    }
    check_guard_metrics(options.guards, reference["metrics"])
    artifacts = []
    records = [r for r in manifest["artifacts"] if r.get("status") != "skipped"]  # a mode the format does not have
    for record in progress(records, desc="artifacts", unit="artifact"):
        artifacts.append(_verify_artifact(export_dir, record, cache, truth, reference, ref_out, spec, options))
    devices = _verify_on_arm64(export_dir, artifacts, cache, truth, reference, spec, options) if options.emulate else []
    saliency = None
    if spec.task == "classification" and options.saliency_images > 0:
        from .saliency import saliency_on_lesions

        saliency = saliency_on_lesions(run_dir, [dataset.samples[i] for i in cache.kept], n=options.saliency_images)
    return {
        "edgederm_verify": 1,
        "edgederm_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": spec.task,
        "class_names": spec.class_names,
        "operating_point": spec.operating_point or None,
        "decision": spec.decision or None,
        "export_dir": str(export_dir),
        "data": dataset.spec,
        "n_images": len(cache.kept),
        "unreadable_images": len(cache.failures),
        "max_drop": options.max_drop,
        "headline_metric": headline_metric(spec.task),
        "guards": [g.text for g in options.guards],
        "threads": options.threads,
        "latency_input": f"1 image, {spec.preprocess.input_size}x{spec.preprocess.input_size}, preprocessed pixels in, probabilities out",
        "machine": _machine(),
        "seconds": round(time.time() - started, 1),
        "truth": truth,
        "images": [dataset.samples[i] for i in cache.kept],
        "reference": reference,
        "artifacts": artifacts,
        "device_results": devices,
        "saliency": saliency,
    }


def exit_code(result: dict[str, Any]) -> int:
    """1 when any artifact failed its bounds or could not run, here or on an emulated CPU; unverified artifacts do not fail a run."""
    emulated = [a for d in result.get("device_results", []) if d.get("emulated") for a in d["artifacts"]]
    return 1 if any(a["status"] in ("fail", "error") for a in [*result["artifacts"], *emulated]) else 0


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the arrays kept for plotting."""
    drop = {"probs", "truth", "images"}
    clean = {k: v for k, v in result.items() if k not in drop}
    clean["reference"] = {k: v for k, v in result["reference"].items() if k not in drop}
    clean["artifacts"] = [{k: v for k, v in a.items() if k not in drop} for a in result["artifacts"]]
    clean["device_results"] = [
        {**d, "artifacts": [{k: v for k, v in a.items() if k not in drop} for a in d.get("artifacts", [])]}
        for d in result.get("device_results", [])
    ]
    if result.get("saliency"):
        clean["saliency"] = {k: v for k, v in result["saliency"].items() if k != "items"}
    return clean
