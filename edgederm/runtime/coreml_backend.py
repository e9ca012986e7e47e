"""CoreML artifacts (``.mlpackage``): the spec reader runs anywhere, prediction only on macOS.

``read_coreml_spec`` needs neither torch nor coremltools: an ``.mlpackage`` is a directory with
``Manifest.json`` naming the root ``model.mlmodel`` (a protobuf ``CoreML.Specification.Model``),
and the ModelSpec sits in ``description.metadata.userDefined``, which a few lines of protobuf
wire-format decoding reach. ``CoreMLPredictor`` imports coremltools only when it can run it.
"""

from __future__ import annotations

import json
import platform
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from ..core.errors import ModelError
from ..core.metadata import SPEC_KEY
from ..core.spec import ModelSpec
from .predictor import Predictor

# Field numbers in coremltools/proto Model.proto: Model.description = 2,
# ModelDescription.metadata = 100, Metadata.userDefined = 100 (map entries: key = 1, value = 2).
_MODEL_DESCRIPTION, _DESCRIPTION_METADATA, _METADATA_USER_DEFINED = 2, 100, 100
_BLOB_SENTINEL = 0xDEADBEEF
_CORRUPT_FIX = "the package is truncated or corrupt; copy it again or re-export it with `edgederm export --formats coreml`"


class CoreMLPredictor(Predictor):
    """Runs an edgederm ``.mlpackage`` through coremltools (macOS only: CoreML has no Linux runtime)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, compute_units: str = "ALL"):
        del threads  # CoreML schedules its own threads and the Neural Engine
        self.path = Path(path)
        self.spec = read_coreml_spec(self.path)
        if sys.platform != "darwin":
            raise ModelError(
                f"CoreML models run only on Apple platforms (macOS, iOS); this is {platform.system() or sys.platform}",
                path=self.path,
                fix="use the .tflite or .onnx artifact here, or run on macOS",
            )
        self._model = _load_mlmodel(self.path, compute_units)
        self._input = self.spec.artifact.get("input", {}).get("name", "image")
        self._output = self.spec.artifact.get("output", {}).get("name", "classLabel_probs")

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        side = self.spec.preprocess.input_size
        pixels = np.asarray(pixels, dtype=np.uint8)
        if pixels.ndim != 4 or pixels.shape[1:] != (side, side, 3):
            raise ValueError(f"expected uint8 pixels of shape (N, {side}, {side}, 3), got {pixels.shape}")
        rows = [self._read_output(self._model.predict({self._input: Image.fromarray(one, "RGB")})) for one in pixels]
        return np.stack(rows).astype(np.float32)

    def _read_output(self, result: dict) -> np.ndarray:
        value = result[self._output]
        if isinstance(value, dict):  # classifier: {class name: probability}, put back into class order
            return np.array([value[name] for name in self.spec.class_names], dtype=np.float64)
        return np.asarray(value, dtype=np.float32)[0]


def _load_mlmodel(path: Path, compute_units: str) -> Any:
    try:
        import coremltools as ct

        return ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])
    except Exception as exc:  # noqa: BLE001 - import, version and CoreML framework errors all mean "cannot run it here"
        raise ModelError(
            f"coremltools cannot load the model ({type(exc).__name__}: {exc})",
            path=path,
            fix="needs macOS 14 or later and `pip install coremltools`",
        ) from None


def read_coreml_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec stamped into an edgederm ``.mlpackage`` (no torch, no coremltools)."""
    path = Path(path)
    if not path.exists():
        raise ModelError("no such CoreML model", path=path)
    if not path.is_dir():
        raise ModelError("not a CoreML .mlpackage directory", path=path, fix="give the whole .mlpackage folder")
    model_file = _root_model_file(path)
    try:
        metadata = _user_defined_metadata(model_file.read_bytes())
    except OSError as exc:
        raise ModelError(f"cannot read {model_file.name} ({exc.strerror})", path=path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{model_file.name} is not a valid CoreML model ({exc})", path=path, fix=_CORRUPT_FIX) from None
    if SPEC_KEY not in metadata:
        raise ModelError(
            f"no {SPEC_KEY} in the model's metadata: not an edgederm export",
            path=path,
            fix="export the model with `edgederm export --formats coreml`",
        )
    _check_weights(path, model_file)
    return ModelSpec.from_json(metadata[SPEC_KEY], source=path)


def _root_model_file(package: Path) -> Path:
    """Manifest.json -> the root model's file; every item the manifest lists must be present."""
    try:
        manifest = json.loads((package / "Manifest.json").read_text(encoding="utf-8"))
        items = manifest["itemInfoEntries"]
        root = items[manifest["rootModelIdentifier"]]["path"]
        item_paths = [_inside(package, item["path"]) for item in items.values()]
    except FileNotFoundError:
        raise ModelError("Manifest.json is missing: not a complete .mlpackage", path=package, fix=_CORRUPT_FIX) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"Manifest.json is unreadable ({type(exc).__name__}: {exc})", path=package, fix=_CORRUPT_FIX) from None
    missing = [str(p.relative_to(package.resolve())) for p in item_paths if not p.exists()]
    if missing:
        raise ModelError(f"the package lacks {', '.join(missing)}", path=package, fix=_CORRUPT_FIX)
    return _inside(package, root)


def _inside(package: Path, relative: str) -> Path:
    data = (package / "Data").resolve()
    target = (data / relative).resolve()
    if not target.is_relative_to(data):
        raise ValueError(f"manifest path {relative!r} leaves the package")
    return target


def _user_defined_metadata(model: bytes) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for description in _submessages(memoryview(model), _MODEL_DESCRIPTION):
        for block in _submessages(description, _DESCRIPTION_METADATA):
            for entry in _submessages(block, _METADATA_USER_DEFINED):
                key, value = (bytes(next(_submessages(entry, n), b"")).decode("utf-8") for n in (1, 2))
                metadata[key] = value
    return metadata


def _submessages(buffer: memoryview, wanted: int) -> Iterator[memoryview]:
    """The length-delimited fields numbered ``wanted`` of one protobuf message (others skipped)."""
    pos, end = 0, len(buffer)
    while pos < end:
        key, pos = _varint(buffer, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buffer, pos)
            if number == wanted:
                raise ValueError(f"field {number} should be a message, not a number")
            continue
        if wire == 2:
            size, pos = _varint(buffer, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
        if pos + size > end:
            raise ValueError("truncated protobuf message")
        if number == wanted:
            yield buffer[pos : pos + size]
        pos += size


def _varint(buffer: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buffer) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _check_weights(package: Path, model_file: Path) -> None:
    """Walk the weight blobs so that a truncated weight.bin is caught when the spec is read.

    MIL blob storage version 2: a 64-byte header (uint32 blob count, uint32 version), then per
    blob a 64-byte-aligned record (uint32 0xDEADBEEF, uint32 dtype, uint64 size, uint64 data
    offset) and its data. Other versions are left for CoreML to check.
    """
    weights = model_file.parent / "weights" / "weight.bin"
    if not weights.is_file():
        return
    try:
        with open(weights, "rb") as handle:
            problem = _blob_problem(handle, weights.stat().st_size)
    except OSError as exc:
        raise ModelError(f"cannot read weights/weight.bin ({exc.strerror})", path=package) from None
    if problem:
        raise ModelError(f"weights/weight.bin is {problem}", path=package, fix=_CORRUPT_FIX)


def _blob_problem(handle: BinaryIO, file_size: int) -> str | None:
    header = handle.read(8)
    if len(header) < 8:
        return "truncated"
    count, version = struct.unpack("<II", header)
    if version != 2:
        return None
    record = 64
    for _ in range(count):
        handle.seek(record)
        fields = handle.read(24)
        if len(fields) < 24:
            return "truncated"
        sentinel, _dtype, size, offset = struct.unpack("<IIQQ", fields)
        if sentinel != _BLOB_SENTINEL:
            return "corrupt (bad blob record)"
        if offset + size > file_size:
            return "truncated"
        record = (offset + size + 63) // 64 * 64
    return None
