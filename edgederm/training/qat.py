"""Quantization-aware training: fine-tune through simulated int8 so post-training quantization loses less.

The model is captured with ``torch.export`` and prepared by PT2E with the int8 scheme both int8
exports use: int8 weights symmetric per output channel, int8 activations per tensor with min/max
ranges, batch norm folded into the conv it follows (PT2E simulates the fold while training). The
forward pass then runs fake-quantized, so the gradient sees the rounding and the clipping.

What comes out is an ordinary float checkpoint: the fine-tuned weights are copied back into the
timm model by name. ``edgederm export --quant int8`` calibrates it like any other run; its weights
now sit where int8 rounding costs little. Keeping the checkpoint float keeps one export path for
TFLite, ONNX and CoreML and lets the same run also ship fp32 and fp16.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..core.errors import UsageError


def prepare(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A fake-quantized, trainable graph of ``model`` for batches shaped like ``example`` (see ``fixed_batch``).

    The batch size is static, as PT2E is usually run (a dynamic batch dimension measured slower here, under CPU contention).
    """
    try:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    except ImportError as exc:
        raise UsageError(f"--qat needs torchao's PT2E quantization ({exc})", fix='pip install -e ".[export]"') from exc
    # litert-torch's own PT2EQuantizer fails to annotate conv-bn patterns for QAT with torchao 0.18;
    # the XNNPACK quantizer annotates the same int8 scheme (per-channel symmetric weights,
    # per-tensor affine int8 activations) and is maintained with torchao.
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "XNNPACKQuantizer is deprecated": torchao keeps it for exactly this use
        exported = torch.export.export(model, (example,))
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
        prepared = prepare_qat_pt2e(exported.module(), quantizer)
    model.train(was_training)
    return prepared


def train_mode(prepared: nn.Module, training: bool) -> nn.Module:
    """Exported graphs ignore ``.train()``: batch norm and dropout switch through torchao's helpers.

    The fake quantizers keep observing in either mode; ``training=False`` during training freezes
    batch-norm statistics while the weights still learn.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    (move_exported_model_to_train if training else move_exported_model_to_eval)(prepared)
    return prepared


@torch.no_grad()
def calibrate(prepared: nn.Module, batches) -> int:
    """Start every range at the absolute min/max over ``batches`` (the model in eval mode), as the int8 exports calibrate.

    PT2E's observers are moving averages with a step of 0.01 that start from the first batch they
    see: ranges that clip activations, so fine-tuning bends a converged model around the clipping
    instead of learning the rounding. Returns the number of batches seen.
    """
    observers = [m.activation_post_process for m in prepared.modules() if hasattr(m, "activation_post_process")]
    observers = [o for o in observers if hasattr(o, "averaging_constant")]
    steps = [o.averaging_constant for o in observers]
    lows: list[torch.Tensor | None] = [None] * len(observers)
    highs: list[torch.Tensor | None] = [None] * len(observers)
    train_mode(prepared, False)
    seen = 0
    try:
        for observer in observers:
            observer.averaging_constant = 1.0  # each batch's own extremes, folded into lows/highs below
        for batch in batches:
            prepared(batch)
            seen += 1
            for i, observer in enumerate(observers):
                low, high = observer.min_val.clone(), observer.max_val.clone()
                lows[i] = low if lows[i] is None else torch.minimum(lows[i], low)
                highs[i] = high if highs[i] is None else torch.maximum(highs[i], high)
    finally:
        for observer, step, low, high in zip(observers, steps, lows, highs, strict=True):
            observer.averaging_constant = step
            if low is not None:
                observer.min_val.copy_(low)
                observer.max_val.copy_(high)
    return seen


def fixed_batch(prepared: nn.Module, size: int):
    """``prepared`` for any batch size: short batches are padded with their last row (eval-mode rows are independent)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            padding = size - len(chunk)
            if padding:
                chunk = torch.cat([chunk, chunk[-1:].expand(padding, *chunk.shape[1:])])
            outputs.append(prepared(chunk)[: size - padding])
        return torch.cat(outputs)

    return run


@torch.no_grad()
def copy_weights_back(prepared: nn.Module, model: nn.Module) -> None:
    """Copy the fine-tuned parameters and batch-norm statistics into ``model`` (same names, same shapes)."""
    trained = prepared.state_dict()
    state = model.state_dict()
    shared = [name for name in state if name in trained]
    missing = [name for name in state if name not in trained and not name.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"QAT graph lost {len(missing)} of the model's tensors, e.g. {missing[:3]}")
    for name in shared:
        state[name].copy_(trained[name])


def state_dict(prepared: nn.Module) -> dict[str, Any]:
    """Weights and observer ranges, for resuming a QAT run exactly where it stopped."""
    return {k: v.detach().cpu().clone() for k, v in prepared.state_dict().items()}
