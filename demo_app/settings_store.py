"""The user's choices (model artifacts, thread count, notice accepted), kept as JSON in the app's data folder."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgederm.core.formats import FORMATS

ARTIFACT_SUFFIXES = tuple(f.suffix for f in FORMATS.values())


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


def selected_artifacts(classifier: str | Path | None, segmenter: str | Path | None, *folders: str | Path | None) -> list[Path]:
    """The chosen classifier and segmenter first, then every other artifact in the folders, without repeats."""
    chosen = [Path(p) for p in (classifier, segmenter) if p]
    return list(dict.fromkeys(chosen + find_artifacts(*folders)))
