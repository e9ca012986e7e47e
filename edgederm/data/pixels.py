"""Decoding a dataset's images: one loop that skips a bad image with its one-line error, and the in-memory cache."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

import numpy as np
from PIL import Image

from ..core.errors import ImageError
from ..core.log import progress
from ..core.preprocess import Preprocess
from .samples import SampleSet

T = TypeVar("T")


@dataclass(frozen=True)
class Decoded:
    index: int  # into the SampleSet
    image: Image.Image  # RGB at its own size
    mask: np.ndarray | None  # the true lesion mask, when decoded with masks


def decode_samples(dataset: SampleSet, errors: list[str | None], *, masks: bool = False, desc: str = "images") -> Iterator[Decoded]:
    """Every sample whose image (and, with ``masks``, mask) decodes; ``errors[index]`` gets the one-line error of the rest."""
    for index, sample in enumerate(progress(dataset.samples, desc=desc, unit="img")):
        try:
            image, mask = sample.load_image_and_mask() if masks else (sample.load_image(), None)
        except ImageError as error:
            errors[index] = str(error)
            continue
        yield Decoded(index, image, mask)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass
class PixelCache:
    pixels: np.ndarray  # uint8 (N, S, S, 3), already through Preprocess.fit
    kept: list[int]  # indices into the SampleSet of the rows in ``pixels``
    failures: list[str] = field(default_factory=list)  # one line per skipped image
    masks: np.ndarray | None = None  # uint8 0/255 (N, S, S) through Preprocess.fit_mask, when loaded with masks


def load_pixels(dataset: SampleSet, preprocess: Preprocess, desc: str | None = "images") -> PixelCache:
    return _load(dataset, preprocess, desc, masks=False)


def load_pixels_and_masks(dataset: SampleSet, preprocess: Preprocess, desc: str | None = "images") -> PixelCache:
    """Images and their lesion masks, both through the same geometry; a sample whose image or mask fails is skipped."""
    return _load(dataset, preprocess, desc, masks=True)


def _load(dataset: SampleSet, preprocess: Preprocess, desc: str | None, masks: bool) -> PixelCache:
    side = preprocess.input_size
    pixels = np.empty((len(dataset), side, side, 3), np.uint8)
    mask_pixels = np.empty((len(dataset), side, side), np.uint8) if masks else None
    kept: list[int] = []
    errors: list[str | None] = [None] * len(dataset)
    for item in decode_samples(dataset, errors, masks=masks, desc=f"loading {desc or 'images'}"):
        if mask_pixels is not None:
            if item.mask is None:
                raise ValueError(f"{dataset.samples[item.index].display_path} has no mask; check Sample.has_mask before loading")
            mask_pixels[len(kept)] = preprocess.fit_mask(item.mask)
        pixels[len(kept)] = preprocess.fit(item.image)
        kept.append(item.index)
    failures = [error for error in errors if error]
    return PixelCache(pixels[: len(kept)], kept, failures, None if mask_pixels is None else mask_pixels[: len(kept)])
