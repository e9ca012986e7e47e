"""Batch augmentation on uint8 pixels: flips, 90-degree rotations and a small colour jitter.

Dermoscopy has no canonical orientation, so the eight dihedral transforms are all label-preserving.
Everything draws from an explicit generator, so a resumed epoch replays the same augmentations.
"""

from __future__ import annotations

import torch


def augment_batch(pixels: torch.Tensor, generator: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> augmented uint8 (B, S, S, 3), ready for ``Preprocess.normalize``.

    Rounding back to uint8 keeps one normalisation path for training and every runtime.
    """
    images = pixels.float() / 255.0
    batch = images.shape[0]
    flips = torch.rand(batch, generator=generator) < 0.5
    turns = torch.randint(0, 4, (batch,), generator=generator)
    out = torch.empty_like(images)
    for i in range(batch):
        image = images[i].flip(1) if flips[i] else images[i]
        out[i] = torch.rot90(image, int(turns[i]), dims=(0, 1))
    if jitter > 0:
        brightness = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        saturation = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        out = out * brightness
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean
        grey = out.mean(dim=3, keepdim=True)
        out = (out - grey) * saturation + grey
    return (out.clamp_(0, 1) * 255).round_().to(torch.uint8)
