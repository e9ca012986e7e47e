"""ONNX export (fp32, fp16, static int8, w8a16) of a tiny trained run, read back with onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import cli_env
from edgederm.converters._calibration import load_calibration
from edgederm.converters._job import ConversionError, ExportJob

from edgederm.core.errors import ModelError
from edgederm.core.formats import FORMATS
from edgederm.core.manifest import artifact_sha256, read_manifest
from edgederm.core.metadata import SPEC_KEY, metadata_strings
from edgederm.core.spec import ModelSpec
from edgederm.export import export_run
from edgederm.runtime import Predictor
from edgederm.runtime.onnx_backend import OnnxPredictor

MODES = ("fp32", "fp16", "int8", "w8a16")


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx_export")
    records = export_run(
        trained_run, [FORMATS["onnx"]], list(MODES), out, calib_data="synthetic:40,seed=5", calib_n=40, options={"weight_rounding": "off"}
    )
    assert [(r.quant, r.status, r.message) for r in records] == [(mode, "ok", "") for mode in MODES]
    return {r.quant: out / r.path for r in records}


@pytest.fixture(scope="module")
def pixels(trained_run: Path) -> np.ndarray:
    """40 synthetic images (not the calibration ones) through the run's Preprocess.fit."""
    spec = ModelSpec.load(trained_run / "spec.json")
    return load_calibration("synthetic:40,seed=9", spec.preprocess, n=40).pixels


@pytest.fixture(scope="module")
def reference(trained_run: Path, pixels: np.ndarray) -> np.ndarray:
    return Predictor.load(trained_run).predict_pixels(pixels)


def test_quantized_files_are_smaller(exported: dict[str, Path]):
    size = {mode: path.stat().st_size for mode, path in exported.items()}
    assert size["fp16"] < 0.6 * size["fp32"]
    assert size["int8"] < 0.35 * size["fp32"]
    assert size["w8a16"] < 0.35 * size["fp32"]  # int8 weights; the activations' 16 bits cost no file size


def test_manifest_hashes_match_the_files(exported: dict[str, Path]):
    manifest = read_manifest(exported["fp32"].parent)
    rows = {row["quant"]: row for row in manifest["artifacts"]}
    for mode, path in exported.items():
        assert rows[mode]["sha256"] == artifact_sha256(path)
        assert rows[mode]["size"] == path.stat().st_size and rows[mode]["runtime"] == "onnxruntime"


@pytest.mark.parametrize("mode", MODES)
def test_the_spec_travels_in_the_file(exported: dict[str, Path], trained_run: Path, mode: str):
    run_spec = ModelSpec.load(trained_run / "spec.json")
    model = onnx.load(exported[mode])
    props = {p.key: p.value for p in model.metadata_props}
    from_props = ModelSpec.from_json(props[SPEC_KEY])
    predictor = Predictor.load(exported[mode], threads=1)
    assert isinstance(predictor, OnnxPredictor) and predictor.backend_name == "onnxruntime" and predictor.path == exported[mode]
    for spec in (from_props, predictor.spec):
        assert spec.class_names == run_spec.class_names and spec.preprocess == run_spec.preprocess
        assert spec.output == "probabilities" and spec.source_sha256 == run_spec.source_sha256
        assert spec.artifact["format"] == "onnx" and spec.artifact["quant"] == mode
        assert spec.artifact["input"] == {"name": "image", "layout": "NCHW", "dtype": "float32", "shape": [-1, 3, 64, 64]}
        assert spec.artifact["output"] == {"name": "probabilities", "dtype": "float32", "shape": [-1, run_spec.num_classes]}
    assert set(props) == set(metadata_strings(from_props)) and props["labels"] == ",".join(run_spec.class_names)
    assert model.producer_name == "edgederm" and "edgederm" in model.doc_string
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.mark.parametrize("mode,max_gap", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_float_models_agree_with_torch(exported: dict[str, Path], pixels: np.ndarray, reference: np.ndarray, mode: str, max_gap: float):
    probabilities = Predictor.load(exported[mode], threads=1).predict_pixels(pixels)
    assert probabilities.shape == reference.shape == (40, 4)
    assert np.abs(probabilities - reference).max() < max_gap


def test_int8_model_keeps_the_top_class(exported: dict[str, Path], pixels: np.ndarray, reference: np.ndarray):
    probabilities = Predictor.load(exported["int8"], threads=1).predict_pixels(pixels)
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert (probabilities.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_int8_graph_is_qdq_with_uint8_activations_and_per_channel_weights(exported: dict[str, Path]):
    model = onnx.load(exported["int8"])
    assert "session.x64quantprecision=1" in model.doc_string  # what another onnxruntime user needs on an AVX2 CPU
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    activation_zero_points = [initializers[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in activation_zero_points)
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    weight_dequantizers = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    assert weight_dequantizers
    for node in weight_dequantizers:
        assert initializers[node.input[0]].data_type == onnx.TensorProto.INT8
        assert len(initializers[node.input[1]].dims) == 1 and initializers[node.input[1]].dims[0] > 1  # one scale per channel
    (last,) = [n for n in graph.node if graph.output[0].name in n.output]
    assert last.op_type == "Softmax"  # the probabilities are not quantized


def test_w8a16_graph_is_qdq_with_int16_activations_and_per_channel_int8_weights(exported: dict[str, Path]):
    model = onnx.load(exported["w8a16"])
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    activation_zero_points = [initializers[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.data_type == onnx.TensorProto.INT16 for z in activation_zero_points)
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    weight_dequantizers = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    assert weight_dequantizers and all(initializers[n.input[0]].data_type == onnx.TensorProto.INT8 for n in weight_dequantizers)
    assert all(initializers[n.input[1]].dims[0] > 1 for n in weight_dequantizers)  # one scale per output channel
    (last,) = [n for n in graph.node if graph.output[0].name in n.output]
    assert last.op_type == "Softmax"
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 21 and Predictor.load(exported["w8a16"]).spec.artifact["opset"] == opset  # int16 QDQ is standard from 21
    details = {row["quant"]: row["details"] for row in read_manifest(exported["w8a16"].parent)["artifacts"]}["w8a16"]
    assert details["calibration"]["images"] == 40 and "bias_correction" in details
    assert list(details["activation_ranges"]["scores"]) == ["min/max"]  # 16-bit activations: no clipped candidates


def test_w8a16_model_is_closer_to_torch_than_int8(exported: dict[str, Path], pixels: np.ndarray, reference: np.ndarray):
    """Same int8 weights, 256x finer activations: the probabilities move less from fp32's."""
    gaps = {}
    for mode in ("int8", "w8a16"):
        probabilities = Predictor.load(exported[mode], threads=1).predict_pixels(pixels)
        assert (probabilities.argmax(1) == reference.argmax(1)).mean() >= 0.9
        gaps[mode] = float(np.abs(probabilities - reference).mean())
    assert 0 < gaps["w8a16"] < gaps["int8"], gaps


def test_fp16_model_has_fp16_weights_and_float32_io(exported: dict[str, Path]):
    model = onnx.load(exported["fp16"])
    kinds = [t.data_type for t in model.graph.initializer if len(t.dims) == 4]
    assert kinds and all(kind == onnx.TensorProto.FLOAT16 for kind in kinds)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_truncated_file_is_one_line_naming_it(exported: dict[str, Path], tmp_path: Path):
    data = exported["fp32"].read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="broken.onnx") as caught:
        Predictor.load(broken)
    assert "\n" not in str(caught.value)


def test_onnx_without_edgederm_metadata_is_refused(exported: dict[str, Path], tmp_path: Path):
    model = onnx.load(exported["fp32"])
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, plain)
    with pytest.raises(ModelError, match=r"plain\.onnx.*no edgederm metadata"):
        OnnxPredictor(plain)


def test_int8_without_calibration_is_a_conversion_error(trained_run: Path, tmp_path: Path):
    from edgederm.converters import onnx as onnx_converter

    from edgederm.models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(trained_run)
    with pytest.raises(ConversionError, match="calibration"):
        onnx_converter.export(ExportJob(model=model, spec=spec, quant="int8", target=tmp_path / "m.onnx"))


def test_a_failing_step_is_one_conversion_error_line():
    from edgederm.converters._job import conversion_step

    with pytest.raises(ConversionError) as caught, conversion_step("onnxruntime quantize_static"):
        raise RuntimeError("bad graph\nlong dump ...")
    assert str(caught.value) == "onnxruntime quantize_static failed: RuntimeError: bad graph"
    with pytest.raises(ConversionError, match=r"^fp16 conversion needs onnxruntime \(No module named 'x'\)$"):
        with conversion_step("fp16 conversion", needs="onnxruntime"):
            raise ModuleNotFoundError("No module named 'x'")
    with pytest.raises(ConversionError, match="^the inner step's own$"), conversion_step("outer"):
        raise ConversionError("the inner step's own")
    with pytest.raises(OSError), conversion_step("saving"):  # a full disk is the driver's: it stops the export
        raise OSError(28, "No space left on device")


def test_onnx_runtime_does_not_import_torch(exported: dict[str, Path]):
    code = (
        "import sys, numpy as np\n"
        "import edgederm.runtime\n"
        "from edgederm.runtime import Predictor\n"
        f"p = Predictor.load({str(exported['int8'])!r}, threads=1)\n"
        "assert p.predict_pixels(np.zeros((2, 64, 64, 3), np.uint8)).shape == (2, 4)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr


def test_default_calibration_is_the_runs_train_split_only(trained_run: Path, tmp_path: Path):
    import csv
    import json

    records = export_run(trained_run, [FORMATS["onnx"]], ["int8"], tmp_path, calib_n=1000)
    assert records[0].status == "ok", records[0].message
    calibration = json.loads((tmp_path / "manifest.json").read_text())["artifacts"][0]["details"]["calibration"]
    with open(trained_run / "splits.csv", newline="") as handle:
        train = [row for row in csv.DictReader(handle) if row["split"] == "train"]
    assert calibration["data"].endswith("[train]") and calibration["images"] == len(train)


def test_a_run_trained_elsewhere_calibrates_on_a_local_copy_of_its_train_split(tmp_path: Path, ham_dir: Path):
    """Trained on a GPU box, exported on a laptop: the recorded data path is gone, --calib-data points at the copy."""
    import json
    import shutil

    from edgederm.core.errors import DataError
    from edgederm.training.classification import TrainConfig, train_classifier

    remote = shutil.copytree(ham_dir, tmp_path / "remote_copy")
    run = tmp_path / "run"
    train_classifier(
        TrainConfig(data=f"ham10000:{remote}", out=run, arch="mobilenetv3_small_100", img_size=32, mode="head", epochs=1,
                    weights="none", test_fraction=0.2)
    )  # fmt: skip
    shutil.rmtree(remote)
    with pytest.raises(DataError, match=r"spec\.json: int8 calibration uses the run's training data .*--calib-data"):
        export_run(run, [FORMATS["onnx"]], ["int8"], tmp_path / "a")

    records = export_run(run, [FORMATS["onnx"]], ["int8"], tmp_path / "b", calib_data=f"ham10000:{ham_dir}")
    assert records[0].status == "ok", records[0].message
    calibration = json.loads((tmp_path / "b" / "manifest.json").read_text())["artifacts"][0]["details"]["calibration"]
    train = [line for line in (run / "splits.csv").read_text().splitlines() if ",train," in line]
    assert calibration["data"].endswith("[train]") and calibration["images"] == len(train)


def _saturating_qdq_conv() -> onnx.ModelProto:
    """One QDQ 1x1 conv whose uint8 x int8 products (255 x 127), added in pairs, overflow int16."""
    from onnx import TensorProto, helper, numpy_helper

    channels = 8
    init = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.full((1, channels, 1, 1), 127, np.int8), "w_q"),
        numpy_helper.from_array(np.array(1 / 127, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(channels / 255, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_int8_convs_are_exact_on_every_x86_cpu():
    """onnxruntime fuses a QDQ conv into its uint8 x int8 kernel; on x86 CPUs without VNNI that kernel saturates pair
    sums at int16 unless the session asks for exact products. Every edgederm session does (runtime, converter, verify)."""
    import onnxruntime as ort

    from edgederm.runtime.onnx_backend import session_options

    model = _saturating_qdq_conv().SerializeToString()
    session = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.ones((1, 8, 4, 4), np.float32)})
    np.testing.assert_allclose(out, 8.0, rtol=1e-6)  # 8 channels of 1.0 x 1.0, on the output grid exactly
