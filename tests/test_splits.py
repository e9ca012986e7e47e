"""Grouped, stratified, reproducible splits, and a leakage check that fails loudly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgederm.core.errors import DataError
from edgederm.data.splits import check_no_leakage, grouped_stratified_split

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _toy(n_groups: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        label = rng.choice(["nv", "mel", "bkl", "df"], p=[0.6, 0.2, 0.15, 0.05])
        for _ in range(rng.integers(1, 4)):
            labels.append(str(label))
            groups.append(f"lesion_{g}")
    return labels, groups


def test_split_is_grouped_and_reproducible():
    labels, groups = _toy()
    splits = grouped_stratified_split(labels, groups, FRACTIONS, seed=7)
    assert splits == grouped_stratified_split(labels, groups, FRACTIONS, seed=7)
    assert splits != grouped_stratified_split(labels, groups, FRACTIONS, seed=8)
    check_no_leakage(groups, splits)
    sides = {}
    for group, split in zip(groups, splits):
        assert sides.setdefault(group, split) == split


def test_split_is_stratified_and_near_the_fractions():
    labels, groups = _toy(600)
    splits = grouped_stratified_split(labels, groups, FRACTIONS, seed=0)
    counts = Counter(splits)
    for name, share in FRACTIONS.items():
        assert abs(counts[name] / len(splits) - share) < 0.03
    for label in set(labels):
        in_label = [s for s, lab in zip(splits, labels) if lab == label]
        assert {"train", "val", "test"} <= set(in_label), f"{label} missing from a split"
        assert abs(in_label.count("train") / len(in_label) - 0.7) < 0.12


def test_rare_class_with_few_groups_still_reaches_every_split():
    labels = ["nv"] * 50 + ["df"] * 3
    groups = [f"g{i}" for i in range(53)]
    splits = grouped_stratified_split(labels, groups, FRACTIONS, seed=0)
    assert sorted(s for s, lab in zip(splits, labels) if lab == "df") == ["test", "train", "val"]


def test_zero_fraction_split_is_never_used():
    labels, groups = _toy(50)
    splits = grouped_stratified_split(labels, groups, {"train": 0.8, "val": 0.2, "test": 0.0})
    assert set(splits) == {"train", "val"}


def test_leakage_check_fails_loudly_with_the_group():
    with pytest.raises(DataError, match=r"leakage: 1 group\(s\).*'HAM_1' in \['test', 'train'\]"):
        check_no_leakage(["HAM_1", "HAM_1", "HAM_2"], ["train", "test", "train"], where="manifest.csv")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["nv", "mel", "bkl"]), st.integers(0, 30)), min_size=1, max_size=120), st.integers(0, 3))
def test_property_no_group_ever_crosses_splits(pairs, seed):
    labels = [p[0] for p in pairs]
    groups = [f"{p[0]}-{p[1]}" for p in pairs]  # a group keeps one label, as a lesion does
    splits = grouped_stratified_split(labels, groups, FRACTIONS, seed=seed)
    assert len(splits) == len(labels)
    check_no_leakage(groups, splits)
