"""edgederm: skin-lesion models from a training run to a phone."""

__version__ = "0.1.0"
