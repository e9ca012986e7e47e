"""``Predictor``: load a model by its path and run it on images, whatever the format.

The backend is chosen from the path (a run directory or checkpoint today; exported TFLite, ONNX
and CoreML artifacts plug in here as the converters land). Every backend reads the ModelSpec that
travels with the model, so the caller never passes a size, a mean or a class list.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelError
from ..formats import FORMATS, format_for_path
from ..manifest import verify_against_manifest
from ..spec import ModelSpec
from .postprocess import postprocess_mask


class Predictor(ABC):
    spec: ModelSpec
    path: Path

    @staticmethod
    def load(path: str | Path, *, device: str = "cpu", threads: int | None = None) -> Predictor:
        """The backend is the FORMATS table's for the suffix; a run dir or checkpoint uses torch.

        An artifact listed in a manifest.json beside it is checked against its sha256 first.
        """
        path = Path(path)
        if not path.exists():
            raise ModelError("no such model file or run directory", path=path)
        fmt = format_for_path(path.name)
        if fmt is not None:
            verify_against_manifest(path)
            module_name, class_name = fmt.backend.split(":")
            backend = getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)
            return backend(path, threads=threads)
        if path.is_dir() or path.suffix in (".safetensors", ".json"):
            from .torch_backend import TorchPredictor

            return TorchPredictor(path, device=device)
        raise ModelError(
            f"unsupported model format {path.suffix or '(no suffix)'!r}",
            path=path,
            fix=f"give a run directory, its model.safetensors, or an exported {', '.join(f.suffix for f in FORMATS.values())} file",
        )

    @abstractmethod
    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) pixels already through ``spec.preprocess.fit`` -> probabilities.

        Classifiers: class probabilities (N, C). Segmenters: lesion probabilities, (N, S, S) from
        the torch backend, (N, 1, S, S) or (N, S, S, 1) as an exported graph lays them out.
        """

    def predict_image(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> class probabilities (C,)."""
        return self.predict_pixels(self.spec.preprocess.fit(image)[None])[0]

    def predict_mask(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> the segmenter's lesion mask, uint8 0/255 at the image's own (H, W)."""
        if self.spec.task != "segmentation":
            raise ModelError(f"predict_mask needs a segmentation model, this is a {self.spec.task} model", path=self.path)
        probabilities = lesion_probabilities(self.predict_pixels(self.spec.preprocess.fit(image)[None]))
        return lesion_mask(probabilities[0], self.spec, image.size)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)


def lesion_probabilities(output: np.ndarray) -> np.ndarray:
    """A segmenter's ``predict_pixels`` batch as lesion probabilities (N, S, S), whatever the channel axis.

    ``predict_pixels`` returns probabilities from every backend: the torch backend applies the
    sigmoid to the weights' ``mask_logits``, exported graphs end in it (``mask_probabilities``).
    """
    output = np.asarray(output, np.float32)
    if output.ndim == 4:
        output = output[:, 0] if output.shape[1] == 1 else output[..., 0]
    return output


def lesion_mask(probabilities: np.ndarray, spec: ModelSpec, source_size: tuple[int, int]) -> np.ndarray:
    """(S, S) lesion probabilities -> threshold, the spec's post-processing, then back to (w, h): uint8 0/255 (h, w).

    Training's final evaluation, ``edgederm predict`` and every backend go through this one function.
    """
    mask = postprocess_mask(probabilities, spec.postprocess)
    return spec.preprocess.unfit_mask(mask.astype(np.uint8) * 255, source_size)
