"""Bias correction's mechanics for TFLite static int8 (what and why: ``_bias_correction``).

A CONV_2D or DEPTHWISE_CONV_2D keeps its bias as int32 (int64 in a 16x8 model, w8a16) with a per-channel
scale (input scale times weight scale); moving it by ``shift / scale`` moves the conv's output by ``shift``. TFLite fuses a
ReLU/ReLU6 into the conv, so the conv's output read back here is after that activation: a bias move
then shifts the mean by less than ``shift`` where the activation clips, and the correction
under-shoots there rather than overshoots. Tensors keep their names through ai-edge-quantizer, which
pairs each int8 conv with its fp32 original. The biases are rewritten in place in a copy of the
flatbuffer, so no step re-serializes the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
BIAS_TYPES = {2: np.int32, 4: np.int64}  # schema TensorType: int32, and int64 for int16 activations


@dataclass(frozen=True)
class _Conv:
    output: int  # tensor index
    name: str  # the output tensor's name: the same in the fp32 model and in every int8 variant
    bias: np.ndarray  # int32 (int64) view into the model's bytes
    scale: np.ndarray


def fit_shifts(int8: bytes, fp32: bytes, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per conv (its output tensor's name), the float shift of its output mean that its bias takes back."""
    model = bytearray(int8)
    convs = _convs(model)
    fp32_index = _tensor_index(fp32)
    convs = [conv for conv in convs if conv.name in fp32_index]
    if not convs:
        return {}
    targets = _channel_means(fp32, [fp32_index[conv.name] for conv in convs], inputs)
    shifts = {}
    for conv, target in zip(convs, targets, strict=True):
        (means,) = _channel_means(bytes(model), [conv.output], inputs)
        shifts[conv.name] = means - target
        _move(conv, shifts[conv.name])  # writes through the view into ``model``
    return shifts


def apply(int8: bytes, shifts: dict[str, np.ndarray]) -> bytes:
    """A copy of ``int8`` whose int8 conv biases take back ``shifts`` (convs kept float are left alone)."""
    if not shifts:
        return int8
    model = bytearray(int8)
    for conv in _convs(model):
        if conv.name in shifts:
            _move(conv, shifts[conv.name])
    return bytes(model)


def _move(conv: _Conv, shift: np.ndarray) -> None:
    info = np.iinfo(np.int32)  # int64 biases too stay within int32 (_tflite_bias_range)
    moved = conv.bias.astype(np.int64) - np.round(shift / conv.scale).astype(np.int64)
    conv.bias[:] = np.clip(moved, info.min, info.max).astype(conv.bias.dtype)


def _convs(model: bytearray) -> list[_Conv]:
    """The quantized model's convs with an integer bias stored inside the flatbuffer, each bias a writable view."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    convs = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op_name(root, op) not in CONV_OPS or op.InputsLength() < 3 or op.Inputs(2) < 0:
            continue
        bias_tensor = graph.Tensors(op.Inputs(2))
        quantization = bias_tensor.Quantization()
        data = _buffer_data(model, root.Buffers(bias_tensor.Buffer()))
        if bias_tensor.Type() not in BIAS_TYPES or quantization is None or quantization.ScaleLength() == 0 or data is None:
            continue  # a float bias: the conv is kept float
        output = op.Outputs(0)
        convs.append(
            _Conv(
                output,
                graph.Tensors(output).Name().decode(),
                data.view(BIAS_TYPES[bias_tensor.Type()]),
                quantization.ScaleAsNumpy().astype(np.float64),
            )
        )
    return convs


def op_name(root, op) -> str | None:
    """An operator's builtin name ("CONV_2D"); None for ops ai-edge-quantizer has no name for."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    code = root.OperatorCodes(op.OpcodeIndex())
    return tfl.TFL_OP_CODE_TO_NAME.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))


def _buffer_data(model: bytearray, buffer) -> np.ndarray | None:
    """A buffer's bytes as a writable view into ``model``: inside the flatbuffer, or after it (ai-edge-quantizer
    stores larger buffers there, at an offset from the start of the file)."""
    data = buffer.DataAsNumpy()
    if not isinstance(data, int):  # flatbuffers returns 0 for an empty vector
        return data
    if buffer.Offset() > 1 and buffer.Size() > 0:
        return np.frombuffer(model, dtype=np.uint8, count=buffer.Size(), offset=buffer.Offset())
    return None


def _tensor_index(model: bytes) -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    return {graph.Tensors(i).Name().decode(): i for i in range(graph.TensorsLength())}


def _channel_means(model: bytes, tensors: list[int], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each tensor (by index) averaged per channel (the last axis) over ``inputs``, dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    given = interpreter.get_input_details()[0]
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    totals: list[np.ndarray | float] = [0.0] * len(tensors)
    for array in inputs:
        interpreter.set_tensor(given["index"], as_input(array, given))
        interpreter.invoke()
        for k, index in enumerate(tensors):
            values = interpreter.get_tensor(index)
            if values.dtype != np.float32:
                quantization = details[index]["quantization_parameters"]
                values = (values.astype(np.float32) - quantization["zero_points"][0]) * quantization["scales"][0]
            totals[k] = totals[k] + values.reshape(-1, values.shape[-1]).mean(axis=0)
    return [np.asarray(total) / len(inputs) for total in totals]


def as_input(array: np.ndarray, given: dict) -> np.ndarray:
    """Normalised floats as the interpreter input ``given`` takes them: quantized as an app would for int8 input."""
    scale, zero = given["quantization"]
    if not scale:
        return array
    info = np.iinfo(given["dtype"])
    return np.clip(np.round(array / scale + zero), info.min, info.max).astype(given["dtype"])
