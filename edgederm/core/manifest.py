"""manifest.json: what an export directory holds, with sizes and sha256, and the check on load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import EdgedermError, ModelError, UsageError

MANIFEST = "manifest.json"


def artifact_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory artifact (.mlpackage) over its sorted relative paths and bytes."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def artifact_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
            raise ValueError("no artifacts list")
        return data
    except FileNotFoundError:
        raise UsageError("manifest.json not found", fix="give an export directory made by `edgederm export`") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgedermError(f"not a valid manifest ({exc})", path=path, fix="re-run `edgederm export`") from None


def verify_against_manifest(artifact: Path) -> None:
    """If the artifact's folder has a manifest listing it, its sha256 must match before it is loaded."""
    manifest_path = artifact.parent / MANIFEST
    if not manifest_path.is_file():
        return
    entries = [a for a in read_manifest(artifact.parent)["artifacts"] if a.get("path") == artifact.name and a.get("status") == "ok"]
    if entries and entries[-1].get("sha256") and artifact_sha256(artifact) != entries[-1]["sha256"]:
        raise ModelError(
            f"sha256 does not match {MANIFEST}",
            path=artifact,
            fix="the file was changed, truncated or replaced after export; re-export it",
        )
