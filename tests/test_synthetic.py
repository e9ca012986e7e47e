"""The procedural dermoscopy generator: plan, rendering, masks and learnability."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from itertools import groupby

import numpy as np
import pytest
from PIL import Image

from edgederm.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_SIZE,
    SyntheticItem,
    plan_synthetic,
    render_synthetic,
)

W, H = SYNTHETIC_SIZE


@pytest.fixture(scope="module")
def rendered() -> list[tuple[SyntheticItem, np.ndarray, np.ndarray]]:
    """200 rendered images of seed 1: (item, (h, w, 3) float RGB in [0, 1], (h, w) bool mask)."""
    out = []
    for item in plan_synthetic(200, seed=1):
        image, mask = render_synthetic(item)
        out.append((item, np.asarray(image, dtype=np.float32) / 255.0, mask > 0))
    return out


def _features(rgb: np.ndarray, inside: np.ndarray) -> np.ndarray:
    lesion = rgb[inside].mean(axis=0)
    skin = rgb[~inside].mean(axis=0)
    return np.concatenate([lesion, lesion - skin, [np.sqrt(inside.mean())]])


def _by_class(rendered, value) -> dict[str, float]:
    return {c: float(np.mean([value(rgb, m) for item, rgb, m in rendered if item.label == c])) for c in SYNTHETIC_CLASSES}


# --- plan ------------------------------------------------------------------------------------


def test_constants() -> None:
    assert SYNTHETIC_CLASSES == ("bkl", "mel", "nv", "vasc")
    assert tuple(sorted(SYNTHETIC_CLASSES)) == SYNTHETIC_CLASSES
    assert SYNTHETIC_SIZE == (256, 192)


@pytest.mark.parametrize("n", [0, 1, 5, 8, 13, 100, 257])
def test_plan_has_exactly_n_items_and_is_deterministic(n: int) -> None:
    plan = plan_synthetic(n, seed=3)
    assert len(plan) == n
    assert plan == plan_synthetic(n, seed=3)
    assert all(isinstance(item, SyntheticItem) for item in plan)
    assert all(item.label in SYNTHETIC_CLASSES for item in plan)
    assert len({item.image_id for item in plan}) == n


def test_every_class_present_from_eight_items() -> None:
    for seed in range(40):
        for n in (8, 9, 11, 16):
            labels = {item.label for item in plan_synthetic(n, seed)}
            assert labels == set(SYNTHETIC_CLASSES), (seed, n, labels)


def test_views_are_consecutive_and_share_group_label_and_seed() -> None:
    plan = plan_synthetic(500, seed=7)
    groups = [item.group for item in plan]
    runs = [(group, list(items)) for group, items in groupby(plan, key=lambda i: i.group)]
    assert len(runs) == len(set(groups)), "a lesion's views must be consecutive"
    sizes = Counter()
    for _, views in runs:
        assert 1 <= len(views) <= 3
        assert [v.view for v in views] == list(range(len(views)))
        assert len({v.label for v in views}) == 1
        assert len({v.lesion_seed for v in views}) == 1
        sizes[len(views)] += 1
    assert sizes[1] and sizes[2] and sizes[3], sizes


def test_ids_name_seed_and_index() -> None:
    plan = plan_synthetic(30, seed=4)
    assert plan[12].image_id == "syn_s4_000012"
    assert all(item.group.startswith("syn_s4_lesion_") for item in plan)
    other = plan_synthetic(30, seed=5)
    assert not {i.image_id for i in plan} & {i.image_id for i in other}


def test_label_mix_is_mildly_imbalanced() -> None:
    counts = Counter(item.label for item in plan_synthetic(6000, seed=0))
    share = {c: counts[c] / 6000 for c in SYNTHETIC_CLASSES}
    expected = {"nv": 0.40, "mel": 0.25, "bkl": 0.20, "vasc": 0.15}
    for c, p in expected.items():
        assert abs(share[c] - p) < 0.05, share
    assert share["nv"] > share["mel"] > share["bkl"] > share["vasc"]


def test_different_seeds_give_different_plans() -> None:
    a, b = plan_synthetic(60, seed=0), plan_synthetic(60, seed=1)
    assert [i.label for i in a] != [i.label for i in b]
    assert [i.lesion_seed for i in a] != [i.lesion_seed for i in b]


def test_plan_rejects_negative_arguments() -> None:
    with pytest.raises(ValueError):
        plan_synthetic(-1)
    with pytest.raises(ValueError):
        plan_synthetic(10, seed=-2)


# --- rendering -------------------------------------------------------------------------------


def test_render_is_byte_identical_on_repeat() -> None:
    plan = plan_synthetic(24, seed=2)
    for item in plan[::3]:
        image_a, mask_a = render_synthetic(item)
        image_b, mask_b = render_synthetic(replace(item))
        assert image_a.tobytes() == image_b.tobytes()
        assert np.array_equal(mask_a, mask_b)


@pytest.mark.parametrize("size", [SYNTHETIC_SIZE, (128, 96), (300, 200), (224, 224)])
def test_image_and_mask_format(size: tuple[int, int]) -> None:
    for item in plan_synthetic(8, seed=0):
        image, mask = render_synthetic(item, size=size)
        assert isinstance(image, Image.Image)
        assert image.mode == "RGB"
        assert image.size == size
        assert isinstance(mask, np.ndarray)
        assert mask.dtype == np.uint8
        assert mask.shape == (size[1], size[0])
        assert set(np.unique(mask).tolist()) == {0, 255}


def test_default_size_is_used() -> None:
    image, mask = render_synthetic(plan_synthetic(1)[0])
    assert image.size == SYNTHETIC_SIZE
    assert mask.shape == (H, W)


def test_render_rejects_unknown_label() -> None:
    item = replace(plan_synthetic(1)[0], label="bcc")
    with pytest.raises(ValueError):
        render_synthetic(item)


def test_masks_are_non_empty_and_not_the_whole_image(rendered) -> None:
    for item, _, inside in rendered:
        area = inside.mean()
        assert 0.01 < area < 0.8, (item, area)


def test_mask_area_order_by_class(rendered) -> None:
    area = _by_class(rendered, lambda rgb, m: m.mean())
    assert area["mel"] > area["bkl"] > area["nv"] > area["vasc"], area
    assert area["mel"] > 1.5 * area["nv"], area


def test_lesion_colour_differs_from_skin(rendered) -> None:
    def contrast(rgb: np.ndarray, inside: np.ndarray) -> float:
        return float(np.abs(rgb[inside].mean(axis=0) - rgb[~inside].mean(axis=0)).sum())

    contrasts = np.array([contrast(rgb, m) for _, rgb, m in rendered])
    assert np.mean(contrasts > 0.06) > 0.95, np.sort(contrasts)[:10]


def test_class_colour_cues(rendered) -> None:
    def redness(rgb: np.ndarray, inside: np.ndarray) -> float:
        r, g, b = rgb[inside].mean(axis=0)
        return float(r - g)

    def darkness(rgb: np.ndarray, inside: np.ndarray) -> float:
        return float(1.0 - rgb[inside].mean())

    red = _by_class(rendered, redness)
    dark = _by_class(rendered, darkness)
    assert red["vasc"] == max(red.values()), red
    assert dark["mel"] > dark["bkl"] and dark["nv"] > dark["bkl"], dark


def test_image_edge_follows_mask_edge(rendered) -> None:
    # The image is blurred at the border but centred on it: the colour changes most right there.
    ratios = []
    for _, rgb, inside in rendered[:60]:
        grey = rgb.mean(axis=2)
        grad = np.zeros_like(grey)
        grad[1:-1, 1:-1] = np.hypot(grey[1:-1, 2:] - grey[1:-1, :-2], grey[2:, 1:-1] - grey[:-2, 1:-1])
        border = np.zeros_like(inside)
        border[1:-1, 1:-1] = inside[1:-1, 1:-1] & ~(inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:])
        ratios.append(grad[border].mean() / grad.mean())
    assert np.median(ratios) > 2.0, ratios


def test_views_show_the_same_lesion_differently() -> None:
    plan = plan_synthetic(300, seed=9)
    pairs = [(a, b) for a, b in zip(plan, plan[1:]) if a.group == b.group][:12]
    assert pairs
    for a, b in pairs:
        image_a, mask_a = render_synthetic(a)
        image_b, mask_b = render_synthetic(b)
        assert image_a.tobytes() != image_b.tobytes()
        area_a, area_b = (mask_a > 0).mean(), (mask_b > 0).mean()
        # Same shape rotated and shifted: equal area unless the frame cuts one view off.
        assert abs(area_a - area_b) / max(area_a, area_b) < 0.35, (a, area_a, area_b)


def test_background_and_artefacts_do_not_depend_on_label() -> None:
    # Same lesion seed and view, different label: outside both lesions the pixels are identical,
    # so skin, lighting and artefacts can carry no class information.
    for item in plan_synthetic(12, seed=6)[:6]:
        images, masks = [], []
        for label in SYNTHETIC_CLASSES:
            image, mask = render_synthetic(replace(item, label=label))
            images.append(np.asarray(image))
            masks.append(mask > 0)
        far = ~_dilate(np.any(masks, axis=0), 15)
        assert far.mean() > 0.2
        for other in images[1:]:
            assert np.array_equal(images[0][far], other[far])


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def test_hand_made_features_separate_classes(rendered) -> None:
    """Nearest centroid on mean colour and area: the classes are learnable, well above chance."""
    train_x = np.stack([_features(rgb, m) for _, rgb, m in rendered])
    train_y = np.array([SYNTHETIC_CLASSES.index(item.label) for item, _, _ in rendered])
    test_items = plan_synthetic(160, seed=2)
    test_x, test_y = [], []
    for item in test_items:
        image, mask = render_synthetic(item)
        test_x.append(_features(np.asarray(image, dtype=np.float32) / 255.0, mask > 0))
        test_y.append(SYNTHETIC_CLASSES.index(item.label))
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    train_z, test_z = (train_x - mean) / std, (np.stack(test_x) - mean) / std
    centroids = np.stack([train_z[train_y == k].mean(axis=0) for k in range(4)])
    distance = ((test_z[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = float((distance.argmin(axis=1) == np.array(test_y)).mean())
    majority = max(Counter(test_y).values()) / len(test_y)
    assert accuracy > 0.7, accuracy
    assert accuracy > majority + 0.2, (accuracy, majority)


def test_render_is_fast_enough() -> None:
    # The budget is 20 ms per image on one core; the bound here is loose for busy CI machines.
    plan = plan_synthetic(24, seed=11)
    render_synthetic(plan[0])
    start = time.perf_counter()
    for item in plan:
        render_synthetic(item)
    per_image = (time.perf_counter() - start) / len(plan)
    assert per_image < 0.08, f"{per_image * 1000:.1f} ms per image"
