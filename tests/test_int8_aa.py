"""Accuracy-aware int8: the search, the float regions, and real TFLite/ONNX/ExecuTorch exports within the bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edgederm.converters._accuracy_aware import Int8Quantizer, Layer, float_regions, search
from edgederm.converters._bias_correction import BiasCorrection
from edgederm.converters._calibration import load_calibration
from edgederm.converters._ranges import CLEAR_GAIN, PERCENTILES, RangeChoice

from edgederm.core.formats import FORMATS
from edgederm.core.spec import ModelSpec
from edgederm.export import export_run
from edgederm.runtime import Predictor

CALIB = "synthetic:40,seed=5"


def toy(noise: dict[str, float], n: int = 200):
    """A fake model whose top-1 flips on images whose margin is below the summed noise of its int8 layers."""
    rng = np.random.default_rng(0)
    margin = rng.uniform(0, 1, n)
    reference = np.stack([0.5 + margin / 2, 0.5 - margin / 2], axis=1)

    def build(excluded):
        return sum(v for k, v in noise.items() if k not in excluded)

    def predict(total, count):
        flipped = margin < total
        probs = np.where(flipped[:, None], reference[:, ::-1], reference)
        return probs[:count]

    return build, predict, reference


def test_search_keeps_the_fewest_most_harmful_layers_float():
    noise = {"stem": 0.05, "dw1": 0.02, "pw1": 0.001, "head": 0.002, "fc": 0.0}
    build, predict, reference = toy(noise)
    model, result = search(list(noise), build, predict, lambda m: 1.0, reference, max_drop=0.01)
    assert result.full_int8_disagreement > 0.05
    assert result.kept_float == ["stem", "dw1"]  # the two big ones, and nothing else
    assert result.reached and result.disagreement <= 0.01
    assert model == pytest.approx(0.003)


def test_search_returns_all_int8_when_already_within_the_bound():
    build, predict, reference = toy({"a": 0.001, "b": 0.001})
    _, result = search(["a", "b"], build, predict, lambda m: 2.0, reference, max_drop=0.05)
    assert result.kept_float == [] and result.builds == 1 and result.reached


def test_a_corrected_start_is_tried_first_and_the_search_runs_on_the_uncorrected_models():
    noise = {"stem": 0.05, "dw1": 0.02, "pw1": 0.001}
    build, predict, reference = toy(noise)
    # the bias-corrected all-int8 model, as a total noise: within a loose bound it is returned as it is
    model, result = search(list(noise), build, predict, lambda m: 1.0, reference, max_drop=0.1, start=0.04)
    assert model == 0.04 and result.builds == 0 and result.reached and result.kept_float == []
    # missing a tight one, float layers are chosen among the uncorrected variants, as without a start
    model, result = search(list(noise), build, predict, lambda m: 1.0, reference, max_drop=0.01, start=0.04)
    assert result.kept_float == ["stem", "dw1"] and model == pytest.approx(0.001)
    start_gap = float((predict(0.04, None).argmax(1) != reference.argmax(1)).mean())
    assert result.full_int8_disagreement == start_gap > 0.01  # what is reported as all-int8 is the artifact int8 ships


def test_search_keeps_the_file_int8_sized():
    noise = {"stem": 0.05, "dw1": 0.02, "pw1": 0.001, "head": 0.002, "fc": 0.0}
    build, predict, reference = toy(noise)
    float_bytes = {"stem": 10, "dw1": 60, "pw1": 5, "head": 5, "fc": 5}  # what keeping each layer float adds to a 25-byte int8 file

    def search_within(max_size):
        return search(
            list(noise),
            lambda excluded: (build(excluded), 25 + sum(float_bytes[k] for k in excluded)),
            lambda model, count: predict(model[0], count),
            lambda model: 1.0,
            reference,
            0.01,
            size=lambda model: model[1],
            float_bytes=100,
            max_size=max_size,
        )[1]

    result = search_within(0.5)
    assert result.over_size and not result.reached  # the bound needs dw1 float too: a 0.95x file
    assert result.within_size == 4 and "dw1" not in result.kept_float  # the small layers below dw1 still fit
    assert result.kept_float[0] == "stem" and result.size_ratio <= 0.5
    result = search_within(1.0)
    assert result.reached and not result.over_size and result.kept_float == ["stem", "dw1"]


def test_float_region_takes_the_readers_of_the_output():
    layers = [
        Layer("conv1", ("conv1", "clip1"), frozenset({"x"}), frozenset({"a"})),
        Layer("conv2", ("conv2",), frozenset({"a"}), frozenset({"b"})),
        Layer("add", ("add",), frozenset({"a", "b"}), frozenset({"c"})),
    ]
    regions = float_regions(layers)
    assert regions["conv1"] == ["conv1", "clip1", "conv2", "add"]
    assert regions["conv2"] == ["conv2", "add"]
    assert regions["add"] == ["add"]


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8aa")
    formats = [FORMATS["tflite"], FORMATS["onnx"], FORMATS["executorch"]]
    records = export_run(
        trained_run, formats, ["fp32", "int8-aa"], out, calib_data=CALIB, calib_n=40, options={"max_drop": 0.0, "weight_rounding": "off"}
    )
    assert all(r.status == "ok" for r in records), [(r.format, r.quant, r.message) for r in records]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx", "executorch"])
def test_int8_aa_meets_a_zero_bound_on_the_calibration_images(exported: Path, trained_run: Path, fmt: str):
    manifest = json.loads((exported / "manifest.json").read_text())
    row = next(a for a in manifest["artifacts"] if a["format"] == fmt and a["quant"] == "int8-aa")
    aware = row["details"]["int8_aa"]
    assert aware["reached"] and aware["disagreement"] == 0.0 and aware["max_drop"] == 0.0
    assert len(aware["kept_float"]) <= aware["candidates"]
    assert aware["latency_ms"] > 0 and aware["full_int8_latency_ms"] > 0
    # Re-measured through the runtime an app uses: the same top-1 as fp32 on every calibration image.
    spec = ModelSpec.load(trained_run / "spec.json")
    pixels = load_calibration(CALIB, spec.preprocess, n=40).pixels
    fp32 = Predictor.load(exported / f"{spec.arch}_fp32{FORMATS[fmt].suffix}").predict_pixels(pixels)
    aa = Predictor.load(exported / row["path"]).predict_pixels(pixels)
    assert (aa.argmax(1) == fp32.argmax(1)).all()
    assert Predictor.load(exported / row["path"]).spec.artifact["quant"] == "int8-aa"


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "executorch"])
def test_the_activation_ranges_closest_to_fp32_are_chosen_and_recorded(exported: Path, fmt: str):
    manifest = json.loads((exported / "manifest.json").read_text())
    row = next(a for a in manifest["artifacts"] if a["format"] == fmt and a["quant"] == "int8-aa")
    ranges = row["details"]["activation_ranges"]
    assert len(ranges["scores"]) == len(PERCENTILES) and ranges["percentile"] in PERCENTILES
    errors = {label: score["mean_abs_dp"] for label, score in ranges["scores"].items()}
    closest = min(errors, key=errors.get)
    clearly_closer = errors[closest] < (1 - CLEAR_GAIN) * errors["min/max"]
    chosen = "min/max" if ranges["percentile"] == 100 else f"p{ranges['percentile']:g}"
    expected = closest if clearly_closer else "min/max"
    ranges_held_out = row["details"]["bias_correction"]["ranges"]
    if ranges_held_out is not None:  # clipping was clearly closer: every range then met the others on held-out images
        assert expected != "min/max" and len(ranges_held_out["candidates"]) == len(PERCENTILES)
        expected = ranges_held_out["chosen"]
    assert chosen == expected


class _Scripted:
    """A quantizer whose model is the number of layers kept float; it agrees with fp32 only where ``agrees(model)``."""

    def __init__(self, layers: int, agrees):
        self.layers, self.agrees = layers, agrees
        self.reference = np.tile([[0.9, 0.1]], (10, 1))  # the fp32 model's probabilities
        self.range_choice = RangeChoice(100.0, {"min/max": {"mean_abs_dp": 0.0, "disagreement": 0.0}}, 0.0)
        self.bias_correction = BiasCorrection(False, {}, 0, {"fit": 0, "judge": 0}, 0.0)

    def candidates(self):
        return [f"layer{i}" for i in range(self.layers)]

    full_int8 = 0  # the bias-corrected all-int8 model

    def build(self, keep_float):
        return len(keep_float)

    def predict(self, model, n):
        return (self.reference if self.agrees(model) else self.reference[:, ::-1])[:n]

    def latency(self, model):
        return 1.0

    float_size = 1000

    def size(self, model):  # each float layer adds 10% of the fp32 size to a 0.25x all-int8 file
        return 250 + 100 * model


def _int8_aa_job():
    class Job:
        quant, options, details = "int8-aa", {"max_drop": 0.01}, {}

    return Job()


def test_a_scripted_quantizer_is_an_int8_quantizer():
    assert isinstance(_Scripted(2, agrees=lambda model: True), Int8Quantizer)
    assert not isinstance(object(), Int8Quantizer)


def test_an_unreachable_bound_is_a_clear_conversion_error():
    from edgederm.converters._accuracy_aware import for_job
    from edgederm.converters._job import ConversionError

    job = _int8_aa_job()
    with pytest.raises(ConversionError, match="int8-aa cannot bring top-1 disagreement with fp32 within 1.0%"):
        for_job(_Scripted(2, agrees=lambda model: False), job)  # the error lies outside the candidates
    assert job.details["int8_aa"]["reached"] is False


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "executorch"])
def test_every_candidate_float_is_the_float_model(trained_run: Path, tmp_path: Path, monkeypatch, fmt: str):
    """What int8-aa can keep float must cover everything the quantizer touches (pads, inlined HardSwish nodes):
    with every candidate float, the 'int8' model gives the fp32 model's probabilities (of its own weights: nearest
    rounding, since rounded weights stay rounded in the layers kept float)."""
    import importlib

    converter = importlib.import_module(f"edgederm.converters.{fmt}")
    seen = {}

    def probe(quantizer, job):
        assert isinstance(quantizer, Int8Quantizer)
        everything = quantizer.build(quantizer.candidates())
        seen["gap"] = float(np.abs(quantizer.predict(everything, None) - quantizer.reference).max())
        seen["candidates"] = len(quantizer.candidates())
        seen["mixed_ms"] = quantizer.latency(quantizer.build(quantizer.candidates()[:1]))  # a mixed model runs in the format's runtime
        return quantizer.full_int8

    monkeypatch.setattr(converter._accuracy_aware, "for_job", probe)
    options = {"weight_rounding": "off"}
    records = export_run(trained_run, [FORMATS[fmt]], ["int8"], tmp_path, calib_data=CALIB, calib_n=16, options=options)
    assert records[0].status == "ok", records[0].message
    assert seen["candidates"] > 0 and seen["gap"] < 1e-5 and seen["mixed_ms"] > 0, seen


def test_a_bound_met_only_past_the_size_budget_is_a_clear_conversion_error():
    from edgederm.converters._accuracy_aware import for_job
    from edgederm.converters._job import ConversionError

    job = _int8_aa_job()
    with pytest.raises(ConversionError, match=r"in an int8-sized file \(at most 0.30x the fp32 size\).*--max-size"):
        for_job(_Scripted(3, agrees=lambda model: model >= 2), job)  # 2 float layers: a 0.45x file
    assert job.details["int8_aa"]["over_size"] is True
    assert job.details["int8_aa"]["kept_float"] == []  # one float layer is already 0.35x
    job = _int8_aa_job()
    job.options["max_size"] = 0.5
    assert for_job(_Scripted(3, agrees=lambda model: model >= 2), job) == 2


def test_a_bound_met_only_with_every_layer_float_is_refused():
    from edgederm.converters._accuracy_aware import for_job
    from edgederm.converters._job import ConversionError

    job = _int8_aa_job()
    job.options["max_size"] = 1.0
    with pytest.raises(ConversionError, match="only with all 3 layers float: that is the float model"):
        for_job(_Scripted(3, agrees=lambda model: model == 3), job)  # agrees only once nothing is quantized
    assert job.details["int8_aa"]["reached"] is True
