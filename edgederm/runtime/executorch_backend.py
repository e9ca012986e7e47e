"""The ExecuTorch backend for exported ``.pte`` programs (XNNPACK delegate, CPU).

The ModelSpec is the program's constant method ``edgederm_spec`` (a JSON string), so the file alone
says its input size, normalisation and class names. ExecuTorch's Python runtime loads libtorch, so
executorch and torch are imported only when a ``.pte`` is loaded: ``import edgederm.runtime`` stays
torch-free, and a phone runs the same file with ExecuTorch's C++ runtime and no torch at all.

The file is read once and checked before the runtime sees it: the ExecuTorch identifier, and the
extended header's sizes against the file's, so a truncated download is refused with one line naming
the file (the runtime refuses it too, but the error log of a file with a foreign identifier aborts
the process). The runtime's own refusals (a flatbuffer that fails verification, a delegate that does
not initialise) become one ModelError line with the runtime's last log line.

Threads: ExecuTorch's XNNPACK delegate runs on the runtime's one process-wide threadpool, which the
runtime resizes only by replacing it, and a loaded method keeps the pool it was built on: running
or releasing it after a resize hangs or crashes the process (measured with executorch 1.5.1).
A predictor loaded with ``threads=N`` resizes the pool to N when it holds another count: every
ExecuTorch predictor in the process first releases its program (the Program caches its methods,
so only that frees the delegate), and each loads it again, from the bytes it read, before its next
run. Predictors with different counts so take turns in one process (as ``verify`` times 1 and 2
threads), each at its own count; without ``threads`` a predictor runs on the pool as it is (by
default one thread per core). Predictors running at the same moment from different Python threads
are not supported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BackendUnavailable, ModelError
from ..core.log import get_logger
from ..core.metadata import SPEC_KEY
from ..core.spec import ModelSpec
from .predictor import Predictor

logger = get_logger(__name__)

METHOD = "forward"
INSTALL = "pip install executorch==1.5.1 torch==2.14.1"
_REEXPORT = "the file is truncated, corrupt or not an edgederm export; re-run `edgederm export --formats executorch`"
_HEAD_BYTES = 64  # what the runtime reads first: the flatbuffer root offset, the identifier and the extended header
_IDENTIFIER = re.compile(rb"ET\d\d")
_EXTENDED_HEADER = b"eh00"
_LOG_PREFIX = re.compile(r"^\[[\w.]+:\d+\]\s*")
_POOL = {"generation": 0}  # bumped whenever a predictor resizes the runtime's process-wide threadpool
_LIVE: weakref.WeakSet[ExecuTorchPredictor] = weakref.WeakSet()  # predictors holding a loaded method


class ExecuTorchPredictor(Predictor):
    backend_name = "executorch"

    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        self._content = read_program(self.path)  # the runtime reads the program from these bytes, and reloads it from them
        self.threads = threads
        self._torch, self._runtime, self._threadpool = _runtime(self.path)
        self._program, self._method, self._generation = None, None, -1
        self.spec = _spec_of(self._load_program(), self.path)
        self.input_layout = self.spec.artifact.get("input", {}).get("layout", "NCHW")
        self._prepare_method()

    def _load_program(self) -> Any:
        if self._program is None:
            with _runtime_errors(self.path, "cannot load the ExecuTorch program"):
                self._program = self._runtime.load_program(self._content)
        return self._program

    def _release(self) -> None:
        # The Program caches the methods it loads: only dropping it frees the method's XNNPACK delegate.
        self._method = self._program = None

    def _prepare_method(self) -> None:
        """The forward method, loaded on the threadpool this predictor asks for (the module doc says why it may reload)."""
        with captured_log():  # the pool logs its creation (CPU probing) and every resize
            if self.threads and self._threadpool._threadpool_get_thread_count() != self.threads:
                for predictor in list(_LIVE):
                    predictor._release()  # no delegate may outlive the pool it was built on
                self._threadpool._unsafe_reset_threadpool(self.threads)
                _POOL["generation"] += 1
        if self._method is None or self._generation != _POOL["generation"]:
            if self._generation != _POOL["generation"]:
                self._release()
            program = self._load_program()
            with _runtime_errors(self.path, f"cannot load the ExecuTorch method {METHOD!r}"):
                self._method = program.load_method(METHOD)
            self._generation = _POOL["generation"]
            _LIVE.add(self)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        array = self.spec.input_preprocess.normalize(np.asarray(pixels), layout=self.input_layout)
        if not len(array):
            return np.zeros((0, self.spec.num_classes), np.float32)
        self._prepare_method()
        outputs = []
        with _runtime_errors(self.path, "the ExecuTorch program failed to run"):
            for one in array:  # the program is exported at batch 1
                (output,) = self._method.execute([self._torch.from_numpy(np.ascontiguousarray(one[None]))])
                outputs.append(output.numpy())
        return np.concatenate(outputs).astype(np.float32, copy=False)


def _spec_of(program: Any, path: Path) -> ModelSpec:
    """The ModelSpec a loaded program returns from its constant method ``edgederm_spec``."""
    if SPEC_KEY not in program.method_names:
        raise ModelError(f"no edgederm metadata ({SPEC_KEY}) in this ExecuTorch program", path=path, fix="export it with `edgederm export`")
    with _runtime_errors(path, "cannot read the ExecuTorch program's spec"):
        (text,) = program.load_method(SPEC_KEY).execute([])
    return ModelSpec.from_json(str(text), source=path)


def program_spec(content: bytes, path: Path) -> ModelSpec:
    """The ModelSpec inside a program's bytes, read by the ExecuTorch runtime without loading its forward method
    (which needs every delegate's backend: a CoreML delegate has none off Apple)."""
    _, runtime, _ = _runtime(path)
    with _runtime_errors(path, "cannot load the ExecuTorch program"):
        program = runtime.load_program(content)
    return _spec_of(program, path)


def read_program(path: Path) -> bytes:
    """The file's bytes, after checking its head: the ExecuTorch identifier, and extended-header sizes that fit the file."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the ExecuTorch program ({exc.strerror})", path=path) from None
    check_program_head(content, path)
    return content


def check_program_head(content: bytes, path: str | Path = "<pte>") -> None:
    head = content[:_HEAD_BYTES]
    if len(head) < _HEAD_BYTES or not _IDENTIFIER.fullmatch(head[4:8]):
        raise ModelError(f"not an ExecuTorch program (no ET identifier in its first {_HEAD_BYTES} bytes)", path=path, fix=_REEXPORT)
    if head[8:12] != _EXTENDED_HEADER:
        return  # programs without the extended header hold no segments: the runtime's verifier checks the rest
    length, program_size, segment_base = struct.unpack_from("<IQQ", head, 12)
    segment_size = struct.unpack_from("<Q", head, 32)[0] if length >= 32 else 0
    expected = max(program_size, segment_base + segment_size)
    if expected > len(content):
        raise ModelError(
            f"the ExecuTorch program is truncated: its header says {expected} bytes, the file has {len(content)}", path=path, fix=_REEXPORT
        )


def _runtime(path: Path) -> tuple[Any, Any, Any]:
    """torch, the ExecuTorch Runtime and its pybindings (for the threadpool), imported on first use."""
    try:
        with import_notices_silenced():
            import torch
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            runtime = Runtime.get()
    except ImportError as exc:
        raise BackendUnavailable(f"the ExecuTorch runtime is not installed ({exc})", path=path, fix=INSTALL) from None
    return torch, runtime, portable_lib


@contextlib.contextmanager
def import_notices_silenced() -> Iterator[None]:
    """Warnings off, and torch's pytree log at ERROR: executorch's import (or torchao's) warns that its runtime API
    is experimental and registers an enum that torch now calls deprecated, neither of which concerns the user."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree.setLevel(level)


@contextlib.contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """The runtime's log lines (it writes them through Python's stderr): kept for an error message, and logged at DEBUG."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):
            yield log
    finally:
        for line in log.getvalue().splitlines():
            if line.strip():
                logger.debug(f"executorch: {line.strip()}")


@contextlib.contextmanager
def _runtime_errors(path: Path, what: str) -> Iterator[None]:
    """A runtime failure as one ModelError line: ``what`` (the runtime's last log line; its exception)."""
    with captured_log() as log:
        try:
            yield
        except (RuntimeError, ValueError, TypeError) as exc:
            lines = [_LOG_PREFIX.sub("", line).strip() for line in log.getvalue().splitlines() if line.strip()]
            said = "; ".join(part for part in (lines[-1] if lines else "", _first_line(exc)) if part)
            raise ModelError(f"{what} ({said})", path=path, fix=_REEXPORT) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) < 200 else text[:197] + "..."
