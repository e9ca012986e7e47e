"""TFLite export end to end: every quant mode, the spec and MediaPipe metadata inside the file, the runtime.

The run is a head-trained ImageNet EfficientNet-Lite0 at 64 px: a random-init MobileNetV3 trained
for a few epochs predicts one class for every image with margins of ~0.004, below the int8 output
resolution (1/256), so its int8 top-1 agreement would be decided by ties rather than by the export.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from edgederm.converters._calibration import load_calibration
from edgederm.converters._job import ConversionError, ExportJob
from edgederm.converters.tflite import W8A16_FIT_IMAGES

from edgederm.core.errors import ModelError
from edgederm.core.formats import FORMATS
from edgederm.core.manifest import read_manifest
from edgederm.core.metadata import LABELS_FILE, SPEC_FILE, SPEC_KEY
from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec
from edgederm.export import export_run
from edgederm.models.checkpoint import load_checkpoint
from edgederm.runtime import Predictor
from edgederm.runtime.tflite_backend import TFLITE_METADATA, TFLitePredictor, read_tflite_metadata
from edgederm.training.classification import TrainConfig, train_classifier

MODES = ["fp32", "fp16", "int8-dynamic", "int8", "w8a16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tflite") / "run"
    train_classifier(TrainConfig(data="synthetic:60,seed=4", out=out, arch="efficientnet_lite0", img_size=64, mode="head", epochs=5))
    return out


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> tuple[Path, dict]:
    out = run_dir.parent / "export"
    records = export_run(
        run_dir, [FORMATS["tflite"]], MODES, out, calib_data="synthetic:40,seed=5", calib_n=40, options={"weight_rounding": "off"}
    )
    return out, {r.quant: r for r in records}


@pytest.fixture(scope="module")
def pixels(run_dir: Path) -> np.ndarray:
    """40 synthetic lesions that were not among the calibration images, through Preprocess.fit."""
    return load_calibration("synthetic:40,seed=6", ModelSpec.load(run_dir / "spec.json").preprocess, n=40).pixels


@pytest.fixture(scope="module")
def reference(run_dir: Path, pixels: np.ndarray) -> np.ndarray:
    return Predictor.load(run_dir).predict_pixels(pixels)


def test_every_mode_exports_a_file(exported):
    out, records = exported
    assert list(records) == MODES
    for quant, record in records.items():
        assert record.status == "ok", (quant, record.message)
        assert (out / record.path).is_file() and record.path.endswith(f"_{quant}.tflite")


def test_quantized_files_are_smaller(exported):
    _, records = exported
    fp32 = records["fp32"].size
    assert records["fp16"].size < 0.6 * fp32
    assert records["int8-dynamic"].size < 0.35 * fp32
    assert records["int8"].size < 0.35 * fp32
    assert records["w8a16"].size < 0.35 * fp32


def test_manifest_sha256_matches_the_files(exported):
    out, _ = exported
    artifacts = read_manifest(out)["artifacts"]
    assert len(artifacts) == len(MODES)
    for artifact in artifacts:
        data = (out / artifact["path"]).read_bytes()
        assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
        assert artifact["size"] == len(data)


def test_the_spec_travels_inside_each_file(exported, run_dir: Path):
    out, records = exported
    run_spec = ModelSpec.load(run_dir / "spec.json")
    for quant, record in records.items():
        spec = ModelSpec.from_json(read_tflite_metadata((out / record.path).read_bytes())[SPEC_KEY].decode())
        assert spec.class_names == run_spec.class_names and spec.preprocess == run_spec.preprocess
        assert spec.output == "probabilities" and spec.source_sha256 == run_spec.source_sha256
        assert spec.artifact["format"] == "tflite" and spec.artifact["quant"] == quant
        side = run_spec.preprocess.input_size
        assert spec.artifact["input"]["layout"] == "NHWC" and spec.artifact["input"]["shape"] == [1, side, side, 3]
        assert spec.artifact["input"]["dtype"] == "float32" and spec.artifact["output"]["dtype"] == "float32"
        assert spec.artifact["output"]["shape"] == [1, run_spec.num_classes]


def test_standard_tflite_metadata_and_associated_files(exported, run_dir: Path):
    out, records = exported
    run_spec = ModelSpec.load(run_dir / "spec.json")
    for record in records.values():
        data = (out / record.path).read_bytes()
        metadata = read_tflite_metadata(data)
        assert metadata[TFLITE_METADATA][4:8] == b"M001"  # a metadata_schema.fbs ModelMetadata flatbuffer
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.read(LABELS_FILE).decode().split() == run_spec.class_names
            assert archive.read(SPEC_FILE) == metadata[SPEC_KEY]
            # no export time inside: the same model exported again is the same bytes
            assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


class _Table:
    """Just enough of a flatbuffer reader to walk TFLite Metadata (metadata_schema.fbs) tables by field slot."""

    def __init__(self, data: bytes, position: int | None = None):
        from flatbuffers import encode, number_types, table

        self.types = number_types
        self.table = table.Table(
            bytearray(data), position if position is not None else encode.Get(number_types.UOffsetTFlags.packer_type, data, 0)
        )

    def _offset(self, slot: int) -> int:
        return self.table.Offset(4 + 2 * slot)

    def string(self, slot: int) -> str | None:
        offset = self._offset(slot)
        return self.table.String(offset + self.table.Pos).decode() if offset else None

    def child(self, slot: int) -> _Table:
        return _Table(self.table.Bytes, self.table.Indirect(self._offset(slot) + self.table.Pos))

    def children(self, slot: int) -> list[_Table]:
        offset = self._offset(slot)
        start = self.table.Vector(offset) if offset else 0
        return [_Table(self.table.Bytes, self.table.Indirect(start + 4 * i)) for i in range(self.table.VectorLen(offset) if offset else 0)]

    def scalar(self, slot: int, kind: str = "Uint8") -> int:
        offset = self._offset(slot)
        return self.table.Get(getattr(self.types, f"{kind}Flags"), offset + self.table.Pos) if offset else 0

    def array(self, slot: int, kind: str = "Float32") -> np.ndarray:
        return self.table.GetVectorAsNumpy(getattr(self.types, f"{kind}Flags"), self._offset(slot))


def _image_normalization(subgraph: _Table) -> tuple[np.ndarray, np.ndarray]:
    (image,) = subgraph.children(2)  # input_tensor_metadata
    assert image.child(3).scalar(0) == 2 and image.child(3).child(1).scalar(0) == 1  # ImageProperties, RGB
    (unit,) = image.children(4)
    assert unit.scalar(0) == 1  # NormalizationOptions
    return unit.child(1).array(0), unit.child(1).array(1)


def test_classifier_metadata_reads_back_as_mediapipe_image_classifier_metadata(exported, run_dir: Path):
    out, records = exported
    run_spec = ModelSpec.load(run_dir / "spec.json")
    root = _Table(read_tflite_metadata((out / records["fp32"].path).read_bytes())[TFLITE_METADATA])
    assert root.string(7) == "1.0.0" and [f.string(0) for f in root.children(6)] == [SPEC_FILE]
    (subgraph,) = root.children(3)
    assert subgraph.string(0) == "image_classifier" and not subgraph.children(9)
    mean, std = _image_normalization(subgraph)
    assert np.allclose(mean, 255 * np.asarray(run_spec.preprocess.mean)) and np.allclose(std, 255 * np.asarray(run_spec.preprocess.std))
    (scores,) = subgraph.children(3)
    assert scores.child(3).scalar(0) == 1  # FeatureProperties
    (labels,) = scores.children(6)
    assert labels.string(0) == LABELS_FILE and labels.scalar(2) == 2  # TENSOR_AXIS_LABELS


def test_segmenter_metadata_reads_back_as_mediapipe_image_segmenter_metadata():
    """What MediaPipe's image_segmenter writer writes: uniform normalisation, a grayscale mask over dims 1-2, activation NONE."""
    from edgederm.converters.tflite_metadata import standard_metadata

    artifact = {
        "input": {"layout": "NHWC", "normalization": {"mean": [0.449] * 3, "std": [0.226] * 3}},
        "output": {"shape": [1, 64, 64, 1]},
    }
    spec = ModelSpec(
        task="segmentation",
        arch="tinyseg",
        class_names=["lesion"],
        preprocess=Preprocess(input_size=64),
        output="mask_probabilities",
        artifact=artifact,
    )
    root = _Table(standard_metadata(spec))
    assert root.string(0) == "edgederm tinyseg skin-lesion segmenter" and root.string(7) == "1.5.0"  # custom_metadata needs 1.5.0
    assert [f.string(0) for f in root.children(6)] == [SPEC_FILE]
    (subgraph,) = root.children(3)
    assert subgraph.string(0) == "image_segmenter"
    mean, std = _image_normalization(subgraph)  # the file's own normalisation: one value for every channel, as MediaPipe needs
    assert np.allclose(mean, [0.449 * 255] * 3) and np.allclose(std, [0.226 * 255] * 3)
    (mask,) = subgraph.children(3)
    assert mask.string(0) == "mask_probabilities"
    content = mask.child(3)
    assert content.scalar(0) == 2 and content.child(1).scalar(0) == 2  # ImageProperties, GRAYSCALE
    assert (content.child(2).scalar(0, "Int32"), content.child(2).scalar(1, "Int32")) == (1, 2)  # the image spans dims 1-2
    (labels,) = mask.children(6)
    assert labels.string(0) == LABELS_FILE and labels.scalar(2) == 2  # TENSOR_AXIS_LABELS
    (custom,) = subgraph.children(9)
    options = custom.array(1, "Uint8").tobytes()
    assert custom.string(0) == "SEGMENTER_METADATA" and options[4:8] == b"V001"
    assert _Table(options).scalar(0) == 0  # ImageSegmenterOptions.activation NONE: the sigmoid is in the graph


def test_tflite_predictor_matches_torch(exported, pixels: np.ndarray, reference: np.ndarray):
    out, records = exported
    top1 = reference.argmax(1)
    assert len(set(top1)) > 1  # the check below means something only if the model tells images apart
    for quant, record in records.items():
        predictor = Predictor.load(out / record.path, threads=1)
        assert isinstance(predictor, TFLitePredictor) and predictor.backend_name in ("tflite_runtime", "ai_edge_litert")
        probabilities = predictor.predict_pixels(pixels)
        assert probabilities.shape == reference.shape and np.allclose(probabilities.sum(1), 1.0, atol=2e-2)
        agreement = np.mean(probabilities.argmax(1) == top1)
        if quant == "fp32":
            assert np.abs(probabilities - reference).max() < 1e-4
        elif quant == "fp16":
            assert np.abs(probabilities - reference).max() < 1e-2
        assert agreement >= 0.9, (quant, agreement)


def test_w8a16_has_int16_activations_and_int8_weights(exported):
    from ai_edge_litert.interpreter import Interpreter

    out, records = exported
    interpreter = Interpreter(model_path=str(out / records["w8a16"].path))
    interpreter.allocate_tensors()
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs
    for op in convs:  # TFLite's 16x8 kernels: int16 input and output, int8 weights, int64 bias
        data, weights = (np.dtype(tensors[i]["dtype"]) for i in op["inputs"][:2])
        assert data == np.int16 and weights == np.int8 and np.dtype(tensors[op["outputs"][0]]["dtype"]) == np.int16
    details = records["w8a16"].details
    assert details["calibration"]["images"] == 40
    assert details["bias_correction"]["images"]["fit"] == min(20, W8A16_FIT_IMAGES)  # the even half of the 40, at most
    assert list(details["activation_ranges"]["scores"]) == ["min/max"]  # 16-bit activations: no clipped candidates


def test_int8_input_output_are_quantized_on_request(run_dir: Path, tmp_path: Path, pixels: np.ndarray, reference: np.ndarray):
    records = export_run(
        run_dir,
        [FORMATS["tflite"]],
        ["int8"],
        tmp_path,
        calib_data="synthetic:40,seed=5",
        calib_n=40,
        options={"int8_io": True},
    )
    assert records[0].status == "ok", records[0].message
    predictor = Predictor.load(tmp_path / records[0].path)
    model_input, model_output = predictor.spec.artifact["input"], predictor.spec.artifact["output"]
    assert model_input["dtype"] == "int8" and model_input["quantization"]["scale"] > 0
    assert model_output["dtype"] == "int8" and model_output["quantization"] == {"scale": 1 / 256, "zero_point": -128}
    assert np.mean(predictor.predict_pixels(pixels).argmax(1) == reference.argmax(1)) >= 0.9


def test_nchw_input_on_request(run_dir: Path, tmp_path: Path, pixels: np.ndarray, reference: np.ndarray):
    records = export_run(run_dir, [FORMATS["tflite"]], ["fp32"], tmp_path, options={"nhwc": False})
    assert records[0].status == "ok", records[0].message
    predictor = Predictor.load(tmp_path / records[0].path)
    side = predictor.spec.preprocess.input_size
    assert predictor.spec.artifact["input"]["layout"] == "NCHW" and predictor.spec.artifact["input"]["shape"] == [1, 3, side, side]
    assert TFLITE_METADATA not in read_tflite_metadata((tmp_path / records[0].path).read_bytes())  # MediaPipe takes NHWC only
    assert np.abs(predictor.predict_pixels(pixels) - reference).max() < 1e-4


def test_the_runtime_reads_the_file_without_torch(exported):
    out, records = exported
    code = (
        "import sys, numpy as np\n"
        "from edgederm.runtime import Predictor\n"
        "p = Predictor.load(sys.argv[1])\n"
        "side = p.spec.preprocess.input_size\n"
        "print(p.predict_pixels(np.zeros((2, side, side, 3), np.uint8)).shape, p.spec.artifact['quant'], 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out / records["int8"].path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(2, 4) int8 False"


def test_a_tflite_runtime_that_fails_beside_numpy_2_falls_back_to_ai_edge_litert(exported, monkeypatch):
    from edgederm.runtime import tflite_backend

    class NumpyOneBuild:  # what tflite-runtime 2.14 does beside numpy 2: imports, then fails on first use
        def __init__(self, **kwargs):
            raise SystemError("<built-in method CreateWrapperFromBuffer> returned a result with an exception set")

    real = tflite_backend._interpreter_class
    monkeypatch.setattr(tflite_backend, "_interpreter_class", lambda name: NumpyOneBuild if name == "tflite_runtime" else real(name))
    monkeypatch.setattr(tflite_backend, "_BROKEN_RUNTIMES", set())
    out, records = exported
    predictor = Predictor.load(out / records["fp32"].path)
    assert predictor.backend_name == "ai_edge_litert" and tflite_backend._BROKEN_RUNTIMES == {"tflite_runtime"}


@pytest.mark.parametrize("keep", [0, 7, 300, 0.5, -200, -1])
def test_truncated_file_is_a_model_error_naming_it(exported, tmp_path: Path, keep):
    out, records = exported
    data = (out / records["int8"].path).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(data[:cut])
    with pytest.raises(ModelError) as caught:
        Predictor.load(broken)
    message = str(caught.value)
    assert str(broken) in message and "\n" not in message


def test_a_tflite_without_edgederm_metadata_is_refused(exported, tmp_path: Path):
    from ai_edge_litert.tools import flatbuffer_utils

    out, records = exported
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray((out / records["fp32"].path).read_bytes()))
    tree.metadata = [entry for entry in tree.metadata if entry.name not in (SPEC_KEY, SPEC_KEY.encode())]
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(flatbuffer_utils.convert_object_to_bytearray(tree))
    with pytest.raises(ModelError, match=f"no edgederm metadata .{SPEC_KEY}."):
        Predictor.load(foreign)


def test_int8_without_calibration_and_unknown_modes_fail_readably(run_dir: Path, tmp_path: Path):
    from edgederm.converters import tflite

    model, spec = load_checkpoint(run_dir)
    with pytest.raises(ConversionError, match="calibration"):
        tflite.export(ExportJob(model=model, spec=spec, quant="int8", target=tmp_path / "m.tflite"))
    with pytest.raises(ConversionError, match="no 'palettize4' mode"):
        tflite.export(ExportJob(model=model, spec=spec, quant="palettize4", target=tmp_path / "m.tflite"))
    assert not (tmp_path / "m.tflite").exists()


def test_a_conversion_failure_is_one_line(run_dir: Path, tmp_path: Path, monkeypatch):
    import litert_torch
    from edgederm.converters import tflite

    def broken_convert(*args, **kwargs):
        raise RuntimeError("unsupported op aten::frobnicate\nlong MLIR dump ...")

    monkeypatch.setattr(litert_torch, "convert", broken_convert)
    model, spec = load_checkpoint(run_dir)
    with pytest.raises(ConversionError) as caught:
        tflite.export(ExportJob(model=model, spec=spec, quant="fp32", target=tmp_path / "m.tflite"))
    assert str(caught.value) == "TFLite fp32 conversion failed: RuntimeError: unsupported op aten::frobnicate"


def test_int8_export_of_a_segmenter_whose_attention_sees_one_pixel(tmp_path: Path):
    """tinyseg at 32 px: its attention softmax runs over one element and lowers to EXP, an op the quantizer has no name for."""
    from edgederm.training.segmentation import SegmentConfig, train_segmenter

    run = train_segmenter(SegmentConfig(data="synthetic:16,seed=1", out=tmp_path / "run", arch="tinyseg", img_size=32, epochs=1))
    (record,) = export_run(run.run_dir, [FORMATS["tflite"]], ["int8"], tmp_path / "out", calib_data="synthetic:16,seed=1")
    assert record.status == "ok", record.message
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert Predictor.load(tmp_path / "out" / record.path).predict_pixels(pixels).shape[0] == 2
