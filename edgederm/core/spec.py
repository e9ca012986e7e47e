"""ModelSpec: the small description that travels with the weights into every artifact.

A checkpoint is ``model.safetensors`` plus ``spec.json``; an exported artifact carries the same
JSON in its metadata. Whoever holds the weights can rebuild the input pipeline, name the classes
and know how the outputs were calibrated, without being told anything by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import ModelError
from .labels import DX_CODES
from .preprocess import Preprocess

SPEC_FORMAT = 1
TASKS = ("classification", "segmentation")
OUTPUTS = ("logits", "probabilities", "mask_logits", "mask_probabilities")


@dataclass
class ModelSpec:
    task: str
    arch: str
    class_names: list[str]
    preprocess: Preprocess
    output: str = "logits"
    arch_options: dict[str, Any] = field(default_factory=dict)  # e.g. batch-norm eps of the weights
    # Segmenters: mask clean-up every runtime applies (edgederm.runtime.postprocess); {} = threshold only.
    postprocess: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0  # already folded into the weights when temperature_folded
    temperature_folded: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # data summary, recipe, seed
    metrics: dict[str, Any] = field(default_factory=dict)  # reference metrics per split
    # Screening thresholds chosen on validation data (see edgederm.metrics.operating_point); the app's
    # "refer to a clinician" banner and verify's sensitivity/specificity at the threshold use them.
    operating_point: dict[str, Any] = field(default_factory=dict)
    # The rule that names the class from the probabilities (edgederm.runtime.readout.decide); {} = argmax.
    decision: dict[str, Any] = field(default_factory=dict)
    source_sha256: str | None = None
    artifact: dict[str, Any] = field(default_factory=dict)  # set in exported files: format, quant, input/output tensors
    edgederm_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: int = SPEC_FORMAT

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        unknown = [c for c in self.class_names if c not in DX_CODES and self.task == "classification"]
        if unknown:
            raise ValueError(f"class names {unknown} are not HAM10000 dx codes {list(DX_CODES)}")
        if not self.class_names:
            raise ValueError("class_names is empty")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_preprocess(self) -> Preprocess:
        """``preprocess`` with the mean and std the artifact's input tensor wants, for ``normalize``.

        An NHWC TFLite file of a model with per-channel statistics takes one mean and std for every
        channel (MediaPipe Tasks normalise channels alike) and applies the rest in its graph; it records
        them as ``artifact["input"]["normalization"]``. ``fit`` stays ``preprocess``'s (its padding colour).
        """
        normalization = self.artifact.get("input", {}).get("normalization")
        if not normalization:
            return self.preprocess
        return replace(self.preprocess, mean=tuple(normalization["mean"]), std=tuple(normalization["std"]))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["preprocess"] = Preprocess.from_dict(fields["preprocess"])
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str, *, source: str | Path = "<spec>") -> ModelSpec:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("the top level is not a JSON object")
            if int(data.get("format", SPEC_FORMAT)) > SPEC_FORMAT:
                raise ValueError(f"spec format {data['format']} is newer than this edgederm understands")
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"not a valid edgederm model spec ({type(exc).__name__}: {exc})",
                path=source,
                fix="re-export the model with edgederm, or restore spec.json from the run directory",
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot read the model spec ({exc.strerror})", path=path) from None
        except UnicodeDecodeError:
            raise ModelError("the model spec is not UTF-8 text", path=path) from None
        return cls.from_json(text, source=path)
