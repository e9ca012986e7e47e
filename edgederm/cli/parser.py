"""The argument parser every edgederm command uses: argparse's own errors become one line too."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core import zoo
from ..core.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message, fix=f"see `{self.prog} --help`")


def model_path(text: str) -> Path:
    """An argparse type for a model argument: a path, or ``zoo:NAME`` resolved (and checksummed) to the entry's folder."""
    return zoo.resolve(text)
