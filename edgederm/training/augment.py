"""Batch augmentation on uint8 pixels: flips, 90-degree rotations and a small colour jitter.

Dermoscopy has no canonical orientation, so the eight dihedral transforms are all label-preserving.
Everything draws from an explicit generator, so a resumed epoch replays the same augmentations.
For segmentation, ``augment_pairs`` moves each mask with its image and jitters only the image.
"""

from __future__ import annotations

import torch


def augment_batch(pixels: torch.Tensor, generator: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> augmented uint8 (B, S, S, 3), ready for ``Preprocess.normalize``.

    Rounding back to uint8 keeps one normalisation path for training and every runtime.
    """
    return augment_pairs(pixels, None, generator, jitter)[0]


def augment_pairs(
    pixels: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator, jitter: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (B, S, S, 3) and masks (B, S, S) -> both with the same flip and rotation per sample."""
    images = pixels.float() / 255.0
    batch = images.shape[0]
    flips = torch.rand(batch, generator=generator) < 0.5
    turns = torch.randint(0, 4, (batch,), generator=generator)
    out = torch.empty_like(images)
    out_masks = None if masks is None else torch.empty_like(masks)
    for i in range(batch):
        out[i] = _dihedral(images[i], bool(flips[i]), int(turns[i]))
        if out_masks is not None:
            out_masks[i] = _dihedral(masks[i], bool(flips[i]), int(turns[i]))
    if jitter > 0:
        out = _colour_jitter(out, generator, jitter)
    return (out.clamp_(0, 1) * 255).round_().to(torch.uint8), out_masks


def _dihedral(array: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """Flip along the width axis, then rotate by 90 degrees ``turns`` times in the (H, W) plane."""
    return torch.rot90(array.flip(1) if flip else array, turns, dims=(0, 1))


def _colour_jitter(images: torch.Tensor, generator: torch.Generator, jitter: float) -> torch.Tensor:
    batch = images.shape[0]
    brightness = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    saturation = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    grey = images.mean(dim=3, keepdim=True)
    return (images - grey) * saturation + grey
