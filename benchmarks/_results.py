"""Reading and writing a benchmark's committed results (``benchmarks/results/NAME.{json,md}``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def reread(path: Path, note: str) -> dict:
    """The committed payload, for --markdown-only: nothing runs; a new --note replaces the old one."""
    payload = json.loads(path.read_text())
    payload["note"] = note or payload.get("note", "")
    return payload


def write_results(path: Path, payload: dict, markdown: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    print(f"wrote {path.with_suffix('.md')}", file=sys.stderr, flush=True)
