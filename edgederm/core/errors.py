"""User-facing errors.

Every error a user can cause (a bad file, a wrong layout, an unknown label) is raised as an
``EdgedermError``: its ``str()`` is one line that names the file, what is wrong and the fix. The CLI
prints exactly that line and exits non-zero; it never shows a traceback unless ``--debug`` is set.
"""

from __future__ import annotations

from pathlib import Path


class EdgedermError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = " ".join(str(message).split())
        self.path = None if path is None else str(path)
        self.fix = None if fix is None else " ".join(str(fix).split())
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class DataError(EdgedermError):
    """A dataset, manifest or layout that cannot be read as asked."""


class ImageError(DataError):
    """One image (or mask) file that cannot be decoded safely."""


class ModelError(EdgedermError):
    """A model name, checkpoint or artifact that cannot be built or loaded."""


class BackendUnavailable(ModelError):
    """The runtime a model format needs is not installed or does not exist on this platform."""


class UsageError(EdgedermError):
    """Command-line arguments that contradict each other or are out of range."""
