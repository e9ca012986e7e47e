"""``edgederm-bench``: the device bench. Runs exported artifacts where they will run, with no torch.

    edgederm-bench ARTIFACT_OR_EXPORT_DIR... --inputs INPUTS.npz|IMAGE_DIR [--threads 1,2] [--runs N] --out DEVICE.json

It needs only the runtime (numpy, Pillow and a TFLite or ONNX runtime), so it runs on a Raspberry
Pi, a Jetson or any ARM board, and the demo app's benchmark screen writes its file through the same
functions. For each artifact it records:

- the outputs on the given inputs (class probabilities, or lesion masks packed one bit a pixel), so
  the host can compute agreement on identical pixels;
- latency median and p90 at batch 1, per thread count, after warm-up;
- model load time, and the resident-set high-water mark during load and inference;
- the device: machine, CPU model, OS, Python and runtime versions.

``--inputs`` is either an ``.npz`` with ``pixels`` (uint8 N x S x S x 3, already through the
artifact's ``Preprocess.fit``, as ``edgederm verify`` writes them) and optional ``names``, or a
folder of images that each artifact fits itself. The file is what ``edgederm verify
--device-results`` merges.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import platform
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .core import atomic
from .core.errors import DataError, EdgedermError, UsageError
from .core.formats import FORMATS, format_for_path
from .core.log import configure, get_logger, progress
from .core.manifest import artifact_sha256, read_manifest
from .data.images import is_image_file, load_image
from .runtime import Predictor
from .runtime.postprocess import postprocess_mask
from .runtime.readout import lesion_probabilities
from .runtime.timing import DEFAULT_RUNS, DEFAULT_WARMUP, measure_latency, parse_threads_list

logger = get_logger(__name__)

Loader = Callable[..., Predictor]
LATENCY_KEYS = ("threads", "median_ms", "p90_ms", "min_ms", "runs", "warmup", "load_ms", "peak_rss_mb")
ARTIFACT_KEYS = ("path", "name", "sha256", "format", "quant", "task", "latency", "peak_rss_per_artifact")  # then "outputs" with inputs
DEVICE_KEYS = ("name", "machine", "cpu", "cpu_features", "os", "python", "runtimes")
RUNTIME_PACKAGES = ("numpy", "pillow", "onnxruntime", "ai-edge-litert", "tflite-runtime")
_INPUTS_FIX = "give an .npz with a uint8 'pixels' array (N, S, S, 3), as `edgederm verify` writes, or a folder of images"


class Inputs:
    """The images every artifact runs on: fitted pixels from an .npz, or image files fitted per artifact."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self.pixels: np.ndarray | None = None
        self.files: list[Path] = []
        self.names: list[str] = []
        if self.path is None:
            return
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.is_file() and is_image_file(p))
            if not self.files:
                raise DataError("no images in this folder", path=self.path, fix=_INPUTS_FIX)
            self.names = [p.name for p in self.files]
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                pixels = data["pixels"]
                names = [str(n) for n in data["names"]] if "names" in data else [str(i) for i in range(len(pixels))]
        except FileNotFoundError:
            raise DataError("no such inputs file or folder", path=self.path, fix=_INPUTS_FIX) from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # empty, truncated or not an .npz
            raise DataError(f"not an inputs .npz ({exc})", path=self.path, fix=_INPUTS_FIX) from None
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.shape[1] != pixels.shape[2]:
            raise DataError(f"'pixels' is {pixels.dtype} {tuple(pixels.shape)}, not uint8 (N, S, S, 3)", path=self.path, fix=_INPUTS_FIX)
        if len(names) != len(pixels):
            raise DataError(f"{len(names)} names for {len(pixels)} images", path=self.path, fix=_INPUTS_FIX)
        self.pixels, self.names = pixels, names

    def fitted(self, predictor: Predictor) -> np.ndarray:
        """uint8 (N, S, S, 3) at the artifact's input size."""
        side = predictor.spec.preprocess.input_size
        if self.path is None:  # timings only: a fixed photo-like input, repeatable
            return np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
        if self.pixels is not None:
            if self.pixels.shape[1] != side:
                raise DataError(
                    f"the inputs are {self.pixels.shape[1]} px, {predictor.path.name} takes {side} px",
                    path=self.path,
                    fix="write the inputs for this export's input size, or give a folder of images",
                )
            return self.pixels
        return np.stack([predictor.spec.preprocess.fit(load_image(p)) for p in self.files])


def device_info() -> dict[str, Any]:
    """What ran the bench: machine, CPU model, OS, Python and runtime versions."""
    versions = {}
    for package in RUNTIME_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "name": platform.node() or platform.machine() or "unknown",
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "runtimes": versions,
    }


# The instruction-set extensions that decide which int8 and fp16 kernels XNNPACK and ONNX Runtime pick: the
# same file runs int8 at about fp32's speed on an AVX2-only x86 and at a fraction of it with VNNI or dot-product.
INT8_FP16_FEATURES = (
    "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_int8",  # x86 /proc/cpuinfo "flags"
    "asimddp", "asimdhp", "fphp", "i8mm", "sve", "sve2", "bf16",  # ARM "Features"
)  # fmt: skip


def cpu_features() -> list[str]:
    """Which of INT8_FP16_FEATURES the CPU has, from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
    return [feature for feature in INT8_FP16_FEATURES if feature in found]


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo ("model name" on x86; implementer/part codes on ARM), else platform's."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    if fields.get("CPU part"):
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return fields.get("Hardware") or platform.processor() or platform.machine()


class PeakMemory:
    """The resident-set high-water mark (MB) of this process since ``reset()``.

    Linux resets it by writing 5 to /proc/self/clear_refs, so each artifact gets its own peak;
    elsewhere it is the process's peak so far (``per_artifact`` False), which is still an upper bound.
    """

    def __init__(self) -> None:
        self.per_artifact = False

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.per_artifact = True
        except OSError:
            self.per_artifact = False

    def peak_mb(self) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError, IndexError):
            pass
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
        except (ImportError, OSError):
            return None


def outputs_of(predictor: Predictor, pixels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The artifact's answer on every input: probabilities (classifiers), or masks at input size after the spec's
    threshold and post-processing, one bit a pixel (segmenters)."""
    raw = np.concatenate([predictor.predict_pixels(pixels[i : i + 8]) for i in range(0, len(pixels), 8)])
    if predictor.spec.task == "segmentation":
        masks = np.stack([postprocess_mask(p, predictor.spec.postprocess) for p in lesion_probabilities(raw)])
        return {
            "names": names,
            "mask_shape": list(masks.shape[1:]),
            "masks_packbits": [base64.b64encode(np.packbits(m.reshape(-1))).decode("ascii") for m in masks],
        }
    return {"names": names, "class_names": predictor.class_names, "probabilities": [[float(p) for p in row] for row in raw]}


def unpack_masks(outputs: dict[str, Any]) -> np.ndarray:
    """The bool (N, H, W) masks of a segmenter's ``outputs`` entry."""
    h, w = outputs["mask_shape"]
    return np.stack(
        [np.unpackbits(np.frombuffer(base64.b64decode(s), np.uint8), count=h * w).reshape(h, w) for s in outputs["masks_packbits"]]
    ).astype(bool)


def benchmark_artifact(
    path: str | Path,
    threads_list: Iterable[int],
    inputs: Inputs | None = None,
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    load: Loader = Predictor.load,
    on_result: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load ``path`` once per thread count, time it at batch 1, and (with inputs) record its outputs once."""
    path, inputs = Path(path), inputs or Inputs(None)
    memory, latency, outputs, spec = PeakMemory(), [], None, None
    for threads in threads_list:
        memory.reset()
        started = time.perf_counter()
        predictor = load(path, threads=threads)
        load_ms = (time.perf_counter() - started) * 1e3
        spec, pixels = predictor.spec, inputs.fitted(predictor)
        if outputs is None and inputs.path is not None:
            outputs = outputs_of(predictor, pixels, inputs.names)
        one = pixels[:1]
        stats = measure_latency(lambda predictor=predictor, one=one: predictor.predict_pixels(one), runs=runs, warmup=warmup)
        latency.append({"threads": threads, **stats, "load_ms": round(load_ms, 2), "peak_rss_mb": memory.peak_mb()})
        message = f"{path.name}: {stats['median_ms']:.1f} ms median at {threads} thread(s), loaded in {load_ms:.0f} ms"
        logger.info(message)
        if on_result:
            on_result(message)
        del predictor
    if spec is None:
        raise UsageError("no thread counts to benchmark", fix="give --threads such as 1,2")
    fmt = format_for_path(path.name)
    entry = {
        "path": str(path),
        "name": path.name,
        "sha256": artifact_sha256(path),
        "format": spec.artifact.get("format") or (fmt.name if fmt else None),
        "quant": spec.artifact.get("quant"),
        "task": spec.task,
        "latency": latency,
        "peak_rss_per_artifact": memory.per_artifact,
    }
    if outputs is not None:
        entry["outputs"] = outputs
    return entry


def run_benchmark(
    paths: Iterable[str | Path],
    threads_list: Iterable[int] = (1,),
    inputs: Inputs | None = None,
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    load: Loader = Predictor.load,
    on_result: Callable[[str], None] | None = None,
    device: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The device-results document: ``{"device", "created", "inputs", "artifacts": [...]}``."""
    threads_list = list(threads_list)
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if not paths:
        raise UsageError("no model artifacts to benchmark", fix="give .tflite or .onnx files, or an export directory")
    artifacts = [
        benchmark_artifact(p, threads_list, inputs, runs=runs, warmup=warmup, load=load, on_result=on_result)
        for p in progress(paths, "artifacts", unit="artifact")
    ]
    return {
        "device": device or device_info(),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "inputs": None if inputs is None or inputs.path is None else {"path": str(inputs.path), "n": len(inputs.names)},
        "artifacts": artifacts,
    }


def write_benchmark(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def expand_artifacts(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; an export directory becomes its manifest's ``ok`` artifacts whose runtime exists here and needs no
    torch (an ExecuTorch ``.pte`` is benchmarked when named, where executorch is installed)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir() or format_for_path(path.name) is not None:
            if not path.exists():
                raise UsageError("no such artifact or export directory", fix=f"check the path {path}")
            found.append(path)
            continue
        entries = [a for a in read_manifest(path)["artifacts"] if a.get("status") == "ok" and a.get("path")]
        runnable = [path / a["path"] for a in entries if (f := format_for_path(a["path"])) is not None and f.runs_here() and f.torch_free]
        if not runnable:
            raise UsageError(
                f"no artifact in {path} runs on this platform",
                fix=f"export {', '.join(f.suffix for f in FORMATS.values() if f.runs_here() and f.torch_free)} files",
            )
        found.extend(runnable)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgederm-bench",
        description="Time exported edgederm artifacts on this device and record their outputs, without torch.",
    )
    parser.add_argument("artifacts", nargs="+", help="exported .tflite/.onnx files, or export directories (their manifest's artifacts)")
    parser.add_argument("--inputs", type=Path, help="INPUTS.npz (pixels as `edgederm verify` writes them) or a folder of images")
    parser.add_argument("--threads", default="1", help="thread counts, comma-separated (default 1)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"timed runs per artifact and thread count (default {DEFAULT_RUNS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs first (default {DEFAULT_WARMUP})")
    parser.add_argument("--out", type=Path, required=True, help="the device-results JSON to write")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(logging.WARNING if args.quiet else logging.INFO)
    try:
        if args.runs < 1:
            raise UsageError(f"--runs must be at least 1, got {args.runs}", fix="give --runs 50")
        result = run_benchmark(
            expand_artifacts(args.artifacts),
            parse_threads_list(args.threads),
            Inputs(args.inputs) if args.inputs else None,
            runs=args.runs,
            warmup=args.warmup,
        )
        logger.info("wrote %s", write_benchmark(result, args.out))
        return 0
    except EdgedermError as error:
        if args.debug:
            raise
        print(f"edgederm-bench: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
