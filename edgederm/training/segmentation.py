"""Training a lesion segmenter (``mobilegan`` or ``tinyseg``), optionally as the generator of a GAN.

The segmenter maps an image to mask logits; the loss is BCE + soft Jaccard, plus (``--adversarial
on``, MobileGAN's recipe) lambda times the generator's loss against a small conditional critic that
judges (image, mask) pairs. Data, splits and ``splits.csv`` work as for classifiers, and the epoch
loop with its checkpoints and ``--resume`` is the same one (``training/loop.py``): this module
supplies one epoch of training (``_Trainer.train_epoch``), the validation score and the final
evaluation. The best epoch is the one with the highest validation Jaccard; the final metrics are
computed at each image's original size, through the same post-processing and mask mapping as every
runtime. The recipe, ``SegmentConfig``, is defined in ``training/config.py`` and imported from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import DataError
from ..core.log import get_logger, progress
from ..core.preprocess import Preprocess
from ..core.spec import ModelSpec
from ..data.pixels import PixelCache, load_pixels_and_masks
from ..data.samples import SampleSet
from ..metrics import segmentation_metrics
from ..models import count_parameters, create_model
from ..models.inference import forward_batches, normalize_tensor, sigmoid
from ..models.segmenters import MaskDiscriminator
from ..runtime.postprocess import DEFAULT_THRESHOLD
from ..runtime.readout import lesion_mask
from .augment import augment_pairs
from .common import TrainResult, assign_splits, cosine_lr, set_lr, write_splits
from .config import SegmentConfig
from .distributed import DistContext, choose_device
from .loop import TrainingLoop, epoch_seed, plain_state, save_run

DEFAULT_POSTPROCESS = {"threshold": DEFAULT_THRESHOLD, "largest_component": True, "fill_holes": True}
METRIC_NAMES = ("jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity")

logger = get_logger(__name__)

__all__ = ["SegmentConfig", "segmentation_loss", "train_segmenter"]


@dataclass
class MaskedSplit:
    dataset: SampleSet
    cache: PixelCache  # pixels (N, S, S, 3) and masks (N, S, S) of the readable samples


# ----------------------------------------------------------------------------------------------
# Data


def _load_split(dataset: SampleSet, name: str, preprocess: Preprocess) -> MaskedSplit | None:
    chosen = [i for i, s in enumerate(dataset.samples) if s.split == name] if name != "*" else list(range(len(dataset)))
    if not chosen:
        return None
    subset = dataset.subset(chosen, f"[{name}]" if name != "*" else "")
    cache = load_pixels_and_masks(subset, preprocess, desc=name if name != "*" else "val")
    if not cache.kept:
        raise DataError(f"every image of the {name} split failed to load", path=dataset.spec)
    return MaskedSplit(subset, cache)


# ----------------------------------------------------------------------------------------------
# Losses and scores


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Jaccard (per image, averaged) on (B, 1, S, S) logits and 0/1 targets."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    intersection = (probs * target).sum(dim=(1, 2, 3))
    union = probs.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) - intersection
    return bce + (1 - (intersection + 1) / (union + 1)).mean()


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


def _metrics_dict(true_masks, pred_masks) -> dict[str, float]:
    result = segmentation_metrics(true_masks, pred_masks)
    return {name: getattr(result, name) for name in METRIC_NAMES} | {"n": result.n}


# ----------------------------------------------------------------------------------------------
# The run, and its epoch for the loop


class _Trainer:
    """One segmentation run: data, the segmenter (and its critic), the loop, the final evaluation.

    It is also the loop's Task: ``run`` sets up the model, critic, optimizers and splits the Task
    methods (``train_epoch``, ``validate``, ``state_dict``) work on.
    """

    def __init__(self, config: SegmentConfig):
        self.config = config
        self.run_dir = config.out
        self.context = DistContext(device=choose_device(config.device))  # one process: torchrun is for classifiers
        self.device = self.context.device

    def run(self) -> TrainResult:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        dataset, external_val = assign_splits(config, require_labels=False)
        for data in (dataset, external_val):
            if data is not None:
                data.require_masks()
        preprocess = self.preprocess = Preprocess(input_size=config.img_size, resize="letterbox")
        adversarial = "adversarial" if config.adversarial == "on" else "plain"
        logger.info(
            f"edgederm: {adversarial} segmentation training {config.arch} at {config.img_size}px on {dataset.spec} "
            f"({len(dataset)} images, {len(set(dataset.groups))} groups), device {self.device}"
        )
        for note in dataset.notes:
            logger.warning(f"warning: {note}")
        write_splits(self.run_dir / "splits.csv", dataset, external_val)

        train = self.train = _load_split(dataset, "train", preprocess)
        if train is None:
            raise DataError("the train split is empty", path=config.data)
        val = self.val = _load_split(external_val, "*", preprocess) if external_val else _load_split(dataset, "val", preprocess)
        test = None if config.skip_test else _load_split(dataset, "test", preprocess)
        skipped = [line for split in (train, val, test) if split for line in split.cache.failures]
        for line in skipped:
            logger.info(f"skipped unreadable image or mask: {line}")

        model = self.model = create_model(config.arch, 1).to(self.device, memory_format=torch.channels_last)
        critic = self.critic = (
            MaskDiscriminator().to(self.device, memory_format=torch.channels_last) if config.adversarial == "on" else None
        )
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=config.lr, betas=(0.5, 0.999)) if critic is not None else None
        n = len(train.cache.kept)
        self.batch = min(config.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch)
        TrainingLoop(config, self.context).fit(self)

        spec = ModelSpec(
            task="segmentation",
            arch=config.arch,
            class_names=["lesion"],
            preprocess=preprocess,
            output="mask_logits",
            postprocess=dict(DEFAULT_POSTPROCESS) if config.postprocess == "on" else {"threshold": DEFAULT_THRESHOLD},
            training={
                "recipe": config.recipe(),
                "data": dataset.summary(),
                "val_data": external_val.summary() if external_val else None,
                "skipped_images": len(skipped),
                "params": count_parameters(model),
            },
        )
        spec.metrics = self._evaluate(model, spec, val, test)
        save_run(model, spec, self.run_dir)
        if skipped:
            logger.info(f"{len(skipped)} unreadable image(s) or mask(s) were skipped (listed above)")
        return TrainResult(self.run_dir, spec, spec.metrics, skipped)

    # -- the loop's Task -------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config, device, train, batch, steps = self.config, self.device, self.train, self.batch, self.steps_per_epoch
        seed = epoch_seed(config.seed, epoch)
        order = torch.randperm(len(train.cache.kept), generator=torch.Generator().manual_seed(seed))
        aug_generator = torch.Generator().manual_seed(seed * 131)
        optimizers = [o for o in (self.optimizer, self.critic_optimizer) if o is not None]
        self.model.train()
        if self.critic is not None:
            self.critic.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = progress(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        for step in bar:
            index = order[step * batch : (step + 1) * batch].numpy()
            pixels, masks = augment_pairs(
                torch.from_numpy(train.cache.pixels[index]).to(device, non_blocking=True),
                torch.from_numpy(train.cache.masks[index]).to(device, non_blocking=True),
                aug_generator,
            )
            inputs = normalize_tensor(pixels, self.preprocess)
            targets = (masks.float() / 255.0).unsqueeze(1)
            set_lr(cosine_lr(epoch * steps + step, config.epochs * steps, int(config.warmup_epochs * steps), config.lr), *optimizers)
            for name, value in self._step(self.model, self.optimizer, self.critic, self.critic_optimizer, inputs, targets).items():
                sums[name] = sums.get(name, 0.0) + value * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{sums['train_loss'] / seen:.4f}")
        return {name: total / max(1, seen) for name, total in sums.items()} | {"lr": self.optimizer.param_groups[0]["lr"]}

    def validate(self, judged: nn.Module) -> tuple[dict[str, float], float] | None:
        """Loss and metrics at the input size (thresholded logits, no post-processing): cheap, for choosing the epoch."""
        if self.val is None:
            return None
        val = self.val
        logits = forward_batches(judged.eval(), val.cache.pixels, self.preprocess, self.device)
        targets = val.cache.masks.astype(np.float32)[:, None] / 255.0
        loss = float(segmentation_loss(torch.from_numpy(logits), torch.from_numpy(targets)))
        metrics = _metrics_dict(list(val.cache.masks), list(logits[:, 0] >= 0))
        row = {"val_loss": loss} | {f"val_{name}": metrics[name] for name in METRIC_NAMES}
        return row, row["val_jaccard"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "critic": plain_state(self.critic) if self.critic is not None else {},
            "critic_optimizer": self.critic_optimizer.state_dict() if self.critic_optimizer is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def _step(self, model, optimizer, critic, critic_optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """One batch: the critic learns real from predicted masks, then the segmenter learns (and fools it)."""
        logits = model(inputs)
        seg_loss = segmentation_loss(logits, targets)
        losses = {"train_loss": seg_loss}
        loss = seg_loss
        if critic is not None:
            critic_loss = 0.5 * (_bce(critic(inputs, targets), True) + _bce(critic(inputs, torch.sigmoid(logits).detach()), False))
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_optimizer.step()
            adv_loss = _bce(critic(inputs, torch.sigmoid(logits)), True)
            loss = seg_loss + self.config.adv_weight * adv_loss
            losses |= {"train_adv_loss": adv_loss, "critic_loss": critic_loss}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {name: float(value.detach()) for name, value in losses.items()}

    def _evaluate(self, model: nn.Module, spec: ModelSpec, val: MaskedSplit | None, test: MaskedSplit | None) -> dict[str, Any]:
        """Metrics at each image's original size, after the spec's post-processing (as every runtime predicts)."""
        metrics: dict[str, Any] = {}
        for name, split in (("val", val), ("test", test)):
            if split is None:
                continue
            logits = forward_batches(model.eval(), split.cache.pixels, spec.preprocess, self.device)
            probabilities = sigmoid(logits[:, 0])
            truths, predicted, raw = [], [], []
            for row, index in enumerate(split.cache.kept):
                _, truth = split.dataset.samples[index].load_image_and_mask()
                size = (truth.shape[1], truth.shape[0])
                truths.append(truth)
                predicted.append(lesion_mask(probabilities[row], spec, size))
                raw.append(spec.preprocess.unfit_mask((probabilities[row] >= DEFAULT_THRESHOLD).astype(np.uint8) * 255, size))
            metrics[name] = _metrics_dict(truths, predicted)
            metrics[f"{name}_without_postprocess"] = _metrics_dict(truths, raw)
            result = metrics[name]
            logger.info(
                f"{name}: Jaccard {result['jaccard']:.3f}, Dice {result['dice']:.3f}, pixel accuracy {result['pixel_accuracy']:.3f}, "
                f"sensitivity {result['sensitivity']:.3f}, specificity {result['specificity']:.3f} (n={result['n']}, original size)"
            )
        return metrics


def train_segmenter(config: SegmentConfig) -> TrainResult:
    started = time.time()
    result = _Trainer(config).run()
    logger.info(f"edgederm: trained in {time.time() - started:.0f} s; model in {result.run_dir}")
    return result
