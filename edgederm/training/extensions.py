"""The classifier's training extensions, each a ``loop.Extension``: EMA, distillation, QAT, pruning.

* ``WeightAverage`` (``--ema``): validates and keeps an exponential moving average of the weights.
* ``Distillation`` (``--distill-from``): a teacher's softened probabilities join the loss.
* ``QuantizationAware`` (``--qat``): trains through simulated int8 (``training/qat.py``).
* ``Pruning`` (``--prune``): shrinks the ``--init-from`` network before it is fine-tuned.

``classification.build_extensions`` turns a TrainConfig into the list; the loop calls their hooks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import UsageError
from ..core.log import get_logger
from ..core.preprocess import Preprocess
from ..core.spec import ModelSpec
from ..models import checkpoint, pruning
from ..models.inference import normalize_tensor
from . import qat
from .common import split_options, split_rows
from .distributed import DistContext
from .loop import Extension, plain_state

PRUNE_IMAGES = 256  # train images whose activations rank the channels --prune removes

logger = get_logger(__name__)


class WeightAverage(Extension):
    """An exponential moving average of a model's weights (timm's ModelEma), validated instead of the raw model.

    The decay ramps up as (1 + t) / (10 + t) so the average is not stuck at the initial weights.
    Without a validation split the average is what the run keeps.
    """

    key = "ema"

    def __init__(self, decay: float):
        self.decay = decay
        self.steps = 0
        self.module: nn.Module | None = None

    def on_start(self, model: nn.Module, net: nn.Module) -> nn.Module:
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        return net

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs.detach(), 1 - decay)
            else:
                mine.copy_(theirs)

    def judged(self, model: nn.Module) -> nn.Module:
        return self.module

    def final_weights(self) -> dict[str, torch.Tensor]:
        return plain_state(self.module)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": plain_state(self.module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.module.load_state_dict(state["weights"])


class Distillation(Extension):
    """Knowledge distillation (Hinton et al.): the teacher's softened probabilities join the loss.

    The teacher sees the student's augmented batch, resized to its own input size. Both letterbox
    (or both crop), so resizing the student's frame is the teacher's preprocessing of the same photo.
    """

    def __init__(
        self,
        teacher: str,
        class_names: list[str],
        preprocess: Preprocess,
        device: torch.device,
        weight: float = 0.5,
        temperature: float = 2.0,
    ):
        model, spec = checkpoint.load_checkpoint(teacher)
        if spec.task != "classification" or spec.class_names != class_names:
            raise UsageError(
                f"--distill-from {teacher} classifies {spec.class_names}, not this run's classes",
                fix="distil from a classifier trained on the same classes",
            )
        if spec.preprocess.resize != preprocess.resize:
            raise UsageError(
                f"--distill-from {teacher} was trained with --resize {spec.preprocess.resize}",
                fix=f"pass --resize {spec.preprocess.resize}",
            )
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.preprocess, self.weight, self.temperature = spec.preprocess, weight, temperature

    def loss(self, logits: torch.Tensor, loss: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            inputs = normalize_tensor(pixels, self.preprocess)
            side = self.preprocess.input_size
            if inputs.shape[-1] != side:
                inputs = nn.functional.interpolate(inputs, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            soft_targets = torch.softmax(self.model(inputs).float() / self.temperature, dim=1)
        student = torch.log_softmax(logits.float() / self.temperature, dim=1)
        soft_loss = nn.functional.kl_div(student, soft_targets, reduction="batchmean") * self.temperature**2
        return (1 - self.weight) * loss + self.weight * soft_loss


def check_teacher_split(teacher: str, ours: set[tuple[str, str]]) -> None:
    """A teacher that trained on this run's val or test images would pass their labels to the student."""
    spec_path = checkpoint.resolve_checkpoint(teacher)[1]
    theirs = split_rows(spec_path.parent / "splits.csv")
    if not theirs:
        logger.warning(f"warning: --distill-from {teacher} has no splits.csv, so it cannot be checked against this run's val/test images")
        return
    trained = {image for image, split in theirs if split == "train"}
    leaked = sorted(image for image, split in ours if split != "train" and image in trained)
    if leaked:
        raise UsageError(
            f"--distill-from {teacher} was trained on {len(leaked)} of this run's val/test images (e.g. {leaked[0]})",
            fix=f"distil from a teacher trained on this run's split, or split as the teacher was ({split_options(ModelSpec.load(spec_path))})",
        )


class QuantizationAware(Extension):
    """Quantization-aware training: the optimizer trains a fake-quantized graph of the model (``training/qat.py``).

    After every epoch the graph's weights are copied back into the model; validation runs the
    graph itself, so the run is judged as it will ship. The graph's weights and observer ranges are
    part of the training state, so QAT resumes exactly.
    """

    key = "qat"
    allows_amp = False

    def __init__(self, pixels: np.ndarray, preprocess: Preprocess, context: DistContext, batch: int, steps_per_epoch: int, fine_tune: bool):
        self.pixels, self.preprocess, self.context = pixels, preprocess, context
        self.batch, self.steps_per_epoch, self.fine_tune = batch, steps_per_epoch, fine_tune
        self.net: nn.Module | None = None

    def on_start(self, model: nn.Module, net: nn.Module) -> nn.Module:
        if self.context.enabled:
            raise UsageError("--qat trains in one process", fix="run it without torchrun")
        batch, device = self.batch, self.context.device
        example = normalize_tensor(torch.from_numpy(self.pixels[:batch]).to(device), self.preprocess)
        self.net = qat.prepare(model, example)
        if self.fine_tune:  # a resumed run then loads its own ranges over these
            chunks = (
                normalize_tensor(torch.from_numpy(self.pixels[i : i + batch]).to(device), self.preprocess)
                for i in range(0, batch * min(self.steps_per_epoch, 8), batch)
            )
            logger.info(f"--qat: activation ranges from {qat.calibrate(self.net, chunks) * batch} training images")
        return self.net

    def train_mode(self, net: nn.Module) -> bool:
        # Fine-tuning a trained run keeps its batch-norm statistics (and turns dropout off): batch
        # statistics of augmented batches moved a converged Lite0 off its running ones and cost
        # 0.3 balanced accuracy in one epoch. The fake quantizers observe either way.
        qat.train_mode(self.net, not self.fine_tune)
        return True

    def after_epoch(self, model: nn.Module) -> None:
        qat.copy_weights_back(self.net, model)

    def runner(self, judged: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return qat.fixed_batch(qat.train_mode(self.net, False), self.batch)

    def state_dict(self) -> dict[str, Any]:
        return qat.state_dict(self.net)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state)


class Pruning(Extension):
    """Shrinks the ``--init-from`` network before fine-tuning; a resumed run re-prunes, then loads its own weights."""

    def __init__(self, share: float, pixels: np.ndarray, preprocess: Preprocess, device: torch.device):
        self.share, self.pixels, self.preprocess, self.device = share, pixels, preprocess, device

    def on_model(self, model: nn.Module) -> None:
        before = sum(pruning.mid_channels(model))
        sample = torch.from_numpy(self.pixels[:PRUNE_IMAGES])
        batches = (normalize_tensor(sample[i : i + 64].to(self.device), self.preprocess) for i in range(0, len(sample), 64))
        model.to(self.device)
        widths = pruning.prune(model, self.share, pruning.importance(model, batches))
        logger.info(
            f"pruned {before - sum(widths)} of {before} expansion channels ({len(widths)} blocks), by importance on {len(sample)} train images"
        )
