"""The user's choices (model artifacts, thread count, notice accepted), kept as JSON in the app's data folder."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgederm.core import zoo
from edgederm.core.formats import FORMATS

# The app never imports torch: formats whose Python runtime needs it (ExecuTorch) are left out.
ARTIFACT_SUFFIXES = tuple(f.suffix for f in FORMATS.values() if f.torch_free)


@dataclass
class AppSettings:
    classifier: str | None = None
    segmenter: str | None = None
    threads: int | None = None  # None: the runtime's default
    accepted_notice: bool = False  # the first-run "screening aid, not a diagnosis" screen was read

    @classmethod
    def load(cls, path: str | Path) -> AppSettings:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()  # first run, or a damaged file: start from the defaults
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}) if isinstance(data, dict) else cls()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        os.replace(tmp, path)


def find_artifacts(*folders: str | Path | None) -> list[Path]:
    """Exported model artifacts (.tflite, .onnx, .mlpackage) directly inside the given folders."""
    found: list[Path] = []
    for folder in folders:
        if folder and Path(folder).is_dir():
            found += sorted(p for p in Path(folder).iterdir() if p.name.endswith(ARTIFACT_SUFFIXES) and not p.name.startswith("."))
    return found


# With no model chosen, the app screens with the zoo's phone artifacts (int8 TFLite), so a fresh install works offline.
DEFAULT_MODEL = "zoo:lite0-ham10000"
DEFAULT_SEGMENTER = "zoo:tinyseg-isic2017"


def zoo_default() -> tuple[Path, Path | None]:
    """The shipped classifier and segmenter (their int8 TFLite files), checksums checked."""
    segmenter = zoo.phone_artifact(DEFAULT_SEGMENTER) if DEFAULT_SEGMENTER.removeprefix(zoo.PREFIX) in zoo.entries() else None
    return zoo.phone_artifact(DEFAULT_MODEL), segmenter


def selected_artifacts(classifier: str | Path | None, segmenter: str | Path | None, *folders: str | Path | None) -> list[Path]:
    """The chosen classifier and segmenter first, then every other artifact in the folders, without repeats."""
    chosen = [Path(p) for p in (classifier, segmenter) if p]
    return list(dict.fromkeys(chosen + find_artifacts(*folders)))
