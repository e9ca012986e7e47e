"""Quantized biases that hold their float value: the weight scale of a near-dead channel is raised until its bias fits.

A quantized conv or fully-connected layer stores its bias in units of input scale x weight scale. A
channel whose weights are all near zero (pruned by training; Lite0 at 224 px has about a hundred)
gets a weight scale near 1e-9, and its bias in those units overflows 32 bits. ai-edge-quantizer
rounds every bias at 32 bits, also the int64 biases of TFLite's 16x8 kernels, so such a bias is
clipped to -2**31: a channel whose output is its bias (a constant 2.9 after ReLU6, say) becomes 0.
With int16 activations the input scale is about 128 times finer than with int8, so many more
channels overflow. On a HAM10000 Lite0 at 224 px this cost w8a16 11.5 points of balanced accuracy.

The fix keeps every bias within int32, which the 16x8 kernels and 32-bit accelerators both take:
for each overflowing channel the weight scale rises to ``|bias| / (input scale x (2**31 - 1))``,
that channel's int8 weights are requantized at the coarser scale (they were near zero, so they
round to a few levels at most), and the bias is written at the new scale from the float model's
value. The edit happens in place in a copy of the flatbuffer, as bias correction does
(``_tflite_bias``).
"""

from __future__ import annotations

import numpy as np

from ._tflite_bias import BIAS_TYPES, _buffer_data, op_name

BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_FLOAT32, _INT8 = 0, 9  # schema TensorType
# per-channel weight scales run along the output channel: axis 0 of a conv or FC weight, axis 3 of a depthwise (1, kh, kw, C)
_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}


def fit_biases(quantized: bytes, fp32: bytes) -> tuple[bytes, int]:
    """A copy of ``quantized`` whose biases all hold their fp32 values, and how many channels needed a coarser weight scale."""
    from ai_edge_litert import schema_py_generated as schema

    model = bytearray(quantized)
    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    float_biases = _float_biases(fp32)
    limit = float(np.iinfo(np.int32).max)
    users = np.bincount([graph.Tensors(i).Buffer() for i in range(graph.TensorsLength())], minlength=root.BuffersLength())
    fixed = 0
    for name, op in _bias_ops(root):
        given, weight, bias = (graph.Tensors(op.Inputs(k)) for k in range(3))
        if name not in float_biases or bias.Type() not in BIAS_TYPES or weight.Type() != _INT8:
            continue
        if users[weight.Buffer()] > 1 or users[bias.Buffer()] > 1:
            continue  # a buffer shared with another tensor is not edited in place
        input_scale = given.Quantization().ScaleAsNumpy()
        weight_scale = weight.Quantization().ScaleAsNumpy()  # views into ``model``
        bias_scale = bias.Quantization().ScaleAsNumpy()
        if len(input_scale) != 1 or len(weight_scale) != len(bias_scale):
            continue  # per-tensor weights over several channels: one scale cannot rise for one channel
        target = float_biases[name].astype(np.float64)
        needed = np.abs(target) / (float(input_scale[0]) * limit)
        overflow = needed > weight_scale.astype(np.float64)
        if not overflow.any():
            continue
        weights = _buffer_data(model, root.Buffers(weight.Buffer())).view(np.int8)
        weights = weights.reshape(weight.ShapeAsNumpy())
        axis = _CHANNEL_AXIS[op_name(root, op)] if len(weight_scale) > 1 else None
        for channel in np.flatnonzero(overflow):
            new_scale = np.float32(needed[channel] * (1 + 1e-6))
            index = (slice(None),) * axis + (channel,) if axis is not None else (slice(None),)
            values = weights[index].astype(np.float64) * weight_scale[channel]
            weights[index] = np.clip(np.round(values / new_scale), -127, 127).astype(np.int8)
            weight_scale[channel] = new_scale
            bias_scale[channel] = np.float32(float(input_scale[0]) * float(new_scale))
        stored = _buffer_data(model, root.Buffers(bias.Buffer())).view(BIAS_TYPES[bias.Type()])
        rounded = np.round(target / (float(input_scale[0]) * weight_scale.astype(np.float64)))
        stored[overflow] = np.clip(rounded, -limit, limit)[overflow].astype(stored.dtype)
        fixed += int(overflow.sum())
    return bytes(model), fixed


def _bias_ops(root):
    graph = root.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op_name(root, op) in BIAS_OPS and op.InputsLength() >= 3 and op.Inputs(2) >= 0:
            yield graph.Tensors(op.Outputs(0)).Name().decode(), op


def _float_biases(fp32: bytes) -> dict[str, np.ndarray]:
    """Each bias-carrying op's float32 bias, by the op's output tensor name (the same in every quantized variant)."""
    from ai_edge_litert import schema_py_generated as schema

    model = bytearray(fp32)
    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    biases = {}
    for name, op in _bias_ops(root):
        tensor = graph.Tensors(op.Inputs(2))
        data = _buffer_data(model, root.Buffers(tensor.Buffer()))
        if tensor.Type() == _FLOAT32 and data is not None:
            biases[name] = data.view(np.float32).copy()
    return biases
