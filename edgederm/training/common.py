"""Pieces every training task shares: grouped splits and splits.csv, the LR schedule, metrics.csv, TrainResult."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..core import atomic
from ..core.errors import DataError
from ..core.log import get_logger
from ..core.spec import ModelSpec
from ..data.layouts import load_dataset
from ..data.samples import SampleSet
from ..data.splits import check_no_leakage, grouped_stratified_split

logger = get_logger(__name__)


class SplitOptions(Protocol):
    data: str
    val_data: str | None
    extra_train: str | None
    val_fraction: float
    test_fraction: float
    seed: int


def assign_splits(config: SplitOptions, *, require_labels: bool = True) -> tuple[SampleSet, SampleSet | None]:
    """The training set, with train/val/test split names, and an external validation set if given.

    Groups (lesions) never straddle splits; labels, where known, are spread in proportion.
    """
    train = load_dataset(config.data)
    if require_labels:
        train.require_labels()
    external_val = None
    if config.val_data:
        external_val = load_dataset(config.val_data)
        if require_labels:
            external_val.require_labels()
        shared = set(train.groups) & set(external_val.groups)
        if shared:
            raise DataError(
                f"leakage: {len(shared)} group(s) are in both --data and --val-data, e.g. {sorted(shared)[0]!r}",
                path=config.val_data,
                fix="validation images must come from other lesions than the training images",
            )
    if any(s.split for s in train.samples):
        missing = [s.display_path for s in train.samples if not s.split]
        if missing:
            raise DataError(
                f"{len(missing)} rows have no split, e.g. {missing[0]}",
                path=config.data,
                fix="fill the split column for every row or leave it out entirely",
            )
        splits = [s.split or "" for s in train.samples]
    else:
        fractions = {
            "train": 1.0 - config.test_fraction - (0.0 if external_val else config.val_fraction),
            "val": 0.0 if external_val else config.val_fraction,
            "test": config.test_fraction,
        }
        splits = grouped_stratified_split(train.labels, train.groups, fractions, seed=config.seed)
    check_no_leakage(train.groups, splits, where=config.data)
    dataset = train.with_splits(splits)
    if config.extra_train:
        dataset = _join_extra_train(dataset, external_val, config.extra_train, require_labels)
    return dataset, external_val


def _join_extra_train(dataset: SampleSet, external_val: SampleSet | None, spec: str, require_labels: bool) -> SampleSet:
    """``dataset`` with every image of ``spec`` added to its train split; val and test stay those of ``--data``."""
    extra = load_dataset(spec)
    if require_labels:
        extra.require_labels()
    evaluated = [s for s in dataset.samples if s.split != "train"] + (external_val.samples if external_val else [])
    for key in ("image_id", "group"):
        shared = {getattr(s, key) for s in evaluated} & {getattr(s, key) for s in extra.samples}
        if shared:
            raise DataError(
                f"leakage: {len(shared)} {key}(s) of --extra-train are in a val/test split, e.g. {sorted(shared)[0]!r}",
                path=spec,
                fix="extra training images must come from other lesions than the validation and test images",
            )
    added = [replace(s, split="train", source=extra.spec) for s in extra.samples]
    # the spec stays --data's (splits.csv names it for rows without a source): export calibrates on it by default
    logger.info(f"edgederm: --extra-train {extra.spec}: {len(added)} images joined the train split")
    return SampleSet(dataset.spec, dataset.samples + added, dataset.root, dataset.notes + extra.notes)


def write_splits(path: Path, dataset: SampleSet, external_val: SampleSet | None) -> None:
    """One row per image. ``source`` is blank for the run's own --data (its spec.json names it) and names the spec of
    --extra-train and --val-data rows; nothing reads it back, and a blank keeps the machine's paths out of shipped files."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "group", "label", "split", "source"])
    for sample in dataset.samples:
        writer.writerow([sample.image_id, sample.group, sample.label, sample.split, sample.source or ""])
    for sample in external_val.samples if external_val else []:
        writer.writerow([sample.image_id, sample.group, sample.label, "val", external_val.spec])
    atomic.write_text(path, buffer.getvalue())


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(lr: float, *optimizers) -> None:
    """Give every parameter group of ``optimizers`` this step's learning rate."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(path, buffer.getvalue())


def format_row(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch")


@dataclass
class TrainResult:
    """What a training run leaves: its directory, the saved spec, metrics and the images it skipped."""

    run_dir: Path
    spec: ModelSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped_images: list[str] = field(default_factory=list)


def split_rows(path: Path | None, dataset: SampleSet | None = None, external_val: SampleSet | None = None) -> set[tuple[str, str]]:
    """(image id, split) pairs, from a run's splits.csv or from the split this run just made."""
    if path is not None:
        if not path.is_file():
            return set()
        with open(path, newline="") as handle:
            return {(row["image_id"], row["split"]) for row in csv.DictReader(handle)}
    rows = {(s.image_id, s.split) for s in dataset.samples}
    return rows | {(s.image_id, "val") for s in (external_val.samples if external_val else [])}


def split_options(spec: ModelSpec) -> str:
    """The split options a run was trained with (its spec's recipe), as the command line gives them."""
    recipe = spec.training.get("recipe", {})
    given = [f"--{name.replace('_', '-')} {recipe[name]}" for name in ("val_fraction", "test_fraction", "seed") if name in recipe]
    if recipe.get("val_data"):
        given.append("--val-data with its validation set")
    return " ".join(given) or "the same --data, --val-data, --val-fraction, --test-fraction and --seed"


def held_out(rows: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The val and test rows of ``split_rows``: what two runs must share for one to start from the other."""
    return {row for row in rows if row[1] != "train"}
