"""The export formats and quantization modes as data (after Ultralytics' exporter table).

The CLI's validation, the export driver, the converters, ``Predictor.load``, ``verify`` and the
benchmarks all read these two tables: adding a format or a quantization mode is a row here plus a
converter module (and, for a format, a runtime backend).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class QuantMode:
    name: str
    description: str
    needs_calibration: bool  # converters read --calib-data images to fix activation ranges


QUANT_MODES: dict[str, QuantMode] = {
    m.name: m
    for m in (
        QuantMode("fp32", "float32 weights and compute", False),
        QuantMode("fp16", "float16 weights (TFLite/ONNX/CoreML compute in fp16 where the runtime supports it)", False),
        QuantMode("int8", "full-integer int8: int8 weights and activations, calibrated on --calib-data", True),
        QuantMode(
            "int8-aa",
            "accuracy-aware int8: full int8 except the fewest layers kept in float that bring top-1 disagreement "
            "with fp32 on the calibration images within --max-drop",
            True,
        ),
        QuantMode(
            "w8a16",
            "int8 weights and int16 activations, calibrated on --calib-data, for runtimes with 16-bit integer kernels "
            "(TFLite 16x8; onnxruntime's CPU provider computes it in float between QDQ pairs)",
            True,
        ),
        QuantMode("int8-dynamic", "int8 weights, float activations quantized on the fly (no calibration)", False),
        QuantMode("int8-weights", "int8 weights, float compute (CoreML linear_quantize_weights)", False),
        QuantMode("palettize4", "4-bit palettized weights (CoreML)", False),
        QuantMode("palettize6", "6-bit palettized weights (CoreML)", False),
        QuantMode("palettize8", "8-bit palettized weights (CoreML)", False),
    )
}

# How static int8 and w8a16 round their weights (export --weight-rounding; converters/_weight_rounding.py).
WEIGHT_ROUNDING = ("off", "auto", "on")
DEFAULT_WEIGHT_ROUNDING = "auto"

# Run directories and checkpoints: the fp32 PyTorch reference that every artifact is verified against.
TORCH_BACKEND = "edgederm.models.torch_backend:TorchPredictor"


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    quant_modes: tuple[str, ...]  # the first is the reference precision of the format
    runtime: str  # what reads it natively
    converter: str  # module under edgederm.converters with export(...)
    backend: str  # "module:Class" under edgederm.runtime that runs it natively
    title: str  # how messages name it: "TFLite"
    platforms: tuple[str, ...] = ()  # sys.platform values the native runtime exists on; () = everywhere
    emulated_backend: str | None = None  # "module:Class" that computes its numerics where it cannot run natively
    torch_free: bool = True  # its backend runs without torch: edgederm-bench and `verify --emulate arm64` run it

    @property
    def runs_on_linux(self) -> bool:
        return not self.platforms or "linux" in self.platforms

    def runs_here(self) -> bool:
        return not self.platforms or sys.platform in self.platforms

    def needs_calibration(self, quant: str) -> bool:
        return QUANT_MODES[quant].needs_calibration


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "tflite",
            ".tflite",
            ("fp32", "fp16", "int8-dynamic", "int8", "int8-aa", "w8a16"),
            "tflite_runtime or ai_edge_litert",
            "tflite",
            "tflite_backend:TFLitePredictor",
            "TFLite",
        ),
        Format("onnx", ".onnx", ("fp32", "fp16", "int8", "int8-aa", "w8a16"), "onnxruntime", "onnx", "onnx_backend:OnnxPredictor", "ONNX"),
        Format(
            "coreml",
            ".mlpackage",
            ("fp32", "fp16", "int8-weights", "palettize4", "palettize6", "palettize8", "int8"),
            "coremltools (macOS/iOS only)",
            "coreml",
            "coreml_backend:CoreMLPredictor",
            "CoreML",
            platforms=("darwin",),
            emulated_backend="coreml_emulator:EmulatedCoreMLPredictor",
        ),
        # XNNPACK has no 16-bit activation quantizer (w8a16).
        Format(
            "executorch",
            ".pte",
            ("fp32", "fp16", "int8", "int8-aa"),
            "executorch (XNNPACK delegate)",
            "executorch",
            "executorch_backend:ExecuTorchPredictor",
            "ExecuTorch",
            torch_free=False,  # its Python runtime loads libtorch; on a phone the C++ runtime runs the same .pte
        ),
        # The same program lowered to one CoreML delegate, for iOS/macOS; checked here in the MIL emulator.
        Format(
            "executorch-coreml",
            ".coreml.pte",
            ("fp32", "fp16"),
            "executorch (CoreML delegate; macOS/iOS only)",
            "executorch_coreml",
            "executorch_backend:ExecuTorchPredictor",
            "ExecuTorch CoreML",
            platforms=("darwin",),
            emulated_backend="coreml_emulator:EmulatedCoreMLDelegatePredictor",
            torch_free=False,
        ),
    )
}

assert all(q in QUANT_MODES for f in FORMATS.values() for q in f.quant_modes)


def format_for_path(path: str) -> Format | None:
    """The format whose suffix the path ends with, the longest first (``.coreml.pte`` before ``.pte``)."""
    for fmt in sorted(FORMATS.values(), key=lambda f: -len(f.suffix)):
        if str(path).endswith(fmt.suffix):
            return fmt
    return None


def parse_formats(text: str) -> list[Format]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise UsageError(f"unknown format(s) {unknown or text!r}", fix=f"choose from {', '.join(FORMATS)}")
    return [FORMATS[n] for n in dict.fromkeys(names)]


def parse_quant_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in QUANT_MODES]
    if unknown or not modes:
        raise UsageError(f"unknown quantization mode(s) {unknown or text!r}", fix=f"choose from {', '.join(QUANT_MODES)}")
    return list(dict.fromkeys(modes))
