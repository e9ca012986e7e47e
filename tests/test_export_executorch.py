"""ExecuTorch export (fp32, fp16, int8 through XNNPACK) of tiny trained runs, read back with the ExecuTorch runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env
from edgederm.converters._calibration import load_calibration
from edgederm.converters._job import ConversionError, ExportJob
from edgederm.converters._ranges import CLEAR_GAIN, PERCENTILES, label
from torch import nn

from edgederm.core.errors import BackendUnavailable, ModelError
from edgederm.core.formats import FORMATS
from edgederm.core.manifest import artifact_sha256, read_manifest
from edgederm.core.metadata import SPEC_KEY
from edgederm.core.spec import ModelSpec
from edgederm.export import export_run
from edgederm.runtime import Predictor
from edgederm.runtime.executorch_backend import ExecuTorchPredictor

MODES = ("fp32", "fp16", "int8")


def _runtime():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This API is experimental"
        from executorch.runtime import Runtime

    return Runtime.get()


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("executorch_export")
    records = export_run(
        trained_run,
        [FORMATS["executorch"]],
        [*MODES, "w8a16"],
        out,
        calib_data="synthetic:40,seed=5",
        calib_n=40,
        options={"weight_rounding": "off"},
    )
    assert [(r.quant, r.status) for r in records[:3]] == [(mode, "ok") for mode in MODES], [(r.quant, r.message) for r in records]
    assert records[3].status == "skipped" and "executorch has no w8a16 mode" in records[3].message
    return {r.quant: out / r.path for r in records[:3]}


@pytest.fixture(scope="module")
def pixels(trained_run: Path) -> np.ndarray:
    """40 synthetic images (not the calibration ones) through the run's Preprocess.fit."""
    return load_calibration("synthetic:40,seed=9", ModelSpec.load(trained_run / "spec.json").preprocess, n=40).pixels


@pytest.fixture(scope="module")
def reference(trained_run: Path, pixels: np.ndarray) -> np.ndarray:
    return Predictor.load(trained_run).predict_pixels(pixels)


def test_manifest_rows_match_the_files_and_say_what_xnnpack_runs(exported: dict[str, Path]):
    manifest = read_manifest(exported["fp32"].parent)
    rows = {row["quant"]: row for row in manifest["artifacts"]}
    for mode, path in exported.items():
        assert path.name.endswith(f"_{mode}.pte") and rows[mode]["status"] == "ok"
        assert rows[mode]["sha256"] == artifact_sha256(path) and rows[mode]["size"] == path.stat().st_size
        assert rows[mode]["runtime"] == FORMATS["executorch"].runtime
        delegation = rows[mode]["details"]["xnnpack"]
        assert delegation["delegates"] >= 1 and delegation["outside"] == {}  # every compute op runs in XNNPACK
    assert rows["int8"]["details"]["calibration"] == {"data": "synthetic:40,seed=5", "images": 40}
    assert rows["int8"]["details"]["quantizer"]["name"] == "XNNPACKQuantizer"
    assert rows["w8a16"]["status"] == "skipped" and rows["w8a16"]["path"] is None  # XNNPACK has no 16-bit activations
    assert not list(exported["fp32"].parent.glob(".export-*")) and not list(exported["fp32"].parent.glob("*w8a16*"))


def test_int8_activation_ranges_are_chosen_like_tflite_and_onnx(exported: dict[str, Path]):
    rows = {row["quant"]: row for row in read_manifest(exported["int8"].parent)["artifacts"]}
    ranges, correction = rows["int8"]["details"]["activation_ranges"], rows["int8"]["details"]["bias_correction"]
    assert set(ranges["scores"]) == {label(p) for p in PERCENTILES} and ranges["percentile"] in PERCENTILES
    errors = {name: score["mean_abs_dp"] for name, score in ranges["scores"].items()}
    assert len(set(errors.values())) > 1  # each candidate range really reached its converted graph
    closest = min(errors, key=errors.get)
    expected = closest if errors[closest] < (1 - CLEAR_GAIN) * errors["min/max"] else "min/max"
    if correction["ranges"] is not None:  # clipping was clearly closer: held-out images then chose among all ranges
        expected = correction["ranges"]["chosen"]
    assert label(ranges["percentile"]) == expected and correction["images"]["judge"] == 20


def test_int8_calibration_keeps_each_images_extremes():
    from edgederm.converters.executorch import _extremes, _quantizer
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    images = [np.full((1, 3, 8, 8), value, np.float32) for value in (-1.0, 2.0, 0.5)]
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, (torch.from_numpy(images[0]),)).module(), _quantizer())
    extremes = _extremes(prepared, iter(images))
    input_range = [ranges for ranges in extremes.values() if np.allclose(ranges[0], [-1.0, 2.0, 0.5])]
    assert len(input_range) == 1 and np.allclose(input_range[0][1], [-1.0, 2.0, 0.5])  # not the running min/max
    assert all(mins.shape == (3,) and (mins <= maxs).all() for mins, maxs in extremes.values())


def test_a_layer_kept_float_takes_its_readers_and_lowers_to_one_delegate():
    from edgederm.converters.executorch import _delegation, _float_regions, _quantizer, _relu6_fused_like_relu, _unobserved
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    example = torch.randn(1, 3, 12, 12)
    with torch.no_grad(), _relu6_fused_like_relu():
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), _quantizer())
        prepared(example)
    regions = _float_regions(prepared)
    assert list(regions) == ["0", "2", "4"]  # module paths, in graph order
    observed = {node.name: node.args[0] for node in prepared.graph.nodes if node.op == "call_module"}

    def watched(name: str) -> str:
        node = observed[name]
        return node.op if node.op in ("placeholder", "get_attr") else node.target.__name__

    # the first conv: the image, its weights, its ReLU6 output and the second conv's weights
    assert sorted(watched(name) for name in regions["0"]) == ["get_attr", "get_attr", "hardtanh.default", "placeholder"]
    assert sorted(watched(name) for name in regions["4"]) == ["conv2d.default", "get_attr"]  # the last: no reader
    _unobserved(prepared, regions["2"])
    with torch.no_grad():
        converted = convert_pt2e(prepared)
        program = torch.export.export(converted, (example,))
        float_conv = next(n for n in converted.graph.nodes if n.name == "conv2d_1")
        assert all(arg.op == "get_attr" and arg.meta["val"].dtype == torch.float32 for arg in float_conv.args[1:])
        assert np.allclose(converted(example).numpy(), model(example).numpy(), atol=0.1)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    assert _delegation(edge) == {"delegates": 1, "casts_outside": 0, "outside": {}}


def test_int8_weights_are_int8_and_fp16_weights_fp16(exported: dict[str, Path]):
    size = {mode: path.stat().st_size for mode, path in exported.items()}
    assert size["int8"] < 0.35 * size["fp32"]
    assert 0.45 * size["fp32"] < size["fp16"] < 0.55 * size["fp32"]


def test_fp16_conv_weights_pack_to_the_same_kernels_and_the_visitor_is_restored():
    from edgederm.converters.executorch import _conv_visitor, _conv_weights_kept_in_fp16
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Float16(nn.Module):
        def __init__(self):
            super().__init__()
            convs = (nn.Conv2d(8, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ConvTranspose2d(64, 4, 2, stride=2))
            self.net = nn.Sequential(*convs).half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.half()).float()

    torch.manual_seed(0)
    model, image = Float16().eval(), torch.randn(1, 8, 16, 16)

    def lowered() -> bytes:
        program = torch.export.export(model, (image,))
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer

    Conv2d = _conv_visitor()
    inherited = Conv2d.define_tensor
    as_float32 = lowered()
    with _conv_weights_kept_in_fp16():
        as_float16 = lowered()
    assert Conv2d.define_tensor is inherited and "define_tensor" not in Conv2d.__dict__
    # two bytes fewer per weight and bias, but the transposed conv's (XNNPACK has no float16 deconvolution filter)
    weights = sum(p.numel() for p in model.net[:2].parameters())
    saved, deconvolution = len(as_float32) - len(as_float16), sum(p.numel() for p in model.net[2].parameters())
    assert 2 * weights - 64 <= saved < 2 * weights + 2 * deconvolution  # give or take the constants' alignment
    outputs = [_runtime().load_program(buffer).load_method("forward").execute([image])[0].numpy() for buffer in (as_float32, as_float16)]
    assert np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("mode", MODES)
def test_the_spec_travels_as_a_constant_method(exported: dict[str, Path], trained_run: Path, mode: str):
    run_spec = ModelSpec.load(trained_run / "spec.json")
    program = _runtime().load_program(exported[mode])
    assert {"forward", SPEC_KEY} <= program.method_names
    (text,) = program.load_method(SPEC_KEY).execute([])
    predictor = Predictor.load(exported[mode], threads=1)
    assert isinstance(predictor, ExecuTorchPredictor) and predictor.backend_name == "executorch" and predictor.path == exported[mode]
    for spec in (ModelSpec.from_json(text), predictor.spec):
        assert spec.class_names == run_spec.class_names and spec.preprocess == run_spec.preprocess
        assert spec.output == "probabilities" and spec.source_sha256 == run_spec.source_sha256
        assert spec.decision == run_spec.decision and spec.operating_point == run_spec.operating_point
        assert spec.artifact["format"] == "executorch" and spec.artifact["quant"] == mode
        assert spec.artifact["input"] == {"name": "image", "layout": "NCHW", "dtype": "float32", "shape": [1, 3, 64, 64]}
        assert spec.artifact["output"] == {"name": "probabilities", "dtype": "float32", "shape": [1, run_spec.num_classes]}
        assert spec.artifact["compute"] == {"fp32": "float32", "fp16": "float16", "int8": "int8"}[mode]


@pytest.mark.parametrize("mode,max_gap", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_float_programs_agree_with_torch(exported: dict[str, Path], pixels: np.ndarray, reference: np.ndarray, mode: str, max_gap: float):
    probabilities = Predictor.load(exported[mode], threads=1).predict_pixels(pixels)
    assert probabilities.shape == reference.shape == (40, 4)
    assert np.abs(probabilities - reference).max() < max_gap


def test_int8_program_keeps_the_top_class(exported: dict[str, Path], pixels: np.ndarray, reference: np.ndarray):
    probabilities = Predictor.load(exported["int8"], threads=1).predict_pixels(pixels)
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-4)  # the softmax stays float
    assert (probabilities.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert 0 < np.abs(probabilities - reference).max() < 0.05  # quantized, and close


def test_predictors_with_different_thread_counts_take_turns(exported: dict[str, Path], pixels: np.ndarray):
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    one, two, default = (Predictor.load(exported["int8"], threads=t) for t in (1, 2, None))
    first = [p.predict_pixels(pixels[:4]) for p in (one, two, default)]
    for _ in range(3):  # each resize reloads every live program; none may run on a replaced pool
        for predictor, expected in zip((one, two, default), first, strict=True):
            np.testing.assert_array_equal(predictor.predict_pixels(pixels[:4]), expected)
            if predictor.threads:
                assert _threadpool_get_thread_count() == predictor.threads
    np.testing.assert_allclose(first[0], first[1], atol=1e-6)


def test_an_empty_batch_gives_no_rows(exported: dict[str, Path]):
    assert Predictor.load(exported["fp32"]).predict_pixels(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 4)


def _flip(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0xFF
    return bytes(changed)


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda d: b"", "no ET identifier"),
        (lambda d: d[:7], "no ET identifier"),
        (lambda d: d[:64], "truncated: its header says"),
        (lambda d: d[:300], "truncated: its header says"),
        (lambda d: d[: len(d) // 2], "truncated: its header says"),
        (lambda d: d[:-1], "truncated: its header says"),
        (lambda d: bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "no ET identifier"),
        (lambda d: _flip(d, 4), "no ET identifier"),
        (lambda d: _flip(d, 20), "truncated: its header says"),  # the program size in the extended header
        (lambda d: _flip(d, 70), "cannot load the ExecuTorch program .*Verification failed"),  # inside the flatbuffer
        (lambda d: d[:64] + bytes(np.random.default_rng(1).integers(0, 256, len(d) - 64, dtype=np.uint8)), "Verification failed"),
    ],
    ids=["empty", "7-bytes", "head-only", "300-bytes", "half", "last-byte-cut", "random", "identifier", "header-size", "flatbuffer",
         "random-body"],
)  # fmt: skip
def test_truncated_or_corrupt_program_is_one_line_naming_it(exported: dict[str, Path], tmp_path: Path, damage, expected: str):
    broken = tmp_path / "broken.pte"
    broken.write_bytes(damage(exported["int8"].read_bytes()))
    with pytest.raises(ModelError, match=expected) as caught:
        Predictor.load(broken)
    message = str(caught.value)
    assert message.startswith(f"{broken}: ") and "\n" not in message and "re-run `edgederm export" in message


def test_a_program_without_edgederm_metadata_is_refused(tmp_path: Path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    program = to_edge_transform_and_lower(torch.export.export(module, (torch.zeros(1, 3, 8, 8),)), partitioner=[XnnpackPartitioner()])
    plain = tmp_path / "plain.pte"
    plain.write_bytes(program.to_executorch().buffer)
    with pytest.raises(ModelError, match=rf"plain\.pte: no edgederm metadata \({SPEC_KEY}\)"):
        Predictor.load(plain)


def test_without_executorch_loading_is_one_line_with_the_pip_command(exported: dict[str, Path], monkeypatch):
    for module in ("executorch.runtime", "executorch.extension.pybindings.portable_lib"):
        monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like to `import`
    with pytest.raises(BackendUnavailable) as caught:
        Predictor.load(exported["fp32"])
    message = str(caught.value)
    assert message.startswith(f"{exported['fp32']}: the ExecuTorch runtime is not installed") and "\n" not in message
    assert "pip install executorch==1.5.1 torch==2.14.1" in message


def test_without_executorch_the_export_is_a_failed_row(trained_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    (record,) = export_run(trained_run, [FORMATS["executorch"]], ["fp32"], tmp_path)
    assert record.status == "failed" and record.path is None and not list(tmp_path.glob("*.pte"))
    assert "ExecuTorch fp32 conversion needs executorch (pip install executorch==1.5.1)" in record.message


def test_int8_without_calibration_is_a_conversion_error(trained_run: Path, tmp_path: Path):
    from edgederm.converters import executorch as executorch_converter

    from edgederm.models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(trained_run)
    with pytest.raises(ConversionError, match="ExecuTorch int8 needs calibration images"):
        executorch_converter.export(ExportJob(model=model, spec=spec, quant="int8", target=tmp_path / "m.pte"))
    with pytest.raises(ConversionError, match="ExecuTorch has no 'w8a16' mode"):
        executorch_converter.export(ExportJob(model=model, spec=spec, quant="w8a16", target=tmp_path / "m.pte"))
    assert not (tmp_path / "m.pte").exists()


def test_fp16_is_a_skipped_row_where_xnnpack_cannot_run_an_op_in_fp16(trained_run: Path, tmp_path: Path, monkeypatch):
    """XNNPACK has no fp16 GELU: the fp16 program would run it on portable kernels, so no file, and a row saying why."""
    from edgederm.models import checkpoint

    spec = ModelSpec.load(trained_run / "spec.json")
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, spec.num_classes))
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda run_dir: (network.eval(), spec))
    records = export_run(trained_run, [FORMATS["executorch"]], ["fp32", "fp16"], tmp_path)
    assert [(r.quant, r.status) for r in records] == [("fp32", "ok"), ("fp16", "skipped")], [r.message for r in records]
    assert "XNNPACK does not run every op of this model in fp16" in records[1].message and "gelu" in records[1].message
    assert records[1].path is None and not (tmp_path / f"{spec.arch}_fp16.pte").exists()
    rows = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert [(r["quant"], r["status"], r["message"]) for r in rows] == [(r.quant, r.status, r.message) for r in records]


def test_segmenter_programs_give_lesion_probabilities(trained_segmenter: Path, tmp_path: Path):
    records = export_run(trained_segmenter, [FORMATS["executorch"]], list(MODES), tmp_path, calib_n=24)
    assert [r.status for r in records] == ["ok"] * 3, [r.message for r in records]
    reference = Predictor.load(trained_segmenter)
    spec = reference.spec
    pixels = load_calibration("synthetic:8,seed=3", spec.preprocess, n=8).pixels
    expected = reference.predict_pixels(pixels)
    side = spec.preprocess.input_size
    for record, max_gap in zip(records, (1e-4, 1e-2, 0.05), strict=True):
        predictor = Predictor.load(tmp_path / record.path, threads=1)
        assert predictor.spec.task == "segmentation" and predictor.spec.artifact["output"]["name"] == "mask_probabilities"
        masks = predictor.predict_pixels(pixels)
        assert masks.shape == (8, 1, side, side)
        assert np.abs(masks[:, 0] - expected).max() < max_gap, record.quant
    from edgederm.data.synthetic import plan_synthetic, render_synthetic

    image = render_synthetic(plan_synthetic(1, seed=2)[0])[0]
    mask = Predictor.load(tmp_path / records[0].path).predict_mask(image)
    assert mask.shape == (image.height, image.width) and set(np.unique(mask)) <= {0, 255}


def test_the_backend_imports_torch_only_when_a_program_is_loaded(exported: dict[str, Path]):
    code = (
        "import sys\n"
        "import edgederm.runtime, edgederm.runtime.executorch_backend\n"
        "before = 'torch' in sys.modules\n"
        "from edgederm.runtime import Predictor\n"
        f"Predictor.load({str(exported['fp32'])!r})\n"
        "print(before, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False True"
