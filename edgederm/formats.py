"""The export formats as data (after Ultralytics' exporter table).

The CLI's validation, the export driver, ``verify`` and the benchmarks all read this one table:
adding a format or a quantization mode is a row here plus a converter module.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    quant_modes: tuple[str, ...]  # the first is the reference precision of the format
    runtime: str  # what reads it (see edgederm.runtime)
    converter: str  # module under edgederm.converters with export(...)
    backend: str  # "module:Class" under edgederm.runtime that reads it
    runs_on_linux: bool = True


QUANT_MODES: dict[str, str] = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 weights (TFLite/ONNX/CoreML compute in fp16 where the runtime supports it)",
    "int8": "full-integer int8: int8 weights and activations, calibrated on --calib-data",
    "int8-aa": "accuracy-aware int8: full int8 except the fewest layers kept in float that bring top-1 disagreement "
    "with fp32 on the calibration images within --max-drop",
    "int8-dynamic": "int8 weights, float activations quantized on the fly (no calibration)",
    "int8-weights": "int8 weights, float compute (CoreML linear_quantize_weights)",
    "palettize4": "4-bit palettized weights (CoreML)",
    "palettize6": "6-bit palettized weights (CoreML)",
    "palettize8": "8-bit palettized weights (CoreML)",
}

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "tflite",
            ".tflite",
            ("fp32", "fp16", "int8-dynamic", "int8", "int8-aa"),
            "tflite_runtime or ai_edge_litert",
            "tflite",
            "tflite_backend:TFLitePredictor",
        ),
        Format("onnx", ".onnx", ("fp32", "fp16", "int8", "int8-aa"), "onnxruntime", "onnx", "onnx_backend:OnnxPredictor"),
        Format(
            "coreml",
            ".mlpackage",
            ("fp32", "fp16", "int8-weights", "palettize4", "palettize6", "palettize8", "int8"),
            "coremltools (macOS/iOS only)",
            "coreml",
            "coreml_backend:CoreMLPredictor",
            runs_on_linux=False,
        ),
    )
}


def format_for_path(path: str) -> Format | None:
    for fmt in FORMATS.values():
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
