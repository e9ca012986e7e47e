"""Bias correction's mechanics for ExecuTorch's PT2E int8 (what and why: ``_bias_correction``).

After ``convert_pt2e`` a conv is ``aten.conv2d(dequantize(x), dequantize(w), bias)`` with its bias a
float parameter of the graph module; XNNPACK's lowering quantizes that bias to int32 at the input
scale times the weight scale, so moving the float bias before lowering moves the int8 kernel's output
by the same amount (to within one int32 step). Conv nodes keep their names from ``prepare_pt2e``
(batch norms folded) to ``convert_pt2e``, which pairs each quantized conv with its float original in
the prepared module. The exported graphs take batch 1 only, so :func:`walk` runs one graph over many
images node by node: a conv's output over every image is complete before the next node runs, which
is what correcting conv by conv in one pass needs. As in ``_onnx_bias``, a conv's means are read where the
next layer reads them: after its ReLU/ReLU6 and its output's quantize/dequantize (:func:`as_read`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import fx

_CONV = torch.ops.aten.conv2d.default
ACTIVATIONS = (
    torch.ops.aten.hardtanh.default,
    torch.ops.aten.hardtanh_.default,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
)


class _PerImage(list):
    """A node's value on each image (constants are shared, not wrapped)."""


def attribute(module: torch.nn.Module, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), module)


def biased_convs(module: fx.GraphModule) -> dict[str, str]:
    """Per conv node name, the attribute that holds its float bias."""
    convs = {}
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target == _CONV and len(node.args) > 2:
            bias = node.args[2]
            if isinstance(bias, fx.Node) and bias.op == "get_attr":
                convs[node.name] = bias.target
    return convs


def as_read(conv: fx.Node) -> list[fx.Node]:
    """The nodes between a conv and the value the next layer reads: the activation and quantize/dequantize
    that only the conv feeds (the first dequantize, where each reader has its own)."""
    # torch registers these ops once PT2E's quantization is imported, which any graph read here has gone through
    dequantize = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    followed = (*ACTIVATIONS, torch.ops.quantized_decomposed.quantize_per_tensor.default, dequantize)
    chain, node = [], conv
    while True:
        users = list(node.users)
        if not users or any(user.op != "call_function" or user.target not in followed for user in users):
            return chain
        if len(users) > 1 and any(user.target != dequantize for user in users):
            return chain
        node = users[0]
        chain.append(node)


def walk(
    module: fx.GraphModule,
    inputs: Sequence[np.ndarray],
    convs: Sequence[str],
    correct: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None,
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """``module``'s outputs on ``inputs`` (N, ...) and each named conv's mean per channel as the next layer reads it.

    ``correct(name, means)``, where given, returns a per-channel shift to subtract from that conv's
    output on every image before any later node reads it (or None)."""
    last_use: dict[fx.Node, fx.Node] = {}
    for node in module.graph.nodes:
        for used in node.all_input_nodes:
            last_use[used] = node
    wanted, env, means = set(convs), {}, {}
    images = _PerImage(torch.from_numpy(np.ascontiguousarray(x[None])) for x in inputs)

    def value(i: int) -> Callable[[fx.Node], object]:
        def of(node: fx.Node) -> object:
            if node.op == "get_attr" and node not in env:  # a constant the graph fetches after the conv being read
                return attribute(module, node.target)
            return env[node][i] if isinstance(env[node], _PerImage) else env[node]

        return of

    def read(conv: fx.Node, chain: list[fx.Node], output: torch.Tensor, i: int) -> torch.Tensor:
        """The conv's output on image ``i`` through ``chain`` (``as_read``), leaving ``output`` as it was."""
        computed, last = {conv: output.clone()}, conv  # ReLU6 runs in place
        for last in chain:
            args = fx.node.map_arg(last.args, lambda n: computed[n] if n in computed else value(i)(n))
            computed[last] = last.target(*args, **last.kwargs)
        return computed[last]

    result = None
    with torch.no_grad():
        for node in module.graph.nodes:
            if node.op == "placeholder":
                env[node] = images
            elif node.op == "get_attr":
                env[node] = attribute(module, node.target)
            elif node.op == "output":
                result = torch.cat([fx.node.map_arg(node.args[0], value(i))[0] for i in range(len(images))])
            else:
                call = node.target if node.op == "call_function" else attribute(module, node.target)
                outputs = _PerImage(
                    call(*fx.node.map_arg(node.args, value(i)), **fx.node.map_arg(node.kwargs, value(i))) for i in range(len(images))
                )
                if node.name in wanted:
                    chain = as_read(node)
                    means[node.name] = torch.stack(
                        [read(node, chain, o, i).float().mean(dim=(0, 2, 3)) for i, o in enumerate(outputs)]
                    ).mean(0)
                    shift = correct(node.name, means[node.name]) if correct else None
                    if shift is not None:
                        outputs = _PerImage(o - shift[None, :, None, None] for o in outputs)
                env[node] = outputs
            for used in node.all_input_nodes:
                if last_use.get(used) is node:
                    env.pop(used, None)
    return result.float().numpy(), means


def float_twin(prepared: fx.GraphModule) -> fx.GraphModule:
    """A copy of a ``prepare_pt2e`` module that computes in float without observing (observers are slow, and
    the ranges are already taken)."""
    from torchao.quantization.pt2e import ObserverBase

    twin = copy.deepcopy(prepared)
    for name, module in list(twin.named_children()):
        if isinstance(module, ObserverBase):
            setattr(twin, name, torch.nn.Identity())
    return twin


def fit_shifts(int8: fx.GraphModule, fp32: fx.GraphModule, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per conv node name, the float shift of its output mean that its bias takes back (conv by conv)."""
    float_convs = biased_convs(fp32)
    convs = [name for name in biased_convs(int8) if name in float_convs]
    if not convs:
        return {}
    _, targets = walk(fp32, inputs, convs)
    shifts: dict[str, np.ndarray] = {}

    def correct(name: str, means: torch.Tensor) -> torch.Tensor:
        shift = means - targets[name]
        shifts[name] = shift.numpy().astype(np.float32)
        return shift

    walk(int8, inputs, convs, correct)
    return shifts


def apply(int8: fx.GraphModule, shifts: dict[str, np.ndarray]) -> fx.GraphModule:
    """A copy of ``int8`` whose conv biases take back ``shifts``."""
    if not shifts:
        return int8
    corrected = copy.deepcopy(int8)
    for name, target in biased_convs(corrected).items():
        if name in shifts:
            bias = attribute(corrected, target)
            bias.data = bias.data - torch.from_numpy(shifts[name]).to(bias.dtype)
    return corrected


def predict(module: fx.GraphModule, inputs: Sequence[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(x[None]))).numpy() for x in inputs])
