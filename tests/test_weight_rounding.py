"""Output-aware rounding of int8 weights: every weight one step at most from its float value, on the grid each
converter quantizes to (so the file stores exactly the chosen integers), closer to fp32 than nearest rounding."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgederm.converters import _weight_rounding
from edgederm.converters import onnx as onnx_converter
from edgederm.converters import tflite as tflite_converter
from edgederm.converters._calibration import load_calibration
from edgederm.converters._job import ExportJob, tool_output_hidden
from onnx import numpy_helper
from torch import nn

from edgederm.core.formats import FORMATS
from edgederm.export import export_run
from edgederm.models.checkpoint import load_checkpoint

CALIB = "synthetic:40,seed=5"


def _net(num_classes: int) -> nn.Module:
    """A stem, a depthwise and a pointwise conv and a linear head, no batch norm: the file's weights are the layers' own."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    ).eval()


def _smooth_images(n: int, seed: int) -> np.ndarray:
    """Noise upsampled 4x: neighbouring pixels correlate, as in photographs."""
    coarse = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32))
    return nn.functional.interpolate(coarse, scale_factor=4, mode="bilinear").numpy()


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_every_weight_sits_on_its_channels_int8_grid_one_step_at_most_from_its_value():
    model = _net(3)
    rounded, record = _weight_rounding.rounded(model, [_smooth_images(24, 0)])
    for before, after in zip(_layers(model), _layers(rounded), strict=True):
        w = before.weight.detach().double().reshape(before.weight.shape[0], -1)
        q = after.weight.detach().double().reshape(w.shape)
        scale = w.abs().amax(1, keepdim=True) / _weight_rounding.LEVELS
        # each channel keeps its largest weight, so a converter's absmax / 127 finds the same scale
        torch.testing.assert_close(q.abs().amax(1, keepdim=True), w.abs().amax(1, keepdim=True), rtol=1e-6, atol=0)
        steps = q / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)
        assert ((q - w).abs() <= scale * (1 + 1e-6)).all()
    assert record.layers == 4 and record.images == 24
    assert record.weights_moved > 0 and record.error["chosen"] < record.error["nearest"]


def test_the_rounded_model_is_closer_to_fp32_than_nearest_rounding_on_other_images():
    model = _net(3)
    rounded, _ = _weight_rounding.rounded(model, [_smooth_images(32, 0)])
    nearest = _net(3)
    for layer in _layers(nearest):
        w = layer.weight.data
        scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) / _weight_rounding.LEVELS
        layer.weight.data = torch.round(w / scale) * scale
    held_out = torch.from_numpy(_smooth_images(64, 1))
    with torch.no_grad():
        reference = model(held_out)
        errors = [float((candidate(held_out) - reference).abs().mean()) for candidate in (nearest, rounded)]
    assert errors[1] < errors[0]


@pytest.fixture(scope="module")
def job(trained_run: Path, tmp_path_factory) -> ExportJob:
    _, spec = load_checkpoint(trained_run)
    calibration = load_calibration(CALIB, spec.preprocess, n=40)
    return ExportJob(
        _net(len(spec.class_names)),
        spec,
        "int8",
        tmp_path_factory.mktemp("rounding") / "x",
        calibration,
        options={"weight_rounding": "on"},
    )


def _chosen(job: ExportJob) -> list[np.ndarray]:
    model, _ = _weight_rounding.rounded_on(job.model, job.calibration)
    return [layer.weight.detach().numpy() for layer in _layers(model) if isinstance(layer, nn.Conv2d)]


def test_onnx_int8_stores_the_chosen_integers(job: ExportJob, tmp_path: Path):
    target = tmp_path / "int8.onnx"
    with tool_output_hidden():
        onnx_converter.export(ExportJob(job.model, job.spec, "int8", target, job.calibration, dict(job.options)))
    model = onnx.load(target)
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    stored = []
    for conv in (node for node in model.graph.node if node.op_type == "Conv"):
        dequantize = producers[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        q, scale = initializers[dequantize.input[0]], initializers[dequantize.input[1]]
        assert q.dtype == np.int8
        stored.append(q.astype(np.float32) * scale.reshape(-1, *[1] * (q.ndim - 1)))
    chosen = _chosen(job)
    assert len(stored) == len(chosen)
    for file_weights, weights in zip(stored, chosen, strict=True):
        np.testing.assert_allclose(file_weights, weights, rtol=0, atol=np.abs(weights).max() / 127 * 1e-3)
    stamped = {p.key: p.value for p in model.metadata_props}
    assert "weight_rounding" in json.dumps(stamped)


def test_tflite_int8_stores_the_chosen_integers(job: ExportJob, tmp_path: Path):
    from ai_edge_litert.interpreter import Interpreter

    target = tmp_path / "int8.tflite"
    with tool_output_hidden():
        tflite_converter.export(ExportJob(job.model, job.spec, "int8", target, job.calibration, dict(job.options)))
    interpreter = Interpreter(model_path=str(target))
    stored = []
    for tensor in interpreter.get_tensor_details():
        scales = tensor["quantization_parameters"]["scales"]
        if tensor["dtype"] == np.int8 and len(tensor["shape"]) == 4 and len(scales) > 1:
            q = interpreter.get_tensor(tensor["index"]).astype(np.float32)
            axis = tensor["quantization_parameters"]["quantized_dimension"]
            stored.append(q * scales.reshape([-1 if a == axis else 1 for a in range(4)]))
    for weights in _chosen(job):
        depthwise = weights.shape[1] == 1 and weights.shape[0] > 1
        expected = weights.transpose(1, 2, 3, 0) if depthwise else weights.transpose(0, 2, 3, 1)  # 1HWO / OHWI
        step = np.abs(weights).max() / 127
        assert any(s.shape == expected.shape and np.abs(s - expected).max() < step * 1e-3 for s in stored)


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "executorch"])
def test_int8_exports_decide_weight_rounding_on_held_out_images(trained_run: Path, tmp_path: Path, fmt: str):
    if fmt == "executorch":
        pytest.importorskip("executorch", reason="ExecuTorch is part of the export extra: pip install -e '.[export]'")
    records = export_run(trained_run, [FORMATS[fmt]], ["int8"], tmp_path, calib_data=CALIB, calib_n=40, options={"weight_rounding": "auto"})
    assert records[0].status == "ok", records[0].message
    decision = json.loads((tmp_path / "manifest.json").read_text())["artifacts"][0]["details"]["weight_rounding"]
    assert decision["mode"] == "auto"
    assert decision["rounding"]["error"]["chosen"] <= decision["rounding"]["error"]["nearest"]
    # fitted on the even images, judged on the odd ones, kept only if clearly closer there
    assert decision["images"] == {"fit": 20, "judge": 20}
    error = decision["mean_abs_dp"]
    assert decision["applied"] == (error["rounded"] < (1 - _weight_rounding.MIN_GAIN) * error["nearest"])


class _Candidate:
    """A quantizer whose all-int8 model is off from fp32 by ``error`` on every image."""

    def __init__(self, weights: nn.Module, error: float):
        self.weights, self.error = weights, error
        self.reference = np.full((40, 3), 1 / 3)

    def plain(self) -> float:
        return self.error

    def held_out(self, model: float) -> np.ndarray:
        return self.reference[1::2] + model


@pytest.mark.parametrize(("rounded_error", "kept"), [(0.5, True), (0.97, False), (1.5, False)])
def test_auto_keeps_rounded_weights_only_when_clearly_closer_on_held_out_images(job: ExportJob, rounded_error: float, kept: bool):
    auto = ExportJob(job.model, job.spec, "int8", job.target, job.calibration, {"weight_rounding": "auto"})
    chosen = _weight_rounding.choose(auto, lambda weights: _Candidate(weights, 1.0 if weights is job.model else rounded_error))
    assert (chosen.weights is not job.model) == kept
    assert auto.details["weight_rounding"]["applied"] == kept
    assert auto.details["weight_rounding"]["rounding"]["images"] == 20  # the even calibration images only


def test_one_model_is_rounded_once_per_calibration_and_subset(job: ExportJob):
    first, _ = _weight_rounding.rounded_on(job.model, job.calibration)
    assert _weight_rounding.rounded_on(job.model, job.calibration)[0] is first
    even, record = _weight_rounding.rounded_on(job.model, job.calibration, every=2)
    assert even is not first and record.images == 20
    other = load_calibration("synthetic:24,seed=9", job.spec.preprocess, n=24)
    again, record = _weight_rounding.rounded_on(job.model, other)
    assert again is not first and record.images == 24


def test_a_qat_run_keeps_its_nearest_rounding(job: ExportJob):
    spec = copy.deepcopy(job.spec)
    spec.training = {**spec.training, "recipe": {**spec.training.get("recipe", {}), "qat": True}}
    for mode in ("on", "auto"):
        qat_job = ExportJob(job.model, spec, "int8", job.target, job.calibration, {"weight_rounding": mode})
        assert _weight_rounding.choose(qat_job, lambda weights: weights) is job.model
        assert "--qat" in qat_job.details["weight_rounding"]["skipped"]


def test_the_cli_decides_weight_rounding_unless_told(trained_run: Path, tmp_path: Path):
    from edgederm.cli import main

    for flags, mode in (([], "auto"), (["--weight-rounding", "off"], None), (["--weight-rounding", "on"], "on")):
        out = tmp_path / str(mode)
        argv = ["export", str(trained_run), "--formats", "onnx", "--quant", "int8", "--calib-data", CALIB, "--calib-n", "40"]
        assert main([*argv, "--out", str(out), *flags]) == 0
        details = json.loads((out / "manifest.json").read_text())["artifacts"][0]["details"]
        assert details.get("weight_rounding", {}).get("mode") == mode
        if mode == "on":  # fitted on every calibration image and applied without a judge
            decision = details["weight_rounding"]
            assert decision["applied"] and decision["images"] == {"fit": 40, "judge": 0}
            assert decision["rounding"]["error"]["chosen"] <= decision["rounding"]["error"]["nearest"]
