"""The model zoo: trained, verified models that ship inside the package, named ``zoo:NAME``.

Each entry is a folder ``edgederm/zoo/NAME/`` holding the checkpoint (``model.safetensors`` +
``spec.json``), the lesion-disjoint ``splits.csv`` it was trained on, a phone artifact (int8
TFLite), ``numerics.json`` (task metrics with 95% intervals for every format and quantization),
``perf.json`` (size, latency, peak memory) and ``card.json``: what it is, its training data and
that data's license, and the sha256 of every file. ``benchmarks/zoo.py`` builds them.

``zoo:NAME`` is accepted wherever a run directory is; ``resolve`` turns it into the entry's folder
after checking the weights against the card. Torch-free: the runtime resolves names too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, UsageError
from .manifest import artifact_sha256

PREFIX = "zoo:"
ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
CARD = "card.json"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str  # classification or segmentation
    arch: str
    img_size: int
    description: str
    data: str  # what it was trained on
    license: str  # the training data's license, which the weights inherit
    phone_artifact: str  # file name of the artifact the demo app embeds
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    headline: dict[str, Any] = field(default_factory=dict)  # a few test figures with their intervals, for `zoo list`

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.name

    @property
    def size_bytes(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.files if (self.path / name).is_file())

    def file(self, name: str, *, check: bool = True) -> Path:
        """One of the entry's files, its sha256 checked against the card."""
        path = self.path / name
        if name not in self.files:
            raise ModelError(f"zoo entry {self.name} has no file {name}", path=self.path, fix=f"choose from {', '.join(self.files)}")
        if not path.is_file():
            raise ModelError(f"zoo:{self.name} is missing {name}", path=path, fix="reinstall edgederm or rebuild with benchmarks/zoo.py")
        if check and artifact_sha256(path) != self.files[name]:
            raise ModelError(
                f"zoo:{self.name} checksum mismatch for {name}",
                path=path,
                fix="the file was changed or damaged; reinstall edgederm (or `git checkout` it)",
            )
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "arch": self.arch,
            "img_size": self.img_size,
            "description": self.description,
            "data": self.data,
            "license": self.license,
            "phone_artifact": self.phone_artifact,
            "files": self.files,
            "headline": self.headline,
        }


def read_card(folder: Path) -> ZooEntry:
    path = folder / CARD
    try:
        raw = json.loads(path.read_text())
        return ZooEntry(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"unreadable zoo card ({type(exc).__name__})", path=path, fix="reinstall edgederm") from None


def entries() -> dict[str, ZooEntry]:
    """Every zoo entry shipped with this install, by name."""
    if not ZOO_DIR.is_dir():
        return {}
    found = (read_card(folder) for folder in sorted(ZOO_DIR.iterdir()) if (folder / CARD).is_file())
    return {entry.name: entry for entry in found}


def get(name: str) -> ZooEntry:
    name = name.removeprefix(PREFIX)
    known = entries()
    if name not in known:
        raise UsageError(f"no zoo entry {name!r}", fix=f"choose from {', '.join(known) or '(none installed)'}; see `edgederm zoo list`")
    return known[name]


def is_reference(value: object) -> bool:
    return isinstance(value, str | Path) and str(value).startswith(PREFIX)


def resolve(value: str | Path) -> Path:
    """``zoo:NAME`` -> the entry's folder (a checkpoint directory), weights checked; any other path unchanged."""
    if not is_reference(value):
        return Path(value)
    entry = get(str(value))
    for name in ("model.safetensors", "spec.json"):
        entry.file(name)
    return entry.path


def phone_artifact(value: str | Path) -> Path:
    """``zoo:NAME`` -> the entry's embedded phone artifact (int8 TFLite), checked; any other path unchanged."""
    if not is_reference(value):
        return Path(value)
    entry = get(str(value))
    return entry.file(entry.phone_artifact)
