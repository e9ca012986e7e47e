"""Training a lesion classifier: ``head`` (linear probe on cached features) or ``full`` fine-tuning.

What is particular to classifiers lives here: the data path (layout -> grouped split ->
Preprocess.fit cache), the class weighting, ``--init-from``, the two ways to train an epoch
(``_HeadTask`` and ``_FullTask``), the validation score (balanced accuracy), the temperature
calibration and the final evaluation. The epoch loop with its checkpoints, ``--resume`` and best
epoch is ``training/loop.py``; EMA, distillation, QAT and pruning are extensions
(``training/extensions.py``) that ``build_extensions`` picks from the config. The recipe itself,
``TrainConfig``, is defined in ``training/config.py`` and imported from here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import DataError, UsageError
from ..core.labels import DX_CODES
from ..core.log import get_logger, progress
from ..core.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..core.spec import ModelSpec
from ..data.pixels import PixelCache, load_pixels
from ..data.samples import SampleSet
from ..metrics import classification_metrics
from ..metrics.decision import add_floor, choose_decision, describe_floor, parse_floor, training_prior
from ..metrics.operating_point import choose_operating_point, sensitivity_specificity
from ..models import checkpoint, create_model, get_entry, pruning
from ..models.inference import forward_batches, normalize_tensor, softmax
from ..runtime.readout import describe
from .augment import augment_batch
from .calibration import fit_temperature, fold_temperature
from .common import TrainResult, assign_splits, cosine_lr, held_out, set_lr, split_options, split_rows, write_splits
from .config import TrainConfig
from .distributed import DistContext, all_gather_arrays, setup, teardown
from .extensions import Distillation, Pruning, QuantizationAware, WeightAverage, check_teacher_split
from .loop import Extensions, TrainingLoop, epoch_seed, save_run

logger = get_logger(__name__)

__all__ = ["TrainConfig", "build_extensions", "train_classifier"]


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class SplitData:
    dataset: SampleSet
    cache: PixelCache
    labels: np.ndarray  # class indices for the rows of cache.pixels


def _class_names(train: SampleSet) -> list[str]:
    present = {s.label for s in train.samples if s.split == "train"}
    return [code for code in DX_CODES if code in present]


def _warn_empty_classes(name: str, dataset: SampleSet, class_names: list[str]) -> None:
    counts = dataset.class_counts()
    empty = [c for c in class_names if counts.get(c, 0) == 0]
    if empty:
        logger.warning(f"warning: the {name} split has no samples of {', '.join(empty)}; its metrics for them are undefined")


def _load_split(dataset: SampleSet, name: str, preprocess: Preprocess, class_names: list[str]) -> SplitData | None:
    chosen = [i for i, s in enumerate(dataset.samples) if s.split == name] if name != "*" else list(range(len(dataset)))
    if not chosen:
        return None
    subset = dataset.subset(chosen, f"[{name}]" if name != "*" else "")
    unknown = sorted({s.label for s in subset.samples} - set(class_names))
    if unknown:
        raise DataError(
            f"classes {unknown} appear in the {name} split but not in training",
            path=dataset.spec,
            fix="every evaluated class needs training images",
        )
    cache = load_pixels(subset, preprocess, desc=name if name != "*" else "val")
    if not cache.kept:
        raise DataError(f"every image of the {name} split failed to load", path=dataset.spec)
    labels = np.array([class_names.index(subset.samples[i].label) for i in cache.kept], np.int64)
    return SplitData(subset, cache, labels)


# ----------------------------------------------------------------------------------------------
# Model pieces


def _preprocess_for(config: TrainConfig) -> tuple[Preprocess, str]:
    entry = get_entry(config.arch)
    weights = entry.default_weights if config.weights == "default" else config.weights
    mean, std = (entry.weights[weights].mean, entry.weights[weights].std) if weights in entry.weights else (IMAGENET_MEAN, IMAGENET_STD)
    return Preprocess(input_size=config.img_size, resize=config.resize, mean=mean, std=std), weights


def _classifier(model: nn.Module) -> nn.Linear:
    head = getattr(model, "module", model).get_classifier()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a linear classifier, got {type(head).__name__}")
    return head


@torch.no_grad()
def _zero_head(model: nn.Module) -> None:
    # A zero head starts at uniform probabilities (loss = log C); timm's fan-out init of a fresh
    # head gives logits in the tens on pretrained features and wastes the first epochs.
    head = _classifier(model)
    head.weight.zero_()
    if head.bias is not None:
        head.bias.zero_()


def _features(model: nn.Module):
    def extract(batch: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(batch), pre_logits=True)

    return extract


def _class_weights(labels: np.ndarray, num_classes: int, power: float, balance: str) -> torch.Tensor:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if balance == "none":
        return torch.ones(num_classes)
    weights = np.where(counts > 0, (counts.sum() / (num_classes * np.maximum(counts, 1))) ** power, 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


def _bn_eps(model: nn.Module) -> dict[str, float]:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return {"bn_eps": module.eps} if module.eps != 1e-5 else {}
    return {}


def _init_source(config: TrainConfig, class_names: list[str], dataset: SampleSet, external_val: SampleSet | None):
    """The model and spec of ``--init-from``, after checking it is the same model on the same split.

    The split check keeps fine-tuning (QAT, a second schedule) lesion-disjoint: a run that starts
    from weights trained with other val/test lesions would have trained on this run's test images.
    The train splits may differ: a fine-tune may add images (``--extra-train``).

    Another ``--img-size`` is allowed (a student at a lower resolution): the convolutions and the
    global pool do not depend on it.
    """
    source_model, source_spec = checkpoint.load_checkpoint(config.init_from)
    given = (config.arch, class_names)
    theirs = (source_spec.arch, source_spec.class_names)
    if source_spec.task != "classification" or given != theirs:
        raise UsageError(
            f"--init-from {config.init_from} is a {theirs[0]} for classes {theirs[1]}; this run is a {given[0]} for {given[1]}",
            fix=f"pass --arch {theirs[0]} and the data it was trained on",
        )
    if held_out(split_rows(Path(config.init_from) / "splits.csv")) != held_out(split_rows(None, dataset, external_val)):
        raise UsageError(
            f"--init-from {config.init_from} was validated and tested on other images (its splits.csv)",
            fix=f"split as it was ({split_options(source_spec)}) so no test lesion is trained on",
        )
    return source_model, source_spec


def _pruned_widths(model: nn.Module, arch: str, num_classes: int) -> dict[str, list[int]]:
    """``{"mid_channels": [...]}`` when the model's blocks are narrower than the arch's own, else {}."""
    widths = pruning.mid_channels(model)
    return {"mid_channels": widths} if widths != pruning.mid_channels(create_model(arch, num_classes)) else {}


def _teacher_sha(run: str | None) -> str | None:
    if run is None:
        return None
    return ModelSpec.load(checkpoint.resolve_checkpoint(run)[1]).source_sha256


def _val_columns(logits: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], float]:
    """Validation loss and metrics for metrics.csv, and the score that picks the best epoch (balanced accuracy)."""
    probs = softmax(logits)
    loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    names = [str(i) for i in range(probs.shape[1])]
    metrics = classification_metrics(labels, probs, names)
    row = {"val_loss": loss, "val_accuracy": metrics.accuracy, "val_balanced_accuracy": metrics.balanced_accuracy}
    row["val_macro_auc"] = metrics.macro_auc if metrics.macro_auc is not None else float("nan")
    return row, row["val_balanced_accuracy"]


def _full_batches(config: TrainConfig, n: int, context: DistContext) -> tuple[int, int, int]:
    """--mode full: (images per process, batch size, steps per epoch) for ``n`` training images."""
    per_rank = n // context.world_size
    batch = min(config.batch_size, per_rank)
    return per_rank, batch, max(1, per_rank // batch)


def build_extensions(
    config: TrainConfig, class_names: list[str], train: SplitData, preprocess: Preprocess, context: DistContext
) -> Extensions:
    """The extensions a recipe asks for. Head mode trains a linear probe on cached features: none apply (the config refuses them)."""
    if config.mode != "full":
        return Extensions()
    found = []
    if config.prune:
        found.append(Pruning(config.prune, train.cache.pixels, preprocess, context.device))
    if config.qat:
        _, batch, steps_per_epoch = _full_batches(config, len(train.labels), context)
        found.append(QuantizationAware(train.cache.pixels, preprocess, context, batch, steps_per_epoch, fine_tune=bool(config.init_from)))
    if config.distill_from:
        found.append(
            Distillation(config.distill_from, class_names, preprocess, context.device, config.distill_weight, config.distill_temperature)
        )
    if config.ema:
        found.append(WeightAverage(config.ema))
    return Extensions(found)


# ----------------------------------------------------------------------------------------------
# One epoch: head or full


class _HeadTask:
    """--mode head: the frozen backbone's features are computed once; each epoch trains the linear head on them."""

    def __init__(self, model: nn.Module, criterion: nn.Module, train: SplitData, val: SplitData | None, preprocess, config, context):
        self.model, self.criterion, self.val, self.config, self.context = model, criterion, val, config, context
        model.eval()
        extract = _features(model)
        features = {}
        for name, split in (("train", train), ("val", val)):
            if split is None:
                continue
            shard = split.cache.pixels[context.rank :: context.world_size]
            local = forward_batches(extract, shard, preprocess, context.device, desc=f"features {name}")
            gathered = all_gather_arrays(context, local)
            # Undo the rank interleaving so row i is sample i again.
            order = np.concatenate([np.arange(len(split.cache.pixels))[r :: context.world_size] for r in range(context.world_size)])
            rows = np.empty_like(gathered)
            rows[order] = gathered
            features[name] = torch.from_numpy(rows)
        self.head = _classifier(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in self.head.parameters():
            parameter.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.x_train, self.y_train = features["train"].to(context.device), torch.from_numpy(train.labels).to(context.device)
        self.x_val = features.get("val")
        self.steps_per_epoch = max(1, math.ceil(len(self.x_train) / config.batch_size))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config, steps = self.config, self.steps_per_epoch
        generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
        order = torch.randperm(len(self.x_train), generator=generator)
        self.head.train()
        total = 0.0
        for step in range(steps):
            index = order[step * config.batch_size : (step + 1) * config.batch_size].to(self.context.device)
            set_lr(cosine_lr(epoch * steps + step, config.epochs * steps, steps, config.lr), self.optimizer)
            loss = self.criterion(self.head(self.x_train[index]), self.y_train[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(index)
        return {"train_loss": total / len(self.x_train), "lr": self.optimizer.param_groups[0]["lr"]}

    def validate(self, judged: nn.Module) -> tuple[dict[str, float], float] | None:
        if self.val is None:
            return None
        with torch.no_grad():
            logits = _classifier(judged).eval()(self.x_val.to(self.context.device)).cpu().numpy()
        return _val_columns(logits, self.val.labels)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class _FullTask:
    """--mode full: every weight trains on augmented batches (across processes under torchrun), through the extensions."""

    def __init__(
        self, model: nn.Module, criterion: nn.Module, train: SplitData, val: SplitData | None, preprocess, config, context, extensions
    ):
        self.model, self.criterion, self.train, self.val = model, criterion, train, val
        self.preprocess, self.config, self.context, self.extensions = preprocess, config, context, extensions
        on_cuda = context.device.type == "cuda"
        self.use_amp = on_cuda and config.amp != "off" and extensions.allow_amp
        if config.amp == "on" and not (on_cuda and extensions.allow_amp):
            logger.warning("warning: --amp on needs CUDA and no --qat; training in fp32")
        self.per_rank, self.batch, self.steps_per_epoch = _full_batches(config, len(train.labels), context)
        self.net = extensions.on_start(model)
        if self.net is model and context.enabled:
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=[context.device.index] if on_cuda else None)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config, context, train, batch, steps = self.config, self.context, self.train, self.batch, self.steps_per_epoch
        seed = epoch_seed(config.seed, epoch)
        order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[: self.per_rank * context.world_size]
        mine = order[context.rank :: context.world_size]
        aug_generator = torch.Generator().manual_seed(seed * 131 + context.rank)
        self.extensions.train_mode(self.net)
        total, seen = 0.0, 0
        bar = progress(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        for step in bar:
            index = mine[step * batch : (step + 1) * batch].numpy()
            pixels = torch.from_numpy(train.cache.pixels[index]).to(context.device, non_blocking=True)
            augmented = augment_batch(pixels, aug_generator, policy=config.augment)
            inputs = normalize_tensor(augmented, self.preprocess)
            targets = torch.from_numpy(train.labels[index]).to(context.device)
            warmup = int(config.warmup_epochs * steps)
            set_lr(cosine_lr(epoch * steps + step, config.epochs * steps, warmup, config.lr), self.optimizer)
            with torch.autocast(device_type=context.device.type, dtype=torch.float16, enabled=self.use_amp):
                logits = self.net(inputs)
                loss = self.extensions.loss(logits, self.criterion(logits, targets), augmented)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.extensions.after_step(self.model)
            total += float(loss.detach()) * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        return {"train_loss": total / max(1, seen), "lr": self.optimizer.param_groups[0]["lr"]}

    def validate(self, judged: nn.Module) -> tuple[dict[str, float], float] | None:
        if self.val is None:
            return None
        logits = forward_batches(self.extensions.runner(judged), self.val.cache.pixels, self.preprocess, self.context.device)
        return _val_columns(logits, self.val.labels)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


# ----------------------------------------------------------------------------------------------
# The run


class _Trainer:
    """One classifier run: data and split, model, the loop over a head or full task, calibration, evaluation, files."""

    def __init__(self, config: TrainConfig, context: DistContext):
        self.config = config
        self.context = context
        self.run_dir = config.out

    def run(self) -> TrainResult:
        config, context = self.config, self.context
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        dataset, external_val = assign_splits(config, require_labels=True)
        class_names = _class_names(dataset)
        if len(class_names) < 2:
            raise DataError(f"training needs at least 2 classes, found {class_names}", path=config.data)
        preprocess, weights = _preprocess_for(config)
        source = _init_source(config, class_names, dataset, external_val) if config.init_from else None
        if config.distill_from:  # before any image is read: a leaking teacher fails fast
            check_teacher_split(config.distill_from, split_rows(None, dataset, external_val))
        if source is not None:
            # the source's preprocessing, at this run's input size
            preprocess, weights = replace(source[1].preprocess, input_size=config.img_size), f"run:{config.init_from}"
        logger.info(
            f"edgederm: {config.mode} training {config.arch} at {config.img_size}px on {dataset.spec} "
            f"({len(dataset)} images, {len(set(dataset.groups))} groups, classes {class_names}), "
            f"device {context.device}, world size {context.world_size}"
        )
        for note in dataset.notes:
            logger.warning(f"warning: {note}")
        if context.is_main:
            write_splits(self.run_dir / "splits.csv", dataset, external_val)

        train = _load_split(dataset, "train", preprocess, class_names)
        if train is None:
            raise DataError("the train split is empty", path=config.data)
        val = (
            _load_split(external_val, "*", preprocess, class_names)
            if external_val
            else _load_split(dataset, "val", preprocess, class_names)
        )
        test = None if config.skip_test else _load_split(dataset, "test", preprocess, class_names)
        for name, split in (("train", train), ("val", val), ("test", test)):
            if split is not None:
                _warn_empty_classes(name, split.dataset, class_names)
        skipped = [line for split in (train, val, test) if split for line in split.cache.failures]
        for line in skipped:
            logger.info(f"skipped unreadable image: {line}")

        if source is not None:
            model = source[0]
        else:
            model = create_model(config.arch, len(class_names), None if weights == "none" else weights)
            _zero_head(model)
        # After the student is created: a teacher's random init must not shift the student's.
        extensions = build_extensions(config, class_names, train, preprocess, context)
        extensions.on_model(model)
        model = model.to(context.device, memory_format=torch.channels_last)
        class_weights = _class_weights(train.labels, len(class_names), config.class_weight_power, config.balance).to(context.device)
        criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)
        if config.mode == "head":
            task = _HeadTask(model, criterion, train, val, preprocess, config, context)
        else:
            task = _FullTask(model, criterion, train, val, preprocess, config, context, extensions)
        TrainingLoop(config, context, extensions).fit(task)

        spec = ModelSpec(
            task="classification",
            arch=config.arch,
            class_names=class_names,
            preprocess=preprocess,
            output="logits",
            arch_options={**_bn_eps(model), **_pruned_widths(model, config.arch, len(class_names))},
            training={
                "recipe": config.recipe(),
                "weights": weights,
                "init_from_sha256": source[1].source_sha256 if source else None,
                "teacher_sha256": _teacher_sha(config.distill_from),
                "data": dataset.summary(),
                "val_data": external_val.summary() if external_val else None,
                "skipped_images": len(skipped),
                "world_size": context.world_size,
            },
        )
        spec.metrics = self._calibrate_and_evaluate(model, spec, val, test, preprocess)
        if context.is_main:
            save_run(model, spec, self.run_dir)
        if skipped:
            logger.info(f"{len(skipped)} unreadable image(s) were skipped (listed above)")
        context.barrier()
        return TrainResult(self.run_dir, spec, spec.metrics, skipped)

    def _calibrate_and_evaluate(
        self, model: nn.Module, spec: ModelSpec, val: SplitData | None, test: SplitData | None, preprocess: Preprocess
    ) -> dict[str, Any]:
        device = self.context.device
        metrics: dict[str, Any] = {}
        if val is not None:
            logits = forward_batches(model.eval(), val.cache.pixels, preprocess, device)
            temperature = fit_temperature(logits, val.labels)
            metrics["val_uncalibrated"] = classification_metrics(val.labels, softmax(logits), spec.class_names).to_dict()
            fold_temperature(_classifier(model), temperature)
            spec.temperature, spec.temperature_folded = temperature, True
            logger.info(f"temperature scaling: T = {temperature:.3f} (folded into the classifier)")
        for name, split in (("val", val), ("test", test)):
            if split is None:
                continue
            logits = forward_batches(model.eval(), split.cache.pixels, preprocess, device)
            probs = softmax(logits)
            if name == "val":
                spec.decision = self._decision(spec, split.labels, probs)
            result = classification_metrics(split.labels, probs, spec.class_names, decision=spec.decision).to_dict()
            if name == "val":
                spec.operating_point = choose_operating_point(spec, split.labels, probs, self.config.target_sensitivity)
            if spec.operating_point:
                result["operating_point"] = sensitivity_specificity(spec, split.labels, probs, spec.operating_point["threshold"])
            metrics[name] = result
            auc = result["macro_auc"]
            logger.info(
                f"{name}: accuracy {result['accuracy']:.3f}, balanced accuracy {result['balanced_accuracy']:.3f}, "
                f"macro AUC {'n/a' if auc is None else f'{auc:.3f}'}, ECE {result['ece']:.3f} (n={result['n']})"
            )
        return metrics

    def _decision(self, spec: ModelSpec, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        decision: dict[str, Any] = {}
        if self.config.decision == "balanced":
            decision = choose_decision(labels, probs, training_prior(spec), spec.class_names)
            if decision:
                before, after = decision["balanced_accuracy"]["argmax"], decision["balanced_accuracy"]["balanced"]
                logger.info(f"decision rule: {describe(decision)}, val balanced accuracy {before:.3f} -> {after:.3f}")
            else:
                logger.info("decision rule: argmax (the balanced rule did not beat it on validation)")
        if self.config.min_sensitivity:
            decision = add_floor(decision, labels, probs, spec.class_names, *parse_floor(self.config.min_sensitivity, spec.class_names))
            if floor := decision.get("floor"):
                logger.info(f"floor on validation: {describe_floor(floor)}")
        return decision


def train_classifier(config: TrainConfig) -> TrainResult:
    context = setup(config.device)
    started = time.time()
    try:
        result = _Trainer(config, context).run()
    finally:
        teardown(context)
    logger.info(f"edgederm: trained in {time.time() - started:.0f} s; model in {result.run_dir}")
    return result
