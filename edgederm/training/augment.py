"""Batch augmentation on uint8 pixels: flips, rotations, optional zoom/shift, and a small colour jitter.

Dermoscopy has no canonical orientation, so every rotation and flip is label-preserving.
``basic`` uses the eight dihedral transforms (exact, no resampling); ``affine`` adds a random
angle, a zoom and a shift, resampled bilinearly in one batched ``grid_sample``.
Every random number is drawn on the CPU from an explicit generator, so a resumed epoch replays the
same augmentations whatever the device the pixels live on (CPU or CUDA).
For segmentation, ``augment_pairs`` moves each mask with its image and jitters only the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POLICIES = ("basic", "affine")
ZOOM = (0.9, 1.3)  # >1 zooms in: the lesion fills more of the frame
SHIFT = 0.1  # of the half-width


def augment_batch(pixels: torch.Tensor, generator: torch.Generator, jitter: float = 0.1, policy: str = "basic") -> torch.Tensor:
    """uint8 (B, S, S, 3) -> augmented uint8 (B, S, S, 3), ready for ``Preprocess.normalize``.

    Rounding back to uint8 keeps one normalisation path for training and every runtime.
    """
    return augment_pairs(pixels, None, generator, jitter, policy)[0]


def augment_pairs(
    pixels: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator, jitter: float = 0.1, policy: str = "basic"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (B, S, S, 3) and masks (B, S, S) -> both with the same geometry per sample."""
    if policy not in POLICIES:
        raise ValueError(f"augmentation policy must be one of {POLICIES}, got {policy!r}")
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
    if policy == "affine":
        out, out_masks = _affine(out, out_masks, generator)
    if jitter > 0:
        out = _colour_jitter(out, generator, jitter)
    return (out.clamp_(0, 1) * 255).round_().to(torch.uint8), out_masks


def _dihedral(array: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """Flip along the width axis, then rotate by 90 degrees ``turns`` times in the (H, W) plane."""
    return torch.rot90(array.flip(1) if flip else array, turns, dims=(0, 1))


def _affine(images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random rotation within the quarter turn, zoom and shift; borders are mirrored, not black."""
    batch = images.shape[0]
    angle = (torch.rand(batch, generator=generator) - 0.5) * (math.pi / 2)
    zoom = ZOOM[0] + torch.rand(batch, generator=generator) * (ZOOM[1] - ZOOM[0])
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * SHIFT
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [batch, 3, *images.shape[1:3]], align_corners=False)
    warped = F.grid_sample(images.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if masks is not None:
        moved = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)
        masks = moved[:, 0].round().to(masks.dtype)
    return warped.permute(0, 2, 3, 1), masks


def _colour_jitter(images: torch.Tensor, generator: torch.Generator, jitter: float) -> torch.Tensor:
    batch = images.shape[0]
    brightness = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    saturation = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    brightness, contrast, saturation = (t.to(images.device) for t in (brightness, contrast, saturation))
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    grey = images.mean(dim=3, keepdim=True)
    return (images - grey) * saturation + grey
