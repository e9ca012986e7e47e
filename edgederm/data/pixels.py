"""Decode and resize a dataset once into memory, skipping bad images by path with a count."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError
from ..preprocess import Preprocess
from .samples import SampleSet


@dataclass
class PixelCache:
    pixels: np.ndarray  # uint8 (N, S, S, 3), already through Preprocess.fit
    kept: list[int]  # indices into the SampleSet of the rows in ``pixels``
    failures: list[str] = field(default_factory=list)  # one line per skipped image
    masks: np.ndarray | None = None  # uint8 0/255 (N, S, S) through Preprocess.fit_mask, when loaded with masks


def load_pixels(dataset: SampleSet, preprocess: Preprocess, desc: str = "images", quiet: bool = False) -> PixelCache:
    side = preprocess.input_size
    pixels = np.empty((len(dataset), side, side, 3), np.uint8)
    kept: list[int] = []
    failures: list[str] = []
    for index, sample in enumerate(
        tqdm(dataset.samples, desc=f"loading {desc}", unit="img", disable=quiet, file=sys.stderr, mininterval=2)
    ):
        try:
            pixels[len(kept)] = preprocess.fit(sample.load_image())
        except ImageError as error:
            failures.append(str(error))
            continue
        kept.append(index)
    return PixelCache(pixels[: len(kept)], kept, failures)


def load_pixels_and_masks(dataset: SampleSet, preprocess: Preprocess, desc: str = "images", quiet: bool = False) -> PixelCache:
    """Images and their lesion masks, both through the same geometry; a sample whose image or mask fails is skipped."""
    side = preprocess.input_size
    pixels = np.empty((len(dataset), side, side, 3), np.uint8)
    masks = np.empty((len(dataset), side, side), np.uint8)
    kept: list[int] = []
    failures: list[str] = []
    for index, sample in enumerate(
        tqdm(dataset.samples, desc=f"loading {desc}", unit="img", disable=quiet, file=sys.stderr, mininterval=2)
    ):
        try:
            image, mask = sample.load_image_and_mask()
        except ImageError as error:
            failures.append(str(error))
            continue
        if mask is None:
            raise ValueError(f"{sample.display_path} has no mask; check Sample.has_mask before loading")
        pixels[len(kept)] = preprocess.fit(image)
        masks[len(kept)] = preprocess.fit_mask(mask)
        kept.append(index)
    return PixelCache(pixels[: len(kept)], kept, failures, masks[: len(kept)])
