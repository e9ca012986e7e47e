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
w8a16         the same calibration, ranges and bias-correction decision with ai-edge-quantizer's
              ``static_wi8_ai16``: int8 weights, int16 activations (TFLite's 16x8 kernels, int64
              biases), float32 input/output and a float softmax as in int8.

With ``options["weight_rounding"]`` ("on", or "auto" where held-out calibration images come closer to
fp32), int8 and w8a16 quantize a copy of the Deployable whose weights ``_weight_rounding`` rounded for
each layer's output (never for a ``--qat`` run); the fp32 file stays the reference that ranges and
bias correction are held to.

Every quantized bias holds its float value (``_tflite_bias_range``): ai-edge-quantizer clips biases
at 32 bits, which zeroed near-dead channels and cost w8a16 on a 224 px Lite0 11.5 points of balanced
accuracy.

Why ai-edge-quantizer, measured on an EfficientNet-Lite0 trained on HAM10000 (head mode, 192 px;
100 calibration images, top-1 agreement with the fp32 model on 300 other images): ai-edge-quantizer
with absolute min/max ranges 0.79-0.85 (4.1 MB, 6 s), the same with its default moving-average
ranges 0.70-0.72, litert-torch PT2E (per-channel weights, HistogramObserver) 0.72 in 47 s, PT2E with
MinMaxObserver 0.69 in 57 s (0.78 in its own torch simulation). Absolute min/max is the first of the
candidate ranges ``_ranges`` tries; MobileNetV3's unbounded activations do better clipped.

Metadata (written by ``tflite_metadata``): the artifact's ModelSpec travels as JSON in the
flatbuffer's ``Model.metadata`` list under SPEC_KEY, which ``edgederm.runtime.tflite_backend`` reads
without torch. NHWC files also get the standard TFLite Metadata (a TFLITE_METADATA entry) and
labels.txt + edgederm_spec.json zipped onto the end of the file, so MediaPipe Tasks runs them as
they are (checked with mediapipe 0.10.21 on inputs already at the model's size; MediaPipe stretches
other sizes where edgederm letterboxes):

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

import dataclasses
import functools
import os
import re
import weakref
from typing import Any

import numpy as np
from torch import nn

from edgederm.core.formats import FORMATS, QUANT_MODES
from edgederm.core.metadata import artifact_spec
from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec
from edgederm.runtime.timing import measure_latency

from . import _accuracy_aware, _bias_correction, _ranges, _tflite_bias, _tflite_bias_range, _weight_rounding, tflite_metadata
from ._job import ExportJob, check_job, conversion_step, tool_output_hidden
from ._wrap import deployable, example_input
from .tflite_metadata import module_path

SIGNATURE = "serving_default"  # litert-torch's default signature key
# Bias correction runs the model once per conv and fitting image, and TFLite's 16x8 kernels are reference code
# (0.26 s a Lite0 image at 224 px, 50 convs): w8a16 fits on at most 32 images, int8 on up to FIT_IMAGES.
W8A16_FIT_IMAGES = 32

# export_run hands every quant mode the same model: lower it to fp32 TFLite once per layout.
_FLOAT_MODELS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bytes]] = weakref.WeakKeyDictionary()


def export(job: ExportJob) -> None:
    check_job(job, FORMATS["tflite"])
    nhwc = bool(job.options.get("nhwc", True))
    with conversion_step(f"TFLite {job.quant} conversion", needs="litert-torch and ai-edge-quantizer"):
        with tool_output_hidden():  # litert-torch and ai-edge-quantizer print progress bars and debug warnings
            model = _quantized_model(job, _float_model(job.model, job.spec, nhwc))
        tensors = _io_description(model, nhwc)
        given = _file_preprocess(job.spec.preprocess, nhwc)
        if given != job.spec.preprocess:
            tensors["input"]["normalization"] = {"mean": list(given.mean), "std": list(given.std)}
        spec = artifact_spec(job.spec, "tflite", job.quant, tensors)
        model = tflite_metadata.stamp(model, spec, nhwc)
    job.target.write_bytes(model)


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
    if QUANT_MODES[job.quant].needs_calibration:  # static int8 (all layers, or accuracy-aware) or w8a16
        return _static_int8(fp32, job)
    return _quantize(fp32, _RECIPES[job.quant]())


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


_RECIPES = {"fp16": _fp16_weights_recipe, "int8-dynamic": _dynamic_int8_recipe}  # the modes quantized without calibration


def _static_int8(fp32: bytes, job: ExportJob) -> bytes:
    def build(weights: nn.Module) -> _StaticInt8:
        source = fp32 if weights is job.model else _float_model(weights, job.spec, bool(job.options.get("nhwc", True)))
        return _StaticInt8(fp32, job, source)

    quantizer: _accuracy_aware.Int8Quantizer[bytes] = _weight_rounding.choose(job, build).settle()
    return _accuracy_aware.for_job(quantizer, job)


class _StaticInt8:
    """ai-edge-quantizer ``static_wi8_ai8`` (``static_wi8_ai16`` for w8a16) calibrated once; after ``settle``, ``build`` can
    keep any layers in float (an ``Int8Quantizer``)."""

    LAYER_OPS = (
        *("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "AVERAGE_POOL_2D", "RESHAPE"),
        *("HARD_SWISH", "LOGISTIC", "RELU6", "RELU"),  # MobileNetV3's activations are ops of their own here
        # Data movers quantize their input too: an int8 PAD before each strided conv alone cost MobileNetV3-Large
        # 3% top-1 agreement with every other layer float.
        *("PAD", "CONCATENATION", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAX_POOL_2D", "TRANSPOSE", "BATCH_MATMUL"),
    )

    def __init__(self, fp32: bytes, job: ExportJob, source: bytes | None = None):
        """``source`` (default: ``fp32``) is quantized; ``fp32`` is what its output and conv means are held to."""
        from ai_edge_quantizer import calibrator, recipe, recipe_manager

        self.fp32, self.layout = fp32, "NHWC" if job.options.get("nhwc", True) else "NCHW"
        self.source = fp32 if source is None else source
        self.rules = recipe.static_wi8_ai16() if job.quant == "w8a16" else recipe.static_wi8_ai8()
        if not job.options.get("int8_io", False):
            self.rules += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize", "op_config": {}} for op in ("INPUT", "OUTPUT")]
            # An int8 softmax gives probabilities in steps of 1/256, so a referral threshold above 255/256 (a
            # confident model's) could never fire: the probabilities stay float, as in the ONNX int8 graph.
            self.rules.append({"regex": ".*", "operation": "SOFTMAX", "algorithm_key": "no_quantize", "op_config": {}})
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(self.rules)
        calibration = calibrator.Calibrator(self.source, num_threads=os.cpu_count() or 1, qsv_update_func=_stack_extremes)
        self.samples = _calibration_samples(fp32, job)
        calibration.calibrate(self.samples, manager)
        self.extremes = calibration.get_model_qsvs()
        self.regions = _accuracy_aware.float_regions(self._layers())
        self.reference = self.predict(fp32, None)
        self.fit_images = W8A16_FIT_IMAGES if job.quant == "w8a16" else _bias_correction.FIT_IMAGES
        self.percentiles = _ranges.candidates(job.quant)
        # every layer int8 at a percentile's ranges, built once: plain() (weight rounding) and settle() both build min/max
        self._all_int8 = functools.cache(self._quantize_at)

    def _ranges_at(self, percentile: float) -> dict[str, Any]:
        return {name: _qsv_at(qsv, percentile) for name, qsv in self.extremes.items()}

    def _quantize_at(self, percentile: float) -> bytes:
        return self._build(self._ranges_at(percentile), [])

    def plain(self) -> bytes:
        return self._all_int8(100.0)

    def held_out(self, model: bytes) -> np.ndarray:
        return self._probabilities(model, self._inputs[1::2])

    def settle(self) -> _StaticInt8:
        """Chooses the activation ranges and bias correction (``_bias_correction.full_int8``)."""
        percentile, self.full_int8, self.range_choice, self.bias_correction = _bias_correction.full_int8(
            self._all_int8,
            self._inputs,
            self.reference,
            fit=lambda model, inputs: _tflite_bias.fit_shifts(model, self.fp32, inputs),
            apply=_tflite_bias.apply,
            predict=self._probabilities,
            fit_images=self.fit_images,
            percentiles=self.percentiles,
        )
        self.qsvs = self._ranges_at(percentile)
        return self

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
                name = module_path(scope)
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
        return _tflite_bias_range.fit_biases(_quantize(self.source, self.rules + skip, qsvs), self.fp32)[0]

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
