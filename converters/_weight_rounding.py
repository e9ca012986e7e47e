"""Output-aware rounding of int8 weights, shared by every static int8 and w8a16 converter.

Rounding each weight to its nearest int8 step is not what keeps a layer's output closest to fp32:
the errors of neighbouring weights add up over correlated inputs (the 3x3 patches of a depthwise
conv above all). For each conv and linear layer, per output channel, this picks the rounding (up or
down, one step from the weight) that minimises the error of the layer's output on the calibration
images, ``d^T H d`` with ``d`` the rounding error and ``H`` the Gram matrix of the layer's input
patches: the objective of AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", 2020), solved greedily one weight at a time rather than by gradient descent.

The rounded weights are written back as floats that sit exactly on the per-channel symmetric grid
every converter here quantizes to (scale = max |w| / 127, TFLite, ONNX Runtime and XNNPACK alike),
with each channel's largest weight left where it is so that the converter finds the same scale. A
batch norm folded into the conv afterwards scales each channel's grid, and the weights stay on it.

Measured on the HAM10000-only stage of ``zoo:lite0-ham10000`` (int8 weights, float activations, against fp32 on 300 training
images not used to fit): mean |Δp| 0.0044 with nearest rounding, 0.0010 with this; the first
depthwise conv alone held most of the nearest-rounding error.

A closer layer output is not always a closer model: on a head-trained Lite0 of 480 synthetic images at
160 px (100 synthetic calibration images) rounding every layer this way moved TFLite int8's mean |Δp|
on its 96 test images from 0.0027 to 0.0033, where ONNX and ExecuTorch improved slightly. With
``weight_rounding="auto"`` each format decides for itself, as ``_bias_correction`` does for the bias
shifts: the Gram matrices are gathered on the even calibration images, and the rounded weights are
kept only if that format's all-int8 model (min/max ranges, no bias correction) comes closer to fp32
on the odd ones (mean |Δp|) by more than MIN_GAIN. ``auto`` is the default: on the HAM10000 reference it
kept the rounded weights in every format, and top-1 agreement with fp32 rose or held in every int8 and
w8a16 file on the validation and the test split (benchmarks/README.md, "Weight rounding for int8").
``"on"`` rounds on every calibration image without asking; ``"off"`` keeps nearest rounding, the
quickest export.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgederm.core.formats import DEFAULT_WEIGHT_ROUNDING, WEIGHT_ROUNDING
from edgederm.core.log import get_logger

logger = get_logger(__name__)

LEVELS = 127  # symmetric int8 weights: -127..127
PASSES = 4
BATCH = 8  # images per forward pass while the Gram matrices are gathered (a 112 px depthwise input unfolds 9x)
MIN_GAIN = 0.05  # share of the held-out mean |Δp| that rounding must remove to be kept (as for bias correction)
MIN_IMAGES = 8


@dataclass
class WeightRounding:
    layers: int
    weights_moved: int  # weights rounded away from their nearest int8 step
    error: dict[str, float]  # sum over layers of the output error d^T H d per image, nearest and chosen
    images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        gain = 1 - self.error["chosen"] / self.error["nearest"] if self.error["nearest"] else 0.0
        return (
            f"weight rounding: {self.weights_moved} weights of {self.layers} layers rounded the other way, "
            f"layer output error {gain:.0%} lower than nearest rounding on {self.images} calibration images ({self.seconds:.0f} s)"
        )


def rounded(model: nn.Module, images: Iterable[np.ndarray]) -> tuple[nn.Module, WeightRounding]:
    """A copy of ``model`` whose conv and linear weights sit on the int8 grid, rounded for the layers' outputs.

    ``images`` are normalised NCHW float batches (the calibration images).
    """
    started = time.time()
    model = copy.deepcopy(model).eval()
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    grams, count = _grams(model, layers, images)
    moved, nearest_error, chosen_error = 0, 0.0, 0.0
    for name, module in layers.items():
        if name not in grams:  # not reached by the forward pass
            continue
        weights, stats = _round(module.weight.detach().double(), grams[name] / count, module)
        module.weight.data.copy_(weights.to(module.weight.dtype))
        moved += stats[0]
        nearest_error += stats[1]
        chosen_error += stats[2]
    record = WeightRounding(
        len(grams),
        moved,
        {"nearest": float(nearest_error), "chosen": float(chosen_error)},
        count,
        round(time.time() - started, 1),
    )
    return model, record


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (groups, fan-in, samples): what each output channel's weights multiply."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    groups = module.groups
    cols = cols.view(cols.shape[0], groups, cols.shape[1] // groups, -1)  # N, groups, fan-in, positions
    return cols.permute(1, 2, 0, 3).reshape(groups, cols.shape[2], -1)


def _grams(model: nn.Module, layers: dict[str, nn.Module], images: Iterable[np.ndarray]) -> tuple[dict[str, torch.Tensor], int]:
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def gather(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            patches = _patches(module, inputs[0].float())
            gram = (patches @ patches.transpose(1, 2)).double()  # summed over batches in float64
            grams[name] = grams[name] + gram if name in grams else gram

        return gather

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    count = 0
    try:
        with torch.no_grad():
            for batch in images:
                for i in range(0, len(batch), BATCH):
                    model(torch.from_numpy(np.ascontiguousarray(batch[i : i + BATCH])))
                count += len(batch)
    finally:
        for handle in handles:
            handle.remove()
    return grams, max(count, 1)


def _round(weight: torch.Tensor, gram: torch.Tensor, module: nn.Module) -> tuple[torch.Tensor, tuple[int, float, float]]:
    """The weight rounded per output channel to minimise d^T H d; (weights, (moved, nearest error, chosen error))."""
    channels = weight.shape[0]
    w = weight.reshape(channels, -1)
    scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / LEVELS
    q = torch.clamp(torch.round(w / scale), -LEVELS, LEVELS)
    nearest = q.clone()
    groups = getattr(module, "groups", 1)
    d = q * scale - w
    locked = torch.zeros_like(w, dtype=torch.bool)
    locked[torch.arange(channels), w.abs().argmax(1)] = True  # keeps the channel's max, hence the converter's scale
    if groups == 1:  # one Gram matrix for every output channel
        shared = gram[0]
        hd, diagonal = d @ shared, shared.diagonal().expand(channels, -1)

        def column(j: int) -> torch.Tensor:
            return shared[j].expand(channels, -1)
    else:
        h = gram.repeat_interleave(channels // groups, 0)
        hd, diagonal = torch.einsum("ckj,cj->ck", h, d), torch.diagonal(h, dim1=1, dim2=2)

        def column(j: int) -> torch.Tensor:
            return h[:, :, j]

    error_before = float(torch.einsum("ck,ck->", d, hd))
    for _ in range(PASSES):
        changed = False
        for j in range(w.shape[1]):
            step = torch.where(d[:, j] > 0, -1.0, 1.0).to(w.dtype)
            delta = step * scale[:, 0]
            gain = 2 * delta * hd[:, j] + delta * delta * diagonal[:, j]
            take = (gain < 0) & ~locked[:, j] & ((q[:, j] + step).abs() <= LEVELS)
            if take.any():
                changed = True
                delta = torch.where(take, delta, torch.zeros_like(delta))
                q[:, j] += torch.where(take, step, torch.zeros_like(step))
                d[:, j] += delta
                hd += column(j) * delta[:, None]
        if not changed:
            break
    error_after = float(torch.einsum("ck,ck->", d, hd))
    moved = int((q != nearest).sum())
    return (q * scale).reshape(weight.shape), (moved, error_before, error_after)


class Candidate(Protocol):
    """A format's static int8 (or w8a16) quantizer calibrated on one model's weights, before its ranges and bias
    correction are chosen: what ``choose`` compares nearest and rounded weights with."""

    @property
    def reference(self) -> np.ndarray:
        """fp32's probabilities on the calibration images, in order (the original weights' in every candidate)."""
        ...

    def plain(self) -> Any:
        """Every layer quantized at min/max activation ranges, without bias correction."""
        ...

    def held_out(self, model: Any) -> np.ndarray:
        """``model``'s probabilities on the odd calibration images."""
        ...


C = TypeVar("C", bound=Candidate)


@dataclass
class RoundingDecision:
    mode: str
    applied: bool
    mean_abs_dp: dict[str, float]  # held-out, nearest and rounded ("auto" only)
    images: dict[str, int]  # rounded on / judged on
    rounding: dict[str, Any] | None  # the WeightRounding record of the weights tried
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.skipped:
            return f"weight rounding not tried: {self.skipped}"
        verdict = "applied" if self.applied else "not applied"
        if self.mode == "on":
            return f"weight rounding applied (asked for) on {self.images['fit']} calibration images"
        return (
            f"weight rounding {verdict}: mean |dp| {self.mean_abs_dp['nearest']:.4f} (nearest) -> {self.mean_abs_dp['rounded']:.4f} "
            f"on {self.images['judge']} held-out calibration images"
        )


def _mode(options: dict[str, Any]) -> str:
    mode = options.get("weight_rounding") or DEFAULT_WEIGHT_ROUNDING
    if mode not in WEIGHT_ROUNDING:
        raise ValueError(f"weight_rounding must be one of {', '.join(WEIGHT_ROUNDING)}, not {mode!r}")
    return mode


def choose(job: Any, build: Callable[[nn.Module], C]) -> C:
    """The quantizer a static int8 or w8a16 converter goes on with: ``build(weights)`` for ``job.model``'s weights or
    for the rounded ones, as ``job.options["weight_rounding"]`` says (module docstring); the decision goes to
    ``job.details["weight_rounding"]``. A ``--qat`` run keeps its weights: they learned to live with nearest rounding.
    ``build`` holds what it quantizes to ``job.model``, the fp32 reference, whichever weights it is given."""
    mode = _mode(job.options)
    calibration = job.calibration
    if mode == "off" or calibration is None:
        return build(job.model)
    if job.spec.training.get("recipe", {}).get("qat"):
        return _record(
            job, RoundingDecision(mode, False, {}, {}, None, "a --qat run: its weights were trained for nearest rounding"), build(job.model)
        )
    if mode == "on":
        model, record = rounded_on(job.model, calibration, every=1)
        return _record(job, RoundingDecision(mode, True, {}, {"fit": record.images, "judge": 0}, record.to_dict()), build(model))
    nearest = build(job.model)
    if len(calibration) < MIN_IMAGES:
        return _record(job, RoundingDecision(mode, False, {}, {}, None, f"fewer than {MIN_IMAGES} calibration images"), nearest)
    model, record = rounded_on(job.model, calibration, every=2)
    rounded_candidate = build(model)
    judge = nearest.reference[1::2]
    off = float(np.abs(nearest.held_out(nearest.plain()) - judge).mean())
    on = float(np.abs(rounded_candidate.held_out(rounded_candidate.plain()) - judge).mean())
    applied = on < (1 - MIN_GAIN) * off
    images = {"fit": record.images, "judge": len(judge)}
    decision = RoundingDecision(mode, applied, {"nearest": round(off, 6), "rounded": round(on, 6)}, images, record.to_dict())
    return _record(job, decision, rounded_candidate if applied else nearest)


def _record(job: Any, decision: RoundingDecision, chosen: C) -> C:
    job.details["weight_rounding"] = decision.to_dict()
    logger.info(f"  {decision.summary()}")
    return chosen


# Per model: the calibration it was rounded on, which of its images, the rounded copy and its record (export_run hands
# every format the same model and calibration, so the Gram matrices are gathered once per export).
_ROUNDED: weakref.WeakKeyDictionary[nn.Module, tuple[Any, int, nn.Module, WeightRounding]] = weakref.WeakKeyDictionary()


def rounded_on(model: nn.Module, calibration: Any, every: int = 1) -> tuple[nn.Module, WeightRounding]:
    """``rounded`` on every ``every``-th calibration image (every=2: the even ones, leaving the odd ones to judge)."""
    cached = _ROUNDED.get(model)
    if cached is None or cached[0] is not calibration or cached[1] != every:
        subset = calibration if every == 1 else type(calibration)(calibration.pixels[0::every], calibration.preprocess, calibration.source)
        cached = (calibration, every, *rounded(model, subset.batches(32, "NCHW")))
        _ROUNDED[model] = cached
        logger.info(f"  {cached[3].summary()}")
    return cached[2], cached[3]
