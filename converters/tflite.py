"""TFLite export: litert-torch lowers the Deployable, ai-edge-quantizer makes the quantized variants.

fp32          ``litert_torch.convert`` of the Deployable (softmax in the graph), NHWC float32 input.
fp16          float16 weights: ai-edge-quantizer's FLOAT_CASTING weight-only recipe stores each
              conv/FC weight as fp16 behind a DEQUANTIZE op (fp32 compute on CPU, fp16 on GPU
              delegates), float32 input/output; about half the fp32 size.
int8-dynamic  ai-edge-quantizer ``dynamic_wi8_afp32``: per-channel int8 weights, activations
              quantized on the fly by the conv kernels; the classifier's FULLY_CONNECTED keeps int8
              weights with float compute (see _dynamic_int8_recipe); float32 input/output.
int8          ai-edge-quantizer ``static_wi8_ai8`` calibrated on ``job.calibration`` (activation
              ranges chosen by ``_ranges``, conv biases corrected by ``_bias_correction`` where
              that measurably helps): int8 weights and activations throughout, float32
              input/output (one QUANTIZE after the input, one DEQUANTIZE before the output) so
              MediaPipe and every app feed the same normalised floats as to fp32.
              ``options["int8_io"]`` keeps int8 input/output instead; their scale and zero point
              are in the embedded spec and the interpreter's tensor details.

Why ai-edge-quantizer, measured on an EfficientNet-Lite0 trained on HAM10000 (head mode, 192 px;
100 calibration images, top-1 agreement with the fp32 model on 300 other images): ai-edge-quantizer
with absolute min/max ranges 0.79-0.85 (4.1 MB, 6 s), the same with its default moving-average
ranges 0.70-0.72, litert-torch PT2E (per-channel weights, HistogramObserver) 0.72 in 47 s, PT2E with
MinMaxObserver 0.69 in 57 s (0.78 in its own torch simulation). Absolute min/max is the first of the
candidate ranges ``_ranges`` tries; MobileNetV3's unbounded activations do better clipped.

Metadata: the artifact's ModelSpec travels as JSON in the flatbuffer's ``Model.metadata`` list
under SPEC_KEY, which ``edgederm.runtime.tflite_backend`` reads without torch. NHWC files also get
the standard TFLite Metadata (a TFLITE_METADATA entry) and labels.txt + edgederm_spec.json zipped
onto the end of the file, so MediaPipe Tasks runs them as they are (checked with mediapipe 0.10.21
on inputs already at the model's size; MediaPipe stretches other sizes where edgederm letterboxes):

- classifiers as its ImageClassifier's writer describes them: image input with its normalisation,
  probabilities output labelled by labels.txt; same top-1 as edgederm's runtime.
- segmenters as its ImageSegmenter's writer does: the same image input, a (1, S, S, 1) lesion
  probability mask (GRAYSCALE image content, channel labelled ``lesion`` by labels.txt) and
  SEGMENTER_METADATA saying the activation (sigmoid) is already in the graph. MediaPipe's confidence
  mask is then edgederm's lesion probability; its category mask of a one-channel model is 0 (the
  ``lesion`` label) where the probability exceeds 0.5 and 255 elsewhere, without the spec's
  threshold and clean-up, which ``edgederm.runtime.postprocess`` (numpy only) applies to the
  confidence mask.

MediaPipe normalises every channel alike ("Per-channel image normalization is not available"), so
an NHWC file of a model trained with per-channel statistics (ImageNet's) takes input normalised
with their channel averages, and a multiply-add per channel at the start of its graph makes up the
difference; the file records that normalisation in the spec's ``artifact["input"]["normalization"]``
and ``ModelSpec.input_preprocess`` applies it. NCHW files keep the model's own normalisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch import nn

from edgederm.core.formats import FORMATS
from edgederm.core.metadata import LABELS_FILE, SPEC_FILE, SPEC_KEY, artifact_spec, labels_text
from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec
from edgederm.runtime.tflite_backend import TFLITE_METADATA
from edgederm.runtime.timing import measure_latency

from . import _accuracy_aware, _bias_correction, _ranges, _tflite_bias
from ._job import ConversionError, ExportJob
from ._wrap import deployable, example_input

SIGNATURE = "serving_default"  # litert-torch's default signature key
# TFLite Metadata (tensorflow_lite_support/metadata/metadata_schema.fbs): identifier, enum and union values.
_METADATA_IDENTIFIER = b"M001"
_METADATA_PARSER_VERSION = "1.0.0"  # every field of the classifier's metadata exists in schema 1.0.0
_CUSTOM_METADATA_PARSER_VERSION = "1.5.0"  # SubGraphMetadata.custom_metadata was added in 1.5.0
_RGB, _GRAYSCALE, _DESCRIPTIONS, _TENSOR_AXIS_LABELS = 1, 2, 1, 2
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES, _NORMALIZATION_OPTIONS = 1, 2, 1
# MediaPipe's image_segmenter_metadata_schema.fbs: ImageSegmenterOptions, stored as custom metadata of this name.
_SEGMENTER_METADATA, _SEGMENTER_IDENTIFIER, _ACTIVATION_NONE = "SEGMENTER_METADATA", b"V001", 0

# export_run hands every quant mode the same model: lower it to fp32 TFLite once per layout.
_FLOAT_MODELS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bytes]] = weakref.WeakKeyDictionary()


def export(job: ExportJob) -> None:
    _check_job(job)
    nhwc = bool(job.options.get("nhwc", True))
    try:
        with _quiet_tools():
            model = _quantized_model(job, _float_model(job.model, job.spec, nhwc))
        tensors = _io_description(model, nhwc)
        given = _file_preprocess(job.spec.preprocess, nhwc)
        if given != job.spec.preprocess:
            tensors["input"]["normalization"] = {"mean": list(given.mean), "std": list(given.std)}
        spec = artifact_spec(job.spec, "tflite", job.quant, tensors)
        model = _stamp(model, spec, nhwc)
    except ConversionError:
        raise
    except ImportError as exc:
        raise ConversionError(f"TFLite export needs litert-torch and ai-edge-quantizer ({exc})") from exc
    except Exception as exc:  # the lowering and the quantizer raise many types: one readable line
        raise ConversionError(f"TFLite {job.quant} conversion failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    job.target.write_bytes(model)


def _check_job(job: ExportJob) -> None:
    modes = FORMATS["tflite"].quant_modes
    if job.quant not in modes:
        raise ConversionError(f"TFLite has no {job.quant!r} mode (it has {', '.join(modes)})")
    if job.quant in ("int8", "int8-aa") and not job.calibration:
        raise ConversionError(f"{job.quant} needs calibration images (pass --calib-data)")


def _float_model(model: nn.Module, spec: ModelSpec, nhwc: bool) -> bytes:
    key = (nhwc, spec.task, spec.preprocess.input_size, spec.preprocess.mean, spec.preprocess.std)
    cached = _FLOAT_MODELS.setdefault(model, {})
    if key not in cached:
        cached[key] = _convert_float(model, spec, nhwc)
    return cached[key]


def _convert_float(model: nn.Module, spec: ModelSpec, nhwc: bool) -> bytes:
    import litert_torch

    given = _file_preprocess(spec.preprocess, nhwc)
    normalization = None if given == spec.preprocess else (given.mean, given.std)
    # The Deployable's own permute: smaller than to_channel_last_io's wrapper.
    graph = deployable(model, spec, nhwc=nhwc, input_normalization=normalization)
    return bytes(litert_torch.convert(graph, (example_input(spec, nhwc=nhwc),)).model_content())


def _file_preprocess(preprocess: Preprocess, nhwc: bool) -> Preprocess:
    """The Preprocess that normalises the file's input: per-channel statistics become their averages in NHWC files.

    MediaPipe Tasks apply one mean and std to every channel; the graph makes up the per-channel rest (module doc).
    """
    if not nhwc or (len(set(preprocess.mean)) == 1 and len(set(preprocess.std)) == 1):
        return preprocess
    mean, std = round(float(np.mean(preprocess.mean)), 6), round(float(np.mean(preprocess.std)), 6)
    return dataclasses.replace(preprocess, mean=(mean,) * 3, std=(std,) * 3)


def _quantized_model(job: ExportJob, fp32: bytes) -> bytes:
    if job.quant == "fp32":
        return fp32
    if job.quant in ("int8", "int8-aa"):
        return _static_int8(fp32, job)
    return _quantize(fp32, _fp16_weights_recipe() if job.quant == "fp16" else _dynamic_int8_recipe())


def _fp16_weights_recipe() -> list[dict[str, Any]]:
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    return manager.get_quantization_recipe()


def _dynamic_int8_recipe() -> list[dict[str, Any]]:
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_dynamic_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8)
    # tflite-runtime 2.14's hybrid FULLY_CONNECTED kernel silently returns wrong outputs for these
    # per-channel int8 weights; int8 weights dequantized to float compute correctly everywhere.
    manager.add_weight_only_config(".*", qtyping.TFLOperationName.FULLY_CONNECTED, 8)
    return manager.get_quantization_recipe()


def _static_int8(fp32: bytes, job: ExportJob) -> bytes:
    return _accuracy_aware.for_job(_StaticInt8(fp32, job), job)


class _StaticInt8:
    """ai-edge-quantizer ``static_wi8_ai8`` calibrated once; ``build`` can keep any layers in float."""

    LAYER_OPS = (
        *("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "AVERAGE_POOL_2D", "RESHAPE"),
        *("HARD_SWISH", "LOGISTIC", "RELU6", "RELU"),  # MobileNetV3's activations are ops of their own here
        # Data movers quantize their input too: an int8 PAD before each strided conv alone cost MobileNetV3-Large
        # 3% top-1 agreement with every other layer float.
        *("PAD", "CONCATENATION", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D", "TRANSPOSE", "BATCH_MATMUL"),
    )

    def __init__(self, fp32: bytes, job: ExportJob):
        from ai_edge_quantizer import calibrator, recipe, recipe_manager

        self.fp32, self.layout = fp32, "NHWC" if job.options.get("nhwc", True) else "NCHW"
        self.rules = recipe.static_wi8_ai8()
        if not job.options.get("int8_io", False):
            self.rules += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize", "op_config": {}} for op in ("INPUT", "OUTPUT")]
            # An int8 softmax gives probabilities in steps of 1/256, so a referral threshold above 255/256 (a
            # confident model's) could never fire: the probabilities stay float, as in the ONNX int8 graph.
            self.rules.append({"regex": ".*", "operation": "SOFTMAX", "algorithm_key": "no_quantize", "op_config": {}})
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(self.rules)
        calibration = calibrator.Calibrator(fp32, num_threads=os.cpu_count() or 1, qsv_update_func=_stack_extremes)
        self.samples = _calibration_samples(fp32, job)
        calibration.calibrate(self.samples, manager)
        extremes = calibration.get_model_qsvs()
        self.regions = _accuracy_aware.float_regions(self._layers())
        self.reference = self.predict(fp32, None)

        def ranges_at(percentile: float) -> dict[str, Any]:
            return {name: _qsv_at(qsv, percentile) for name, qsv in extremes.items()}

        percentile, self.full_int8, self.range_choice, self.bias_correction = _bias_correction.full_int8(
            lambda percentile: self._build(ranges_at(percentile), []),
            self._inputs,
            self.reference,
            fit=lambda model, inputs: _tflite_bias.fit_shifts(model, fp32, inputs),
            apply=_tflite_bias.apply,
            predict=self._probabilities,
        )
        self.qsvs = ranges_at(percentile)

    def _layers(self) -> list[_accuracy_aware.Layer]:
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

        tree = tfl.read_model(bytearray(self.fp32))
        graph = tree.subgraphs[0]
        layers: list[_accuracy_aware.Layer] = []
        seen: set[str] = set()
        for op in graph.operators:
            # .get: ops the quantizer has no name for (EXP, from a softmax over one element) are not layers it quantizes.
            if tfl.TFL_OP_CODE_TO_NAME.get(tree.operatorCodes[op.opcodeIndex].builtinCode) in self.LAYER_OPS:
                scope = tfl.get_op_scope(op, graph.tensors)
                name = _module_path(scope)
                name = name if name not in seen else f"{name}#{len(layers)}"
                seen.add(name)
                layers.append(_accuracy_aware.Layer(name, (scope,), frozenset(op.inputs), frozenset(op.outputs)))
        return layers

    def candidates(self) -> list[str]:
        return list(self.regions)

    def build(self, keep_float: list[str]) -> bytes:
        return self._build(self.qsvs, keep_float)  # without bias correction: see _accuracy_aware

    def _build(self, qsvs: dict[str, Any], keep_float: list[str]) -> bytes:
        scopes = dict.fromkeys(scope for layer in keep_float for scope in self.regions[layer])
        skip = [{"regex": f"^{re.escape(s)}$", "operation": "*", "algorithm_key": "no_quantize", "op_config": {}} for s in scopes]
        return _quantize(self.fp32, self.rules + skip, qsvs)

    def _runner(self, model: bytes, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=model, num_threads=threads)
        interpreter.allocate_tensors()
        given, produced = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(array: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(given["index"], _tflite_bias.as_input(array, given))
            interpreter.invoke()
            out = interpreter.get_tensor(produced["index"]).astype(np.float32)
            scale, zero = produced["quantization"]
            return (out - zero) * scale if scale else out

        return run

    @property
    def _inputs(self) -> list[np.ndarray]:
        return [next(iter(sample.values())) for sample in self.samples[SIGNATURE]]

    def predict(self, model: bytes, n: int | None) -> np.ndarray:
        return self._probabilities(model, self._inputs[:n])

    def _probabilities(self, model: bytes, inputs: list[np.ndarray]) -> np.ndarray:
        run = self._runner(model)
        return np.concatenate([run(array) for array in inputs])

    @property
    def float_size(self) -> int:
        return len(self.fp32)

    def size(self, model: bytes) -> int:
        return len(model)

    def latency(self, model: bytes) -> float:
        run, one = self._runner(model, threads=1), next(iter(self.samples[SIGNATURE][0].values()))
        return measure_latency(lambda: run(one), runs=30, warmup=3)["median_ms"]


def _stack_extremes(qsv: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """ai-edge-quantizer's QSV update that keeps each image's min and max (the first image's is ``qsv`` itself)."""
    stacked = qsv if "mins" in qsv else {"mins": [qsv["min"]], "maxs": [qsv["max"]]}
    stacked["mins"].append(new["min"])
    stacked["maxs"].append(new["max"])
    return stacked


def _qsv_at(qsv: dict[str, Any], percentile: float) -> dict[str, Any]:
    if "mins" not in qsv:  # a tensor one calibration image saw
        return qsv
    low, high = _ranges.from_extremes(np.stack(qsv["mins"]), np.stack(qsv["maxs"]), percentile)
    return {"min": low, "max": high}


def _module_path(scope: str) -> str:
    """``model.blocks.1.0.conv_dw`` from litert-torch's tensor names (``.../timm...InvertedResidual_0/torch...Conv2d_conv_dw;1;``)."""
    last = [name for name in scope.split(";") if name and not name.isdigit()][-1]
    parts = [segment.rsplit(".", 1)[-1].split("_", 1)[-1] for segment in last.split("/")[1:]]
    return ".".join(parts) or scope


def _calibration_samples(fp32: bytes, job: ExportJob) -> dict[str, list[dict[str, np.ndarray]]]:
    from ai_edge_litert.interpreter import Interpreter

    (input_name,) = Interpreter(model_content=fp32).get_signature_list()[SIGNATURE]["inputs"]
    nhwc = bool(job.options.get("nhwc", True))
    calibration = dataclasses.replace(job.calibration, preprocess=_file_preprocess(job.calibration.preprocess, nhwc))
    return {SIGNATURE: [{input_name: batch} for batch in calibration.batches(1, layout="NHWC" if nhwc else "NCHW")]}


def _quantize(fp32: bytes, rules: list[dict[str, Any]], qsvs: dict | None = None) -> bytes:
    from ai_edge_quantizer import quantizer

    result = quantizer.Quantizer(fp32, rules).quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


def _io_description(model: bytes, nhwc: bool) -> dict[str, Any]:
    """The artifact's input/output tensors as the interpreter sees them, for the embedded spec."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    model_input = _tensor_description(interpreter.get_input_details()[0])
    return {
        "input": {**model_input, "layout": "NHWC" if nhwc else "NCHW"},
        "output": _tensor_description(interpreter.get_output_details()[0]),
    }


def _tensor_description(details: dict[str, Any]) -> dict[str, Any]:
    described = {"name": details["name"], "dtype": np.dtype(details["dtype"]).name, "shape": [int(d) for d in details["shape"]]}
    scale, zero_point = details["quantization"]
    if scale:
        described["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return described


def with_metadata(model: bytes, entries: dict[str, bytes]) -> bytes:
    """The model with ``entries`` as Model.metadata buffers (replacing entries of the same name).

    Tensors are renamed to the module path they come from (``blocks.1.0.conv_dw``). litert-torch
    names each one by the full class path of every module fused into it: 109 KB of names in an
    EfficientNet-Lite0, 3% of its int8 file, and unreadable in Netron or an interpreter's details.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    _short_tensor_names(tree)
    for buffer in tree.buffers:
        # Weights stored after the flatbuffer come back as byte slices, which Pack copies one byte at a time.
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(buffer.data, np.uint8)
    tree.metadata = [m for m in tree.metadata or [] if _name(m.name) not in entries]
    for name, payload in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, np.uint8)
        tree.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(tree.buffers) - 1
        tree.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def _short_tensor_names(tree: Any) -> None:
    for graph in tree.subgraphs:
        io = set(graph.inputs) | set(graph.outputs)  # signature-facing names stay as litert-torch made them
        seen: dict[str, int] = {}
        for index, tensor in enumerate(graph.tensors):
            name = _name(tensor.name or b"")
            if index in io or "/" not in name:
                continue
            short = _module_path(name)
            seen[short] = seen.get(short, 0) + 1
            tensor.name = short if seen[short] == 1 else f"{short}:{seen[short] - 1}"


def _stamp(model: bytes, spec: ModelSpec, nhwc: bool) -> bytes:
    """Embed the spec; NHWC files also get the standard TFLite Metadata MediaPipe Tasks reads."""
    spec_json = spec.to_json().encode("utf-8")
    if not nhwc:  # MediaPipe's ImageClassifier and ImageSegmenter take NHWC images only
        return with_metadata(model, {SPEC_KEY: spec_json})
    model = with_metadata(model, {SPEC_KEY: spec_json, TFLITE_METADATA: standard_metadata(spec)})
    return with_associated_files(model, {LABELS_FILE: labels_text(spec).encode("utf-8"), SPEC_FILE: spec_json})


def _name(raw: str | bytes) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def standard_metadata(spec: ModelSpec) -> bytes:
    """The TFLite Metadata of an NHWC artifact: MediaPipe's ImageClassifier's or ImageSegmenter's, by the task."""
    return image_classifier_metadata(spec) if spec.task == "classification" else image_segmenter_metadata(spec)


def image_classifier_metadata(spec: ModelSpec) -> bytes:
    """A ModelMetadata flatbuffer (TFLite Support's metadata_schema.fbs) as MediaPipe's image-classifier writer makes one.

    One RGB image input with the normalisation MediaPipe applies to 0-255 pixels, one output of
    class probabilities labelled by labels.txt; edgederm_spec.json rides along as a model-level file.
    """
    return _model_metadata(
        spec,
        title=f"edgederm {spec.arch} skin-lesion classifier",
        description=f"Classifies dermoscopy images into {', '.join(spec.class_names)}. Not a medical device.",
        subgraph="image_classifier",
        labels="Class names (HAM10000 dx codes), one per output index.",
        output=_scores_tensor,
    )


def image_segmenter_metadata(spec: ModelSpec) -> bytes:
    """A ModelMetadata flatbuffer as MediaPipe's image-segmenter writer makes one (activation NONE).

    The image input as the classifier's; one (1, S, S, 1) output of lesion probabilities described
    as a grayscale mask image over dimensions 1-2, its channel labelled by labels.txt (``lesion``);
    SEGMENTER_METADATA custom metadata with activation NONE, as the sigmoid is in the graph.
    """
    return _model_metadata(
        spec,
        title=f"edgederm {spec.arch} skin-lesion segmenter",
        description="Outlines the lesion in a dermoscopy image: per-pixel lesion probabilities. Not a medical device.",
        subgraph="image_segmenter",
        labels="The class of each output channel, one per line: the lesion.",
        output=_mask_tensor,
        custom={_SEGMENTER_METADATA: _segmenter_options()},
    )


def _model_metadata(
    spec: ModelSpec,
    *,
    title: str,
    description: str,
    subgraph: str,
    labels: str,
    output: Callable[[Any, int], int],
    custom: dict[str, bytes] | None = None,
) -> bytes:
    """One subgraph: the image input, ``output(builder, labels_file)``, and ``custom`` metadata by name."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    labels_file = _associated_file(builder, LABELS_FILE, labels, _TENSOR_AXIS_LABELS)
    spec_file = _associated_file(builder, SPEC_FILE, "The edgederm ModelSpec: preprocessing, classes, calibration, export.", _DESCRIPTIONS)
    fields = {
        0: builder.CreateString(subgraph),
        2: _vector(builder, [_image_tensor(builder, spec)]),
        3: _vector(builder, [output(builder, labels_file)]),
    }
    if custom:
        entries = [_table(builder, {0: builder.CreateString(name), 1: _bytes(builder, data)}) for name, data in custom.items()]
        fields[9] = _vector(builder, entries)
    root = _table(
        builder,
        {
            0: builder.CreateString(title),
            1: builder.CreateString(description),
            2: builder.CreateString(f"edgederm {spec.edgederm_version}, weights sha256 {spec.source_sha256 or 'unknown'}"),
            3: _vector(builder, [_table(builder, fields)]),
            4: builder.CreateString("edgederm"),
            6: _vector(builder, [spec_file]),
            7: builder.CreateString(_CUSTOM_METADATA_PARSER_VERSION if custom else _METADATA_PARSER_VERSION),
        },
    )
    builder.Finish(root, file_identifier=_METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _image_tensor(builder: Any, spec: ModelSpec) -> int:
    """The RGB image input with the normalisation the file's input wants (``spec`` is the artifact's)."""
    given = spec.input_preprocess
    side, mean, std = given.input_size, np.asarray(given.mean), np.asarray(given.std)
    normalization = _table(builder, {0: _floats(builder, 255 * mean), 1: _floats(builder, 255 * std)})
    content = _table(builder, {1: _table(builder, {}, {0: _RGB})}, {0: _IMAGE_PROPERTIES})
    return _table(
        builder,
        {
            0: builder.CreateString("image"),
            1: builder.CreateString(f"RGB image, {side}x{side} ({given.resize} in edgederm), as (pixel - mean) / std."),
            3: content,
            4: _vector(builder, [_table(builder, {1: normalization}, {0: _NORMALIZATION_OPTIONS})]),
            5: _table(builder, {0: _floats(builder, (1 - mean) / std), 1: _floats(builder, -mean / std)}),
        },
    )


def _scores_tensor(builder: Any, labels: int) -> int:
    content = _table(builder, {1: _table(builder, {})}, {0: _FEATURE_PROPERTIES})
    description = "Class probabilities (softmax in the graph), in the order of labels.txt."
    return _probabilities_tensor(builder, "probabilities", description, content, labels)


def _mask_tensor(builder: Any, labels: int) -> int:
    # A grayscale image over dimensions 1-2 (height, width) of the (1, S, S, 1) output, as MediaPipe's SegmentationMaskMd.
    content = _table(builder, {1: _table(builder, {}, {0: _GRAYSCALE}), 2: _table(builder, {}, ints={0: 1, 1: 2})}, {0: _IMAGE_PROPERTIES})
    description = "Lesion probability per pixel (sigmoid in the graph), (1, S, S, 1); edgederm thresholds it as its spec says."
    return _probabilities_tensor(builder, "mask_probabilities", description, content, labels)


def _probabilities_tensor(builder: Any, name: str, description: str, content: int, labels: int) -> int:
    return _table(
        builder,
        {
            0: builder.CreateString(name),
            1: builder.CreateString(description),
            3: content,
            5: _table(builder, {0: _floats(builder, [1.0]), 1: _floats(builder, [0.0])}),
            6: _vector(builder, [labels]),
        },
    )


def _segmenter_options() -> bytes:
    """MediaPipe's ImageSegmenterOptions flatbuffer: activation NONE (the default, so an empty table)."""
    import flatbuffers

    builder = flatbuffers.Builder(16)
    builder.Finish(_table(builder, {}, {0: _ACTIVATION_NONE}), file_identifier=_SEGMENTER_IDENTIFIER)
    return bytes(builder.Output())


def _associated_file(builder: Any, name: str, description: str, kind: int) -> int:
    return _table(builder, {0: builder.CreateString(name), 1: builder.CreateString(description)}, {2: kind})


def _table(builder: Any, offsets: dict[int, int], small: dict[int, int] | None = None, ints: dict[int, int] | None = None) -> int:
    """A table from field slots: ``offsets`` to strings, vectors and tables built before it, ``small`` to byte enums, ``ints`` to int32s."""
    small, ints = small or {}, ints or {}
    builder.StartObject(1 + max([*offsets, *small, *ints], default=-1))
    for slot, offset in offsets.items():
        builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
    for slot, value in ints.items():
        builder.PrependInt32Slot(slot, value, 0)
    for slot, value in small.items():
        builder.PrependUint8Slot(slot, value, 0)
    return builder.EndObject()


def _vector(builder: Any, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _bytes(builder: Any, data: bytes) -> int:
    """A [ubyte] vector aligned to 16 bytes (CustomMetadata.data's force_align: it holds a flatbuffer)."""
    builder.StartVector(1, len(data), 16)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _floats(builder: Any, values: Any) -> int:
    return builder.CreateNumpyVector(np.asarray(values, np.float32))


def with_associated_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """The model with ``files`` zipped onto its end, where TFLite Metadata readers look for associated files."""
    buffer = io.BytesIO(model)
    with zipfile.ZipFile(buffer, "a") as archive:  # not yet a zip: zipfile appends a new archive after the flatbuffer
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_tools() -> Iterator[None]:
    """Silence the tools' progress bars and debug warnings; the export driver reports each artifact."""
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


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."
