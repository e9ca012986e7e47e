"""The argument parser every edgederm command uses: argparse's own errors become one line too."""

from __future__ import annotations

import argparse

from ..core.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message, fix=f"see `{self.prog} --help`")
