"""One inference API over every model format: ``Predictor.load(path)``."""

from .predictor import Predictor

__all__ = ["Predictor"]
