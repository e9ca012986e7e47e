"""Registered models: ``list_models``, ``create_model``, ``get_entry``."""

from ._registry import ModelEntry, Weights, create_model, get_entry, list_models, register_model
from .complexity import count_macs, count_parameters

__all__ = [
    "ModelEntry",
    "Weights",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "register_model",
]
