"""ONNX int8 bias correction: conv by conv it brings each channel's mean output back to fp32's, and
it is kept only where held-out calibration images come closer to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgederm.converters import _onnx_bias
from edgederm.converters import onnx as onnx_converter
from edgederm.converters._calibration import load_calibration
from edgederm.converters._job import ExportJob

from edgederm.export import export_run
from edgederm.formats import FORMATS
from edgederm.training.checkpoint import load_checkpoint

CALIB = "synthetic:40,seed=5"


@pytest.fixture(scope="module")
def quantizer(trained_run: Path, tmp_path_factory):
    model, spec = load_checkpoint(trained_run)
    # The session's run trains only its head, so its batch norms still hold their initial statistics and fold
    # into convs without a bias; a trained network's fold into biases, which is what the correction moves.
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.bias.data.normal_(0, 0.2, generator=generator)
    calibration = load_calibration(CALIB, spec.preprocess, n=40, quiet=True)
    work = tmp_path_factory.mktemp("bias")
    fp32, _ = onnx_converter._fp32_model(ExportJob(model, spec, "int8", work / "x.onnx", calibration))
    return onnx_converter._Int8Quantizer(fp32, calibration, work)


def _conv_means(quantizer, model: onnx.ModelProto, fp32_names: bool) -> dict[str, np.ndarray]:
    prepared = onnx.load(quantizer.prepared)
    names = {n.name: n.output[0] for n in (prepared if fp32_names else model).graph.node if n.op_type == "Conv"}
    convs = [name for name in names if any(n.name == name for n in model.graph.node)]
    outputs = [names[name] for name in convs]
    means = _onnx_bias._channel_means(
        quantizer._session(_onnx_bias._probe(model, outputs)), quantizer._inputs[0::2], onnx_converter.INPUT_NAME, outputs
    )
    return dict(zip(convs, means, strict=True))


def test_each_conv_mean_is_brought_back_to_fp32(quantizer):
    shifts_before, quantizer.bias_shifts = quantizer.bias_shifts, {}
    try:
        raw = quantizer._build([])  # all-int8 at the chosen ranges, uncorrected
    finally:
        quantizer.bias_shifts = shifts_before
    prepared = onnx.load(quantizer.prepared)
    shifts = _onnx_bias.fit_shifts(raw, prepared, quantizer._inputs[0::2], quantizer._session, onnx_converter.INPUT_NAME)
    assert shifts and all(np.isfinite(s).all() for s in shifts.values())
    target = _conv_means(quantizer, prepared, fp32_names=True)
    before = _conv_means(quantizer, raw, fp32_names=False)
    after = _conv_means(quantizer, _onnx_bias.apply(raw, shifts), fp32_names=False)
    gap_before = np.mean([np.abs(before[name] - target[name]).mean() for name in shifts])
    gap_after = np.mean([np.abs(after[name] - target[name]).mean() for name in shifts])
    assert gap_before > 0
    assert gap_after < 0.2 * gap_before, (gap_before, gap_after)
    assert _onnx_bias.apply(raw, {}) is raw


def test_a_correction_that_does_not_help_the_held_out_images_is_refused(quantizer, monkeypatch):
    raw = quantizer.full_int8
    prepared = onnx.load(quantizer.prepared)

    def harmful(qdq, fp32, inputs, session, input_name):  # every conv's output moved by a whole unit
        return {n.name: np.ones(1, dtype=np.float32) for n in qdq.graph.node if n.op_type == "Conv"}

    monkeypatch.setattr(_onnx_bias, "fit_shifts", harmful)
    shifts, result = _onnx_bias.decide(raw, prepared, quantizer._inputs, quantizer.reference, quantizer._session, onnx_converter.INPUT_NAME)
    assert shifts == {} and not result.applied
    assert result.mean_abs_dp["on"] > result.mean_abs_dp["off"]
    assert result.images == {"fit": 20, "judge": 20}
    assert "not applied" in result.summary()


def test_too_few_calibration_images_leave_the_model_alone(quantizer):
    few = quantizer._inputs[: _onnx_bias.MIN_IMAGES - 1]
    shifts, result = _onnx_bias.decide(
        quantizer.full_int8, onnx.load(quantizer.prepared), few, quantizer.reference[: len(few)], quantizer._session, "image"
    )
    assert shifts == {} and not result.applied and "not tried" in result.summary()


def test_the_export_records_the_decision(trained_run: Path, tmp_path: Path):
    records = export_run(trained_run, [FORMATS["onnx"]], ["int8"], tmp_path, calib_data=CALIB, calib_n=40, quiet=True)
    assert records[0].status == "ok", records[0].message
    row = json.loads((tmp_path / "manifest.json").read_text())["artifacts"][0]
    decision = row["details"]["bias_correction"]
    assert decision["images"] == {"fit": 20, "judge": 20}  # even calibration images fit, odd ones judge
    off, on = decision["mean_abs_dp"]["off"], decision["mean_abs_dp"]["on"]
    assert decision["applied"] == (on < (1 - _onnx_bias.MIN_GAIN) * off)
    stamped = {p.key: p.value for p in onnx.load(tmp_path / records[0].path).metadata_props}
    assert "bias_correction" in json.dumps(stamped)
