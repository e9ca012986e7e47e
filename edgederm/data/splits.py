"""Grouped, stratified, reproducible splits, and the leakage check.

All images of one group (a HAM10000 ``lesion_id``) land on one side: several photos of one lesion
on both sides of a split inflate the test score. Groups are dealt per label, largest first, to the
split that is furthest below its target share, so each split gets each label in proportion.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .samples import SampleSet


def grouped_stratified_split(
    labels: Sequence[str | None],
    groups: Sequence[str],
    fractions: dict[str, float],
    seed: int = 0,
) -> list[str]:
    """Assign each sample a split name; the same inputs and seed give the same answer."""
    if len(labels) != len(groups):
        raise ValueError("labels and groups differ in length")
    names = [name for name, share in fractions.items() if share > 0]
    total_share = sum(fractions[n] for n in names)
    if not names or total_share <= 0:
        raise ValueError("at least one split needs a positive fraction")
    targets = np.array([fractions[n] / total_share for n in names])

    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    group_label = {g: Counter(labels[i] for i in idx).most_common(1)[0][0] for g, idx in members.items()}

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in sorted({str(v) for v in group_label.values()}):
        label_groups = sorted(g for g, lab in group_label.items() if str(lab) == label)
        order = rng.permutation(len(label_groups))
        # Large groups first so the small ones can even out the shares at the end.
        ordered = sorted((label_groups[i] for i in order), key=lambda g: -len(members[g]))
        filled = np.zeros(len(names))
        for position, group in enumerate(ordered):
            if position < len(names):
                # Seed every split with one group of this label (in order of share) when possible.
                choice = int(np.argsort(-targets, kind="stable")[position])
            else:
                choice = int(np.argmax(targets * (filled.sum() + len(members[group])) - filled))
            assignment[group] = names[choice]
            filled[choice] += len(members[group])
    return [assignment[g] for g in groups]


def check_no_leakage(groups: Sequence[str], splits: Sequence[str | None], where: str = "split") -> None:
    """Fail loudly when any group appears in more than one split."""
    seen: dict[str, set[str]] = defaultdict(set)
    for group, split in zip(groups, splits, strict=True):
        if split is not None:
            seen[group].add(split)
    leaked = {g: s for g, s in seen.items() if len(s) > 1}
    if leaked:
        group, sides = next(iter(sorted(leaked.items())))
        raise DataError(
            f"leakage: {len(leaked)} group(s) appear in more than one split, e.g. {group!r} in {sorted(sides)}",
            path=where,
            fix="keep all images of one lesion in one split (check the group/lesion_id and split columns)",
        )


def split_counts(labels: Sequence[str | None], splits: Sequence[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for label, split in zip(labels, splits, strict=True):
        counts[split][str(label)] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}


def select_split(dataset: SampleSet, split: str, splits_csv: Path, *, missing_ok: bool = False) -> SampleSet:
    """Keep the samples that a training run's splits.csv put in ``split``.

    With ``missing_ok``, a dataset that shares no image with that split (other data) comes back whole.
    """
    if not splits_csv.is_file():
        raise DataError("splits.csv not found", path=splits_csv, fix="--split needs a run directory from edgederm train (or --splits FILE)")
    with open(splits_csv, newline="", encoding="utf-8") as handle:
        chosen = {row["image_id"] for row in csv.DictReader(handle) if row.get("split") == split}
    if not chosen:
        raise DataError(f"no images in split {split!r}", path=splits_csv)
    indices = [i for i, s in enumerate(dataset.samples) if s.image_id in chosen]
    if not indices and missing_ok:
        return dataset
    if not indices:
        raise DataError(
            f"none of the {split} images of {splits_csv} are in {dataset.spec}",
            path=splits_csv,
            fix="use the --data the model was trained on",
        )
    return dataset.subset(indices, f"[{split}]")
