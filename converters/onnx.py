"""ONNX export: torch.export (dynamo) -> onnxsim -> fp16 weights, or static QDQ int8, for onnxruntime.

Every mode starts from the same simplified fp32 graph: input ``image`` (normalised NCHW float32,
dynamic batch), output ``probabilities`` (softmax in the graph). fp16 converts weights and
compute but keeps float32 inputs/outputs so callers feed the same array to every mode. int8 is
static QDQ with per-channel int8 weights (rounded for each layer's output by ``_weight_rounding``
with ``options["weight_rounding"]``) and uint8 activations, the fastest onnxruntime CPU layout
measured here, with activation ranges chosen by ``_ranges`` and conv biases corrected by
``_bias_correction`` where that measurably helps; the softmax stays float. w8a16 is the same static
QDQ with int16 activations (per-channel int8 weights, the same ranges and bias-correction decision):
``quantize_static`` raises the opset to 21, whose QuantizeLinear/DequantizeLinear take int16.
onnxruntime's CPU provider has no 16-bit integer conv kernels, so it computes each QDQ group in float
(the accuracy of 16-bit activations, not their speed: a w8a16 file is for runtimes with 16-bit
kernels, such as NPUs). The run's spec is stamped into ``metadata_props`` and the finished model is
run once by onnxruntime before it is written.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import onnxsim
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgederm import __version__
from edgederm.core.formats import FORMATS
from edgederm.core.log import get_logger
from edgederm.core.metadata import artifact_spec, metadata_strings
from edgederm.runtime.onnx_backend import session_options
from edgederm.runtime.timing import measure_latency

from . import _accuracy_aware, _bias_correction, _onnx_bias, _ranges, _weight_rounding
from ._calibration import Calibration
from ._job import ConversionError, ExportJob, check_job, conversion_step, one_line
from ._wrap import check_fp32_matches_torch, deployable, example_input

logger = get_logger(__name__)

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
DECISIONS = ("weight_rounding", "activation_ranges", "bias_correction", "int8_aa")  # what a calibrated export records


def export(job: ExportJob) -> None:
    fmt = FORMATS["onnx"]
    check_job(job, fmt)
    model, notes = _fp32_model(job)
    if job.quant == "fp16":
        model = _to_fp16(model)
    elif fmt.needs_calibration(job.quant):  # static int8 (all layers, or accuracy-aware) or w8a16
        with tempfile.TemporaryDirectory(prefix="onnx-int8-", dir=job.target.parent) as tmp:
            fp32 = model

            def build(weights: torch.nn.Module) -> _Int8Quantizer:
                if weights is job.model:
                    return _Int8Quantizer(fp32, job.calibration, Path(tmp) / "nearest", job.quant)
                rounded = _fp32_model(job, weights)[0]
                return _Int8Quantizer(rounded, job.calibration, Path(tmp) / "rounded", job.quant, reference=fp32)

            quantizer: _accuracy_aware.Int8Quantizer[onnx.ModelProto] = _weight_rounding.choose(job, build).settle()
            model = _accuracy_aware.for_job(quantizer, job)
        notes.update({key: job.details[key] for key in DECISIONS if key in job.details})
        notes["opset"] = max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx"))
    _drop_unused_domains(model)
    _stamp(model, job, notes)
    with conversion_step("onnx.checker"):
        onnx.checker.check_model(model)
    data = model.SerializeToString()
    _check_runs(data, job)
    job.target.write_bytes(data)


def _fp32_model(job: ExportJob, model: torch.nn.Module | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    module = deployable(job.model if model is None else model, job.spec)
    notes: dict[str, Any] = {"opset": OPSET}
    try:
        model = _torch_export(module, job, dynamic_batch=True)
    except ConversionError as error:
        _note(f"dynamic batch did not export ({error}); exporting batch 1")
        model = _torch_export(module, job, dynamic_batch=False)
    model, notes["simplified"] = _simplify(model)
    return model, notes


def _torch_export(module: torch.nn.Module, job: ExportJob, dynamic_batch: bool) -> onnx.ModelProto:
    # torch.export specialises a size-1 dimension to a constant, so a dynamic batch needs an example of 2.
    example = example_input(job.spec, batch=2 if dynamic_batch else 1)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with conversion_step("torch.onnx.export"), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
        return program.model_proto


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as error:  # noqa: BLE001 - simplification is an optimisation; the exported graph is valid without it
        _note(f"onnxsim failed ({one_line(error)}); keeping the unsimplified graph")
        return model, False
    if not ok:
        _note("onnxsim could not validate the simplified graph; keeping the unsimplified graph")
        return model, False
    return simplified, True


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    with _keep_sys_path(), conversion_step("import onnxruntime.transformers.float16"):
        from onnxruntime.transformers.float16 import convert_float_to_float16
    with conversion_step("fp16 conversion"):
        return _topologically_sorted(convert_float_to_float16(model, keep_io_types=True))


def _topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    # convert_float_to_float16 appends the float32<->float16 Casts of the graph inputs and outputs at
    # the end of the node list: onnxruntime accepts that, the ONNX checker (rightly) does not.
    ir_model = onnx_ir.from_proto(model)
    ir_model.graph.sort()
    return onnx_ir.to_proto(ir_model)


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def _keep_sys_path() -> Iterator[None]:
    # onnxruntime.transformers/__init__.py appends its own folder (benchmark.py, metrics.py, models/ ...)
    # to sys.path, which would let those files shadow later top-level imports in this process.
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def _prepare(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """``quant_pre_process`` (shape inference, batch norms folded) with every node named, saved at ``path``."""
    try:
        with _working_directory(path.parent):  # on failure, symbolic shape inference dumps its model into the cwd
            quant_pre_process(model, path)
    except Exception as error:  # noqa: BLE001 - an optimisation: symbolic shape inference gives up on some graphs (attention reshapes)
        _note(f"quant_pre_process failed ({one_line(error)}); quantizing the graph as exported")
        onnx.save(model, path)
    prepared = onnx.load(path)
    # Inlined functions (MobileNetV3's HardSwish -> HardSigmoid + Mul) come out unnamed, and quantize_static can
    # only leave a node float by name: unnamed, they stayed int8 whatever int8-aa chose (10% top-1 at "all float").
    taken = {node.name for node in prepared.graph.node}
    for index, node in enumerate(prepared.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    onnx.save(prepared, path)
    return prepared


class _Int8Quantizer:
    """Static QDQ int8 (int16 activations for w8a16) from ranges calibrated once; after ``settle``, ``build`` can keep any
    nodes in float (an ``Int8Quantizer``)."""

    QUANTIZABLE = (
        *("Conv", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "AveragePool", "ReduceMean", "Reshape", "Flatten"),
        *("HardSwish", "HardSigmoid", "Sigmoid"),  # MobileNetV3's activations, when not folded into one conv
        *("Pad", "Concat", "Resize", "MaxPool", "Transpose", "Split", "Slice"),  # data movers get QDQ around them too
    )
    ACTIVATIONS = ("Clip", "Relu", "Sigmoid", "HardSigmoid", "HardSwish")

    def __init__(
        self,
        model: onnx.ModelProto,
        calibration: Calibration,
        work_dir: Path,
        quant: str = "int8",
        reference: onnx.ModelProto | None = None,
    ):
        """``model`` is quantized (``quant``: int8, int8-aa or w8a16); ``reference`` (default: ``model``) is the fp32 graph
        its output and conv means are held to."""
        self.calibration = calibration
        self.activations = QuantType.QInt16 if quant == "w8a16" else QuantType.QUInt8
        self.percentiles = _ranges.candidates(quant)
        work_dir = Path(work_dir).resolve()  # quant_pre_process runs from inside it
        work_dir.mkdir(parents=True, exist_ok=True)
        self.prepared, self.cache = work_dir / "prepared.onnx", work_dir / "ranges.json"
        self.output, self.work_dir = work_dir / "int8.onnx", work_dir
        prepared = _prepare(model, self.prepared)
        fp32 = prepared if reference is None else _prepare(reference, work_dir / "reference.onnx")
        self.graph = prepared.graph
        self.softmax = [node.name for node in self.graph.node if node.op_type == "Softmax"]  # the probabilities stay float
        self.layers = self._layers()
        self._inputs = np.concatenate(list(calibration.batches(32, "NCHW")))
        self.fp32 = fp32
        self.reference = self.predict(fp32, None)
        self.extremes = self._extremes()
        # every layer int8 at a percentile's ranges, built once: plain() (weight rounding) and settle() both build min/max
        self._all_int8 = functools.cache(self._quantize_at)

    def _quantize_at(self, percentile: float) -> onnx.ModelProto:
        self._write_ranges(self.extremes, percentile)
        return self._build([])

    def plain(self) -> onnx.ModelProto:
        return self._all_int8(100.0)

    def held_out(self, model: onnx.ModelProto) -> np.ndarray:
        return self._probabilities(model, self._inputs[1::2])

    def settle(self) -> _Int8Quantizer:
        """Chooses the activation ranges and bias correction (``_bias_correction.full_int8``)."""
        with conversion_step("activation ranges and bias correction"):
            percentile, self.full_int8, self.range_choice, self.bias_correction = _bias_correction.full_int8(
                self._all_int8,
                self._inputs,
                self.reference,
                fit=lambda model, inputs: _onnx_bias.fit_shifts(model, self.fp32, inputs, self._session, INPUT_NAME),
                apply=_onnx_bias.apply,
                predict=self._probabilities,
                percentiles=self.percentiles,
            )
        self._write_ranges(self.extremes, percentile)  # what int8-aa's variants quantize with
        return self

    def _extremes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every float tensor's min and max on each calibration image (onnxruntime's MinMax calibration graph)."""
        with conversion_step("onnxruntime calibration"):
            calibrator = create_calibrator(self.prepared, None, augmented_model_path=self.work_dir / "augmented.onnx")
            graph = calibrator.infer_session
            names = [output.name for output in graph.get_outputs()]
            per_image = [
                dict(zip(names, graph.run(None, {INPUT_NAME: batch}), strict=True)) for batch in self.calibration.batches(1, "NCHW")
            ]
        extremes = {}
        for name in names:  # the calibration graph outputs <tensor>_ReduceMin and <tensor>_ReduceMax
            if name.endswith("_ReduceMin"):
                tensor = name.removesuffix("_ReduceMin")
                extremes[tensor] = (np.stack([o[name] for o in per_image]), np.stack([o[f"{tensor}_ReduceMax"] for o in per_image]))
        return extremes

    def _write_ranges(self, extremes: dict[str, tuple[np.ndarray, np.ndarray]], percentile: float) -> None:
        ranges = {tensor: _ranges.from_extremes(mins, maxs, percentile) for tensor, (mins, maxs) in extremes.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), self.cache)

    def _layers(self) -> dict[str, list[str]]:
        """Each quantizable node with the activation onnxruntime folds into its output range (a ReLU6
        Clip: keeping the conv float but not its Clip would quantize the unclipped output)."""
        readers = _onnx_bias.readers(self.graph)
        layers = []
        for node in self.graph.node:
            if node.op_type in self.QUANTIZABLE and node.name:
                after = readers.get(node.output[0], [])
                fused = [after[0]] if len(after) == 1 and after[0].op_type in self.ACTIVATIONS and after[0].name else []
                members = [node, *fused]
                layers.append(
                    _accuracy_aware.Layer(node.name, tuple(m.name for m in members), frozenset(node.input), frozenset(members[-1].output))
                )
        return _accuracy_aware.float_regions(layers)

    def candidates(self) -> list[str]:
        return list(self.layers)

    def build(self, keep_float: list[str]) -> onnx.ModelProto:
        return self._build(keep_float)  # without bias correction: see _accuracy_aware

    def _build(self, keep_float: list[str]) -> onnx.ModelProto:
        excluded = [name for layer in keep_float for name in self.layers.get(layer, [layer])]
        with conversion_step("onnxruntime quantize_static"):
            quantize_static(
                self.prepared,
                self.output,
                None,  # the ranges are in the calibration cache (_write_ranges)
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=self.activations,  # uint8 for int8: Lite0, 1 thread, 4.2 ms vs 7.4 ms with int8 activations
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=self.softmax + excluded,
                calibration_cache_path=self.cache,
            )
        with conversion_step("reading the int8 model"):
            return onnx.load(self.output)

    def _session(self, model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])

    def predict(self, model: onnx.ModelProto, n: int | None) -> np.ndarray:
        return self._probabilities(model, self._inputs[:n])

    def _probabilities(self, model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
        session = self._session(model)
        return np.concatenate([session.run(None, {INPUT_NAME: inputs[i : i + 32]})[0] for i in range(0, len(inputs), 32)])

    @property
    def float_size(self) -> int:
        return self.prepared.stat().st_size

    def size(self, model: onnx.ModelProto) -> int:
        return model.ByteSize()

    def latency(self, model: onnx.ModelProto) -> float:
        session, one = self._session(model, threads=1), self._inputs[:1]
        return measure_latency(lambda: session.run(None, {INPUT_NAME: one}), runs=30, warmup=3)["median_ms"]


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    """quantize_static declares every onnxruntime domain; keep the ones the graph uses."""
    used = {node.domain for node in model.graph.node} | {""}
    kept = [opset for opset in model.opset_import if opset.domain in used or opset.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _tensor_io(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """Name, dtype and shape (-1 for a dynamic axis) of a graph input or output."""
    tensor = value.type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return {"name": value.name, "dtype": dtype, "shape": shape}


def _stamp(model: onnx.ModelProto, job: ExportJob, notes: dict[str, Any]) -> None:
    """Replace the tools' metadata with the artifact's spec and plain-string keys."""
    io = {"input": {**_tensor_io(model.graph.input[0]), "layout": "NCHW"}, "output": _tensor_io(model.graph.output[0]), **notes}
    stamped = artifact_spec(job.spec, "onnx", job.quant, io)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata_strings(stamped))
    model.producer_name = "edgederm"
    model.producer_version = __version__
    model.doc_string = (
        f"edgederm {job.spec.arch} {job.spec.task} ({job.quant}): {INPUT_NAME} = normalised NCHW float32 "
        f"{job.spec.preprocess.input_size}x{job.spec.preprocess.input_size} -> {OUTPUT_NAME} over {','.join(job.spec.class_names)}"
    )
    if FORMATS["onnx"].needs_calibration(job.quant):
        model.doc_string += (
            ". On x86 CPUs without VNNI, create the onnxruntime session with session.x64quantprecision=1 (exact int8 products)"
        )


def _check_runs(data: bytes, job: ExportJob) -> None:
    """onnxruntime CPU loads the model and its output is a probability per class (and matches torch in fp32)."""
    side = job.spec.preprocess.input_size
    with conversion_step(f"onnxruntime CPU check of the {job.quant} model"):
        session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
        batch = session.get_inputs()[0].shape[0]
        shape = (batch if isinstance(batch, int) else 2, 3, side, side)
        example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: example})
    if not np.all(np.isfinite(probabilities)):
        raise ConversionError(f"the {job.quant} ONNX model outputs non-finite values")
    if job.quant == "fp32":
        check_fp32_matches_torch(job, example, probabilities, "ONNX model")


def _note(message: str) -> None:
    logger.info(f"  onnx: {message}")
