"""Bias correction for static int8: the shared decision, and each format's mechanics, which bring every
conv's mean output per channel back to fp32's, conv by conv."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgederm.converters import _bias_correction, _onnx_bias, _tflite_bias, _tflite_bias_range
from edgederm.converters import onnx as onnx_converter
from edgederm.converters import tflite as tflite_converter
from edgederm.converters._calibration import load_calibration
from edgederm.converters._job import ExportJob, tool_output_hidden

from edgederm.core.formats import FORMATS
from edgederm.export import export_run
from edgederm.models.checkpoint import load_checkpoint

CALIB = "synthetic:40,seed=5"


@pytest.fixture(scope="module")
def job(trained_run: Path, tmp_path_factory) -> ExportJob:
    model, spec = load_checkpoint(trained_run)
    # The session's run trains only its head, so its batch norms still hold their initial statistics and fold
    # into convs without a bias; a trained network's fold into biases, which is what the correction moves.
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.bias.data.normal_(0, 0.2, generator=generator)
    calibration = load_calibration(CALIB, spec.preprocess, n=40)
    return ExportJob(model, spec, "int8", tmp_path_factory.mktemp("bias") / "x", calibration)


def _gaps(target: dict[str, np.ndarray], before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean |channel mean - fp32's| over the corrected convs, before and after the correction."""
    return tuple(float(np.mean([np.abs(means[name] - target[name]).mean() for name in target])) for means in (before, after))


def test_onnx_conv_means_are_brought_back_to_fp32(job: ExportJob):
    fp32, _ = onnx_converter._fp32_model(job)
    quantizer = onnx_converter._Int8Quantizer(fp32, job.calibration, job.target.parent).settle()
    raw = quantizer.build([])  # all-int8 at the chosen ranges, uncorrected
    prepared, inputs = onnx.load(quantizer.prepared), quantizer._inputs[0::2]
    shifts = _onnx_bias.fit_shifts(raw, prepared, inputs, quantizer._session, onnx_converter.INPUT_NAME)
    assert shifts and all(np.isfinite(s).all() for s in shifts.values())

    # Each conv is read as the next layer reads it: past its ReLU6 in fp32, and past its output's QDQ pair in int8.
    def read_from(model: onnx.ModelProto) -> set[str]:
        readers, made_by = _onnx_bias.readers(model.graph), {out: n.op_type for n in model.graph.node for out in n.output}
        return {made_by[_onnx_bias._as_read(n.output[0], readers)] for n in model.graph.node if n.name in shifts}

    assert read_from(raw) == {"DequantizeLinear"} and read_from(prepared) & {"Clip", "Relu"}

    def means(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        # One probe per conv, as fit_shifts reads them: onnxruntime fuses a QDQ group into its int8 kernel only where
        # no tensor inside the group is a graph output, so a probe exposing every conv would read float convs upstream.
        readers = _onnx_bias.readers(model.graph)
        outputs = {n.name: _onnx_bias._as_read(n.output[0], readers) for n in model.graph.node if n.name in shifts}
        return {
            name: _onnx_bias._channel_means(
                quantizer._session(_onnx_bias._probe(model, [output], prune=True)), inputs, onnx_converter.INPUT_NAME, [output]
            )[0]
            for name, output in outputs.items()
        }

    before, after = _gaps(means(prepared), means(raw), means(_onnx_bias.apply(raw, shifts)))
    # Read after the ReLU6 and the output's quantize/dequantize, which a bias move shifts by less where they clip.
    assert before > 0 and after < 0.2 * before, (before, after)
    assert _onnx_bias.apply(raw, {}) is raw


def test_tflite_conv_means_are_brought_back_to_fp32(job: ExportJob):
    with tool_output_hidden():
        fp32 = tflite_converter._float_model(job.model, job.spec, True)
        quantizer = tflite_converter._StaticInt8(fp32, job).settle()
    raw = quantizer.build([])  # all-int8 at the chosen ranges, uncorrected
    inputs = quantizer._inputs[0::2]
    shifts = _tflite_bias.fit_shifts(raw, fp32, inputs)
    assert shifts and all(np.isfinite(s).all() for s in shifts.values())

    def means(model: bytes) -> dict[str, np.ndarray]:
        index = _tflite_bias._tensor_index(model)
        return dict(zip(shifts, _tflite_bias._channel_means(model, [index[name] for name in shifts], inputs), strict=True))

    before, after = _gaps(means(fp32), means(raw), means(_tflite_bias.apply(raw, shifts)))
    # TFLite reads a conv's output after its fused ReLU, which a bias move shifts by less where it clips.
    assert before > 0 and after < 0.5 * before, (before, after)
    assert _tflite_bias.apply(raw, {}) is raw


def test_executorch_conv_means_are_brought_back_to_fp32(job: ExportJob):
    pytest.importorskip("executorch", reason="ExecuTorch is part of the export extra: pip install -e '.[export]'")
    from edgederm.converters import _pte_bias
    from edgederm.converters._wrap import deployable, example_input
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        captured = torch.export.export(deployable(job.model, job.spec), (example_input(job.spec),)).module()
    prepared = prepare_pt2e(captured, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    inputs = np.concatenate(list(job.calibration.batches(8, "NCHW")))
    _pte_bias.predict(prepared, inputs)  # calibration
    fp32 = _pte_bias.float_twin(prepared)
    raw = convert_pt2e(prepared)
    shifts = _pte_bias.fit_shifts(raw, fp32, inputs[0::2])
    assert shifts and all(np.isfinite(s).all() for s in shifts.values())
    chains = [_pte_bias.as_read(node) for node in raw.graph.nodes if node.name in shifts]
    assert all(chain[-1].target == torch.ops.quantized_decomposed.dequantize_per_tensor.default for chain in chains)
    assert any(chain[0].target in _pte_bias.ACTIVATIONS for chain in chains)

    def means(model) -> dict[str, np.ndarray]:
        return {name: m.numpy() for name, m in _pte_bias.walk(model, inputs[0::2], list(shifts))[1].items()}

    before, after = _gaps(means(fp32), means(raw), means(_pte_bias.apply(raw, shifts)))
    # Read after the ReLU6 and the output's quantize/dequantize, which a bias move shifts by less where they clip.
    assert before > 0 and after < 0.2 * before, (before, after)
    outputs, _ = _pte_bias.walk(raw, inputs[:3], [])
    np.testing.assert_allclose(outputs, _pte_bias.predict(raw, inputs[:3]), atol=1e-6)  # the walk is the module's forward
    assert _pte_bias.apply(raw, {}) is raw


def _decide(on_error: float, off_error: float, n: int = 20):
    """``decide`` over models that are their own error on every image."""
    reference = np.tile([[0.7, 0.3]], (n, 1))
    return _bias_correction.decide(
        off_error,
        list(range(n)),
        reference,
        fit=lambda model, inputs: {"conv": np.ones(2)},
        apply=lambda model, shifts: on_error if shifts else model,
        predict=lambda model, inputs: reference[: len(inputs)] + [[-model, model]],
    )


def test_a_correction_is_kept_only_if_the_held_out_images_come_clearly_closer():
    shifts, result = _decide(on_error=0.05, off_error=0.1)
    assert result.applied and shifts == {"conv": pytest.approx(np.ones(2))}
    assert result.mean_abs_dp == {"off": 0.1, "on": 0.05} and result.images == {"fit": 10, "judge": 10}
    assert "applied" in result.summary() and "not applied" not in result.summary()
    shifts, result = _decide(on_error=0.097, off_error=0.1)  # 3% closer: within noise, refused
    assert shifts == {} and not result.applied and "not applied" in result.summary()
    shifts, result = _decide(on_error=0.2, off_error=0.1)  # worse
    assert shifts == {} and not result.applied


def test_too_few_calibration_images_leave_the_model_alone():
    shifts, result = _decide(on_error=0.0, off_error=0.1, n=_bias_correction.MIN_IMAGES - 1)
    assert shifts == {} and not result.applied and "not tried" in result.summary()


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "executorch"])
def test_the_export_records_the_decision(trained_run: Path, tmp_path: Path, fmt: str):
    if fmt == "executorch":
        pytest.importorskip("executorch", reason="ExecuTorch is part of the export extra: pip install -e '.[export]'")
    records = export_run(trained_run, [FORMATS[fmt]], ["int8"], tmp_path, calib_data=CALIB, calib_n=40)
    assert records[0].status == "ok", records[0].message
    row = json.loads((tmp_path / "manifest.json").read_text())["artifacts"][0]
    decision = row["details"]["bias_correction"]
    assert decision["images"] == {"fit": 20, "judge": 20}  # even calibration images fit, odd ones judge
    off, on = decision["mean_abs_dp"]["off"], decision["mean_abs_dp"]["on"]
    assert decision["applied"] == (decision["convs"] > 0 and on < (1 - _bias_correction.MIN_GAIN) * off)
    if fmt == "onnx":
        stamped = {p.key: p.value for p in onnx.load(tmp_path / records[0].path).metadata_props}
        assert "bias_correction" in json.dumps(stamped)


def _with_ranges(errors: dict[float, tuple[float, float]], chosen: float = 95.0):
    """``with_ranges`` over models that are their own error; ``errors[p]`` = (error at p, error with its correction)."""
    reference = np.tile([[0.7, 0.3]], (20, 1))
    return _bias_correction.with_ranges(
        chosen,
        errors[chosen][0],
        lambda p: errors[p][0],
        list(range(20)),
        reference,
        fit=lambda model, inputs: {"conv": np.ones(2)},
        apply=lambda model, shifts: next(on for off, on in errors.values() if off == model) if shifts else model,
        predict=lambda model, inputs: reference[: len(inputs)] + [[-model, model]],
    )


def test_a_range_sensitive_model_gets_the_range_and_correction_closest_on_held_out_images():
    # in-sample, _ranges.choose picked p95; held out, p99 with its correction is closest
    errors = {100.0: (0.1, 0.07), 99.0: (0.09, 0.05), 95.0: (0.06, 0.08), 90.0: (0.065, 0.2)}
    percentile, model, shifts, result = _with_ranges(errors)
    assert percentile == 99.0 and model == 0.09 and shifts and result.applied
    assert result.mean_abs_dp == {"off": 0.09, "on": 0.05}  # the chosen range's figures
    assert result.ranges["chosen"] == "p99" and list(result.ranges["candidates"]) == ["min/max", "p99", "p95", "p90"]
    assert result.ranges["candidates"]["p90"] == {"off": 0.065, "on": 0.2, "applied": False}
    assert "ranges p99 chosen on the held-out images" in result.summary()


def test_a_narrower_range_must_be_clearly_closer_to_replace_a_wider_one():
    # p95 plain (0.049) is under p99's corrected 0.05 but not by MIN_GAIN: the wider range stays
    errors = {100.0: (0.1, 0.07), 99.0: (0.09, 0.05), 95.0: (0.049, 0.08), 90.0: (0.3, 0.3)}
    percentile, model, shifts, result = _with_ranges(errors)
    assert percentile == 99.0 and shifts
    # where the correction helps nowhere, the clipped range is kept plain
    errors = {100.0: (0.1, 0.2), 99.0: (0.06, 0.2), 95.0: (0.04, 0.2), 90.0: (0.045, 0.2)}
    percentile, model, shifts, result = _with_ranges(errors)
    assert percentile == 95.0 and model == 0.04 and shifts == {} and not result.applied


def test_where_min_max_was_chosen_only_the_correction_is_decided():
    errors = {100.0: (0.1, 0.06), 99.0: (0.01, 0.01), 95.0: (0.01, 0.01), 90.0: (0.01, 0.01)}
    percentile, model, shifts, result = _with_ranges(errors, chosen=100.0)
    assert percentile == 100.0 and model == 0.1 and shifts and result.applied and result.ranges is None


def _quantized_biases(model: bytes) -> dict[str, np.ndarray]:
    """Each bias-carrying op's bias as the quantized file holds it, dequantized, by the op's output name."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = bytearray(model)
    root = schema.Model.GetRootAs(buffer, 0)
    graph, biases = root.Subgraphs(0), {}
    for name, op in _tflite_bias_range._bias_ops(root):
        tensor = graph.Tensors(op.Inputs(2))
        if tensor.Type() in _tflite_bias.BIAS_TYPES:
            stored = _tflite_bias._buffer_data(buffer, root.Buffers(tensor.Buffer())).view(_tflite_bias.BIAS_TYPES[tensor.Type()])
            biases[name] = stored.astype(np.float64) * tensor.Quantization().ScaleAsNumpy()
    return biases


def test_a_near_dead_channel_keeps_its_bias_in_w8a16(job: ExportJob):
    """ai-edge-quantizer rounds biases at 32 bits; a channel with weights near zero overflows that at int16 activations."""
    model = copy.deepcopy(job.model)
    conv, norm = next((m, n) for m, n in zip(model.modules(), list(model.modules())[1:]) if isinstance(n, torch.nn.BatchNorm2d))
    with torch.no_grad():
        conv.weight[0] *= 1e-7  # the channel's output is its bias: a constant after the activation
        norm.bias[0], norm.running_mean[0] = 2.0, 0.0
    w8a16 = dataclasses.replace(job, model=model, quant="w8a16")
    with tool_output_hidden():
        fp32 = tflite_converter._float_model(model, job.spec, True)
        quantizer = tflite_converter._StaticInt8(fp32, w8a16).settle()
    raw = tflite_converter._quantize(fp32, quantizer.rules, quantizer.qsvs)
    fixed = quantizer.build([])
    floats, clipped, kept = _tflite_bias_range._float_biases(fp32), _quantized_biases(raw), _quantized_biases(fixed)
    assert any(np.abs(clipped[name] - floats[name]).max() > 0.5 for name in clipped)  # what the quantizer alone writes
    for name, bias in kept.items():
        np.testing.assert_allclose(bias, floats[name], atol=1e-3, err_msg=name)
    _, rescaled = _tflite_bias_range.fit_biases(raw, fp32)
    assert rescaled >= 1 and _tflite_bias_range.fit_biases(fixed, fp32)[1] == 0
