"""The onnxruntime backend for exported ``.onnx`` artifacts (CPU, no torch).

The ModelSpec is read from the file's ``metadata_props``, so the artifact alone says its input
size, normalisation, layout and class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core.errors import ModelError
from ..core.metadata import SPEC_KEY
from ..core.spec import ModelSpec
from .predictor import Predictor

DEFAULT_BATCH = 32
_REEXPORT = "the file is truncated, corrupt or not an edgederm export; re-run `edgederm export`"


class OnnxPredictor(Predictor):
    backend_name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        self.session = _open_session(self.path, threads)
        self.spec = _read_spec(self.session, self.path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_layout = self.spec.artifact.get("input", {}).get("layout", "NCHW")
        fixed_batch = model_input.shape[0]
        self.batch_size = fixed_batch if isinstance(fixed_batch, int) and fixed_batch > 0 else DEFAULT_BATCH

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        outputs = [self._run(pixels[start : start + self.batch_size]) for start in range(0, len(pixels), self.batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self.spec.num_classes), np.float32)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        array = self.spec.preprocess.normalize(pixels)
        if self.input_layout != self.spec.preprocess.layout:
            array = np.ascontiguousarray(np.moveaxis(array, -1, 1) if self.input_layout == "NCHW" else np.moveaxis(array, 1, -1))
        (probabilities,) = self.session.run(None, {self.input_name: array})
        return probabilities


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The options every edgederm onnxruntime session uses, in the runtime, the converter and verify."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16 graphs log a warning per node that falls back to fp32
    # On x86 CPUs without VNNI (AVX2, AVX-512F) onnxruntime's uint8 x int8 kernels add pairs of products in
    # saturating int16 (VPMADDUBSW), so an int8 model's outputs there depend on the CPU. This key selects the
    # exact uint8 x uint8 kernels on those CPUs and is ignored elsewhere (ARM, VNNI).
    options.add_session_config_entry("session.x64quantprecision", "1")
    if threads:
        options.intra_op_num_threads = threads
    return options


def _open_session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = session_options(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise ModelError(f"cannot load the ONNX model ({type(exc).__name__}: {_first_line(exc)})", path=path, fix=_REEXPORT) from None


def _read_spec(session: ort.InferenceSession, path: Path) -> ModelSpec:
    text = session.get_modelmeta().custom_metadata_map.get(SPEC_KEY)
    if not text:
        raise ModelError(f"no edgederm metadata ({SPEC_KEY}) in this ONNX model", path=path, fix="export it with `edgederm export`")
    return ModelSpec.from_json(text, source=path)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) < 200 else text[:197] + "..."
