"""CoreML export, checked structurally on Linux (coremltools cannot run predictions here).

What is verified: the saved specs (image input, classifier outputs, metadata), the MIL program's
input arithmetic against Preprocess.normalize, the weight compression ops and sizes, W8A8's
activation quantize/dequantize ops, the normalisation folding on the PyTorch side, and the errors.
What is not: the numbers a CoreML runtime produces (that needs macOS).
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from edgederm.converters import coreml
from edgederm.converters._job import ConversionError, ExportJob
from edgederm.converters._wrap import deployable

from edgederm.core.errors import ModelError
from edgederm.core.formats import FORMATS
from edgederm.core.metadata import SPEC_KEY
from edgederm.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from edgederm.core.spec import ModelSpec
from edgederm.export import export_run
from edgederm.models.checkpoint import load_checkpoint
from edgederm.runtime.coreml_backend import CoreMLPredictor, read_coreml_spec

ct = pytest.importorskip("coremltools")

MODES = ["fp32", "fp16", "int8-weights", "palettize6", "int8"]
TF_MEAN, TF_STD = (127 / 255,) * 3, (128 / 255,) * 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from edgederm.training.classification import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("coreml_run") / "run"
    train_classifier(TrainConfig(data="synthetic:60,seed=4", out=out, arch="mobilenetv3_small_100", img_size=64, mode="head", epochs=2))
    return out


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("coreml_export")
    records = export_run(run_dir, [FORMATS["coreml"]], MODES, out, calib_data="synthetic:24,seed=5", calib_n=24)
    assert [(r.quant, r.status) for r in records] == [(m, "ok") for m in MODES], [r.message for r in records]
    return {r.quant: out / r.path for r in records}


def _mlmodel(path: Path):
    return ct.models.MLModel(str(path), skip_model_load=True)


def _program(path: Path):
    """The saved ML Program as a pymil Program (const values as numpy arrays)."""
    from coremltools.converters.mil.frontend.milproto.load import load

    model = _mlmodel(path)
    spec = model.get_spec()
    return load(spec, spec.specificationVersion, model.weights_dir)


def _op_types(path: Path) -> Counter:
    spec = _mlmodel(path).get_spec()
    block = spec.mlProgram.functions["main"].block_specializations[spec.mlProgram.functions["main"].opset]
    return Counter(op.type for op in block.operations)


def _input_arithmetic(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Apply the program's leading elementwise ops (ImageType scale/bias, channel gain) to pixels."""
    value, current = pixels.astype(np.float32), "image"
    for op in _program(path).functions["main"].operations:
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            continue
        if op.op_type not in ("mul", "add", "cast") or op.x.name != current:
            break
        if op.op_type == "cast":
            value = value.astype(np.float16 if op.dtype.val == "fp16" else np.float32)
        else:
            constant = op.y.val.astype(value.dtype)
            value = value * constant if op.op_type == "mul" else value + constant
        current = op.outputs[0].name
    return value.astype(np.float32)


def _weights_size(path: Path) -> int:
    return (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


# --- the normalisation folding -------------------------------------------------------------


@pytest.mark.parametrize("mean,std", [(IMAGENET_MEAN, IMAGENET_STD), (TF_MEAN, TF_STD)], ids=["imagenet", "tf"])
def test_image_folding_reproduces_preprocess_normalize(mean, std):
    preprocess = Preprocess(input_size=16, mean=mean, std=std)
    folding = coreml.image_folding(preprocess)
    assert (folding.gain is None) == (len(set(std)) == 1)
    pixels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None, :, None, :]  # (1, 256, 1, 3): every value
    folded = folding.apply(torch.from_numpy(np.moveaxis(pixels, -1, 1).astype(np.float32))).numpy()
    np.testing.assert_allclose(folded, preprocess.normalize(pixels), rtol=0, atol=2e-6)


def test_folded_graph_equals_the_model_on_normalised_input(run_dir: Path):
    model, spec = load_checkpoint(run_dir)
    folding = coreml.image_folding(spec.preprocess)
    assert folding.gain is not None  # the tiny run uses ImageNet statistics: the per-channel path
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    network = deployable(model, spec)
    with torch.no_grad():
        expected = network(torch.from_numpy(spec.preprocess.normalize(pixels)))
        image_side = folding.image_type(torch.from_numpy(np.moveaxis(pixels, -1, 1).astype(np.float32)))
        got = coreml.ChannelGain(network, folding.gain)(image_side)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)


def test_plain_batchnorm_changes_nothing_in_eval(run_dir: Path):
    import copy

    model, _ = load_checkpoint(run_dir)
    plain = coreml._plain_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and type(m) is not torch.nn.BatchNorm2d for m in plain.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))


# --- the saved packages ----------------------------------------------------------------------


@pytest.mark.parametrize("quant", MODES)
def test_image_input_folds_preprocess(exported: dict[str, Path], run_dir: Path, quant: str):
    from coremltools.proto import FeatureTypes_pb2

    spec = ModelSpec.load(run_dir / "spec.json")
    (feature,) = _mlmodel(exported[quant]).get_spec().description.input
    assert feature.name == "image" and feature.type.WhichOneof("Type") == "imageType"
    image = feature.type.imageType
    assert (image.width, image.height) == (64, 64) and image.colorSpace == FeatureTypes_pb2.ImageFeatureType.RGB
    pixels = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    normalised = _input_arithmetic(exported[quant], np.moveaxis(pixels, -1, 1))
    atol = 1e-5 if quant == "fp32" else 5e-3  # fp16 programs apply the channel gain in fp16
    np.testing.assert_allclose(normalised, spec.preprocess.normalize(pixels), rtol=0, atol=atol)


def test_equal_std_needs_no_gain_in_the_graph(run_dir: Path, tmp_path: Path):
    model, spec = load_checkpoint(run_dir)
    spec.preprocess = Preprocess(input_size=64, mean=TF_MEAN, std=TF_STD)
    target = tmp_path / "tf.mlpackage"
    coreml.export(ExportJob(model=model, spec=spec, quant="fp32", target=target))
    ops = [op for op in _program(target).functions["main"].operations if op.op_type != "const"]
    assert [op.op_type for op in ops[:3]] == ["mul", "add", "conv"]
    assert ops[0].y.val == pytest.approx(1 / 128) and np.allclose(ops[1].y.val.ravel(), -127 / 128)
    pixels = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(_input_arithmetic(target, np.moveaxis(pixels, -1, 1)), spec.preprocess.normalize(pixels), atol=1e-6)


@pytest.mark.parametrize("quant", MODES)
def test_classifier_outputs_label_and_probability_dictionary(exported: dict[str, Path], run_dir: Path, quant: str):
    class_names = ModelSpec.load(run_dir / "spec.json").class_names
    description = _mlmodel(exported[quant]).get_spec().description
    outputs = {o.name: o.type.WhichOneof("Type") for o in description.output}
    assert outputs == {"classLabel": "stringType", "classLabel_probs": "dictionaryType"}
    assert description.predictedFeatureName == "classLabel" and description.predictedProbabilitiesName == "classLabel_probs"
    ops = _program(exported[quant]).functions["main"].operations
    (classify,) = [op for op in ops if op.op_type == "classify"]
    assert list(classify.classes.val) == class_names
    source = classify.probabilities.op
    if source.op_type == "cast":  # fp16 programs hand fp32 probabilities to the classifier
        source = source.x.op
    assert source.op_type == "softmax"  # the graph's own (calibrated) probabilities feed the dictionary


@pytest.mark.parametrize("quant", MODES)
def test_metadata_carries_the_artifact_spec(exported: dict[str, Path], run_dir: Path, quant: str):
    model = _mlmodel(exported[quant])
    stamped = ModelSpec.from_json(model.user_defined_metadata[SPEC_KEY])
    assert stamped.artifact["format"] == "coreml" and stamped.artifact["quant"] == quant
    assert stamped.output == "probabilities" and stamped.artifact["output"]["name"] == "classLabel_probs"
    assert stamped.source_sha256 == ModelSpec.load(run_dir / "spec.json").source_sha256
    assert model.user_defined_metadata["labels"] == ",".join(stamped.class_names)
    assert model.author == "edgederm" and "not a diagnosis" in model.short_description
    assert "RGB" in model.input_description["image"] and "not a diagnosis" in model.output_description["classLabel_probs"]
    if quant == "int8":
        assert stamped.artifact["calibration"] == {"source": "synthetic:24,seed=5", "images": 24, "scheme": "affine"}
    # the torch- and coremltools-free reader sees the same metadata
    assert read_coreml_spec(exported[quant]).to_dict() == stamped.to_dict()


def test_weights_are_really_compressed(exported: dict[str, Path]):
    sizes = {quant: _weights_size(path) for quant, path in exported.items()}
    assert sizes["fp16"] < 0.55 * sizes["fp32"]
    assert sizes["int8-weights"] < 0.3 * sizes["fp32"] and sizes["int8"] < 0.3 * sizes["fp32"]
    assert sizes["palettize6"] < 0.85 * sizes["int8-weights"]
    ops = {quant: _op_types(path) for quant, path in exported.items()}
    assert not any(t.startswith("constexpr_") for t in ops["fp32"]) and not any(t.startswith("constexpr_") for t in ops["fp16"])
    assert ops["int8-weights"]["constexpr_affine_dequantize"] > 10
    assert ops["palettize6"]["constexpr_lut_to_dense"] > 10
    assert ops["int8"]["constexpr_affine_dequantize"] > 10


def test_w8a8_quantizes_activations(exported: dict[str, Path]):
    ops = _op_types(exported["int8"])
    assert ops["quantize"] >= ops["conv"] and ops["dequantize"] >= ops["conv"] > 0
    assert ops["conv"] == _op_types(exported["fp32"])["conv"]
    assert "sqrt" not in ops and "batch_norm" not in ops  # batch norm folded, not computed from batch statistics
    quantize = next(op for op in _program(exported["int8"]).functions["main"].operations if op.op_type == "quantize")
    assert quantize.output_dtype.val in ("int8", "uint8")  # 8-bit activations


def test_int8_without_calibration_is_a_conversion_error(run_dir: Path, tmp_path: Path):
    model, spec = load_checkpoint(run_dir)
    with pytest.raises(ConversionError, match="calibration"):
        coreml.export(ExportJob(model=model, spec=spec, quant="int8", target=tmp_path / "x.mlpackage"))
    with pytest.raises(ConversionError, match=".mlpackage"):
        coreml.export(ExportJob(model=model, spec=spec, quant="fp32", target=tmp_path / "x.mlmodel"))


# --- the runtime side ----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS runs CoreML")
def test_predictor_refuses_clearly_off_apple(exported: dict[str, Path]):
    with pytest.raises(ModelError, match="only on Apple platforms") as caught:
        CoreMLPredictor(exported["fp16"])
    assert str(exported["fp16"]) in str(caught.value) and ".tflite or .onnx" in str(caught.value)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        lambda pkg: _truncate(pkg / "Data/com.apple.CoreML/weights/weight.bin"),
        lambda pkg: _truncate(pkg / "Data/com.apple.CoreML/model.mlmodel"),
        lambda pkg: (pkg / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\xff" * 64),
        lambda pkg: (pkg / "Manifest.json").unlink(),
        lambda pkg: (pkg / "Manifest.json").write_text("{not json"),
        lambda pkg: shutil.rmtree(pkg / "Data/com.apple.CoreML/weights"),
    ],
    ids=["weights-truncated", "model-truncated", "model-garbage", "no-manifest", "bad-manifest", "no-weights"],
)
def test_damaged_package_is_a_model_error_naming_it(exported: dict[str, Path], tmp_path: Path, damage):
    package = tmp_path / exported["fp16"].name
    shutil.copytree(exported["fp16"], package)
    damage(package)
    for reader in (read_coreml_spec, CoreMLPredictor):
        with pytest.raises(ModelError) as caught:
            reader(package)
        assert str(package) in str(caught.value) and "Apple platforms" not in str(caught.value)


def test_a_file_is_not_a_package(tmp_path: Path):
    fake = tmp_path / "model.mlpackage"
    fake.write_bytes(b"not a directory")
    with pytest.raises(ModelError, match="not a CoreML .mlpackage directory"):
        read_coreml_spec(fake)
