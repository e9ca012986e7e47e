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

from ..core import zoo
from ..core.errors import BackendUnavailable, ModelError
from ..core.formats import FORMATS, TORCH_BACKEND, format_for_path
from ..core.manifest import verify_against_manifest
from ..core.spec import ModelSpec
from .readout import lesion_mask, lesion_probabilities


class Predictor(ABC):
    spec: ModelSpec
    path: Path

    @staticmethod
    def load(path: str | Path, *, device: str = "cpu", threads: int | None = None, emulate: bool = False) -> Predictor:
        """The backend is the FORMATS table's for the suffix; a run directory, checkpoint or ``zoo:NAME`` is the torch reference.

        An artifact listed in a manifest.json beside it is checked against its sha256 first. A format
        whose native runtime does not exist on this platform (CoreML off Apple) raises a one-line
        ModelError, or with ``emulate`` runs on the format's emulated backend (numerics only).
        """
        path = zoo.resolve(path)
        if not path.exists():
            raise ModelError("no such model file or run directory", path=path)
        fmt = format_for_path(path.name)
        if fmt is not None:
            verify_against_manifest(path)
            use_emulator = emulate and fmt.emulated_backend is not None and not fmt.runs_here()
            backend = backend_class(fmt.emulated_backend if use_emulator else fmt.backend, path)
            return backend(path, threads=threads)
        if path.is_dir() or path.suffix in (".safetensors", ".json"):
            return backend_class(TORCH_BACKEND, path)(path, device=device)
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


def backend_class(where: str, path: Path) -> type[Predictor]:
    """A "module:Class" of the FORMATS table (a bare module name is under edgederm.runtime), imported on first use."""
    module_name, class_name = where.split(":")
    if "." not in module_name:
        module_name = f"{__package__}.{module_name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"the backend {module_name} cannot be imported ({exc})",
            path=path,
            fix="install what it needs: pip install edgederm[export] (or the format's runtime)",
        ) from None
    return getattr(module, class_name)
