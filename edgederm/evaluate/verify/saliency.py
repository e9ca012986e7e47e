"""What the network keys on: Grad-CAM of the torch reference, and how much of it falls on the lesion.

Dermoscopy classifiers are known to learn shortcuts (rulers, ink marks, vignettes, anatomy). For a
sample of images with a true lesion mask, the class-activation map of the predicted class is
computed on the reference model's last feature map (Selvaraju et al. 2017) and the share of its
mass inside the lesion is measured; images whose saliency lies mostly outside are listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import ImageError
from ...data.samples import Sample
from ...metrics import binarize_mask

OUTSIDE_BELOW = 0.5  # an image is listed when less than this share of its saliency is on the lesion


@dataclass
class SaliencyItem:
    sample: Sample
    pixels: np.ndarray  # (S, S, 3) uint8, the model's input
    mask: np.ndarray  # (S, S) bool, the lesion in the same frame
    cam: np.ndarray  # (S, S) float in [0, 1]
    predicted: str
    inside: float  # share of the CAM's mass on the lesion


def grad_cam(model, batch) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) maps in [0, 1] for the predicted class, and the predicted class indices."""
    import torch
    import torch.nn.functional as F

    features = model.forward_features(batch).detach().requires_grad_(True)
    logits = model.forward_head(features)
    predicted = logits.argmax(1)
    logits.gather(1, predicted[:, None]).sum().backward()
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    with torch.no_grad():
        return (cam / peak).numpy(), predicted.numpy()


def saliency_on_lesions(run_dir: Path, samples: list[Sample], n: int = 64, seed: int = 0) -> dict[str, Any] | None:
    """Grad-CAM of up to ``n`` images that have a true mask; None when none has one or the arch has no feature map."""
    import torch

    from ...models.checkpoint import load_checkpoint
    from ...models.inference import to_model_input

    model, spec = load_checkpoint(run_dir)
    if spec.task != "classification" or not hasattr(model, "forward_features"):
        return None
    with_mask = [s for s in samples if s.has_mask]
    if not with_mask:
        return None
    chosen = np.random.default_rng(seed).permutation(len(with_mask))[:n]
    items: list[SaliencyItem] = []
    for index in sorted(chosen):
        sample = with_mask[index]
        try:
            image, mask = sample.load_image_and_mask()
        except ImageError:
            continue
        pixels = spec.preprocess.fit(image)
        fitted = binarize_mask(spec.preprocess.fit_mask(mask))
        with torch.enable_grad():
            cam, predicted = grad_cam(model, to_model_input(spec.preprocess.normalize(pixels[None]), torch.device("cpu")))
        mass = cam[0].sum()
        inside = float(cam[0][fitted].sum() / mass) if mass > 0 else 0.0
        items.append(SaliencyItem(sample, pixels, fitted, cam[0], spec.class_names[int(predicted[0])], inside))
    if not items:
        return None
    shares = np.array([i.inside for i in items])
    lesion_area = np.array([i.mask.mean() for i in items])
    return {
        "method": "Grad-CAM of the predicted class on the last feature map (torch fp32 reference)",
        "images": len(items),
        "mean_share_inside_lesion": float(shares.mean()),
        "median_share_inside_lesion": float(np.median(shares)),
        "mean_lesion_area": float(lesion_area.mean()),  # what a map spread evenly over the image would score
        "mostly_outside": [
            {"image": i.sample.display_path, "predicted": i.predicted, "share_inside": round(i.inside, 3)}
            for i in sorted(items, key=lambda i: i.inside)
            if i.inside < OUTSIDE_BELOW
        ],
        "items": items,
    }
