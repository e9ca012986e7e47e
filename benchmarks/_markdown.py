"""Markdown pieces the benchmark reports share."""

from __future__ import annotations


def conditions_and_targets(note: str, checks: list[dict]) -> list[str]:
    """The optional conditions line, then the targets table (target, measured, met)."""
    return [
        *(["", f"Conditions: {note}"] if note else []),
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|:---:|",
        *[f"| {c['target']} | {c['value']} | {'yes' if c['met'] else 'no'} |" for c in checks],
    ]
