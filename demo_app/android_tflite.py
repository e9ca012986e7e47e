"""TFLite on Android without a Python TFLite runtime: Google's Java ``org.tensorflow.lite.Interpreter`` through pyjnius.

python-for-android's ``tflite-runtime`` recipe builds TensorFlow 2.8 and fails with current NDKs and
numpy (see demo_app/README.md); the app then falls back to this backend, with the Java libraries
added by buildozer's ``android.gradle_dependencies``. Written against the TFLite 2.14 Java API and
exercised here with stand-in Java classes only: it has not been run on a phone.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgederm.core.errors import ModelError
from edgederm.runtime import Predictor
from edgederm.runtime.tflite_backend import read_tflite_model


def on_android() -> bool:
    return "ANDROID_ARGUMENT" in os.environ  # set by python-for-android's bootstrap


def load_predictor(path: str | Path, *, threads: int | None = None) -> Predictor:
    """``Predictor.load``, except a .tflite on an Android build without tflite-runtime goes to the Java interpreter."""
    path = Path(path)
    if on_android() and path.suffix == ".tflite" and not _python_tflite_runtime():
        return AndroidTFLitePredictor(path, threads=threads)
    return Predictor.load(path, threads=threads)


class AndroidTFLitePredictor(Predictor):
    backend_name = "android-tflite-java"

    def __init__(self, path: str | Path, *, threads: int | None = None, java: Any = None):
        self.path = Path(path)
        _, self.spec = read_tflite_model(self.path)
        tensors = self.spec.artifact
        if tensors.get("input", {}).get("dtype", "float32") != "float32" or tensors.get("output", {}).get("dtype", "float32") != "float32":
            raise ModelError(
                "this Android fallback runs float32-I/O artifacts only", path=self.path, fix="export without the int8_io option"
            )
        self.input_layout = tensors.get("input", {}).get("layout", "NHWC")
        self.java = java or _java_classes()
        options = self.java.Options()
        if threads:
            options.setNumThreads(int(threads))
        self.interpreter = self.java.Interpreter(self.java.File(str(self.path)), options)
        self.output_shape = [int(n) for n in self.interpreter.getOutputTensor(0).shape()]

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        array = self.spec.input_preprocess.normalize(np.asarray(pixels), layout=self.input_layout)
        return np.stack([self._run_one(one[None]) for one in array]) if len(array) else np.zeros((0, self.spec.num_classes), np.float32)

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        java = self.java
        data = java.ByteBuffer.wrap(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
        data.order(java.ByteOrder.nativeOrder())
        output = java.TensorBuffer.createFixedSize(self.output_shape, java.FLOAT32)
        self.interpreter.run(data, output.getBuffer().rewind())
        return np.asarray(output.getFloatArray(), dtype=np.float32).reshape(self.output_shape)[0]


def _python_tflite_runtime() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("tflite_runtime", "ai_edge_litert"))


def _java_classes() -> SimpleNamespace:
    from jnius import autoclass  # type: ignore[import-not-found]

    return SimpleNamespace(
        File=autoclass("java.io.File"),
        Interpreter=autoclass("org.tensorflow.lite.Interpreter"),
        Options=autoclass("org.tensorflow.lite.Interpreter$Options"),
        ByteBuffer=autoclass("java.nio.ByteBuffer"),
        ByteOrder=autoclass("java.nio.ByteOrder"),
        TensorBuffer=autoclass("org.tensorflow.lite.support.tensorbuffer.TensorBuffer"),
        FLOAT32=autoclass("org.tensorflow.lite.DataType").FLOAT32,
    )
