"""The CoreML emulator: ML Programs executed with torch on Linux (edgederm.runtime.coreml_emulator).

(a) Hand-built MIL programs (coremltools' ``mb`` builder, saved with ``ct.convert``) against the
    same math written directly in torch.
(b) The compressed-weight ops against coremltools' own decompression (``materialized_val_inference``).
(c) Exported edgederm packages against the PyTorch model they came from: top-1 agreement and max
    |Δprob|, with tolerances from measurements (see ``EXPECTED``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edgederm.converters._calibration import load_calibration

from edgederm.core.errors import ModelError
from edgederm.core.formats import FORMATS
from edgederm.core.spec import ModelSpec
from edgederm.export import export_run
from edgederm.models.torch_backend import TorchPredictor
from edgederm.runtime.coreml_emulator import EmulatedCoreMLPredictor, EmulatedProgram, _load_main_function
from edgederm.runtime.predictor import Predictor

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402
from coremltools.optimize import _utils as optimize_utils  # noqa: E402

RNG = np.random.default_rng(0)
# Hand-built program (a): conv (weights from constexpr_blockwise_shift_scale) + relu + reduce_mean
# + linear (weights from an iOS 18 look-up table) + softmax.
CONV_DATA = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
CONV_SCALE = RNG.uniform(0.01, 0.03, (4, 1, 1, 1)).astype(np.float32)
CONV_BIAS = np.array([0.0, 0.1, -0.1, 0.2], np.float32)
LUT_INDICES = RNG.integers(0, 16, (5, 4)).astype(np.uint8)
LUT = RNG.normal(size=(1, 1, 16, 1)).astype(np.float32)
SIXTH = float(np.float32(1 / 6))


def _save(program, path: Path, precision=None, pipeline=None) -> Path:
    kwargs = {"pass_pipeline": pipeline} if pipeline is not None else {}
    mlmodel = ct.convert(
        program,
        convert_to="mlprogram",
        minimum_deployment_target=program.functions["main"].opset_version,
        compute_precision=precision or ct.precision.FLOAT32,
        **kwargs,
    )
    mlmodel.save(str(path))
    return path


def _small_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS18)
    def program(x):
        weight = mb.constexpr_blockwise_shift_scale(data=CONV_DATA, scale=CONV_SCALE)
        y = mb.conv(x=x, weight=weight, bias=CONV_BIAS, pad_type="same")
        y = mb.relu(x=y)
        y = mb.reduce_mean(x=y, axes=[2, 3], keep_dims=False)
        dense = mb.constexpr_lut_to_dense(indices=LUT_INDICES.astype(types.np_uint4_dtype), lut=LUT)
        y = mb.linear(x=y, weight=dense, bias=np.linspace(-0.5, 0.5, 5).astype(np.float32))
        return mb.softmax(x=y, axis=-1)

    return program


def _small_reference(x: torch.Tensor, round_to: torch.dtype = torch.float32) -> torch.Tensor:
    """The same math in torch; ``round_to=float16`` rounds weights and every intermediate to fp16."""

    def r(t: torch.Tensor) -> torch.Tensor:
        return t.to(round_to).float()

    weight = r(torch.from_numpy(CONV_DATA.astype(np.float32) * CONV_SCALE))
    dense = r(torch.from_numpy(LUT[0, 0, :, 0][LUT_INDICES]))
    y = r(F.conv2d(r(x), weight, r(torch.from_numpy(CONV_BIAS)), padding=1))
    y = r(y.relu())
    y = r(y.mean(dim=(2, 3)))
    y = r(F.linear(y, dense, r(torch.linspace(-0.5, 0.5, 5))))
    return r(torch.softmax(y, dim=-1))


@pytest.fixture(scope="module")
def small_fp32(tmp_path_factory) -> Path:
    return _save(_small_program(), tmp_path_factory.mktemp("mil") / "small_fp32.mlpackage")


def test_hand_built_program_matches_torch(small_fp32: Path):
    x = torch.from_numpy(RNG.normal(size=(6, 1, 3, 8, 8)).astype(np.float32))
    program = EmulatedProgram(small_fp32)
    assert {step.op.op_type for step in program.steps} == {"conv", "relu", "reduce_mean", "linear", "softmax"}
    (name,) = program.output_names
    got = program.run({"x": x})[name]
    assert got.shape == (6, 1, 5) and got.dtype == torch.float32
    expected = torch.stack([_small_reference(one) for one in x])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_hand_built_fp16_program_rounds_every_intermediate(tmp_path: Path):
    path = _save(_small_program(), tmp_path / "small_fp16.mlpackage", precision=ct.precision.FLOAT16)
    program = EmulatedProgram(path)
    assert "cast" in {step.op.op_type for step in program.steps}  # the program itself switches to fp16
    x = torch.from_numpy(RNG.normal(size=(6, 1, 3, 8, 8)).astype(np.float32))
    got = program.run({"x": x})[program.output_names[0]]
    fp16_math = torch.stack([_small_reference(one, torch.float16) for one in x])
    fp32_math = torch.stack([_small_reference(one) for one in x])
    # Same fp16 roundings as the reference: at most one fp16 ulp (2**-11 near 1) from a different
    # conv summation order; and clearly not the fp32 result.
    torch.testing.assert_close(got, fp16_math, rtol=0, atol=2**-11)
    assert 0 < (got - fp32_math).abs().max() < 5e-3


def _ops_program():
    """iOS 17 ops edgederm exports contain (and the segmenters will), one of each, no graph passes."""
    weight_q = RNG.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8)
    weight_scale = RNG.uniform(0.01, 0.02, 6).astype(np.float32)
    weight_zero = np.zeros(6, np.int8)
    lut = np.sort(RNG.normal(size=16)).astype(np.float32)
    lut_indices = RNG.integers(0, 16, 6 * 12).astype(np.uint8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS17)
    def program(x):
        w = mb.constexpr_affine_dequantize(quantized_data=weight_q, zero_point=weight_zero, scale=weight_scale, axis=0)
        y = mb.conv(x=x, weight=w, strides=[1, 1], pad_type="custom", pad=[1, 1, 1, 1])
        y = mb.batch_norm(
            x=y,
            mean=np.linspace(-0.1, 0.1, 6).astype(np.float32),
            variance=np.linspace(0.5, 1.5, 6).astype(np.float32),
            gamma=np.linspace(0.8, 1.2, 6).astype(np.float32),
            beta=np.linspace(-0.2, 0.2, 6).astype(np.float32),
            epsilon=1e-3,
        )
        hard = mb.mul(x=mb.thresholded_relu(x=y, alpha=-3.0), y=mb.sigmoid_hard(x=y, alpha=SIXTH, beta=0.5))
        y = mb.concat(values=[mb.clip(x=y, alpha=0.0, beta=6.0), mb.sigmoid(x=hard)], axis=1)  # (1, 12, 8, 8)
        q = mb.quantize(input=y, scale=np.float32(0.05), zero_point=np.uint8(10), output_dtype="uint8")
        y = mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.uint8(10))
        y = mb.add(x=mb.max_pool(x=y, kernel_sizes=[3, 3], strides=[2, 2], pad_type="same"), y=1.0)  # (1, 12, 4, 4)
        y = mb.avg_pool(x=y, kernel_sizes=[2, 2], strides=[1, 1], pad_type="custom", pad=[1, 0, 1, 0], exclude_padding_from_average=True)
        y = mb.upsample_bilinear(x=y, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=False, half_pixel_centers=True)
        tokens = mb.transpose(x=mb.reshape(x=y, shape=[1, 12, 64]), perm=[0, 2, 1])  # (1, 64, 12)
        dense = mb.constexpr_lut_to_dense(
            indices=optimize_utils.pack_elements_into_bits(lut_indices, 4), lut=lut, shape=np.array([6, 12], np.uint32)
        )
        y = mb.matmul(x=tokens, y=dense, transpose_y=True)  # (1, 64, 6)
        return mb.softmax(x=mb.reduce_mean(x=y, axes=[1], keep_dims=False), axis=-1)

    reference_weights = {
        "w": weight_q.astype(np.float32) * weight_scale[:, None, None, None],
        "dense": lut[lut_indices].reshape(6, 12),
    }
    return program, reference_weights


def _ops_reference(x: torch.Tensor, weights: dict[str, np.ndarray]) -> torch.Tensor:
    y = F.conv2d(x, torch.from_numpy(weights["w"]), padding=1)
    y = F.batch_norm(
        y, torch.linspace(-0.1, 0.1, 6), torch.linspace(0.5, 1.5, 6), torch.linspace(0.8, 1.2, 6), torch.linspace(-0.2, 0.2, 6), eps=1e-3
    )
    hard = torch.where(y >= -3.0, y, 0.0) * (SIXTH * y + 0.5).clamp(0, 1)  # hard-swish, in the program's arithmetic
    y = torch.cat([y.clamp(0, 6), torch.sigmoid(hard)], dim=1)
    y = ((torch.round(y / 0.05) + 10).clamp(0, 255) - 10) * 0.05
    y = F.max_pool2d(F.pad(y, [0, 1, 0, 1], value=-torch.inf), 3, 2) + 1.0
    padded = F.pad(y, [1, 0, 1, 0])
    y = F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(F.pad(torch.ones(1, 1, 4, 4), [1, 0, 1, 0]), 2, 1)
    y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
    y = y.reshape(1, 12, 64).permute(0, 2, 1) @ torch.from_numpy(weights["dense"]).T
    return torch.softmax(y.mean(dim=1), dim=-1)


def test_hand_built_program_with_the_other_ops_matches_torch(tmp_path: Path):
    program, weights = _ops_program()
    path = _save(program, tmp_path / "ops.mlpackage", pipeline=ct.PassPipeline.EMPTY)
    emulated = EmulatedProgram(path)
    assert {"batch_norm", "max_pool", "avg_pool", "quantize", "dequantize", "upsample_bilinear", "matmul", "concat"} <= {
        step.op.op_type for step in emulated.steps
    }
    x = torch.from_numpy(RNG.normal(size=(4, 1, 3, 8, 8)).astype(np.float32) * 2)
    got = emulated.run({"x": x})[emulated.output_names[0]]
    expected = torch.stack([_ops_reference(one, weights) for one in x])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _assert_constexprs_match_coremltools(path: Path) -> int:
    """Every constexpr_* op decompressed by the emulator equals coremltools' own decompression, bit for bit."""
    emulated = EmulatedProgram(path)
    by_name = {var.name: value for var, value in emulated.constants.items() if isinstance(value, torch.Tensor)}
    _, function = _load_main_function(path)
    checked = 0
    for op in function.operations:
        if op.op_type.startswith("constexpr_"):
            expected = op.materialized_val_inference()
            got = by_name[op.outputs[0].name].numpy()
            assert got.dtype == expected.dtype and got.shape == expected.shape, op.name
            np.testing.assert_array_equal(got, expected, err_msg=op.name)
            checked += 1
    return checked


def test_compressed_weight_ops_match_coremltools(small_fp32: Path, tmp_path: Path):
    program, _ = _ops_program()
    ops17 = _save(program, tmp_path / "ops.mlpackage", pipeline=ct.PassPipeline.EMPTY)
    assert _assert_constexprs_match_coremltools(small_fp32) == 2  # blockwise shift/scale, iOS 18 LUT
    assert _assert_constexprs_match_coremltools(ops17) == 2  # affine dequantize, iOS 16 packed LUT


@pytest.mark.parametrize("vector_axis", [0, 1])
def test_vector_palettization_matches_coremltools(tmp_path: Path, vector_axis: int):
    indices = RNG.integers(0, 4, (4, 6)).astype(types.np_uint2_dtype)
    lut = RNG.normal(size=(2, 1, 4, 2)).astype(np.float32)  # two tables (index rows 0-1 / 2-3) of 2-vectors
    features = 6 if vector_axis == 0 else 12

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, features))], opset_version=ct.target.iOS18)
    def program(x):
        return mb.linear(x=x, weight=mb.constexpr_lut_to_dense(indices=indices, lut=lut, vector_axis=vector_axis))

    assert _assert_constexprs_match_coremltools(_save(program, tmp_path / "vector.mlpackage")) == 1


def test_an_op_without_a_kernel_is_refused_in_one_line(tmp_path: Path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.sin(x=x)

    path = _save(program, tmp_path / "sin.mlpackage")
    with pytest.raises(ModelError) as error:
        EmulatedProgram(path)
    message = str(error.value)
    assert "'sin'" in message and str(path) in message and "\n" not in message


def test_an_op_variant_it_cannot_emulate_fails_in_one_line_naming_the_op(tmp_path: Path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 4))], opset_version=ct.target.iOS17)
    def program(x):  # TF1-style "asymmetric" resizing: neither aligned corners nor half-pixel centres
        return mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=False, half_pixel_centers=False)

    path = _save(program, tmp_path / "asymmetric.mlpackage")
    with pytest.raises(ModelError, match="failed on MIL op 'upsample_bilinear'") as error:
        EmulatedProgram(path).run({"x": torch.zeros(1, 1, 2, 4, 4)})
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_non_package_is_refused(tmp_path: Path):
    with pytest.raises(ModelError, match="cannot read the ML Program"):
        EmulatedProgram(tmp_path / "missing.mlpackage")


# --- exported edgederm packages ----------------------------------------------------------------


def _parity(predictor: Predictor, reference: np.ndarray, pixels: np.ndarray) -> dict[str, float]:
    probabilities = predictor.predict_pixels(pixels)
    assert probabilities.shape == reference.shape and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=2e-3)
    top2 = np.sort(reference, axis=1)[:, -2:]
    disagree = probabilities.argmax(1) != reference.argmax(1)
    return {
        "agreement": float(1 - disagree.mean()),
        "max_dprob": float(np.abs(probabilities - reference).max()),
        "widest_flipped_margin": float((top2[:, 1] - top2[:, 0])[disagree].max()) if disagree.any() else 0.0,
    }


@pytest.fixture(scope="module")
def mnv3_fp32(trained_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emulator_mnv3")
    (record,) = export_run(trained_run, [FORMATS["coreml"]], ["fp32"], out)
    assert record.status == "ok", record.message
    return out / record.path


def test_emulated_predictor_keeps_the_predictor_contract(mnv3_fp32: Path, trained_run: Path):
    predictor = EmulatedCoreMLPredictor(mnv3_fp32, threads=None)
    assert isinstance(predictor, Predictor) and EmulatedCoreMLPredictor.emulated is True
    assert predictor.spec.class_names == ModelSpec.load(trained_run / "spec.json").class_names
    pixels = load_calibration("synthetic:12,seed=9", predictor.spec.preprocess, n=12).pixels
    batched = predictor.predict_pixels(pixels)
    one_by_one = np.concatenate([predictor.predict_pixels(pixels[i : i + 1]) for i in range(len(pixels))])
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-6)  # torch picks conv kernels by batch size: 1-ulp fp32 differences
    assert predictor.predict_pixels(pixels[:0]).shape == (0, predictor.spec.num_classes)
    with pytest.raises(ValueError, match="uint8 pixels"):
        predictor.predict_pixels(pixels.astype(np.float32))
    # MobileNetV3's hard-swish (thresholded_relu, sigmoid_hard, mul) and squeeze-excite ops, fp32:
    # measured max |Δprob| 3e-8 against torch.
    reference = TorchPredictor(trained_run).predict_pixels(pixels)
    assert _parity(predictor, reference, pixels)["max_dprob"] < 1e-5


# Measured on Lite0 (ImageNet weights, head-trained on synthetic:60 at 64 px), 48 synthetic images,
# two image seeds (7 / 8): max |Δprob| and top-1 agreement against torch fp32.
#   fp32          1e-6 / 1e-6   1.000 / 1.000
#   fp16          2.9e-3 / 2.4e-3   0.979 / 1.000 (the flip: torch's top-2 margin under 6e-3)
#   int8-weights  3.7e-2 / 2.8e-2   0.938 / 1.000
#   palettize4    0.52 / 0.54   0.46 / 0.44 (per-tensor 4-bit k-means without fine-tuning; its
#                 weights equal coremltools' decompression bit for bit, the fp16 ops are checked above)
#   int8 (W8A8)   4.0e-2 / 2.9e-2   0.917 / 0.979
# Bounds: a few times the measured error; a top-1 flip is accepted only where torch's own top-2
# margin is within twice the bound.
EXPECTED = {
    "fp32": {"max_dprob": 1e-4, "agreement": 1.0},
    "fp16": {"max_dprob": 1e-2, "agreement": 0.95},
    "int8-weights": {"max_dprob": 0.1, "agreement": 0.9},
    "palettize4": {"max_dprob": 0.8, "agreement": 0.3},
    "int8": {"max_dprob": 0.1, "agreement": 0.85},
}


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory) -> Path:
    from edgederm.training.classification import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("emulator_lite0") / "run"
    train_classifier(
        TrainConfig(
            data="synthetic:60,seed=4",
            out=out,
            arch="efficientnet_lite0",
            img_size=64,
            mode="head",
            epochs=3,
            test_fraction=0.2,
            weights="imagenet",
        )
    )
    return out


@pytest.mark.slow
def test_exported_lite0_matches_torch_in_every_mode(lite0_run: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("emulator_lite0_export")
    records = export_run(lite0_run, [FORMATS["coreml"]], list(EXPECTED), out, calib_data="synthetic:16,seed=5", calib_n=16)
    assert [(r.quant, r.status) for r in records] == [(mode, "ok") for mode in EXPECTED], [r.message for r in records]
    reference_model = TorchPredictor(lite0_run)
    pixels = load_calibration("synthetic:48,seed=7", reference_model.spec.preprocess, n=48).pixels
    reference = reference_model.predict_pixels(pixels)
    rows = []
    for record in records:
        path = out / record.path
        if record.quant != "fp32":
            assert (_assert_constexprs_match_coremltools(path) > 0) == (record.quant != "fp16")
        parity = _parity(EmulatedCoreMLPredictor(path), reference, pixels)
        rows.append(f"{record.quant:13s} agreement {parity['agreement']:.3f}  max|dprob| {parity['max_dprob']:.2e}")
        bound = EXPECTED[record.quant]
        assert parity["max_dprob"] <= bound["max_dprob"], (record.quant, parity)
        assert parity["agreement"] >= bound["agreement"], (record.quant, parity)
        if record.quant in ("fp32", "fp16"):
            assert parity["widest_flipped_margin"] <= 2 * bound["max_dprob"], (record.quant, parity)
    print("\nemulated CoreML vs torch, Lite0 64 px, 48 synthetic images\n" + "\n".join(rows))


@pytest.mark.slow
def test_w8a8_program_reproduces_the_torch_quantized_network(lite0_run: Path, tmp_path: Path):
    """The W8A8 export converted at FLOAT32 compute is the torch fake-quant network's own arithmetic.

    Isolates the quantize/dequantize kernels from fp16 rounding: on ISIC images the emulated
    integer activations equalled torch's ``quantize_per_tensor`` outputs layer by layer (a few
    elements one step apart at rounding ties). Measured here (48 images, two seeds): top-1
    agreement 1.000, max |Δprob| 0.012 / 0.015 from those ties, mean 4e-4 / 6e-4.
    """
    from edgederm.converters import coreml
    from edgederm.converters._job import ExportJob

    from edgederm.models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(lite0_run)
    calibration = load_calibration("synthetic:16,seed=5", spec.preprocess, n=16)
    network = coreml._quantized_network(
        ExportJob(model=model, spec=spec, quant="int8", target=tmp_path / "unused", calibration=calibration)
    )
    folding = coreml.image_folding(spec.preprocess)
    path = tmp_path / "w8a8_fp32.mlpackage"
    coreml._convert(ct, coreml._traced(network, folding, spec), spec, folding, ct.precision.FLOAT32).save(str(path))
    program = EmulatedProgram(path)
    assert {"quantize", "dequantize"} <= {step.op.op_type for step in program.steps}

    pixels = load_calibration("synthetic:48,seed=7", spec.preprocess, n=48).pixels
    with torch.no_grad():
        expected = network(torch.from_numpy(spec.preprocess.normalize(pixels))).numpy()
    got = program.run({"image": torch.from_numpy(pixels).permute(0, 3, 1, 2).float()[:, None]})["classLabel_probs"]
    got = got.reshape(len(pixels), -1).numpy()[:, [program.classify[1].index(name) for name in spec.class_names]]
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 0.05 and np.abs(got - expected).mean() < 2e-3
