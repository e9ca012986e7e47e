"""Lesion masks on screen: the outline drawn over the photo and the lesion's share of the frame.

Masks are uint8 arrays of 0/255 at the photo's size (what ``Predictor.predict_mask`` returns);
anything >= 128 counts as lesion.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CONTOUR_RGB = (255, 214, 0)  # yellow: visible on skin tones and on dark lesions alike


def lesion_pixels(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    return mask >= 128


def area_fraction(mask: np.ndarray) -> float:
    """Share of the frame covered by the lesion, 0..1."""
    lesion = lesion_pixels(mask)
    return float(lesion.mean()) if lesion.size else 0.0


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean (H, W): lesion pixels within ``thickness`` pixels of the background.

    The frame's border counts as background, so a lesion cut by the edge still gets a closed outline.
    """
    lesion = lesion_pixels(mask)
    inner = lesion
    for _ in range(max(1, int(thickness))):
        inner = _erode(inner)
    return lesion & ~inner


def default_thickness(size: tuple[int, int]) -> int:
    return max(1, round(min(size) / 160))


def draw_contour(
    image: Image.Image, mask: np.ndarray, *, color: tuple[int, int, int] = CONTOUR_RGB, thickness: int | None = None
) -> Image.Image:
    """A copy of the RGB photo with the mask's outline painted in ``color``."""
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the photo is {image.width}x{image.height}")
    pixels = np.array(image if image.mode == "RGB" else image.convert("RGB"))  # a copy either way: one, not two
    pixels[contour(mask, thickness or default_thickness(image.size))] = color
    return Image.fromarray(pixels)


def _erode(lesion: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion with background outside the frame."""
    padded = np.pad(lesion, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
