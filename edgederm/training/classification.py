"""Training a lesion classifier: ``head`` (linear probe on cached features) or ``full`` fine-tuning.

Both modes share the data path (layout -> grouped split -> Preprocess.fit cache), the class
weighting, the per-epoch checkpoint and ``--resume``, the temperature calibration and the final
evaluation. Every epoch's randomness derives from (seed, epoch), so a run resumed from its last
checkpoint replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import atomic
from ..core.errors import DataError, UsageError
from ..core.labels import DX_CODES
from ..core.log import get_logger, progress
from ..core.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..core.spec import ModelSpec
from ..data.pixels import PixelCache, load_pixels
from ..data.samples import SampleSet
from ..metrics import classification_metrics
from ..metrics.decision import RULES as DECISION_RULES
from ..metrics.decision import choose_decision, training_prior
from ..metrics.operating_point import DEFAULT_TARGET_SENSITIVITY, choose_operating_point, sensitivity_specificity
from ..models import checkpoint, create_model, get_entry, pruning
from ..models.inference import forward_batches, normalize_tensor, softmax
from ..runtime.readout import describe
from . import qat
from .augment import POLICIES, augment_batch
from .calibration import fit_temperature, fold_temperature
from .common import TrainResult, assign_splits, check_fractions, recipe_of, same_recipe, write_metrics_csv
from .common import comparable_recipe as _comparable
from .common import cosine_lr as _cosine_lr
from .common import write_splits as _write_splits
from .distributed import DistContext, all_gather_arrays, setup, teardown

MODES = ("head", "full")
PRUNE_IMAGES = 256  # train images whose activations rank the channels --prune removes
BALANCE = ("weighted_loss", "none")

logger = get_logger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: Path
    arch: str = "efficientnet_lite0"
    img_size: int = 224
    mode: str = "head"
    epochs: int | None = None  # None: 30 for head, 10 for full
    val_data: str | None = None
    test_fraction: float = 0.0
    val_fraction: float = 0.15
    batch_size: int | None = None  # None: 256 for head, 32 for full
    lr: float | None = None  # None: 3e-3 for head, 1e-3 for full
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    balance: str = "weighted_loss"
    class_weight_power: float = 0.5
    augment: str = "basic"
    ema: float = 0.0  # full mode: 0 = off, else the decay of a weight average that is validated and kept
    init_from: str | None = None  # a run dir whose weights (and split) this run starts from
    qat: bool = False  # full mode: train through simulated int8 (see training/qat.py)
    prune: float = 0.0  # full mode with --init-from: drop this share of each block's expansion channels first
    distill_from: str | None = None  # a teacher run dir: its soft labels join the loss
    distill_weight: float = 0.5  # share of the loss taken by the teacher's soft labels
    distill_temperature: float = 2.0
    warmup_epochs: float | None = None  # None: 1 epoch, or 0.1 when fine-tuning a trained run (--init-from)
    weights: str = "default"
    resize: str = "letterbox"
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY  # for the malignant-class operating point
    decision: str = "balanced"  # how the named class is read from the probabilities (edgederm.runtime.readout.decide)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    resume: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.balance not in BALANCE:
            raise UsageError(f"--balance must be one of {BALANCE}, got {self.balance!r}")
        if self.decision not in DECISION_RULES:
            raise UsageError(f"--decision must be one of {DECISION_RULES}, got {self.decision!r}")
        if self.epochs is None:
            self.epochs = 30 if self.mode == "head" else 10
        if self.warmup_epochs is None:
            self.warmup_epochs = 0.1 if self.init_from else 1.0
        if self.batch_size is None:
            self.batch_size = 256 if self.mode == "head" else 32
        if self.lr is None:
            self.lr = 3e-3 if self.mode == "head" else 1e-3
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("--epochs, --batch-size and --lr must be positive")
        check_fractions(self.val_fraction, self.test_fraction)
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"--ema must be a decay in [0, 1), got {self.ema}")
        if self.augment not in POLICIES:
            raise UsageError(f"--augment must be one of {POLICIES}, got {self.augment!r}")
        if self.amp not in ("auto", "on", "off"):
            raise UsageError("--amp must be auto, on or off")
        if (self.qat or self.distill_from) and self.mode != "full":
            raise UsageError("--qat and --distill-from train the whole network", fix="add --mode full")
        if self.qat and self.ema:
            raise UsageError("--qat keeps the fake-quantized weights it validates; it does not combine with --ema", fix="drop --ema")
        if self.prune:
            if not 0.0 < self.prune < 1.0:
                raise UsageError(f"--prune must be a share in (0, 1), got {self.prune}")
            if not self.init_from or self.mode != "full":
                raise UsageError("--prune shrinks a trained network, then fine-tunes it", fix="add --init-from RUN --mode full")
            if self.qat:
                raise UsageError("--prune and --qat in one run", fix="prune first, then fine-tune the pruned run with --init-from it --qat")
        if not 0.0 < self.distill_weight <= 1.0 or self.distill_temperature <= 0:
            raise UsageError("--distill-weight must be in (0, 1] and --distill-temperature positive")

    def recipe(self) -> dict[str, Any]:
        return recipe_of(self)


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class SplitData:
    dataset: SampleSet
    cache: PixelCache
    labels: np.ndarray  # class indices for the rows of cache.pixels


def _assign_splits(config: TrainConfig) -> tuple[SampleSet, SampleSet | None]:
    """The training set, with val/test split names, and an external validation set if given."""
    return assign_splits(config, require_labels=True)


def _class_names(train: SampleSet) -> list[str]:
    present = {s.label for s in train.samples if s.split == "train"}
    return [code for code in DX_CODES if code in present]


def _warn_empty_classes(name: str, dataset: SampleSet, class_names: list[str], log) -> None:
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
    """
    source_model, source_spec = checkpoint.load_checkpoint(config.init_from)
    given = (config.arch, config.img_size, class_names)
    theirs = (source_spec.arch, source_spec.preprocess.input_size, source_spec.class_names)
    if source_spec.task != "classification" or given != theirs:
        raise UsageError(
            f"--init-from {config.init_from} is a {theirs[0]} at {theirs[1]} px for classes {theirs[2]}; "
            f"this run is a {given[0]} at {given[1]} px for {given[2]}",
            fix=f"pass --arch {theirs[0]} --img-size {theirs[1]} and the data it was trained on",
        )
    if _split_rows(Path(config.init_from) / "splits.csv") != _split_rows(None, dataset, external_val):
        raise UsageError(
            f"--init-from {config.init_from} was trained on another train/val/test split (its splits.csv)",
            fix="pass the same --data, --val-data, --val-fraction, --test-fraction and --seed so no test lesion is trained on",
        )
    return source_model, source_spec


def _split_rows(path: Path | None, dataset: SampleSet | None = None, external_val: SampleSet | None = None) -> set[tuple[str, str]]:
    """(image id, split) pairs, from a run's splits.csv or from the split this run just made."""
    if path is not None:
        import csv

        if not path.is_file():
            return set()
        with open(path, newline="") as handle:
            return {(row["image_id"], row["split"]) for row in csv.DictReader(handle)}
    rows = {(s.image_id, s.split) for s in dataset.samples}
    return rows | {(s.image_id, "val") for s in (external_val.samples if external_val else [])}


def _check_teacher_split(teacher: str, ours: set[tuple[str, str]], log) -> None:
    """A teacher that trained on this run's val or test images would pass their labels to the student."""
    theirs = _split_rows(checkpoint.resolve_checkpoint(teacher)[1].parent / "splits.csv")
    if not theirs:
        logger.warning(f"warning: --distill-from {teacher} has no splits.csv, so it cannot be checked against this run's val/test images")
        return
    trained = {image for image, split in theirs if split == "train"}
    leaked = sorted(image for image, split in ours if split != "train" and image in trained)
    if leaked:
        raise UsageError(
            f"--distill-from {teacher} was trained on {len(leaked)} of this run's val/test images (e.g. {leaked[0]})",
            fix="distil from a teacher trained on the same split: the same --data, --val-fraction, --test-fraction and --seed",
        )


def _pruned_widths(model: nn.Module, arch: str, num_classes: int) -> dict[str, list[int]]:
    """``{"mid_channels": [...]}`` when the model's blocks are narrower than the arch's own, else {}."""
    widths = pruning.mid_channels(model)
    return {"mid_channels": widths} if widths != pruning.mid_channels(create_model(arch, num_classes)) else {}


def _teacher_sha(run: str | None) -> str | None:
    if run is None:
        return None
    return ModelSpec.load(checkpoint.resolve_checkpoint(run)[1]).source_sha256


# ----------------------------------------------------------------------------------------------
# The loop


class _Trainer:
    def __init__(self, config: TrainConfig, context: DistContext):
        self.config = config
        self.context = context
        self.run_dir = config.out
        self.best_score = -1.0  # validation balanced accuracy of the best epoch so far
        self.best_weights: dict[str, torch.Tensor] | None = None

    def log(self, message: str) -> None:
        logger.info(message)

    def run(self) -> TrainResult:
        config, context = self.config, self.context
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        dataset, external_val = _assign_splits(config)
        class_names = self.class_names = _class_names(dataset)
        if len(class_names) < 2:
            raise DataError(f"training needs at least 2 classes, found {class_names}", path=config.data)
        preprocess, weights = _preprocess_for(config)
        source = _init_source(config, class_names, dataset, external_val) if config.init_from else None
        if config.distill_from:
            _check_teacher_split(config.distill_from, _split_rows(None, dataset, external_val), self.log)
        if source is not None:
            preprocess, weights = source[1].preprocess, f"run:{config.init_from}"
        self.log(
            f"edgederm: {config.mode} training {config.arch} at {config.img_size}px on {dataset.spec} "
            f"({len(dataset)} images, {len(set(dataset.groups))} groups, classes {class_names}), "
            f"device {context.device}, world size {context.world_size}"
        )
        for note in dataset.notes:
            logger.warning(f"warning: {note}")
        if context.is_main:
            _write_splits(self.run_dir / "splits.csv", dataset, external_val)

        train = _load_split(dataset, "train", preprocess, class_names)
        if train is None:
            raise DataError("the train split is empty", path=config.data)
        val = (
            _load_split(external_val, "*", preprocess, class_names)
            if external_val
            else _load_split(dataset, "val", preprocess, class_names)
        )
        test = _load_split(dataset, "test", preprocess, class_names)
        for name, split in (("train", train), ("val", val), ("test", test)):
            if split is not None:
                _warn_empty_classes(name, split.dataset, class_names, self.log)
        skipped = [line for split in (train, val, test) if split for line in split.cache.failures]
        for line in skipped:
            self.log(f"skipped unreadable image: {line}")

        if source is not None:
            model = source[0]
            if config.prune:
                self._prune(model, train, preprocess, context.device)
        else:
            model = create_model(config.arch, len(class_names), None if weights == "none" else weights)
            _zero_head(model)
        model = model.to(context.device, memory_format=torch.channels_last)
        class_weights = _class_weights(train.labels, len(class_names), config.class_weight_power, config.balance).to(context.device)
        criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)

        if config.mode == "head":
            self._train_head(model, criterion, train, val, preprocess)
        else:
            self._train_full(model, criterion, train, val, preprocess)

        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
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
        metrics = self._calibrate_and_evaluate(model, spec, val, test, preprocess)
        spec.metrics = metrics
        if context.is_main:
            checkpoint.save_model(model, spec, self.run_dir)
            atomic.write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        if skipped:
            self.log(f"{len(skipped)} unreadable image(s) were skipped (listed above)")
        context.barrier()
        return TrainResult(self.run_dir, spec, metrics, skipped)

    def _prune(self, model: nn.Module, train: SplitData, preprocess: Preprocess, device: torch.device) -> None:
        """Shrink the --init-from network before fine-tuning; a resumed run re-prunes, then loads its own weights."""
        before = sum(pruning.mid_channels(model))
        sample = torch.from_numpy(train.cache.pixels[:PRUNE_IMAGES])
        batches = (normalize_tensor(sample[i : i + 64].to(device), preprocess) for i in range(0, len(sample), 64))
        model.to(device)
        widths = pruning.prune(model, self.config.prune, pruning.importance(model, batches))
        self.log(
            f"pruned {before - sum(widths)} of {before} expansion channels ({len(widths)} blocks), by importance on {len(sample)} train images"
        )

    # -- head ------------------------------------------------------------------------------

    def _train_head(self, model, criterion, train: SplitData, val: SplitData | None, preprocess: Preprocess) -> None:
        config, context = self.config, self.context
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
        head = _classifier(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        x_train, y_train = features["train"].to(context.device), torch.from_numpy(train.labels).to(context.device)
        steps_per_epoch = max(1, math.ceil(len(x_train) / config.batch_size))
        start_epoch, history = self._resume(model, optimizer)
        for epoch in range(start_epoch, config.epochs):
            generator = torch.Generator().manual_seed(config.seed * 1009 + epoch)
            order = torch.randperm(len(x_train), generator=generator)
            head.train()
            total = 0.0
            for step in range(steps_per_epoch):
                index = order[step * config.batch_size : (step + 1) * config.batch_size].to(context.device)
                self._set_lr(optimizer, epoch * steps_per_epoch + step, config.epochs * steps_per_epoch, steps_per_epoch)
                loss = criterion(head(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
            row = {"epoch": epoch + 1, "train_loss": total / len(x_train), "lr": optimizer.param_groups[0]["lr"]}
            if val is not None:
                with torch.no_grad():
                    head.eval()
                    logits = head(features["val"].to(context.device)).cpu().numpy()
                row.update(self._val_row(logits, val.labels, model))
            history.append(row)
            self._end_epoch(model, optimizer, epoch, history, row)

    # -- full ------------------------------------------------------------------------------

    def _train_full(self, model, criterion, train: SplitData, val: SplitData | None, preprocess: Preprocess) -> None:
        config, context = self.config, self.context
        use_amp = context.device.type == "cuda" and config.amp != "off" and not config.qat
        if config.amp == "on" and (context.device.type != "cuda" or config.qat):
            logger.warning("warning: --amp on needs CUDA and no --qat; training in fp32")
        n = len(train.labels)
        per_rank = n // context.world_size
        batch = min(config.batch_size, per_rank)
        steps_per_epoch = max(1, per_rank // batch)
        net: nn.Module = model
        if config.qat:
            if context.enabled:
                raise UsageError("--qat trains in one process", fix="run it without torchrun")
            example = normalize_tensor(torch.from_numpy(train.cache.pixels[:batch]).to(context.device), preprocess)
            net = qat.prepare(model, example)
            if config.init_from:  # a resumed run then loads its own ranges over these
                pixels = train.cache.pixels
                chunks = (
                    normalize_tensor(torch.from_numpy(pixels[i : i + batch]).to(context.device), preprocess)
                    for i in range(0, batch * min(steps_per_epoch, 8), batch)
                )
                self.log(f"--qat: activation ranges from {qat.calibrate(net, chunks) * batch} training images")
        elif context.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
        teacher = _Teacher(config, self.class_names, preprocess, context.device) if config.distill_from else None
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        ema = WeightAverage(model, config.ema) if config.ema else None
        start_epoch, history = self._resume(model, optimizer, scaler, ema, net if config.qat else None)
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(config.seed * 1009 + epoch)  # dropout and drop-path replay on resume
            generator = torch.Generator().manual_seed(config.seed * 1009 + epoch)
            order = torch.randperm(n, generator=generator)[: per_rank * context.world_size]
            mine = order[context.rank :: context.world_size]
            aug_generator = torch.Generator().manual_seed((config.seed * 1009 + epoch) * 131 + context.rank)
            if config.qat:
                # Fine-tuning a trained run keeps its batch-norm statistics (and turns dropout off): batch
                # statistics of augmented batches moved a converged Lite0 off its running ones and cost
                # 0.3 balanced accuracy in one epoch. The fake quantizers observe either way.
                qat.train_mode(net, not config.init_from)
            else:
                net.train()
            total, seen = 0.0, 0
            bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
            for step in bar:
                index = mine[step * batch : (step + 1) * batch].numpy()
                pixels = torch.from_numpy(train.cache.pixels[index]).to(context.device, non_blocking=True)
                augmented = augment_batch(pixels, aug_generator, policy=config.augment)
                inputs = normalize_tensor(augmented, preprocess)
                targets = torch.from_numpy(train.labels[index]).to(context.device)
                self._set_lr(
                    optimizer, epoch * steps_per_epoch + step, config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
                )
                with torch.autocast(device_type=context.device.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(inputs)
                    loss = criterion(logits, targets)
                    if teacher is not None:
                        loss = teacher.loss(logits, loss, augmented)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                total += float(loss.detach()) * len(index)
                seen += len(index)
                bar.set_postfix(loss=f"{total / seen:.4f}")
            row = {"epoch": epoch + 1, "train_loss": total / max(1, seen), "lr": optimizer.param_groups[0]["lr"]}
            if config.qat:
                qat.copy_weights_back(net, model)
            if val is not None and context.is_main:
                judged = ema.module if ema is not None else model
                # QAT is judged as it will ship: through the simulated int8 graph.
                runner = qat.fixed_batch(qat.train_mode(net, False), batch) if config.qat else judged.eval()
                logits = forward_batches(runner, val.cache.pixels, preprocess, context.device)
                row.update(self._val_row(logits, val.labels, judged))
            history.append(row)
            self._end_epoch(model, optimizer, epoch, history, row, scaler, ema, net if config.qat else None)
        if ema is not None and self.best_weights is None:
            self.best_weights = {k: v.detach().cpu().clone() for k, v in ema.module.state_dict().items()}

    # -- shared ----------------------------------------------------------------------------

    def _set_lr(self, optimizer, step: int, total: int, warmup: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, total, warmup, self.config.lr)

    def _val_row(self, logits: np.ndarray, labels: np.ndarray, model: nn.Module) -> dict[str, float]:
        probs = softmax(logits)
        loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
        names = [str(i) for i in range(probs.shape[1])]
        metrics = classification_metrics(labels, probs, names)
        row = {"val_loss": loss, "val_accuracy": metrics.accuracy, "val_balanced_accuracy": metrics.balanced_accuracy}
        row["val_macro_auc"] = metrics.macro_auc if metrics.macro_auc is not None else float("nan")
        if self.context.is_main and row["val_balanced_accuracy"] > self.best_score:
            self.best_score = row["val_balanced_accuracy"]
            self.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return row

    def _resume(
        self, model: nn.Module, optimizer, scaler=None, ema: WeightAverage | None = None, qat_net: nn.Module | None = None
    ) -> tuple[int, list[dict]]:
        if not self.config.resume:
            return 0, []
        state = checkpoint.load_training_state(self.run_dir)
        if state is None:
            self.log(f"--resume: no {checkpoint.LAST_STATE} in {self.run_dir}; starting from epoch 1")
            return 0, []
        if not same_recipe(state.get("recipe") or {}, _comparable(self.config.recipe()), TrainConfig):
            raise UsageError(
                f"--resume with a different recipe than the interrupted run in {self.run_dir}",
                fix="resume with the same arguments, or use a new --out",
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if qat_net is not None:
            qat_net.load_state_dict(state["qat"])  # weights and observer ranges: QAT resumes exactly
        self.best_score = float(state["best_score"])
        self.best_weights = state.get("best_weights") or None
        self.log(f"resumed from {self.run_dir / checkpoint.LAST_STATE} after epoch {state['epoch'] + 1}")
        return int(state["epoch"]) + 1, list(state["history"])

    def _end_epoch(self, model, optimizer, epoch: int, history: list[dict], row: dict, scaler=None, ema=None, qat_net=None) -> None:
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch")
        self.log(f"epoch {epoch + 1}/{self.config.epochs}: {shown}")
        if self.context.is_main:
            self._write_metrics_csv(history)
            state = {
                "epoch": epoch,
                "history": history,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
                "best_score": self.best_score,
                "best_weights": self.best_weights or {},
                "recipe": _comparable(self.config.recipe()),
            }
            if ema is not None:
                state["ema"] = ema.state_dict()
            if qat_net is not None:
                state["qat"] = qat.state_dict(qat_net)
            checkpoint.save_training_state(model, state, self.run_dir)
        self.context.barrier()

    def _write_metrics_csv(self, history: list[dict]) -> None:
        write_metrics_csv(self.run_dir / "metrics.csv", history)

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
            self.log(f"temperature scaling: T = {temperature:.3f} (folded into the classifier)")
        for name, split in (("val", val), ("test", test)):
            if split is None:
                continue
            logits = forward_batches(model.eval(), split.cache.pixels, preprocess, device)
            probs = softmax(logits)
            if name == "val" and self.config.decision == "balanced":
                spec.decision = self._balanced_decision(spec, split.labels, probs)
            result = classification_metrics(split.labels, probs, spec.class_names, decision=spec.decision).to_dict()
            if name == "val":
                spec.operating_point = choose_operating_point(spec, split.labels, probs, self.config.target_sensitivity)
            if spec.operating_point:
                result["operating_point"] = sensitivity_specificity(spec, split.labels, probs, spec.operating_point["threshold"])
            metrics[name] = result
            auc = result["macro_auc"]
            self.log(
                f"{name}: accuracy {result['accuracy']:.3f}, balanced accuracy {result['balanced_accuracy']:.3f}, "
                f"macro AUC {'n/a' if auc is None else f'{auc:.3f}'}, ECE {result['ece']:.3f} (n={result['n']})"
            )
        return metrics

    def _balanced_decision(self, spec: ModelSpec, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        decision = choose_decision(labels, probs, training_prior(spec), spec.class_names)
        if decision:
            before, after = decision["balanced_accuracy"]["argmax"], decision["balanced_accuracy"]["balanced"]
            self.log(f"decision rule: {describe(decision)}, val balanced accuracy {before:.3f} -> {after:.3f}")
        else:
            self.log("decision rule: argmax (the balanced rule did not beat it on validation)")
        return decision


class _Teacher:
    """Knowledge distillation (Hinton et al.): the teacher's softened probabilities join the loss.

    The teacher sees the student's augmented batch, resized to its own input size. Both letterbox
    (or both crop), so resizing the student's frame is the teacher's preprocessing of the same photo.
    """

    def __init__(self, config: TrainConfig, class_names: list[str], preprocess: Preprocess, device: torch.device):
        model, spec = checkpoint.load_checkpoint(config.distill_from)
        if spec.task != "classification" or spec.class_names != class_names:
            raise UsageError(
                f"--distill-from {config.distill_from} classifies {spec.class_names}, not this run's classes",
                fix="distil from a classifier trained on the same classes",
            )
        if spec.preprocess.resize != preprocess.resize:
            raise UsageError(
                f"--distill-from {config.distill_from} was trained with --resize {spec.preprocess.resize}",
                fix=f"pass --resize {spec.preprocess.resize}",
            )
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.preprocess, self.weight, self.temperature = spec.preprocess, config.distill_weight, config.distill_temperature

    def loss(self, logits: torch.Tensor, hard_loss: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            inputs = normalize_tensor(augmented, self.preprocess)
            side = self.preprocess.input_size
            if inputs.shape[-1] != side:
                inputs = nn.functional.interpolate(inputs, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            soft_targets = torch.softmax(self.model(inputs).float() / self.temperature, dim=1)
        student = torch.log_softmax(logits.float() / self.temperature, dim=1)
        soft_loss = nn.functional.kl_div(student, soft_targets, reduction="batchmean") * self.temperature**2
        return (1 - self.weight) * hard_loss + self.weight * soft_loss


class WeightAverage:
    """An exponential moving average of a model's weights (timm's ModelEma), validated instead of the raw model.

    The decay ramps up as (1 + t) / (10 + t) so the average is not stuck at the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs.detach(), 1 - decay)
            else:
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.module.load_state_dict(state["weights"])


def train_classifier(config: TrainConfig) -> TrainResult:
    context = setup(config.device)
    started = time.time()
    try:
        result = _Trainer(config, context).run()
    finally:
        teardown(context)
    logger.info(f"edgederm: trained in {time.time() - started:.0f} s; model in {result.run_dir}")
    return result
