"""Accuracy-aware int8 (``--quant int8-aa --max-drop X``), the same search for every format.

Full int8 first. If its top-1 answers disagree with the fp32 model's on more than ``max_drop`` of
the calibration images, each quantizable layer is ranked by how much keeping it alone in float
brings the int8 probabilities back towards fp32 (mean |Δp| on a subset of the calibration images),
and the fewest top-ranked layers are kept in float that bring the disagreement within the bound
(a doubling then bisecting search over that ranking). The file must stay an int8 file: at most
``max_size`` (default 0.3) of the fp32 model's size. A bound that needs more float weights than that
is not reached, and the error says so and points at quantization-aware training.

Top-1 disagreement with fp32 is the criterion because it needs no labels and bounds the accuracy
drop from above (an image whose answer did not change cannot lose accuracy); ``edgederm verify``
then measures the real metric drops on held-out labelled images. For a segmenter the decisions are
its mask pixels (``_ranges.disagreement``).

A converter supplies an ``Int8Quantizer`` (its static int8 calibrated once; the Protocol below says
what it offers) and calls ``for_job``.

``build`` gives models without bias correction. The correction is fitted for the all-int8 model: each
conv's shift takes back the error of the int8 layers before it, so in a model that keeps some of those
float it over-corrects (measured on a MobileNetV3-Large in ONNX: all-int8 2.0% disagreement, 4.0% with
72 layers float). The search therefore tries ``full_int8`` first and otherwise ranks and keeps layers
float among the uncorrected models, where each float layer's effect is its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from edgederm.core.log import get_logger, progress

from ._bias_correction import BiasCorrection
from ._ranges import RangeChoice, decisions, disagreement

if TYPE_CHECKING:
    from ._job import ExportJob  # torch: this module stays numpy-only

logger = get_logger(__name__)

DEFAULT_MAX_DROP = 0.01
DEFAULT_MAX_SIZE = 0.30  # of the fp32 file: the size an int8 artifact promises
RANK_IMAGES = 64  # images used to rank layers; the search itself uses every calibration image
LINEAR_STEPS = 8

Model = TypeVar("Model")  # a format's model: TFLite flatbuffer bytes, an onnx.ModelProto


@runtime_checkable
class Int8Quantizer(Protocol[Model]):
    """A format's static int8 quantizer, calibrated once, as ``for_job`` and ``search`` use it.

    ``onnx._Int8Quantizer`` and ``tflite._StaticInt8`` implement it. Models come from ``build`` (and
    ``full_int8``) and go back only into this quantizer's ``predict``, ``latency`` and ``size``.
    """

    @property
    def reference(self) -> np.ndarray:
        """The fp32 model's probabilities on the calibration images, (N, classes): what agreement is measured against."""
        ...

    @property
    def full_int8(self) -> Model:
        """The int8 artifact: every layer int8 at the chosen activation ranges, bias corrected where that helped."""
        ...

    @property
    def range_choice(self) -> RangeChoice:
        """How the activation ranges were chosen (``_ranges.choose``), for the manifest."""
        ...

    @property
    def bias_correction(self) -> BiasCorrection:
        """Whether bias correction was applied and why (``_bias_correction``), for the manifest."""
        ...

    @property
    def float_size(self) -> int:
        """The fp32 model's bytes, the size an int8 file is measured against."""
        ...

    def candidates(self) -> list[str]:
        """The layers ``build`` can keep in float, by name."""
        ...

    def build(self, keep_float: list[str]) -> Model:
        """The int8 model with the ``keep_float`` layers (and their float regions) in float, without bias correction."""
        ...

    def predict(self, model: Model, n: int | None) -> np.ndarray:
        """``model``'s probabilities on the first ``n`` calibration images (all of them for None)."""
        ...

    def latency(self, model: Model) -> float:
        """``model``'s median latency in ms, one thread, batch 1."""
        ...

    def size(self, model: Model) -> int:
        """``model``'s bytes as the artifact would hold them."""
        ...


@dataclass
class AwareResult:
    max_drop: float
    candidates: int
    kept_float: list[str]
    disagreement: float  # final model against fp32 on the calibration images (``measure``)
    full_int8_disagreement: float
    reached: bool
    latency_ms: float | None = None  # 1 thread, batch 1
    full_int8_latency_ms: float | None = None
    builds: int = 0
    seconds: float = 0.0
    size_ratio: float | None = None  # final model's bytes / the fp32 model's
    max_size: float | None = None
    over_size: bool = False  # the bound needs more float layers than max_size allows
    within_size: int | None = None  # ranked layers that can be float together within max_size
    ranking: list[dict[str, Any]] = field(default_factory=list)  # the 10 most sensitive layers
    measure: str = "top-1"  # the decisions compared: each image's class, or a segmenter's mask pixels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        latency = ""
        if self.latency_ms and self.full_int8_latency_ms:
            latency = f"; latency {self.latency_ms:.2f} ms vs {self.full_int8_latency_ms:.2f} ms all-int8"
        outcome = "within" if self.reached else "NOT within"
        size = f", {self.size_ratio:.2f}x the fp32 size" if self.size_ratio is not None else ""
        return (
            f"{len(self.kept_float)}/{self.candidates} layers kept float, {self.measure} disagreement with fp32 "
            f"{self.disagreement:.1%} (all-int8 {self.full_int8_disagreement:.1%}), {outcome} {self.max_drop:.1%}{size}{latency}"
        )


@dataclass(frozen=True)
class Layer:
    name: str
    nodes: tuple[str, ...]  # what the format's quantizer must skip: the op and any activation fused into it
    inputs: frozenset[str]  # activation tensors it reads
    outputs: frozenset[str]


def float_regions(layers: Sequence[Layer]) -> dict[str, list[str]]:
    """Per layer, the nodes to keep float so that it computes in float *and* its output stays float.

    Static int8 quantizes a tensor wherever any reader of it is quantized, so keeping a layer's op
    float alone wins back almost nothing (measured on Lite0): its readers are kept float with it.
    """
    regions = {}
    for layer in layers:
        readers = [other for other in layers if other is not layer and other.inputs & layer.outputs]
        regions[layer.name] = list(dict.fromkeys([*layer.nodes, *(n for r in readers for n in r.nodes)]))
    return regions


def _console():
    # The TFLite converter silences its tools by redirecting sys.stderr; the search's progress is ours to show.
    return sys.__stderr__ or sys.stderr


def log(message: str, tag: str = "int8-aa") -> None:
    logger.info(f"  {tag}: {message}")


def search(
    candidates: Sequence[str],
    build: Callable[[list[str]], Model],
    predict: Callable[[Model, int | None], np.ndarray],
    latency: Callable[[Model], float],
    reference: np.ndarray,
    max_drop: float,
    *,
    size: Callable[[Model], int] | None = None,
    float_bytes: int | None = None,
    max_size: float | None = None,
    start: Model | None = None,
) -> tuple[Model, AwareResult]:
    """The int8 model with the fewest float layers within ``max_drop``; ``reference`` = fp32 probabilities.

    The arguments are an ``Int8Quantizer``'s members (``for_job`` passes them), taken one by one so a test can
    search over a toy model.

    With ``size`` (bytes of a model) and ``float_bytes`` (the fp32 model's), only models of at most
    ``max_size`` times ``float_bytes`` are candidates. ``start``: an all-int8 model to try first instead of
    ``build([])`` (the bias-corrected one); if it misses the bound, the search starts again from ``build([])``.
    """
    started = time.time()
    builds = 0

    def evaluate(excluded: list[str], n: int | None = None) -> tuple[Model, np.ndarray]:
        nonlocal builds
        builds += 1
        model = build(excluded)
        return model, predict(model, n)

    def nbytes(model: Model) -> int | None:
        return size(model) if size is not None else None

    max_bytes = max_size * float_bytes if max_size is not None and float_bytes else None

    full, full_probs = (start, predict(start, None)) if start is not None else evaluate([])
    full_gap = disagreement(full_probs, reference)
    result = AwareResult(
        max_drop, len(candidates), [], full_gap, full_gap, full_gap <= max_drop, max_size=max_size, measure=decisions(reference)
    )
    full_latency = latency(full)
    result.full_int8_latency_ms = result.latency_ms = full_latency
    log(
        f"all-int8 disagrees with fp32 on {full_gap:.1%} of the {result.measure} decisions of {len(reference)} calibration images (bound {max_drop:.1%})"
    )
    full_bytes = nbytes(full)
    if result.reached or not candidates or (max_bytes is not None and full_bytes is not None and full_bytes > max_bytes):
        result.over_size = not result.reached and bool(candidates)
        result.builds, result.seconds = builds, round(time.time() - started, 1)
        return full, _sized(result, full_bytes, float_bytes)

    if start is not None:
        full, full_probs = evaluate([])
        gap = disagreement(full_probs, reference)
        log(f"without bias correction, all-int8 disagrees on {gap:.1%}")
        if gap <= max_drop:
            result.disagreement, result.reached = gap, True
            result.builds, result.seconds = builds, round(time.time() - started, 1)
            return full, _sized(result, nbytes(full), float_bytes)

    n_rank = min(RANK_IMAGES, len(reference))
    base = float(np.abs(full_probs[:n_rank] - reference[:n_rank]).mean())
    benefit, cost = {}, {}
    for name in progress(candidates, desc="  int8-aa ranking layers", unit="layer", file=_console()):
        model, probs = evaluate([name], n_rank)
        benefit[name] = base - float(np.abs(probs - reference[:n_rank]).mean())
        single = nbytes(model)
        cost[name] = single - full_bytes if single is not None and full_bytes is not None else 0
    ranked = sorted(candidates, key=lambda name: -benefit[name])
    result.ranking = [{"layer": name, "mean_abs_prob_gain": round(benefit[name], 6)} for name in ranked[:10]]
    if max_bytes is not None and full_bytes is not None:
        # Under the size cap, a large layer high in the ranking must not shut out the small ones below it:
        # walk the ranking and take each layer whose float weights still fit (regions overlap, so this errs small).
        room, fitting = max_bytes - full_bytes, []
        for name in ranked:
            if cost[name] <= room:
                fitting.append(name)
                room -= cost[name]
        result.within_size = len(fitting)
        ranked = fitting
        if not ranked:
            result.over_size = True
            result.builds, result.seconds = builds, round(time.time() - started, 1)
            return full, _sized(result, full_bytes, float_bytes)

    cache: dict[int, tuple[Model, float, int | None]] = {0: (full, full_gap, full_bytes)}

    def step(k: int) -> tuple[Model, float, int | None]:
        if k not in cache:
            model, probs = evaluate(ranked[:k])
            cache[k] = (model, disagreement(probs, reference), nbytes(model))
            log(f"{k} layer(s) float: disagreement {cache[k][1]:.1%}")
        return cache[k]

    def over(k: int) -> bool:
        bytes_k = step(k)[2]
        return max_bytes is not None and bytes_k is not None and bytes_k > max_bytes

    def done(k: int) -> bool:  # within the bound, or past the size budget: no larger k is wanted
        return over(k) or step(k)[1] <= max_drop

    # A few layers (typically the stem) usually carry the error, and one flipped image more or less makes
    # the disagreement non-monotonic in k: try the first few one by one, then double and bisect.
    low, high = 0, 1  # low (all-int8) is known to fit and to miss the bound
    while high < min(LINEAR_STEPS, len(ranked)) and not done(high):
        low, high = high, high + 1
    while high < len(ranked) and not done(high):
        low, high = high, min(2 * high, len(ranked))
    if done(high):
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if done(middle) else (middle, high)
    final = low if over(high) else high  # over budget: the most float layers that still fit
    model, final_gap, final_bytes = step(final)
    result.kept_float, result.disagreement = ranked[:final], final_gap
    result.reached = final_gap <= max_drop
    result.over_size = not result.reached and (over(high) or len(ranked) < len(candidates))
    result.latency_ms = latency(model)
    result.builds, result.seconds = builds, round(time.time() - started, 1)
    _sized(result, final_bytes, float_bytes)
    log(result.summary())
    return model, result


def _sized(result: AwareResult, nbytes: int | None, float_bytes: int | None) -> AwareResult:
    if nbytes is not None and float_bytes:
        result.size_ratio = round(nbytes / float_bytes, 4)
    return result


_REMEDY = (
    "fine-tune the run through simulated int8 (edgederm train classify --init-from RUN --qat --mode full --epochs 3 --lr 1e-4 ...), "
    "use fp16, or a larger --max-drop"
)


def for_job(quantizer: Int8Quantizer[Model], job: ExportJob) -> Model:
    """int8 or w8a16 (all layers quantized) or int8-aa (the search) for an ExportJob; the quantizer's choices go to
    ``job.details``."""
    tag = job.quant.removesuffix("-aa")
    job.details["activation_ranges"] = quantizer.range_choice.to_dict()
    log(quantizer.range_choice.summary(), tag=tag)
    job.details["bias_correction"] = quantizer.bias_correction.to_dict()
    log(quantizer.bias_correction.summary(), tag=tag)
    if job.quant != "int8-aa":
        return quantizer.full_int8
    model, result = search(
        quantizer.candidates(),
        quantizer.build,
        quantizer.predict,
        quantizer.latency,
        quantizer.reference,
        float(job.options.get("max_drop", DEFAULT_MAX_DROP)),
        size=quantizer.size,
        float_bytes=quantizer.float_size,
        max_size=float(job.options.get("max_size", DEFAULT_MAX_SIZE)),
        start=quantizer.full_int8,
    )
    job.details["int8_aa"] = result.to_dict()
    from ._job import ConversionError

    if result.reached and result.candidates and len(result.kept_float) == result.candidates:
        raise ConversionError(
            f"int8-aa reaches {result.max_drop:.1%} only with all {result.candidates} layers float: that is the float model, "
            f"not an int8 one; {_REMEDY}"
        )
    if result.over_size:
        raise ConversionError(
            f"int8-aa cannot bring {result.measure} disagreement with fp32 within {result.max_drop:.1%} in an int8-sized file "
            f"(at most {result.max_size:.2f}x the fp32 size): {result.disagreement:.1%} with the {len(result.kept_float)} most "
            f"sensitive of {result.candidates} layers float (all-int8: {result.full_int8_disagreement:.1%}); {_REMEDY}, "
            "or allow a larger file (--max-size)"
        )
    if not result.reached:
        raise ConversionError(
            f"int8-aa cannot bring {result.measure} disagreement with fp32 within {result.max_drop:.1%}: {result.disagreement:.1%} even with "
            f"{len(result.kept_float)}/{result.candidates} layers float (all-int8: {result.full_int8_disagreement:.1%}); "
            f"post-training quantization does not get there for this model: {_REMEDY}"
        )
    return model
