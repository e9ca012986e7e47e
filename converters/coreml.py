"""CoreML export: one ``.mlpackage`` (ML Program, iOS 17+) per quantization mode.

The image input takes 8-bit RGB pixels (a ``CVPixelBuffer``/``CGImage`` from Vision, or a PIL
image in coremltools) and the Preprocess normalisation is folded in: ``ImageType``'s scale/bias,
plus a per-channel multiply in the graph when the three std values differ (``image_folding``).
Classifiers get coremltools' classifier outputs (``classLabel`` and the ``classLabel_probs``
dictionary), fed by the softmax the deployable graph already computes, so a ``VNCoreMLRequest``
returns ``VNClassificationObservation`` results with no post-processing.

Quantization modes (edgederm.core.formats):

* ``fp32`` / ``fp16``: ``ct.convert`` with ``compute_precision`` FLOAT32 / FLOAT16.
* ``int8-weights``: the fp16 program, then ``linear_quantize_weights`` (per-channel symmetric int8).
* ``palettize4/6/8``: the fp16 program, then ``palettize_weights`` (k-means look-up tables).
* ``int8`` (W8A8): activations calibrated in PyTorch with coremltools.optimize.torch's
  ``LinearQuantizer`` (observers only, no training), then converted: ``ct.optimize.coreml``'s own
  activation calibration runs CoreML predictions, which only macOS can do. Affine (asymmetric)
  ranges unless ``job.options["coreml_int8_scheme"] == "symmetric"``.

There is no ``w8a16``: coremltools 9 quantizes activations to 8 bits only (``LinearQuantizer``
accepts ``quint8`` or float activations, and the MIL ``quantize`` op int8 or uint8), so the formats
table lists no 16-bit activation mode for CoreML.

Everything here runs on Linux; running the artifact does not (coremltools predicts only on macOS).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgederm.core.formats import FORMATS, QUANT_MODES
from edgederm.core.metadata import artifact_spec, metadata_strings
from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec

from ._job import ConversionError, ExportJob, check_job, conversion_step
from ._wrap import deployable, example_input

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"  # coremltools names the classifier's dictionary "<label output>_probs"
TENSOR_OUTPUT = "probabilities"  # the softmax inside the program, before the classify op
MASK_OUTPUT = "mask_probabilities"
PALETTE_BITS = {"palettize4": 4, "palettize6": 6, "palettize8": 8}
NOT_A_DIAGNOSIS = "A screening aid, not a diagnosis: any suspicious lesion needs a clinician."


@dataclass(frozen=True)
class ImageFolding:
    """How ``Preprocess.normalize`` is split between CoreML's ImageType and the graph.

    Preprocess computes, per channel c, ``x_c = (p_c / 255 - mean_c) / std_c`` for a pixel p_c in
    [0, 255]. ImageType computes ``y_c = scale * p_c + bias_c`` with ONE scale for all channels, so
    with a reference std ``s``:

        scale  = 1 / (255 * s)
        bias_c = -mean_c / s                  -> y_c = (p_c / 255 - mean_c) / s
        gain_c = s / std_c                    -> x_c = gain_c * y_c   (exact)

    When the three std are equal (TF-style weights: mean 127/255, std 128/255), ``s`` is that std,
    every gain is 1 and the graph needs no multiply. Otherwise (ImageNet statistics) ``s = 1``:
    ImageType gives ``p / 255 - mean`` and the graph multiplies channel c by ``1 / std_c``.
    """

    scale: float
    bias: tuple[float, float, float]
    gain: tuple[float, float, float] | None  # per-channel multiply in the graph; None when std is one value

    def image_type(self, pixels_nchw: torch.Tensor) -> torch.Tensor:
        """What CoreML's ImageType feeds the graph: ``scale * pixel + bias`` (for tests)."""
        return self.scale * pixels_nchw + torch.tensor(self.bias).view(1, 3, 1, 1)

    def apply(self, pixels_nchw: torch.Tensor) -> torch.Tensor:
        """ImageType, then the gain: what the network proper receives (for tests)."""
        y = self.image_type(pixels_nchw)
        return y if self.gain is None else y * torch.tensor(self.gain).view(1, 3, 1, 1)


def image_folding(preprocess: Preprocess) -> ImageFolding:
    equal_std = len(set(preprocess.std)) == 1
    s = preprocess.std[0] if equal_std else 1.0
    bias = tuple(-m / s for m in preprocess.mean)
    gain = None if equal_std else tuple(s / sd for sd in preprocess.std)
    return ImageFolding(1.0 / (255.0 * s), bias, gain)  # type: ignore[arg-type]


class ChannelGain(nn.Module):
    """Finishes the normalisation ImageType cannot do: multiplies channel c by ``gain[c]``."""

    def __init__(self, inner: nn.Module, gain: tuple[float, float, float]):
        super().__init__()
        self.inner = inner
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner(y * self.gain)


def export(job: ExportJob) -> None:
    check_job(job, FORMATS["coreml"])
    if job.target.suffix != ".mlpackage":
        raise ConversionError(f"a CoreML ML Program is a .mlpackage directory, not {job.target.name}")
    folding = image_folding(job.spec.preprocess)
    with conversion_step(f"CoreML {job.quant} conversion", needs="coremltools"):
        import coremltools as ct

        network = _quantized_network(job) if QUANT_MODES[job.quant].needs_calibration else deployable(job.model, job.spec)
        mlmodel = _convert(ct, _traced(network, folding, job.spec), job.spec, folding, _precision(ct, job.quant))
        mlmodel = _compress_weights(ct, mlmodel, job.quant)
        _describe(mlmodel, job, _io(job, folding))
        mlmodel.save(str(job.target))


def _precision(ct: Any, quant: str) -> Any:
    # The compressed modes start from the fp16 program: their look-up tables, scales and float
    # compute are fp16, as on the Neural Engine.
    return ct.precision.FLOAT32 if quant == "fp32" else ct.precision.FLOAT16


def _traced(network: nn.Module, folding: ImageFolding, spec: ModelSpec) -> torch.jit.ScriptModule:
    graph = network if folding.gain is None else ChannelGain(network, folding.gain).eval()
    with torch.no_grad():
        return torch.jit.trace(graph, example_input(spec))


def _convert(ct: Any, traced: torch.jit.ScriptModule, spec: ModelSpec, folding: ImageFolding, precision: Any) -> Any:
    side = spec.preprocess.input_size
    image = ct.ImageType(
        name=INPUT_NAME, shape=(1, 3, side, side), color_layout=ct.colorlayout.RGB, scale=folding.scale, bias=list(folding.bias)
    )
    classifier = spec.task == "classification"
    return ct.convert(
        traced,
        inputs=[image],
        outputs=[ct.TensorType(name=TENSOR_OUTPUT if classifier else MASK_OUTPUT)],
        classifier_config=ct.ClassifierConfig(
            class_labels=list(spec.class_names), predicted_feature_name=LABEL_OUTPUT, predicted_probabilities_output=TENSOR_OUTPUT
        )
        if classifier
        else None,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=precision,
    )


def _compress_weights(ct: Any, mlmodel: Any, quant: str) -> Any:
    from coremltools.optimize import coreml as cto

    if quant == "int8-weights":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        return cto.linear_quantize_weights(mlmodel, config=config)
    if quant in PALETTE_BITS:
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS[quant]))
        return cto.palettize_weights(mlmodel, config=config)
    return mlmodel


def _quantized_network(job: ExportJob) -> nn.Module:
    """W8A8 in PyTorch: int8 per-channel weights, quint8 activations calibrated on ``job.calibration``.

    Affine (asymmetric) ranges by default: they kept the float top-1 on 26/27 photos against
    20/27 for symmetric (coremltools' example scheme, ``options {"coreml_int8_scheme":
    "symmetric"}``) with ImageNet EfficientNet-Lite0, measured on the PyTorch side and calibrated
    on the same photos; which one the Neural Engine runs fastest is unmeasured.

    The result is a reference-quantized fx graph (quantize/dequantize around float ops) that
    ``ct.convert`` turns into int8 constexpr weights and quantize/dequantize activation ops.
    """
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig, ModuleLinearQuantizerConfig

    scheme = job.options.get("coreml_int8_scheme", "affine")
    if scheme not in ("symmetric", "affine"):
        raise ConversionError(f"coreml_int8_scheme must be symmetric or affine, not {scheme!r}")
    network = deployable(_plain_batchnorm(copy.deepcopy(job.model)), job.spec)
    # milestones: step 0 turns observers on and freezes batch norm; step 1 turns fake-quantization
    # on and observers off. min_max observers: a moving average would forget all but the first
    # few of a few hundred calibration images.
    module_config = ModuleLinearQuantizerConfig(
        quantization_scheme=scheme,
        weight_dtype=torch.qint8,
        activation_dtype=torch.quint8,
        weight_observer="min_max",
        activation_observer="min_max",
        milestones=[0, 1, 1, 0],
    )
    quantizer = LinearQuantizer(network, LinearQuantizerConfig(global_config=module_config))
    prepared = quantizer.prepare(example_inputs=(example_input(job.spec),))
    quantizer.step()
    prepared.eval()  # prepare() leaves train mode; calibration must see inference behaviour
    with torch.no_grad():
        for batch in job.calibration.batches(1, "NCHW"):
            prepared(torch.from_numpy(batch))
    quantizer.step()
    return quantizer.finalize().eval()


def _plain_batchnorm(model: nn.Module) -> nn.Module:
    """Replace timm's BatchNormAct2d (batch norm + activation in one module) by plain modules.

    torch.fx traces through BatchNormAct2d's forward in training mode, baking batch statistics
    into the graph, and conv-bn fusion only recognises ``nn.BatchNorm2d``; as
    ``Sequential(BatchNorm2d, drop, act)`` the quantizer folds each batch norm into its conv.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d) and type(child) is not nn.BatchNorm2d:
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            plain.load_state_dict({k: v for k, v in child.state_dict().items() if k in plain.state_dict()})
            extras = [
                m for m in (getattr(child, "drop", None), getattr(child, "act", None)) if m is not None and not isinstance(m, nn.Identity)
            ]
            setattr(model, name, nn.Sequential(plain, *extras) if extras else plain)
        else:
            _plain_batchnorm(child)
    return model.eval()


def _io(job: ExportJob, folding: ImageFolding) -> dict[str, Any]:
    spec = job.spec
    side = spec.preprocess.input_size
    image = {
        "name": INPUT_NAME,
        "type": "image",
        "color_layout": "RGB",
        "size": [side, side],
        "pixels": "uint8 RGB after Preprocess.fit (resize policy in preprocess)",
        "scale": folding.scale,
        "bias": list(folding.bias),
        "channel_gain": None if folding.gain is None else list(folding.gain),
    }
    if spec.task == "classification":
        output = {"name": PROBS_OUTPUT, "type": "dictionary", "keys": "class_names", "label": LABEL_OUTPUT}
    else:
        output = {"name": MASK_OUTPUT, "type": "multiarray", "dtype": "float32"}
    io: dict[str, Any] = {"input": image, "output": output}
    if QUANT_MODES[job.quant].needs_calibration and job.calibration is not None:
        scheme = job.options.get("coreml_int8_scheme", "affine")
        io["calibration"] = {"source": job.calibration.source, "images": len(job.calibration), "scheme": scheme}
    return io


def _describe(mlmodel: Any, job: ExportJob, io: dict[str, Any]) -> None:
    spec, pre = job.spec, job.spec.preprocess
    stamped = artifact_spec(spec, "coreml", job.quant, io)
    for key, value in metadata_strings(stamped).items():
        mlmodel.user_defined_metadata[key] = value
    mlmodel.author = "edgederm"
    mlmodel.version = f"edgederm {spec.edgederm_version}, weights sha256 {(spec.source_sha256 or 'unknown')[:16]}"
    mlmodel.short_description = (
        f"Skin-lesion {spec.task} ({spec.arch}, {job.quant}) over HAM10000 dx codes {', '.join(spec.class_names)}. {NOT_A_DIAGNOSIS}"
    )
    fit = (
        f"letterboxed: long side scaled to {pre.input_size}, padded with RGB {pre.pad_rgb}"
        if pre.resize == "letterbox"
        else f"short side scaled to {pre.input_size}, centre-cropped"
    )
    mlmodel.input_description[INPUT_NAME] = (
        f"Dermoscopic photo of one skin lesion, 8-bit RGB, {pre.input_size}x{pre.input_size} ({fit}); "
        "the normalisation is inside the model."
    )
    if spec.task == "classification":
        mlmodel.output_description[LABEL_OUTPUT] = f"The most probable class (HAM10000 dx code). {NOT_A_DIAGNOSIS}"
        mlmodel.output_description[PROBS_OUTPUT] = (
            f"Calibrated probability of each class ({', '.join(spec.class_names)}); they sum to 1. {NOT_A_DIAGNOSIS}"
        )
    else:
        mlmodel.output_description[MASK_OUTPUT] = (
            f"Per-pixel lesion probability on the {pre.input_size}x{pre.input_size} input. {NOT_A_DIAGNOSIS}"
        )
