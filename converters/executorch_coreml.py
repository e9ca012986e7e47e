"""ExecuTorch for iOS and macOS: the program lowered to one CoreML delegate (``CoreMLPartitioner``), a ``.coreml.pte`` file.

The same ``torch.export`` of the deployable graph as the XNNPACK ``.pte`` (``converters/executorch.py``),
lowered with ``CoreMLPartitioner``: coremltools converts the partition to an ML Program (iOS 17
target, like the ``.mlpackage`` rows) at float32 or float16 compute precision, and the program
holds it as one ``CoreMLBackend`` delegate. On a phone, ExecuTorch's runtime hands that delegate to
CoreML, which may place it on the CPU, GPU or Neural Engine. The ModelSpec is the constant method
``edgederm_spec``, as in every ``.pte``.

CoreML runs only on Apple platforms, so the file is checked here as the ``.mlpackage`` rows are:
every op of the graph must be inside the CoreML delegate (a program that needs another backend is
refused), and the delegate's ML Program, unpacked from the file, runs in edgederm's MIL emulator
(``edgederm.runtime.coreml_emulator``). Before the file is written, the emulated fp32 program must
match torch within 1e-4, and the fp16 one must give finite outputs of the stated shape.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch

from edgederm.core import atomic
from edgederm.core.formats import FORMATS
from edgederm.core.metadata import SPEC_KEY, artifact_spec
from edgederm.runtime.executorch_backend import import_notices_silenced

from . import executorch
from ._job import ConversionError, ExportJob, check_job, conversion_step
from ._wrap import check_fp32_matches_torch, deployable, example_input

FORMAT = FORMATS["executorch-coreml"]
MINIMUM_TARGET = "iOS17"


def export(job: ExportJob) -> None:
    check_job(job, FORMAT)
    with (
        conversion_step(f"ExecuTorch CoreML {job.quant} conversion", needs="executorch (pip install executorch==1.5.1)"),
        import_notices_silenced(),
    ):
        from executorch.exir import to_edge_transform_and_lower

        with torch.no_grad():
            program = torch.export.export(deployable(job.model, job.spec), (example_input(job.spec),))
        spec_json = artifact_spec(job.spec, FORMAT.name, job.quant, _io(job)).to_json()
        partitioner = _partitioner(job.quant)  # imported first: the import creates the loggers quieted next
        with conversion_step("CoreML lowering"), _partitioner_notices_quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[partitioner], constant_methods={SPEC_KEY: spec_json})
            delegation = executorch._delegation(edge)
            job.details["coreml_delegate"] = delegation
            if delegation["delegates"] != 1 or delegation["outside"] or delegation["casts_outside"]:
                outside = ", ".join(f"{op} x{n}" for op, n in delegation["outside"].items()) or "none"
                raise ConversionError(
                    f"CoreML does not take the whole graph ({delegation['delegates']} delegates; ops outside it: {outside})"
                )
            buffer = edge.to_executorch().buffer
    _check_emulated(buffer, job)
    atomic.write_bytes(job.target, buffer)


@contextlib.contextmanager
def _partitioner_notices_quiet() -> Iterator[None]:
    """executorch's CoreML backend logs every node it leaves out (the graph's input and output) at INFO, and warns
    that a deployment target should be set even when one is: neither concerns the user."""
    names = [name for name in logging.root.manager.loggerDict if name.startswith("executorch.backends.apple.coreml")]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _partitioner(quant: str):
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    precision = ct.precision.FLOAT16 if quant == "fp16" else ct.precision.FLOAT32
    target = getattr(ct.target, MINIMUM_TARGET)
    specs = CoreMLBackend.generate_compile_specs(compute_precision=precision, minimum_deployment_target=target)
    return CoreMLPartitioner(compile_specs=specs)


def _io(job: ExportJob) -> dict:
    from edgederm.runtime.coreml_emulator import COREML_DELEGATE

    return {**executorch._io(job), "delegate": COREML_DELEGATE, "minimum_deployment_target": MINIMUM_TARGET}


def _check_emulated(buffer: bytes, job: ExportJob) -> None:
    """The delegate's ML Program, run by the MIL emulator on one input: torch's outputs in fp32, finite ones in fp16."""
    from edgederm.runtime.coreml_emulator import run_delegate, unpacked_coreml_delegate

    side = job.spec.preprocess.input_size
    example = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    with conversion_step(f"emulated run of the {job.quant} CoreML delegate"), unpacked_coreml_delegate(buffer, job.target) as program:
        output = run_delegate(program, torch.from_numpy(example)).numpy().reshape(_io(job)["output"]["shape"])
    if not np.all(np.isfinite(output)):
        raise ConversionError(f"the {job.quant} CoreML delegate outputs non-finite values in the emulator")
    if job.quant == "fp32":
        check_fp32_matches_torch(job, example, output, "CoreML delegate (emulated)")
