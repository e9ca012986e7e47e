"""Reading and writing a benchmark's committed results (``benchmarks/results/NAME.{json,md}``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from edgederm.core.log import get_logger

logger = get_logger("benchmarks.results")


def command_line(script: str, argv: list[str] | None, omit: tuple[str, ...] = ()) -> str:
    """How the benchmark was started, as its results record it: ``python benchmarks/SCRIPT.py ARGS``.

    ``omit`` names options (each with its value) that change no figure, such as prose written after the run.
    """
    kept, skip = [], False
    for arg in argv if argv is not None else sys.argv[1:]:
        if skip:
            skip = False
        elif arg in omit:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in omit)):
            kept.append(arg)
    return f"python benchmarks/{script}.py " + shlex.join(kept)


def run_header(script: str, argv: list[str] | None, note: str, omit: tuple[str, ...] = ()) -> dict:
    """What every results file starts with: the command, the date, the machine and the --note."""
    import os
    import platform
    import time

    return {
        "command": command_line(script, argv, omit),
        "created": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "note": note,
    }


def add_results_options(parser: argparse.ArgumentParser, name: str) -> None:
    """--note and --markdown-only, for a benchmark whose results are benchmarks/results/NAME.{json,md}."""
    parser.add_argument("--note", default="", help="a sentence about the conditions of this run (load, other jobs), kept with the results")
    parser.add_argument(
        "--markdown-only", action="store_true", help=f"re-render the results from the committed {name}.json, running nothing"
    )


def reread(path: Path, note: str) -> dict:
    """The committed payload, for --markdown-only: nothing runs; a new --note replaces the old one."""
    payload = json.loads(path.read_text())
    payload["note"] = note or payload.get("note", "")
    return payload


def write_results(path: Path, payload: dict, markdown: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    logger.info(f"wrote {path.with_suffix('.md')}")
