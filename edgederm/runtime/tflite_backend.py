"""The TFLite backend for exported ``.tflite`` artifacts: tflite-runtime or ai-edge-litert, no torch.

The ModelSpec is read from the flatbuffer's ``Model.metadata`` entry named ``edgederm_spec`` by a
small parser of the TFLite schema below (no schema package needed), which also checks that every
weight buffer lies inside the file, and the zip of associated files (labels.txt,
edgederm_spec.json) after it is checked too, so a truncated download is refused with one line
before an interpreter maps it. Inputs are normalised by the spec's Preprocess (with the mean and
std the artifact records for its input, ``ModelSpec.input_preprocess``), laid out as the artifact
says, and quantized/dequantized with the tensors' own scale and zero point when the artifact has
integer input/output.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ModelError
from ..core.metadata import SPEC_KEY
from ..core.spec import ModelSpec
from .predictor import Predictor

_REEXPORT = "the file is truncated, corrupt or not an edgederm export; re-run `edgederm export`"
_TFLITE_IDENTIFIER = b"TFL3"
TFLITE_METADATA = "TFLITE_METADATA"  # the standard metadata entry (MediaPipe Tasks); its associated files are zipped onto the end
# Field slots of the TFLite schema tables read here (tensorflow/compiler/mlir/lite/schema/schema.fbs).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_RUNTIMES = ("tflite_runtime", "ai_edge_litert")
_BROKEN_RUNTIMES: set[str] = set()


def read_tflite_model(path: Path) -> tuple[bytes, ModelSpec]:
    """The file's bytes and its ModelSpec, after checking its buffers and associated files; one line if it is no edgederm export."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the TFLite model ({exc.strerror})", path=path) from None
    metadata = read_tflite_metadata(content, path)
    if SPEC_KEY not in metadata:
        raise ModelError(f"no edgederm metadata ({SPEC_KEY}) in this TFLite model", path=path, fix="export it with `edgederm export`")
    if TFLITE_METADATA in metadata:
        _check_associated_files(content, path)
    return content, ModelSpec.from_json(metadata[SPEC_KEY].decode("utf-8", "replace"), source=path)


class TFLitePredictor(Predictor):
    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        content, self.spec = read_tflite_model(self.path)
        self._content = content  # the interpreter reads the model from these bytes for its lifetime
        self.interpreter, self.backend_name = _open_interpreter(content, threads, self.path)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_layout = self.spec.artifact.get("input", {}).get("layout", "NHWC")

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        array = self.spec.input_preprocess.normalize(np.asarray(pixels), layout=self.input_layout)
        if not len(array):
            return np.zeros((0, self.spec.num_classes), np.float32)
        if self._fixed_batch() and self.input["shape"][0] != len(array):
            return np.concatenate([self._run(array[i : i + 1]) for i in range(len(array))])
        return self._run(array)

    def _fixed_batch(self) -> bool:
        return int(self.input.get("shape_signature", self.input["shape"])[0]) != -1

    def _run(self, array: np.ndarray) -> np.ndarray:
        if not self._fixed_batch() and self.input["shape"][0] != len(array):
            self.interpreter.resize_tensor_input(self.input["index"], [len(array), *array.shape[1:]])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(self.input["index"], quantize(array, self.input))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


def quantize(array: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """float32 -> the tensor's dtype with its (scale, zero point); float tensors pass through."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return array.astype(dtype, copy=False)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(array / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    if np.dtype(details["dtype"]).kind == "f":
        return array.astype(np.float32, copy=True)
    scale, zero_point = details["quantization"]
    return ((array.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _open_interpreter(content: bytes, threads: int | None, path: Path) -> tuple[Any, str]:
    """An allocated interpreter from the first runtime that loads the model: tflite-runtime, else ai-edge-litert.

    tflite-runtime 2.14 imports beside numpy 2 but fails on first use (`_ARRAY_API not found`);
    a runtime that fails on a model another one loads is skipped from then on.
    """
    failures: list[tuple[str, Exception]] = []
    for name in _RUNTIMES:
        interpreter_class = None if name in _BROKEN_RUNTIMES else _interpreter_class(name)
        if interpreter_class is None:
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # numpy 2 prints a page about the numpy-1 build
                interpreter = interpreter_class(model_content=content, num_threads=threads)
                interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - the interpreters raise ValueError/RuntimeError/SystemError
            failures.append((name, exc))
            continue
        _BROKEN_RUNTIMES.update(failed for failed, _ in failures)
        return interpreter, name
    if not failures:
        raise ModelError("no TFLite runtime is installed", path=path, fix="pip install ai-edge-litert (or tflite-runtime beside numpy<2)")
    _, exc = failures[-1]
    raise ModelError(f"cannot load the TFLite model ({type(exc).__name__}: {_first_line(exc)})", path=path, fix=_REEXPORT)


def _interpreter_class(runtime: str) -> type | None:
    try:
        if runtime == "tflite_runtime":
            from tflite_runtime.interpreter import Interpreter
        else:
            from ai_edge_litert.interpreter import Interpreter
    except Exception:  # noqa: BLE001 - ImportError, or AttributeError from a build for another numpy
        return None
    return Interpreter


def _check_associated_files(content: bytes, path: Path) -> None:
    """The zip of labels.txt and edgederm_spec.json after the flatbuffer: a cut-off tail shows up here."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelError(f"the files zipped onto the TFLite model are damaged ({exc})", path=path, fix=_REEXPORT) from None
    if damaged:
        raise ModelError(f"the file {damaged} zipped onto the TFLite model is damaged", path=path, fix=_REEXPORT)


def read_tflite_metadata(content: bytes, path: str | Path = "<tflite>") -> dict[str, bytes]:
    """The ``Model.metadata`` entries of a TFLite flatbuffer: name -> the bytes of its buffer.

    Every buffer's extent is checked against the file size, so a truncated or corrupt file raises
    ModelError here rather than crashing the interpreter.
    """
    try:
        return _FlatModel(content).metadata()
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ModelError(f"not a valid TFLite model ({exc})", path=path, fix=_REEXPORT) from None


class _FlatModel:
    """Just enough of a flatbuffer reader for the Model, Buffer and Metadata tables."""

    def __init__(self, content: bytes):
        if len(content) < 8 or content[4:8] != _TFLITE_IDENTIFIER:
            raise ValueError("no TFL3 file identifier")
        self.data = memoryview(content)
        self.root = self._uoffset(0)

    def metadata(self) -> dict[str, bytes]:
        buffers = [self._buffer_bytes(table) for table in self._tables(self.root, _MODEL_BUFFERS)]
        entries = {}
        for table in self._tables(self.root, _MODEL_METADATA):
            name = self._string(table, _METADATA_NAME)
            index = self._scalar(table, _METADATA_BUFFER, "<I")
            if index >= len(buffers):
                raise ValueError(f"metadata {name!r} points at buffer {index} of {len(buffers)}")
            entries[name] = buffers[index]
        return entries

    def _buffer_bytes(self, table: int) -> bytes:
        offset, size = self._scalar(table, _BUFFER_OFFSET, "<Q"), self._scalar(table, _BUFFER_SIZE, "<Q")
        if offset > 1:  # weights stored after the flatbuffer (large models); 1 is a writer's placeholder
            return bytes(self._slice(offset, size))
        start, length = self._vector(table, _BUFFER_DATA)
        return bytes(self._slice(start, length))

    def _slice(self, start: int, length: int) -> memoryview:
        if start < 0 or start + length > len(self.data):
            raise ValueError(f"data at bytes {start}..{start + length} lies beyond the end of the file ({len(self.data)} bytes)")
        return self.data[start : start + length]

    def _read(self, fmt: str, position: int) -> int:
        if not 0 <= position <= len(self.data) - struct.calcsize(fmt):
            raise ValueError(f"a table field at byte {position} lies beyond the end of the file ({len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, position)[0]

    def _uoffset(self, position: int) -> int:
        target = position + self._read("<I", position)
        if target >= len(self.data):
            raise ValueError(f"the offset at byte {position} points beyond the end of the file ({len(self.data)} bytes)")
        return target

    def _field(self, table: int, slot: int) -> int | None:
        vtable = table - self._read("<i", table)
        vtable_size = self._read("<H", vtable)
        entry = 4 + 2 * slot
        if entry >= vtable_size:
            return None
        relative = self._read("<H", vtable + entry)
        return table + relative if relative else None

    def _scalar(self, table: int, slot: int, fmt: str) -> int:
        position = self._field(table, slot)
        return 0 if position is None else self._read(fmt, position)

    def _vector(self, table: int, slot: int) -> tuple[int, int]:
        position = self._field(table, slot)
        if position is None:
            return 0, 0
        start = self._uoffset(position)
        return start + 4, self._read("<I", start)

    def _tables(self, table: int, slot: int) -> list[int]:
        start, count = self._vector(table, slot)
        self._slice(start, 4 * count)
        return [self._uoffset(start + 4 * i) for i in range(count)]

    def _string(self, table: int, slot: int) -> str:
        start, length = self._vector(table, slot)
        return bytes(self._slice(start, length)).decode("utf-8")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) < 200 else text[:197] + "..."
