"""Training a lesion segmenter (``mobilegan`` or ``tinyseg``), optionally as the generator of a GAN.

The segmenter maps an image to mask logits; the loss is BCE + soft Jaccard, plus (``--adversarial
on``, MobileGAN's recipe) lambda times the generator's loss against a small conditional critic that
judges (image, mask) pairs. Data, splits, ``splits.csv``, checkpoints and ``--resume`` work as for
classifiers: every epoch's randomness derives from (seed, epoch), so a resumed run replays exactly
what the uninterrupted run would have done. The best epoch is the one with the highest validation
Jaccard; the final metrics are computed at each image's original size, through the same
post-processing and mask mapping as every runtime.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core import atomic
from ..core.errors import DataError, UsageError
from ..core.log import get_logger, progress
from ..core.preprocess import Preprocess
from ..core.spec import ModelSpec
from ..data.pixels import PixelCache, load_pixels_and_masks
from ..data.samples import SampleSet
from ..metrics import segmentation_metrics
from ..models import checkpoint, count_parameters, create_model, get_entry
from ..models.inference import forward_batches, normalize_tensor, sigmoid
from ..models.segmenters import MaskDiscriminator
from ..runtime.postprocess import DEFAULT_THRESHOLD
from ..runtime.readout import lesion_mask
from .augment import augment_pairs
from .common import (
    TrainResult,
    assign_splits,
    check_fractions,
    comparable_recipe,
    cosine_lr,
    format_row,
    recipe_of,
    write_metrics_csv,
    write_splits,
)
from .distributed import choose_device

ON_OFF = ("on", "off")
DEFAULT_POSTPROCESS = {"threshold": DEFAULT_THRESHOLD, "largest_component": True, "fill_holes": True}
METRIC_NAMES = ("jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity")
DEFAULT_LR = {"tinyseg": 1e-2}  # a 0.04M-parameter net tolerates (and needs) a larger step; others 1e-3


logger = get_logger(__name__)

@dataclass
class SegmentConfig:
    data: str
    out: Path
    arch: str = "mobilegan"
    img_size: int = 128
    epochs: int = 30
    adversarial: str = "on"
    adv_weight: float = 0.1  # lambda: weight of the generator's adversarial loss
    val_data: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    batch_size: int = 16
    lr: float | None = None  # None: DEFAULT_LR for the arch, else 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    postprocess: str = "on"
    seed: int = 0
    device: str = "auto"
    resume: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        entry = get_entry(self.arch)
        if entry.task != "segmentation":
            raise UsageError(f"--arch {self.arch} is a {entry.task} model", fix="choose a segmenter: mobilegan or tinyseg")
        if self.img_size % entry.input_multiple or not 16 <= self.img_size <= 2048:
            raise UsageError(
                f"--img-size {self.img_size} does not fit {self.arch}",
                fix=f"use a multiple of {entry.input_multiple} between 16 and 2048, e.g. 128",
            )
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.arch, 1e-3)
        if self.adversarial not in ON_OFF or self.postprocess not in ON_OFF:
            raise UsageError("--adversarial and --postprocess must be on or off")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.adv_weight < 0:
            raise UsageError("--epochs, --batch-size and --lr must be positive and --adv-weight not negative")
        check_fractions(self.val_fraction, self.test_fraction)

    def recipe(self) -> dict[str, Any]:
        return recipe_of(self)


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
# The loop


def _plain(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class _Trainer:
    def __init__(self, config: SegmentConfig):
        self.config = config
        self.run_dir = config.out
        self.device = choose_device(config.device)
        self.best_score = -1.0  # validation Jaccard of the best epoch so far
        self.best_weights: dict[str, torch.Tensor] | None = None

    def log(self, message: str) -> None:
        logger.info(message)

    def run(self) -> TrainResult:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        dataset, external_val = assign_splits(config, require_labels=False)
        for data in (dataset, external_val):
            if data is not None:
                data.require_masks()
        preprocess = Preprocess(input_size=config.img_size, resize="letterbox")
        adversarial = "adversarial" if config.adversarial == "on" else "plain"
        self.log(
            f"edgederm: {adversarial} segmentation training {config.arch} at {config.img_size}px on {dataset.spec} "
            f"({len(dataset)} images, {len(set(dataset.groups))} groups), device {self.device}"
        )
        for note in dataset.notes:
            logger.warning(f"warning: {note}")
        write_splits(self.run_dir / "splits.csv", dataset, external_val)

        train = _load_split(dataset, "train", preprocess)
        if train is None:
            raise DataError("the train split is empty", path=config.data)
        val = (
            _load_split(external_val, "*", preprocess)
            if external_val
            else _load_split(dataset, "val", preprocess)
        )
        test = _load_split(dataset, "test", preprocess)
        skipped = [line for split in (train, val, test) if split for line in split.cache.failures]
        for line in skipped:
            self.log(f"skipped unreadable image or mask: {line}")

        model = create_model(config.arch, 1).to(self.device, memory_format=torch.channels_last)
        critic = MaskDiscriminator().to(self.device, memory_format=torch.channels_last) if config.adversarial == "on" else None
        self._train(model, critic, train, val, preprocess)

        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
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
        checkpoint.save_model(model, spec, self.run_dir)
        atomic.write_text(self.run_dir / "metrics.json", json.dumps(spec.metrics, indent=2))
        if skipped:
            self.log(f"{len(skipped)} unreadable image(s) or mask(s) were skipped (listed above)")
        return TrainResult(self.run_dir, spec, spec.metrics, skipped)

    def _train(self, model: nn.Module, critic: nn.Module | None, train: MaskedSplit, val: MaskedSplit | None, preprocess) -> None:
        config, device = self.config, self.device
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=config.lr, betas=(0.5, 0.999)) if critic is not None else None
        n = len(train.cache.kept)
        batch = min(config.batch_size, n)
        steps_per_epoch = max(1, n // batch)
        total_steps, warmup = config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
        start_epoch, history = self._resume(model, optimizer, critic, critic_optimizer)
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(config.seed * 1009 + epoch)  # dropout replays on resume
            generator = torch.Generator().manual_seed(config.seed * 1009 + epoch)
            order = torch.randperm(n, generator=generator)
            aug_generator = torch.Generator().manual_seed((config.seed * 1009 + epoch) * 131)
            model.train()
            if critic is not None:
                critic.train()
            sums: dict[str, float] = {}
            seen = 0
            bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
            for step in bar:
                index = order[step * batch : (step + 1) * batch].numpy()
                pixels, masks = augment_pairs(
                    torch.from_numpy(train.cache.pixels[index]).to(device, non_blocking=True),
                    torch.from_numpy(train.cache.masks[index]).to(device, non_blocking=True),
                    aug_generator,
                )
                inputs = normalize_tensor(pixels, preprocess)
                targets = (masks.float() / 255.0).unsqueeze(1)
                lr = cosine_lr(epoch * steps_per_epoch + step, total_steps, warmup, config.lr)
                for opt in (optimizer, critic_optimizer):
                    for group in opt.param_groups if opt is not None else []:
                        group["lr"] = lr
                for name, value in self._step(model, optimizer, critic, critic_optimizer, inputs, targets).items():
                    sums[name] = sums.get(name, 0.0) + value * len(index)
                seen += len(index)
                bar.set_postfix(loss=f"{sums['train_loss'] / seen:.4f}")
            row: dict[str, Any] = {"epoch": epoch + 1} | {name: total / max(1, seen) for name, total in sums.items()}
            row["lr"] = optimizer.param_groups[0]["lr"]
            if val is not None:
                row.update(self._val_row(model, val, preprocess))
            history.append(row)
            self._end_epoch(model, optimizer, critic, critic_optimizer, epoch, history, row)

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

    def _val_row(self, model: nn.Module, val: MaskedSplit, preprocess: Preprocess) -> dict[str, float]:
        """Loss and metrics at the input size (thresholded logits, no post-processing): cheap, for choosing the epoch."""
        logits = forward_batches(model.eval(), val.cache.pixels, preprocess, self.device)
        targets = val.cache.masks.astype(np.float32)[:, None] / 255.0
        loss = float(segmentation_loss(torch.from_numpy(logits), torch.from_numpy(targets)))
        metrics = _metrics_dict(list(val.cache.masks), list(logits[:, 0] >= 0))
        row = {"val_loss": loss} | {f"val_{name}": metrics[name] for name in METRIC_NAMES}
        if row["val_jaccard"] > self.best_score:
            self.best_score = row["val_jaccard"]
            self.best_weights = _plain(model)
        return row

    def _resume(self, model, optimizer, critic, critic_optimizer) -> tuple[int, list[dict]]:
        if not self.config.resume:
            return 0, []
        state = checkpoint.load_training_state(self.run_dir)
        if state is None:
            self.log(f"--resume: no {checkpoint.LAST_STATE} in {self.run_dir}; starting from epoch 1")
            return 0, []
        if state.get("recipe") != comparable_recipe(self.config.recipe()):
            raise UsageError(
                f"--resume with a different recipe than the interrupted run in {self.run_dir}",
                fix="resume with the same arguments, or use a new --out",
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
            critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.best_score = float(state["best_score"])
        self.best_weights = state.get("best_weights") or None
        self.log(f"resumed from {self.run_dir / checkpoint.LAST_STATE} after epoch {state['epoch'] + 1}")
        return int(state["epoch"]) + 1, list(state["history"])

    def _end_epoch(self, model, optimizer, critic, critic_optimizer, epoch: int, history: list[dict], row: dict) -> None:
        self.log(f"epoch {epoch + 1}/{self.config.epochs}: {format_row(row)}")
        write_metrics_csv(self.run_dir / "metrics.csv", history)
        state = {
            "epoch": epoch,
            "history": history,
            "optimizer": optimizer.state_dict(),
            "critic": _plain(critic) if critic is not None else {},
            "critic_optimizer": critic_optimizer.state_dict() if critic_optimizer is not None else {},
            "best_score": self.best_score,
            "best_weights": self.best_weights or {},
            "recipe": comparable_recipe(self.config.recipe()),
        }
        checkpoint.save_training_state(model, state, self.run_dir)

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
            self.log(
                f"{name}: Jaccard {result['jaccard']:.3f}, Dice {result['dice']:.3f}, pixel accuracy {result['pixel_accuracy']:.3f}, "
                f"sensitivity {result['sensitivity']:.3f}, specificity {result['specificity']:.3f} (n={result['n']}, original size)"
            )
        return metrics


def train_segmenter(config: SegmentConfig) -> TrainResult:
    started = time.time()
    result = _Trainer(config).run()
    logger.info(f"edgederm: trained in {time.time() - started:.0f} s; model in {result.run_dir}")
    return result
