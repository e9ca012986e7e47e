"""CoreML numerics on Linux: runs the ML Program inside an edgederm ``.mlpackage`` (or the CoreML delegate
of a ``.coreml.pte``) with torch.

coremltools predicts only on macOS, so an exported ``.mlpackage`` could only be checked for its
structure here. This module reads the MIL program (coremltools' milproto -> pymil loader, which
works on Linux) and executes its ops one by one with torch, so a CoreML artifact gets a parity
figure against PyTorch like the TFLite and ONNX ones. It is an emulation, not CoreML:

* Input. The image feature's pixels go in as CoreML feeds them: float32 values in [0, 255], NCHW,
  channels in the feature's colour order (RGB for edgederm). For an ML Program coremltools writes
  the ImageType ``scale`` and ``bias`` into the program itself (its first ``mul``/``add`` ops), so
  executing the program applies ``pixel * scale + bias`` exactly where CoreML does.
* Precision. Every value keeps the dtype the program declares for it. An fp16 program (compute
  precision FLOAT16, and every compressed mode) casts to fp16 after the input arithmetic; each of
  its ops is computed in float32 from the fp16 operands and the result rounded to float16, which
  models fp16 storage of every intermediate with fp32 accumulation. torch's own CPU half kernels
  do the same (fp32 accumulators), but their summation order depends on the CPU (AVX512-FP16 or
  not), so they differ by an ulp between machines; computing in float32 and rounding is
  deterministic and covers ops that lack half kernels. Not modelled: how the Neural Engine or a
  GPU accumulates, and any op fusion by the CoreML compiler.
* Compressed weights. ``constexpr_*`` ops (int8 affine, blockwise shift/scale, look-up tables,
  casts) are decompressed once at load, as CoreML does at model load.
* W8A8. ``quantize`` is ``clamp(round_half_even(x / scale) + zero_point)`` (x / scale in float32),
  ``dequantize`` is ``(q - zero_point) * scale``, as coremltools' reference implementation.
* Classifier. The ``classify`` op's probability input is returned in ``spec.class_names`` order.

An op without a kernel here is refused at load with one line naming it and the package.

A ``.coreml.pte`` (ExecuTorch with its graph lowered to one CoreML delegate) holds an ML Program
too: ``unpacked_coreml_delegate`` unpacks it from the file with ExecuTorch's own tools into a
temporary ``model.mlpackage`` and loads that. Its input is the normalised float tensor (NCHW) that
the ExecuTorch runtime is given, not an image feature, so ``EmulatedCoreMLDelegatePredictor``
normalises the pixels first, as the ``.pte`` backend does.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import BackendUnavailable, ModelError
from .coreml_backend import read_coreml_spec
from .predictor import Predictor

BATCH = 32
_REEXPORT = "re-export it with `edgederm export --formats coreml`"
_TORCH_DTYPES = {
    "fp16": torch.float16,
    "fp32": torch.float32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "uint16": torch.int32,
    "int32": torch.int32,
    "uint32": torch.int64,
    "int64": torch.int64,
    "bool": torch.bool,
}
_QUANT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


# --- the program ---------------------------------------------------------------------------


class EmulatedProgram:
    """The ``main`` function of an ML Program, executed with torch kernels.

    ``run`` takes the function's inputs, each with its declared shape (batch included), stacked
    along a new leading axis: ``torch.vmap`` runs the program once per item, so ops whose
    attributes name the declared batch (a ``reshape`` to ``[1, 1024]``) stay exact.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.model_spec, function = _load_main_function(self.path)
        # Values are keyed by pymil Var, not by name: names need not be unique in a loaded
        # program (the classifier's label list and the first weight can both be "const_0").
        self.inputs: dict[str, Any] = dict(function.inputs)
        self.outputs: list[Any] = list(function.outputs)
        self.output_names = [var.name for var in self.outputs]
        self.constants: dict[Any, Any] = {}
        self.steps: list[_Step] = []
        self.classify: tuple[Any, list[str], list[str]] | None = None  # (probabilities Var, classes, output names)
        for op in function.operations:
            self._add(op)

    def _add(self, op: Any) -> None:
        kind = op.op_type
        if kind == "const":
            self.constants[op.outputs[0]] = _constant(op.outputs[0].val)
        elif kind == "classify":
            classes = op.inputs["classes"].val
            classes = [str(c) for c in getattr(classes, "ls", classes)]
            self.classify = (op.inputs["probabilities"], classes, [v.name for v in op.outputs])
        elif kind not in KERNELS:
            raise ModelError(
                f"the CoreML emulator has no kernel for MIL op {kind!r}",
                path=self.path,
                fix="check this model on macOS, or add the op to edgederm/runtime/coreml_emulator.py",
            )
        else:
            step = _Step(op, KERNELS[kind], self._output_dtypes(op))
            if kind.startswith("constexpr_"):  # weights: decompressed once, like CoreML at load
                self.constants.update(step.execute(self.constants, self.path))
            else:
                self.steps.append(step)

    def _output_dtypes(self, op: Any) -> list[torch.dtype]:
        try:
            return [_torch_dtype(var) for var in op.outputs]
        except ValueError as exc:
            raise ModelError(f"the CoreML emulator cannot hold the output of MIL op {op.op_type!r}: {exc}", path=self.path) from None

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batched inputs (N, *declared shape) -> every tensor output, (N, *declared shape).

        A classifier's ``classify`` outputs are replaced by its probability tensor, under the
        name of the dictionary output, with its columns in ``self.classify[1]`` order.
        """
        wanted = {var.name: var for var in self.outputs if self.classify is None or var.name not in self.classify[2]}
        if self.classify is not None:
            wanted[self.classify[2][-1]] = self.classify[0]

        def one(single: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            values = dict(self.constants)
            values.update({self.inputs[name]: tensor.to(_torch_dtype(self.inputs[name])) for name, tensor in single.items()})
            for step in self.steps:
                values.update(step.execute(values, self.path))
            return {name: values[var] for name, var in wanted.items()}

        with torch.no_grad():
            return torch.vmap(one)(inputs)


def _load_main_function(path: Path) -> tuple[Any, Any]:
    try:
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load
    except ImportError as exc:
        raise ModelError(f"the CoreML emulator needs coremltools ({exc})", path=path, fix="pip install coremltools") from None
    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"a {spec.WhichOneof('Type')} model, not an ML Program")
        program = load(spec, spec.specificationVersion, mlmodel.weights_dir)
    except Exception as exc:  # noqa: BLE001 - protobuf, blob storage and pymil type checks raise many types
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"cannot read the ML Program ({type(exc).__name__}: {first_line})", path=path, fix=_REEXPORT) from None
    if "main" not in program.functions:
        raise ModelError("the ML Program has no main function", path=path, fix=_REEXPORT)
    return spec, program.functions["main"]


@dataclass(frozen=True)
class _Step:
    """One op, its kernel and the dtypes the program declares for its outputs."""

    op: Any
    kernel: Callable[[_Args], Any]
    dtypes: list[torch.dtype]

    def execute(self, values: dict[Any, Any], path: Path) -> dict[Any, Any]:
        """Run the op; each result is stored in its declared dtype (fp16 results are rounded here)."""
        try:
            results = self.kernel(_Args(self.op, values))
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise ModelError(
                f"the CoreML emulator failed on MIL op {self.op.op_type!r} ({self.op.name}): {type(exc).__name__}: {first_line}", path=path
            ) from None
        results = results if isinstance(results, tuple) else (results,)
        return {var: result.to(dtype) for var, result, dtype in zip(self.op.outputs, results, self.dtypes, strict=True)}


def _torch_dtype(var: Any) -> torch.dtype:
    from coremltools.converters.mil.mil import types

    name = types.builtin_to_string(var.dtype)
    if name not in _TORCH_DTYPES:
        raise ValueError(f"no torch dtype for MIL {name} ({var.name})")
    return _TORCH_DTYPES[name]


def _constant(value: Any) -> Any:
    """A const op's value: numbers as torch tensors (dtype kept), strings and lists as they are."""
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind in "fiub":
        array = np.asarray(value)
        if array.dtype in (np.uint16, np.uint32, np.uint64):
            array = array.astype(np.int64)
        return torch.from_numpy(array.copy())
    return value


class _Args:
    """An op's inputs: float tensors come out as float32 (the op computes in it, the caller rounds)."""

    def __init__(self, op: Any, values: dict[Any, Any]):
        self.op, self.values = op, values

    def has(self, name: str) -> bool:
        return name in self.op.inputs

    def raw(self, name: str) -> Any:
        var = self.op.inputs[name]
        return [self.values[v] for v in var] if isinstance(var, list | tuple) else self.values[var]

    def tensor(self, name: str) -> torch.Tensor:
        return _compute_dtype(self.raw(name))

    def tensors(self, name: str) -> list[torch.Tensor]:
        return [_compute_dtype(t) for t in self.raw(name)]

    def optional(self, name: str) -> torch.Tensor | None:
        return self.tensor(name) if self.has(name) else None

    def value(self, name: str, default: Any = None) -> Any:
        """A const attribute as a plain Python value (int, float, bool, str or list)."""
        if not self.has(name):
            return default
        value = self.raw(name)
        return value.tolist() if isinstance(value, torch.Tensor) else value

    def ints(self, name: str, default: list[int] | None = None) -> list[int]:
        value = self.value(name, default)
        return [int(v) for v in (value if isinstance(value, list) else [value])]

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        shape = self.op.outputs[0].shape
        return tuple(shape) if all(isinstance(d, int | np.integer) for d in shape) else None


def _compute_dtype(value: torch.Tensor) -> torch.Tensor:
    return value.float() if value.dtype in (torch.float16, torch.float64) else value


# --- kernels: elementwise --------------------------------------------------------------------


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[_Args], torch.Tensor]:
    return lambda a: fn(a.tensor("x"), a.tensor("y"))


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[_Args], torch.Tensor]:
    return lambda a: fn(a.tensor("x"))


def _clip(a: _Args) -> torch.Tensor:
    return a.tensor("x").clamp(a.value("alpha"), a.value("beta"))


def _thresholded_relu(a: _Args) -> torch.Tensor:
    x = a.tensor("x")
    return torch.where(x >= a.value("alpha", 1.0), x, torch.zeros_like(x))


def _sigmoid_hard(a: _Args) -> torch.Tensor:
    return (a.value("alpha", 0.2) * a.tensor("x") + a.value("beta", 0.5)).clamp(0.0, 1.0)


def _leaky_relu(a: _Args) -> torch.Tensor:
    return F.leaky_relu(a.tensor("x"), a.value("alpha", 0.01))


def _gelu(a: _Args) -> torch.Tensor:
    x, mode = a.tensor("x"), a.value("mode", "EXACT")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none")


def _rsqrt(a: _Args) -> torch.Tensor:
    return torch.rsqrt(a.tensor("x") + a.value("epsilon", 1e-12))


def _cast(a: _Args) -> torch.Tensor:
    return a.raw("x")  # _Step.execute casts it to the declared dtype


# --- kernels: linear algebra, convolution, pooling, normalisation ------------------------------


def _linear(a: _Args) -> torch.Tensor:
    return F.linear(a.tensor("x"), a.tensor("weight"), a.optional("bias"))


def _matmul(a: _Args) -> torch.Tensor:
    x, y = a.tensor("x"), a.tensor("y")
    x = x.transpose(-1, -2) if a.value("transpose_x", False) else x
    y = y.transpose(-1, -2) if a.value("transpose_y", False) else y
    return torch.matmul(x, y)


def _padding(a: _Args, spatial: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """MIL pad_type/pad -> F.pad's flat list (last spatial axis first)."""
    pad_type = a.value("pad_type", "valid")
    if pad_type == "valid":
        pairs = [(0, 0)] * len(spatial)
    elif pad_type == "custom":
        pad = a.ints("pad")
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    elif pad_type in ("same", "same_lower"):
        pairs = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pairs.append((small, large) if pad_type == "same" else (large, small))
    else:
        raise ValueError(f"unknown pad_type {pad_type!r}")
    return [p for pair in reversed(pairs) for p in pair]


def _conv(a: _Args) -> torch.Tensor:
    x, weight = a.tensor("x"), a.tensor("weight")
    rank = x.dim() - 2
    strides, dilations = a.ints("strides", [1] * rank), a.ints("dilations", [1] * rank)
    x = F.pad(x, _padding(a, tuple(x.shape[2:]), list(weight.shape[2:]), strides, dilations))
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return conv(x, weight, a.optional("bias"), stride=strides, dilation=dilations, groups=a.value("groups", 1))


def _pool(kind: str) -> Callable[[_Args], torch.Tensor]:
    def pool(a: _Args) -> torch.Tensor:
        x = a.tensor("x")
        rank = x.dim() - 2
        kernel = a.ints("kernel_sizes")
        strides = a.ints("strides", [1] * rank)
        flat = _padding(a, tuple(x.shape[2:]), kernel, strides, [1] * rank)
        ceil_mode = bool(a.value("ceil_mode", False))
        if kind == "max":
            padded = F.pad(x, flat, value=-math.inf)
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1](padded, kernel, strides, ceil_mode=ceil_mode)
        average = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
        out = average(F.pad(x, flat), kernel, strides, ceil_mode=ceil_mode)
        if a.value("exclude_padding_from_average", False) and any(flat):
            ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
            out = out / average(F.pad(ones, flat), kernel, strides, ceil_mode=ceil_mode)
        return out

    return pool


def _batch_norm(a: _Args) -> torch.Tensor:
    return F.batch_norm(
        a.tensor("x"), a.tensor("mean"), a.tensor("variance"), a.optional("gamma"), a.optional("beta"), eps=a.value("epsilon", 1e-5)
    )


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable[[_Args], torch.Tensor]:
    def reduce(a: _Args) -> torch.Tensor:
        x = a.tensor("x")
        axes = a.ints("axes") if a.has("axes") and a.value("axes") is not None else list(range(x.dim()))
        return fn(x, dim=axes, keepdim=bool(a.value("keep_dims", False)))

    return reduce


def _softmax(a: _Args) -> torch.Tensor:
    return torch.softmax(a.tensor("x"), dim=a.value("axis", -1))


def _upsample_bilinear(a: _Args) -> torch.Tensor:
    align_corners = bool(a.value("align_corners", False))
    if not align_corners and not a.value("half_pixel_centers", True):
        raise ValueError("upsample_bilinear without half-pixel centres or aligned corners is not emulated")
    scale = (a.value("scale_factor_height", 1.0), a.value("scale_factor_width", 1.0))
    return F.interpolate(a.tensor("x"), scale_factor=scale, mode="bilinear", align_corners=align_corners)


def _upsample_nearest(a: _Args) -> torch.Tensor:
    scale = (a.value("scale_factor_height", 1), a.value("scale_factor_width", 1))
    return F.interpolate(a.tensor("x"), scale_factor=scale, mode="nearest")


# --- kernels: shapes ------------------------------------------------------------------------


def _reshape(a: _Args) -> torch.Tensor:
    shape = a.out_shape
    return a.raw("x").reshape(shape if shape is not None else a.ints("shape"))


def _transpose(a: _Args) -> torch.Tensor:
    return a.raw("x").permute(a.ints("perm"))


def _to_declared_shape(a: _Args) -> torch.Tensor:
    return a.raw("x").reshape(a.out_shape)


def _concat(a: _Args) -> torch.Tensor:
    values = a.raw("values")
    axis = a.value("axis") % values[0].dim()
    if not a.value("interleave", False):
        return torch.cat(values, dim=axis)
    return torch.stack(values, dim=axis + 1).flatten(axis, axis + 1)  # v0[0], v1[0], ..., v0[1], v1[1], ...


# --- kernels: quantization ------------------------------------------------------------------


def _along(vector: torch.Tensor, rank: int, axis: int | None) -> torch.Tensor:
    """A per-axis scale or zero point (a scalar or a vector along ``axis``) shaped to broadcast."""
    if vector.dim() == 0 or axis is None:
        return vector
    shape = [1] * rank
    shape[axis % rank] = -1
    return vector.reshape(shape)


def _quantize(a: _Args) -> torch.Tensor:
    x = a.tensor("input")
    axis = a.value("axis")
    scale = _along(a.tensor("scale"), x.dim(), axis)
    zero_point = _along(a.tensor("zero_point").float(), x.dim(), axis) if a.has("zero_point") else 0.0
    low, high = _QUANT_RANGES[a.value("output_dtype")]
    return (torch.round(x / scale) + zero_point).clamp(low, high)


def _dequantize(a: _Args) -> torch.Tensor:
    q = a.tensor("input").float()
    axis = a.value("axis")
    if a.has("zero_point"):
        q = q - _along(a.tensor("zero_point").float(), q.dim(), axis)
    return q * _along(a.tensor("scale"), q.dim(), axis)


def _constexpr_affine_dequantize(a: _Args) -> torch.Tensor:
    data = a.tensor("quantized_data").float()
    axis = a.value("axis")
    zero_point = _along(a.tensor("zero_point").float(), data.dim(), axis)
    return (data - zero_point) * _along(a.tensor("scale"), data.dim(), axis)


def _blockwise(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Repeat each element of ``values`` over its block so that it takes ``shape``."""
    for axis, (size, count) in enumerate(zip(shape, values.shape, strict=True)):
        if size != count:
            values = values.repeat_interleave(size // count, dim=axis)
    return values


def _constexpr_blockwise_shift_scale(a: _Args) -> torch.Tensor:
    data = a.tensor("data").float()
    if a.has("offset"):
        data = data - _blockwise(a.tensor("offset").float(), tuple(data.shape))
    return data * _blockwise(a.tensor("scale").float(), tuple(data.shape))


def _unpack_bits(packed: torch.Tensor, nbits: int, count: int) -> torch.Tensor:
    """Indices packed LSB first, one byte after another (MIL's sub-byte layout) -> int64 (count,)."""
    bits = (packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1
    bits = bits.flatten()[: count * nbits].reshape(count, nbits)
    return (bits << torch.arange(nbits)).sum(dim=1)


def _constexpr_lut_to_dense(a: _Args) -> torch.Tensor:
    lut = a.tensor("lut")
    if a.has("shape"):  # iOS 16: one table, indices packed in bytes
        shape = a.ints("shape")
        nbits = int(math.log2(lut.shape[0]))
        return lut[_unpack_bits(a.tensor("indices"), nbits, math.prod(shape))].reshape(shape)
    return _grouped_lut(a.tensor("indices").to(torch.int64), lut, a.value("vector_axis"))


def _grouped_lut(indices: torch.Tensor, lut: torch.Tensor, vector_axis: int | None) -> torch.Tensor:
    """iOS 18 look-up tables: per-block tables (lut dims [*blocks, palette, vector]), scalar or vector entries."""
    vector = lut.shape[-1]
    if vector > 1:
        vector_axis %= indices.dim()
        indices, lut = indices.transpose(-1, vector_axis), lut.transpose(-3, vector_axis)
    tables = _blockwise(lut, (*indices.shape, *lut.shape[-2:])).reshape(indices.numel(), lut.shape[-2], vector)
    rows = tables[torch.arange(indices.numel()), indices.flatten()]  # (numel, vector)
    out = rows.reshape(*indices.shape[:-1], indices.shape[-1] * vector)
    return out.transpose(-1, vector_axis) if vector > 1 else out


def _constexpr_cast(a: _Args) -> torch.Tensor:
    return a.raw("source_val")  # _Step.execute casts it to the declared dtype


KERNELS: dict[str, Callable[[_Args], Any]] = {
    "add": _binary(torch.add),
    "sub": _binary(torch.sub),
    "mul": _binary(torch.mul),
    "real_div": _binary(torch.div),
    "maximum": _binary(torch.maximum),
    "minimum": _binary(torch.minimum),
    "pow": _binary(torch.pow),
    "relu": _unary(torch.relu),
    "relu6": _unary(lambda x: x.clamp(0.0, 6.0)),
    "sigmoid": _unary(torch.sigmoid),
    "silu": _unary(F.silu),
    "tanh": _unary(torch.tanh),
    "exp": _unary(torch.exp),
    "sqrt": _unary(torch.sqrt),
    "abs": _unary(torch.abs),
    "square": _unary(torch.square),
    "erf": _unary(torch.erf),
    "identity": _unary(lambda x: x),
    "rsqrt": _rsqrt,
    "clip": _clip,
    "thresholded_relu": _thresholded_relu,
    "sigmoid_hard": _sigmoid_hard,
    "leaky_relu": _leaky_relu,
    "gelu": _gelu,
    "cast": _cast,
    "linear": _linear,
    "matmul": _matmul,
    "conv": _conv,
    "avg_pool": _pool("avg"),
    "max_pool": _pool("max"),
    "batch_norm": _batch_norm,
    "reduce_mean": _reduce(torch.mean),
    "reduce_sum": _reduce(torch.sum),
    "reduce_max": _reduce(torch.amax),
    "reduce_min": _reduce(torch.amin),
    "softmax": _softmax,
    "upsample_bilinear": _upsample_bilinear,
    "upsample_nearest_neighbor": _upsample_nearest,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _to_declared_shape,
    "expand_dims": _to_declared_shape,
    "concat": _concat,
    "quantize": _quantize,
    "dequantize": _dequantize,
    "constexpr_affine_dequantize": _constexpr_affine_dequantize,
    "constexpr_blockwise_shift_scale": _constexpr_blockwise_shift_scale,
    "constexpr_lut_to_dense": _constexpr_lut_to_dense,
    "constexpr_cast": _constexpr_cast,
}


# --- the Predictor ----------------------------------------------------------------------------


class EmulatedCoreMLPredictor(Predictor):
    """An edgederm ``.mlpackage`` run by ``EmulatedProgram`` (torch, any platform): emulated CoreML numbers."""

    emulated = True
    backend_name = "coreml (emulated with torch)"

    def __init__(self, path: str | Path, *, threads: int | None = None):
        self.path = Path(path)
        self.spec = read_coreml_spec(self.path)
        self.program = EmulatedProgram(self.path)
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        self._input, self._channels = _image_input(self.program, self.path)
        self._output = self._output_name()

    def _output_name(self) -> str:
        """The classifier's probability dictionary, else the output the spec names (else the first)."""
        if self.program.classify is not None:
            return self.program.classify[2][-1]
        name = self.spec.artifact.get("output", {}).get("name")
        return name if name in self.program.output_names else self.program.output_names[0]

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        side = self.spec.preprocess.input_size
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (side, side, 3):
            raise ValueError(f"expected uint8 pixels of shape (N, {side}, {side}, 3), got {pixels.dtype} {pixels.shape}")
        outputs = [self._run(pixels[start : start + BATCH]) for start in range(0, len(pixels), BATCH)]
        if outputs:
            return np.concatenate(outputs)
        return np.zeros((0, self.spec.num_classes) if self.spec.task == "classification" else (0, 1, side, side), np.float32)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(pixels).permute(0, 3, 1, 2)[:, self._channels].float()  # CoreML feeds 0..255 floats
        results = self.program.run({self._input: image[:, None]})  # one declared (1, 3, S, S) input per item
        output = results[self._output].float()
        if self.program.classify is not None:
            classes = self.program.classify[1]
            output = output.reshape(len(pixels), -1)[:, [classes.index(name) for name in self.spec.class_names]]
        elif self.spec.task == "classification":
            output = output.reshape(len(pixels), -1)
        else:
            output = output.reshape(len(pixels), *output.shape[2:])
        return output.numpy().astype(np.float32)


def _image_input(program: EmulatedProgram, path: Path) -> tuple[str, list[int]]:
    """The image input's name and the channel order CoreML feeds it in (RGB, or BGR reversed)."""
    from coremltools.proto import FeatureTypes_pb2

    features = list(program.model_spec.description.input)
    if len(features) != 1 or features[0].type.WhichOneof("Type") != "imageType":
        raise ModelError("the CoreML emulator expects one image input: not an edgederm export", path=path, fix=_REEXPORT)
    color = features[0].type.imageType.colorSpace
    layouts = {FeatureTypes_pb2.ImageFeatureType.RGB: [0, 1, 2], FeatureTypes_pb2.ImageFeatureType.BGR: [2, 1, 0]}
    if color not in layouts:
        raise ModelError("the CoreML emulator handles RGB or BGR image inputs only", path=path, fix=_REEXPORT)
    return features[0].name, layouts[color]


# --- the CoreML delegate of an ExecuTorch program ------------------------------------------------

COREML_DELEGATE = "CoreMLBackend"
_REEXPORT_PTE = "re-export it with `edgederm export --formats executorch-coreml`"


@contextlib.contextmanager
def unpacked_coreml_delegate(content: bytes, path: str | Path) -> Iterator[EmulatedProgram]:
    """The ML Program of the one CoreML delegate in an ExecuTorch program's bytes, loaded while a temporary copy exists."""
    from .executorch_backend import INSTALL, import_notices_silenced

    try:
        with import_notices_silenced():
            from executorch.backends.apple.coreml import executorchcoreml
            from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError as exc:
        raise BackendUnavailable(f"unpacking a CoreML delegate needs executorch ({exc})", path=path, fix=INSTALL) from None
    try:
        program = deserialize_pte_binary(content).program  # delegate segments are moved back inline
    except Exception as exc:  # noqa: BLE001 - flatbuffer parsing raises many types
        raise ModelError(f"cannot read the ExecuTorch program ({type(exc).__name__})", path=path, fix=_REEXPORT_PTE) from None
    delegates = [delegate for plan in program.execution_plan for delegate in plan.delegates]
    if [delegate.id for delegate in delegates] != [COREML_DELEGATE]:
        found = ", ".join(delegate.id for delegate in delegates) or "none"
        raise ModelError(f"expected one {COREML_DELEGATE} delegate in the program, found: {found}", path=path, fix=_REEXPORT_PTE)
    blob = program.backend_delegate_data[delegates[0].processed.index].data
    with tempfile.TemporaryDirectory(prefix="edgederm-coreml-delegate-") as folder:
        if not executorchcoreml.unflatten_directory_contents(bytes(blob), folder):
            raise ModelError("the CoreML delegate's files cannot be unpacked", path=path, fix=_REEXPORT_PTE)
        packages = list(Path(folder).glob("*/model.mlpackage"))
        if len(packages) != 1:
            raise ModelError("the CoreML delegate holds no model.mlpackage", path=path, fix=_REEXPORT_PTE)
        delegate = EmulatedProgram(packages[0])
        if len(delegate.inputs) != 1:
            raise ModelError("the CoreML delegate takes more than one input: not an edgederm export", path=path, fix=_REEXPORT_PTE)
        yield delegate


def run_delegate(program: EmulatedProgram, batch: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 3, S, S) inputs through a CoreML delegate's one-input program -> (N, *its output without the batch 1)."""
    (name,) = program.inputs
    output = program.run({name: batch[:, None]})[program.output_names[0]].float()
    return output.reshape(len(batch), *output.shape[2:])


class EmulatedCoreMLDelegatePredictor(Predictor):
    """An edgederm ``.coreml.pte`` whose CoreML delegate runs in ``EmulatedProgram``: emulated CoreML numbers."""

    emulated = True
    backend_name = "executorch coreml delegate (emulated with torch)"

    def __init__(self, path: str | Path, *, threads: int | None = None):
        from .executorch_backend import program_spec, read_program

        self.path = Path(path)
        content = read_program(self.path)
        self.spec = program_spec(content, self.path)
        with unpacked_coreml_delegate(content, self.path) as program:
            self.program = program  # the weights are read at load: the unpacked files may go
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        array = self.spec.input_preprocess.normalize(np.asarray(pixels), layout="NCHW")
        side = self.spec.preprocess.input_size
        outputs = []
        for start in range(0, len(array), BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(array[start : start + BATCH]))
            outputs.append(run_delegate(self.program, batch).numpy())
        if outputs:
            return np.concatenate(outputs).astype(np.float32, copy=False)
        return np.zeros((0, self.spec.num_classes) if self.spec.task == "classification" else (0, 1, side, side), np.float32)
