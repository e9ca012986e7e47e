"""ExecuTorch export: ``torch.export`` -> XNNPACK-lowered program -> one ``.pte`` file per quantization mode.

Every mode exports the Deployable (softmax or sigmoid in the graph) at batch 1, lowers it with
``executorch.exir.to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and
serializes it with ``to_executorch()``: method ``forward`` takes the normalised NCHW float32 image
(1, 3, S, S) and returns the probabilities (1, C), or a segmenter's lesion probabilities (1, 1, S, S).

fp32  the float graph; every compute op runs in XNNPACK delegates.
fp16  the network in float16 between a cast of the float32 input and a cast of the output back, so
      callers feed the same array as to fp32; XNNPACK computes in fp16, and the weights are stored in
      float16 (``_conv_weights_kept_in_fp16``), so the file is about half fp32's. Where XNNPACK leaves any op of the fp16 graph other than dtype
      conversions to ExecuTorch's portable kernels (GELU, for one, which XNNPACK has no fp16 kernel
      for), the mode is not exported: the row is ``skipped`` with those ops named, since the file
      would not be the XNNPACK fp16 program it claims to be. (The tests' MobileNetV3-Small lowers to
      19 XNNPACK delegates joined by dtype casts around its squeeze-excitation gates; the manifest
      row counts delegates and casts.)
int8  PT2E static quantization: ``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(
      is_per_channel=True)`` (per-channel symmetric int8 weights, per-tensor int8 activations),
      torchao ``prepare_pt2e``, one forward pass per calibration image (``job.calibration``: the
      same images TFLite and ONNX int8 calibrate on), ``convert_pt2e``, then the same lowering;
      XNNPACK runs the quantized ops as int8 kernels. A ReLU6 after a conv is fused into the conv's
      int8 output as ReLU is (``_relu6_fused_like_relu``). The final softmax/sigmoid is not
      annotated by the quantizer and stays float.

With ``options["weight_rounding"]`` the weights quantized are those ``_weight_rounding`` rounded for each
layer's output, as for TFLite and ONNX. Activation ranges and bias correction are chosen as for them
(``_bias_correction.full_int8``).
The activations are observed by min and max, read and reset after every calibration image, so each
candidate range of ``_ranges`` (percentiles of the per-image extremes, absolute min/max first) is set
into a copy of the calibrated module and converted without calibrating again. Bias correction
(``_pte_bias``) moves the float biases that PT2E keeps in the converted graph until XNNPACK's lowering
quantizes them. Why not XNNPACK's default HistogramObserver, measured on the zoo's Lite0 on the 1,276
HAM10000 val images against fp32 (300 calibration images): histogram ranges 96.7% top-1 agreement,
mean |dp| 0.0067, balanced accuracy -2.14 pt and melanoma sensitivity -3.52 pt (bias correction did
not pass its gate); min/max ranges with bias correction (which then passes it) 97.0%, 0.0055,
+0.05 pt and -0.70 pt. Keeping the classifier's linear layer float added 0.2 pt of agreement.
int8-aa joins through ``_accuracy_aware``'s search: a layer is kept float by removing observers from the
calibrated graph before ``convert_pt2e`` (``_float_regions``), so no candidate calibrates again. Measuring a
candidate's latency resizes the runtime's process-wide threadpool to one thread, as any ``threads=1`` predictor does.
w8a16 is not offered: XNNPACK's quantizer has no 16-bit activation configuration.

The artifact's ModelSpec travels inside the program as the constant method ``edgederm_spec``
(``constant_methods``), returning the spec's JSON string, which ``edgederm.runtime.executorch_backend``
reads. The finished program runs once in the ExecuTorch runtime before it is written: its outputs
must be finite and, in fp32, within 1e-4 of torch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from edgederm.core import atomic
from edgederm.core.formats import FORMATS
from edgederm.core.metadata import SPEC_KEY, artifact_spec
from edgederm.runtime.executorch_backend import captured_log, import_notices_silenced
from edgederm.runtime.timing import measure_latency

from . import _accuracy_aware, _bias_correction, _pte_bias, _ranges, _weight_rounding
from ._job import ConversionError, ConversionSkipped, ExportJob, check_job, conversion_step
from ._wrap import check_fp32_matches_torch, deployable, example_input

INPUT_NAME = "image"
METHOD = "forward"
# Ops that may stay outside XNNPACK in an fp16 program: dtype and memory-layout copies between its delegates.
_CASTS = ("dim_order_ops._to_dim_order_copy", "aten._to_copy", "aten.clone")


def export(job: ExportJob) -> None:
    check_job(job, FORMATS["executorch"])
    with (
        conversion_step(f"ExecuTorch {job.quant} conversion", needs="executorch (pip install executorch==1.5.1)"),
        import_notices_silenced(),
    ):
        edge, spec_json = _lowered(_graph(job), job)
        job.details["xnnpack"] = _delegation(edge)
        if job.quant == "fp16" and job.details["xnnpack"]["outside"]:
            outside = ", ".join(f"{op} x{n}" for op, n in job.details["xnnpack"]["outside"].items())
            raise ConversionSkipped(f"XNNPACK does not run every op of this model in fp16 ({outside} would fall back to portable kernels)")
        buffer = edge.to_executorch().buffer
    _check_runs(buffer, job, spec_json)
    atomic.write_bytes(job.target, buffer)


def _graph(job: ExportJob) -> nn.Module:
    if job.quant == "fp16":
        return _Float16(deployable(copy.deepcopy(job.model), job.spec)).eval()
    if job.quant in ("int8", "int8-aa"):
        return _int8(job)
    return deployable(job.model, job.spec)


class _Float16(nn.Module):
    """float32 in and out, float16 everywhere between."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.network = graph.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


def _is_relu6(node: Any) -> bool:
    return (
        node.op == "call_function"
        and node.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
        and len(node.args) >= 2
        and node.args[1] == 0.0
    )


@contextmanager
def _relu6_fused_like_relu() -> Iterator[None]:
    """While annotating, treat ReLU6 (hardtanh 0..6) after a conv or linear as XNNPACKQuantizer treats ReLU.

    The quantizer fuses only ReLU into a conv's output; a ReLU6 shares the conv's observer instead, so
    the int8 scale spans the pre-clamp range (tens) and leaves a handful of levels for 0..6. On the
    zoo's EfficientNet-Lite0 (ReLU6 throughout) that cost 15% top-1 agreement with fp32 (84.7% ->
    97.7% on 300 validation images with this fusion). XNNPACK clamps a quantized conv's output
    natively, so the lowered program runs the same fused kernel."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils

    is_relu = utils.is_relu_node
    utils.is_relu_node = lambda node: is_relu(node) or _is_relu6(node)
    try:
        yield
    finally:
        utils.is_relu_node = is_relu


def _int8(job: ExportJob) -> nn.Module:
    """The Deployable quantized by PT2E for XNNPACK, calibrated on ``job.calibration`` one image at a time,
    with its weight rounding, activation ranges and bias correction chosen as for TFLite and ONNX; for
    int8-aa, with the layers ``_accuracy_aware``'s search keeps in float."""
    job.details["quantizer"] = {
        "name": "XNNPACKQuantizer",
        "weights": "int8 per-channel symmetric (PerChannelMinMaxObserver)",
        "activations": "int8 per-tensor, ranges from per-image extremes (activation_ranges)",
    }

    def build(weights: nn.Module) -> _Pt2eInt8:
        return _Pt2eInt8(weights, job, None if weights is job.model else _prepared(job.model, job))

    quantizer: _accuracy_aware.Int8Quantizer[fx.GraphModule] = _weight_rounding.choose(job, build).settle()
    return _accuracy_aware.for_job(quantizer, job)


class _Pt2eInt8:
    """PT2E for XNNPACK calibrated once on one set of weights (a ``_weight_rounding.Candidate``); ``settle`` chooses the
    activation ranges and bias correction (``_bias_correction.full_int8``), after which ``build`` can keep any
    layer in float (an ``_accuracy_aware.Int8Quantizer``)."""

    def __init__(self, weights: nn.Module, job: ExportJob, original: fx.GraphModule | None = None):
        """``original`` (default: ``weights``' own graph) is the prepared fp32 graph the int8 one is held to."""
        self.job = job
        self.prepared = _prepared(weights, job)
        with conversion_step("PT2E calibration"):
            self.extremes = _extremes(self.prepared, job.calibration.batches(1, "NCHW"))
        # fp32 with the batch norms folded as in the int8 graph: the original weights, not rounded ones
        self.original = _pte_bias.float_twin(self.prepared if original is None else original)
        self.inputs = np.concatenate(list(job.calibration.batches(32, "NCHW")))
        self.reference = _pte_bias.predict(self.original, self.inputs)
        self.regions = _float_regions(self.prepared)
        self.percentile = 100.0
        # every layer int8 at a percentile's ranges, built once: plain() (weight rounding) and settle() both build min/max
        self._all_int8 = functools.cache(self._quantize_at)

    def _quantize_at(self, percentile: float, keep_float: tuple[str, ...] = ()) -> fx.GraphModule:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        candidate = copy.deepcopy(self.prepared)
        for name, (mins, maxs) in self.extremes.items():
            low, high = _ranges.from_extremes(mins, maxs, percentile)
            observer = getattr(candidate, name)
            observer.min_val.copy_(torch.as_tensor(np.asarray(low)))
            observer.max_val.copy_(torch.as_tensor(np.asarray(high)))
        _unobserved(candidate, [observer for layer in keep_float for observer in self.regions[layer]])
        with conversion_step("PT2E convert"):
            return convert_pt2e(candidate)

    def plain(self) -> fx.GraphModule:
        return self._all_int8(100.0)

    def held_out(self, model: fx.GraphModule) -> np.ndarray:
        return _pte_bias.predict(model, self.inputs[1::2])

    def settle(self) -> _Pt2eInt8:
        with conversion_step("activation ranges and bias correction"):
            self.percentile, self.full_int8, self.range_choice, self.bias_correction = _bias_correction.full_int8(
                self._all_int8,
                self.inputs,
                self.reference,
                fit=lambda model, images: _pte_bias.fit_shifts(model, self.original, images),
                apply=_pte_bias.apply,
                predict=_pte_bias.predict,
            )
        return self

    def candidates(self) -> list[str]:
        return list(self.regions)

    def build(self, keep_float: list[str]) -> fx.GraphModule:
        return self._quantize_at(self.percentile, tuple(keep_float))  # without bias correction: see _accuracy_aware

    def predict(self, model: fx.GraphModule, n: int | None) -> np.ndarray:
        return _pte_bias.predict(model, self.inputs[:n])

    @property
    def float_size(self) -> int:
        return _constant_bytes(self.original)

    def size(self, model: fx.GraphModule) -> int:
        """The weights' bytes as the program stores them (the XNNPACK program adds the same few kilobytes to every model)."""
        return _constant_bytes(model)

    def latency(self, model: fx.GraphModule) -> float:
        from edgederm.runtime.executorch_backend import ExecuTorchPredictor

        edge, _ = _lowered(model, self.job)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "candidate.pte"
            path.write_bytes(edge.to_executorch().buffer)
            predictor = ExecuTorchPredictor(path, threads=1)
            side = self.job.spec.preprocess.input_size
            pixels = np.zeros((1, side, side, 3), np.uint8)
            return measure_latency(lambda: predictor.predict_pixels(pixels), runs=30, warmup=3)["median_ms"]


def _float_regions(prepared: fx.GraphModule) -> dict[str, list[str]]:
    """Per layer (by module path), the observers to remove so that it computes in float and its output stays float, as
    ``_accuracy_aware.float_regions`` keeps a layer's readers float with it.

    A layer is an op whose output (after its ReLU/ReLU6) is observed, or whose weights are: convs, linears, adds, the
    pooling. Removed: its weight observers, the observer of its output, and the weight observers of the layers that
    read that output; the image's observer too where the layer alone reads it. A reader's own output observer stays,
    so the int8 layers after it read int8 as before. XNNPACK lowers the result in one delegate: a float conv between
    a dequantize and a quantize is a float conv.
    """
    from torchao.quantization.pt2e import ObserverBase

    def observer(node: Any) -> bool:
        return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(getattr(prepared, node.target), ObserverBase)

    def weights(layer: fx.Node) -> list[fx.Node]:
        return [arg for arg in layer.args if observer(arg) and arg.args[0].op == "get_attr"]

    def producer(observed: fx.Node) -> fx.Node:  # the op whose output this is, through an activation fused into it
        while observed.op == "call_function" and observed.target in _pte_bias.ACTIVATIONS and not observer(observed.args[0]):
            observed = observed.args[0]
        return observed

    outputs: dict[fx.Node, fx.Node] = {}
    for node in prepared.graph.nodes:
        if observer(node) and node.args[0].op not in ("get_attr", "placeholder"):
            outputs[producer(node.args[0])] = node
    layers = [node for node in prepared.graph.nodes if node in outputs or (node.op == "call_function" and weights(node))]
    regions: dict[str, list[str]] = {}
    for layer in layers:
        drop = weights(layer)
        drop += [arg for arg in layer.args if observer(arg) and arg.args[0].op == "placeholder" and set(arg.users) == {layer}]
        if layer in outputs:
            drop.append(outputs[layer])
            drop += [weight for reader in outputs[layer].users for weight in weights(reader)]
        name = _module_path(layer)
        regions[name if name not in regions else f"{name}#{len(regions)}"] = list(dict.fromkeys(node.name for node in drop))
    return regions


def _module_path(node: fx.Node) -> str:
    """``model.blocks.1.0.conv_dw``: the module a node of the exported Deployable was traced in."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else node.name


def _unobserved(prepared: fx.GraphModule, names: list[str]) -> None:
    """Removes the named observers from the graph, so that ``convert_pt2e`` leaves the tensors they watched in float."""
    nodes = {node.name: node for node in prepared.graph.nodes}
    for name in dict.fromkeys(names):
        node = nodes[name]
        node.replace_all_uses_with(node.args[0])
        prepared.graph.erase_node(node)
    if names:
        prepared.recompile()


def _constant_bytes(module: fx.GraphModule) -> int:
    tensors = (_pte_bias.attribute(module, node.target) for node in module.graph.nodes if node.op == "get_attr")
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _prepared(model: nn.Module, job: ExportJob) -> fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    with torch.no_grad():
        captured = torch.export.export(deployable(model, job.spec), (example_input(job.spec),)).module()
    with conversion_step("PT2E prepare"), _relu6_fused_like_relu():
        return prepare_pt2e(captured, _quantizer())


def _quantizer() -> Any:
    """XNNPACK's per-channel symmetric int8 config, its activations observed by min and max (``_extremes`` reads them per image)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import QuantizationConfig
    from torchao.quantization.pt2e import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True)
    activations = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return XNNPACKQuantizer().set_global(QuantizationConfig(activations, activations, config.weight, config.bias, config.is_qat))


def _extremes(prepared: fx.GraphModule, images: Iterator[np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each activation observer's minimum and maximum on each image, stacked (what ``_ranges`` picks ranges from)."""
    from torchao.quantization.pt2e import MinMaxObserver

    observers = {name: module for name, module in prepared.named_children() if type(module) is MinMaxObserver}
    seen: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {name: ([], []) for name in observers}
    with torch.no_grad():
        for image in images:
            prepared(torch.from_numpy(image))
            for name, observer in observers.items():
                seen[name][0].append(observer.min_val.numpy().copy())
                seen[name][1].append(observer.max_val.numpy().copy())
                observer.reset_min_max_vals()
    return {name: (np.stack(mins), np.stack(maxs)) for name, (mins, maxs) in seen.items()}


def _lowered(graph: nn.Module, job: ExportJob) -> tuple[Any, str]:
    """``graph`` captured by ``torch.export`` and lowered to XNNPACK with the spec as a constant method; and that spec's JSON."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(graph, (example_input(job.spec),))
    spec_json = artifact_spec(job.spec, "executorch", job.quant, _io(job)).to_json()
    with conversion_step("XNNPACK lowering"), _conv_weights_kept_in_fp16():
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods={SPEC_KEY: spec_json})
    return edge, spec_json


@contextmanager
def _conv_weights_kept_in_fp16() -> Iterator[None]:
    """While lowering, serialize a float16 conv weight or bias as float16.

    XNNPACK's conv visitor serializes every float conv weight and bias as float32 (``force_fp32``, for
    fp32 weights under fp16 compute), and its runtime packs them back to float16 when an fp16 program
    loads: the file doubled for nothing. Stored as the float16 they are, they pack to the same kernels,
    and the outputs are bit-identical (timm MobileNetV3-Small at 96 px: 6.11 -> 3.10 MB, max |diff| 0).
    Float32 and quantized tensors are serialized as before, and so are a transposed conv's: XNNPACK's runtime
    refuses a float16 deconvolution filter (xnn_status_invalid_parameter)."""
    Conv2d = _conv_visitor()
    own = Conv2d.__dict__.get("define_tensor")
    inherited = Conv2d.define_tensor

    def define_tensor(self, tensor, *args, force_fp32: bool = False, **kwargs):
        value = tensor.meta.get("val")
        transposed = any(len(user.args) > 6 and user.args[6] for user in tensor.users)  # convolution(..., transposed, ...)
        if kwargs.get("quant_params") is None and getattr(value, "dtype", None) == torch.float16 and not transposed:
            force_fp32 = False
        return inherited(self, tensor, *args, force_fp32=force_fp32, **kwargs)

    Conv2d.define_tensor = define_tensor
    try:
        yield
    finally:
        if own is None:
            del Conv2d.define_tensor
        else:
            Conv2d.define_tensor = own


def _conv_visitor() -> type:
    from executorch.backends.xnnpack import operators  # noqa: F401 - importing registers every visitor
    from executorch.backends.xnnpack.operators.node_visitor import _node_visitor_dict

    return _node_visitor_dict["aten.convolution.default"]  # op_conv2d.Conv2d is None: its decorator returns nothing


def _delegation(edge: Any) -> dict[str, Any]:
    """How much of the program XNNPACK runs: its delegate calls, and the ops left to portable kernels (casts apart)."""
    delegates, outside, casts = 0, Counter(), 0
    for node in edge.exported_program().graph_module.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            delegates += 1
        elif name.removesuffix(".default") in _CASTS:
            casts += 1
        else:
            outside[name] += 1
    return {"delegates": delegates, "casts_outside": casts, "outside": dict(outside)}


def _io(job: ExportJob) -> dict[str, Any]:
    side = job.spec.preprocess.input_size
    if job.spec.task == "classification":
        output = {"name": "probabilities", "dtype": "float32", "shape": [1, job.spec.num_classes]}
    else:
        output = {"name": "mask_probabilities", "dtype": "float32", "shape": [1, 1, side, side]}
    return {
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [1, 3, side, side], "layout": "NCHW"},
        "output": output,
        "method": METHOD,
        "delegate": "XnnpackBackend",
        "compute": {"fp16": "float16", "int8": "int8", "int8-aa": "int8"}.get(job.quant, "float32"),
    }


def _check_runs(buffer: bytes, job: ExportJob, spec_json: str) -> None:
    """The ExecuTorch runtime loads the program, reads its spec back and gives finite outputs of the stated shape."""
    side = job.spec.preprocess.input_size
    example = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    with conversion_step(f"ExecuTorch runtime check of the {job.quant} program"), import_notices_silenced(), captured_log():
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(buffer)
        (stored,) = program.load_method(SPEC_KEY).execute([])
        (output,) = program.load_method(METHOD).execute([torch.from_numpy(example)])
    output = output.numpy()
    if stored != spec_json:
        raise ConversionError(f"the {job.quant} ExecuTorch program does not give back the spec stored in it")
    if list(output.shape) != _io(job)["output"]["shape"] or not np.all(np.isfinite(output)):
        raise ConversionError(f"the {job.quant} ExecuTorch program outputs {list(output.shape)} or non-finite values")
    if job.quant == "fp32":
        check_fp32_matches_torch(job, example, output, "ExecuTorch program")
