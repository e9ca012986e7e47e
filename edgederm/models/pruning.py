"""Structured pruning of inverted-residual blocks: fewer expansion channels, the same architecture family.

Most of an EfficientNet-Lite or MobileNet's time goes to its inverted residuals (1x1 expand,
depthwise, 1x1 project), and all three scale with the block's expansion ("mid") channels. Removing
a mid channel removes one output of the expand conv, its batch norm, its depthwise filter, its
squeeze-excite weights (MobileNetV3) and one input of the project conv; every runtime then runs a
plain, smaller network, so the saving holds in TFLite, ONNX and CoreML alike (no sparse kernels).

A channel's importance is what it feeds the project conv: mean |activation| on sample images times
the L1 norm of its project-conv column. The widths kept are multiples of 8, which XNNPACK and MLAS
vectorise best. The widths are stored in the ModelSpec (``arch_options["mid_channels"]``) so a
pruned checkpoint rebuilds with ``shrink`` before its weights load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

MULTIPLE = 8


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's inverted-residual blocks (timm's layout: conv_pw, bn1, conv_dw, bn2, se, conv_pwl)."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl"))]


def mid_channels(model: nn.Module) -> list[int]:
    return [int(block.conv_pw.out_channels) for block in blocks(model)]


def kept_width(width: int, ratio: float) -> int:
    """Channels kept when ``ratio`` of ``width`` is pruned: a multiple of 8, at least 8, at most ``width``."""
    return min(width, max(MULTIPLE, int(round(width * (1.0 - ratio) / MULTIPLE)) * MULTIPLE))


@torch.no_grad()
def importance(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Per block, per mid channel: mean |input of the project conv| times that channel's L1 weight norm."""
    found = blocks(model)
    sums = [torch.zeros(b.conv_pwl.in_channels, dtype=torch.float64) for b in found]

    def hook(index: int) -> Callable:
        def record(_module, inputs):
            sums[index] += inputs[0].detach().abs().mean(dim=(0, 2, 3)).double().cpu()

        return record

    handles = [b.conv_pwl.register_forward_pre_hook(hook(i)) for i, b in enumerate(found)]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            model(batch)
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("channel importance needs at least one batch")
    return [(s / seen) * b.conv_pwl.weight.detach().abs().sum(dim=(0, 2, 3)).double().cpu() for s, b in zip(sums, found, strict=True)]


def prune(model: nn.Module, ratio: float, scores: list[torch.Tensor]) -> list[int]:
    """Remove the least important ``ratio`` of each block's mid channels, in place; returns the new widths."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"the pruning ratio must be in (0, 1), got {ratio}")
    found = blocks(model)
    if len(scores) != len(found):
        raise ValueError(f"{len(scores)} importance vectors for {len(found)} blocks")
    for block, score in zip(found, scores, strict=True):
        keep = torch.argsort(score, descending=True)[: kept_width(len(score), ratio)]
        _keep_channels(block, torch.sort(keep).values)
    return mid_channels(model)


def shrink(model: nn.Module, widths: list[int]) -> None:
    """Give a freshly built model a pruned checkpoint's widths (its weights are loaded afterwards)."""
    found = blocks(model)
    if len(widths) != len(found):
        raise ValueError(f"{len(widths)} stored widths for {len(found)} inverted-residual blocks")
    for block, width in zip(found, widths, strict=True):
        if width != block.conv_pw.out_channels:
            _keep_channels(block, torch.arange(int(width)))


def _keep_channels(block: nn.Module, keep: torch.Tensor) -> None:
    _slice_conv(block.conv_pw, out_idx=keep)
    _slice_norm(block.bn1, keep)
    _slice_conv(block.conv_dw, out_idx=keep, depthwise=True)
    _slice_norm(block.bn2, keep)
    se = getattr(block, "se", None)
    if hasattr(se, "conv_reduce") and hasattr(se, "conv_expand"):
        _slice_conv(se.conv_reduce, in_idx=keep)
        _slice_conv(se.conv_expand, out_idx=keep)
    _slice_conv(block.conv_pwl, in_idx=keep)


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None, depthwise: bool = False) -> None:
    weight = conv.weight.detach()
    if out_idx is not None:
        weight = weight[out_idx.to(weight.device)]
        conv.out_channels = len(out_idx)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[out_idx.to(weight.device)].clone())
        if depthwise:
            conv.in_channels = conv.groups = len(out_idx)
    if in_idx is not None:
        weight = weight[:, in_idx.to(weight.device)]
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(weight.clone())


def _slice_norm(norm: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    idx = keep.to(norm.running_mean.device)
    norm.num_features = len(keep)
    norm.weight = nn.Parameter(norm.weight.detach()[idx].clone())
    norm.bias = nn.Parameter(norm.bias.detach()[idx].clone())
    norm.running_mean = norm.running_mean[idx].clone()
    norm.running_var = norm.running_var[idx].clone()
