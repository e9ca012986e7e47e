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


def header(title: str, payload: dict, method: str) -> list[str]:
    """A results file's title, command, when and where it ran on which images (``payload`` from ``_results.run_header``
    plus run, images, data and split), the method sentence, and the conditions line where --note gave one."""
    lines = [
        f"# {title}",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Run on {payload['created']} on `{payload['platform']}` ({payload['cpus']} CPUs). Model `{payload['run']}`; "
        f"{payload['images']} images of {payload['data']} [{payload['split']}]; every file against torch fp32 on them. {method}",
        "",
    ]
    return lines + ([f"Conditions: {payload['note']}", ""] if payload.get("note") else [])
