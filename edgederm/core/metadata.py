"""The ModelSpec as stamped into an artifact, and the plain strings every format can carry."""

from __future__ import annotations

import copy
from typing import Any

from edgederm.core.spec import ModelSpec

SPEC_KEY = "edgederm_spec"  # metadata key (ONNX metadata_props, CoreML user_defined_metadata, TFLite Model.metadata)
LABELS_FILE = "labels.txt"
SPEC_FILE = "edgederm_spec.json"


def artifact_spec(spec: ModelSpec, fmt: str, quant: str, io: dict[str, Any]) -> ModelSpec:
    """A copy of the run's spec describing one artifact: probabilities out, and its tensors.

    ``io`` names the artifact's input/output: e.g. {"input": {"name": "image", "layout": "NHWC",
    "dtype": "float32"}, "output": {"name": "probabilities", "dtype": "float32"}}.
    """
    stamped = copy.deepcopy(spec)
    stamped.output = "probabilities" if spec.task == "classification" else "mask_probabilities"
    stamped.artifact = {"format": fmt, "quant": quant, **io}
    return stamped


def labels_text(spec: ModelSpec) -> str:
    return "\n".join(spec.class_names) + "\n"


def metadata_strings(spec: ModelSpec) -> dict[str, str]:
    """Flat string metadata for formats with key/value stores (ONNX, CoreML)."""
    return {
        SPEC_KEY: spec.to_json(),
        "task": spec.task,
        "labels": ",".join(spec.class_names),
        "edgederm_version": spec.edgederm_version,
        "source_sha256": spec.source_sha256 or "",
    }
