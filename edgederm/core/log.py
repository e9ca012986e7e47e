"""edgederm's logger and progress bars.

Everything edgederm says goes through ``logging.getLogger("edgederm")`` (or a child of it). As a
library it prints warnings only; the CLI shows INFO messages and progress bars on stderr, and
``--quiet`` lowers that to warnings. A progress bar is drawn only when the ``edgederm``
logger would print INFO, so one switch controls both.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

logger = logging.getLogger("edgederm")

T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    """The child logger for one module: ``get_logger(__name__)``."""
    return logging.getLogger(name if name.startswith("edgederm") else f"edgederm.{name}")


class _Silent:
    """What ``progress`` returns when no bar is drawn: the iterable, with tqdm's methods doing nothing."""

    def __init__(self, iterable: Iterable[T]):
        self.iterable = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)

    def set_postfix(self, *args: object, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None, file: TextIO | None = None) -> Iterable[T]:
    """``iterable`` with a tqdm bar on stderr when edgederm logs at INFO, else unchanged (``set_postfix`` still works)."""
    if not logger.isEnabledFor(logging.INFO):
        return _Silent(iterable)
    try:
        from tqdm.auto import tqdm  # only where a bar is drawn
    except ImportError:  # a runtime-only install (a board, a phone) has no tqdm: no bar, the messages still print
        return _Silent(iterable)

    return tqdm(iterable, desc=desc, unit=unit, total=total, file=file or sys.stderr, mininterval=2)


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the process's real stderr, so a library's ``redirect_stderr`` (used to hide converters' noise) hides only theirs."""

    def __init__(self) -> None:
        super().__init__(sys.__stderr__ or sys.stderr)


def _console_handler() -> _ConsoleHandler:
    for handler in logger.handlers:
        if isinstance(handler, _ConsoleHandler):
            return handler
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return handler


def configure(level: int = logging.INFO) -> None:
    """What the CLI and the benchmark scripts call: plain messages on stderr at ``level`` for the ``edgederm`` logger."""
    _console_handler().setLevel(level)
    logger.setLevel(level)
    logger.propagate = False


# Unconfigured, a library user still sees edgederm's warnings (a split without a class, a fallback taken) on stderr.
_console_handler().setLevel(logging.WARNING)
