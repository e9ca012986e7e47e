"""ExecuTorch with a CoreML delegate (``.coreml.pte``) of a tiny trained run, checked in the MIL emulator, as CoreML is off Apple."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VERIFY_DATA
from edgederm.converters._calibration import load_calibration

from edgederm.core.errors import ModelError
from edgederm.core.formats import FORMATS, format_for_path
from edgederm.core.manifest import artifact_sha256, read_manifest
from edgederm.core.spec import ModelSpec
from edgederm.evaluate.verify.runner import VerifyOptions, verify_export
from edgederm.export import export_run
from edgederm.runtime import Predictor
from edgederm.runtime.coreml_emulator import EmulatedCoreMLDelegatePredictor

pytest.importorskip("executorch", reason="ExecuTorch is part of the export extra: pip install -e '.[export]'")
FORMAT = FORMATS["executorch-coreml"]


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("coreml_pte")
    records = export_run(trained_run, [FORMAT], ["fp32", "fp16", "int8"], out, calib_data="synthetic:24,seed=5", calib_n=24)
    assert [(r.quant, r.status) for r in records[:2]] == [("fp32", "ok"), ("fp16", "ok")], [(r.quant, r.message) for r in records]
    assert records[2].status == "skipped" and "executorch-coreml has no int8 mode" in records[2].message
    return {r.quant: out / r.path for r in records[:2]}


@pytest.fixture(scope="module")
def pixels(trained_run: Path) -> np.ndarray:
    return load_calibration("synthetic:12,seed=9", ModelSpec.load(trained_run / "spec.json").preprocess, n=12).pixels


def test_the_suffix_names_the_format_before_plain_pte():
    assert format_for_path("m_fp32.coreml.pte") is FORMAT
    assert format_for_path("m_fp32.pte") is FORMATS["executorch"]


def test_manifest_rows_say_the_whole_graph_is_one_coreml_delegate(exported: dict[str, Path]):
    rows = {row["quant"]: row for row in read_manifest(exported["fp32"].parent)["artifacts"]}
    for mode, path in exported.items():
        assert path.name.endswith(f"_{mode}.coreml.pte")
        assert rows[mode]["status"] == "ok" and rows[mode]["sha256"] == artifact_sha256(path)
        assert rows[mode]["details"]["coreml_delegate"] == {"delegates": 1, "casts_outside": 0, "outside": {}}


def test_emulated_delegate_reads_its_spec_and_matches_torch(exported: dict[str, Path], trained_run: Path, pixels: np.ndarray):
    reference = Predictor.load(trained_run).predict_pixels(pixels)
    for mode, limit in (("fp32", 1e-4), ("fp16", 5e-3)):
        predictor = Predictor.load(exported[mode], emulate=True)
        assert isinstance(predictor, EmulatedCoreMLDelegatePredictor) and predictor.emulated
        assert predictor.spec.artifact["format"] == "executorch-coreml" and predictor.spec.artifact["quant"] == mode
        assert predictor.spec.artifact["delegate"] == "CoreMLBackend"
        assert predictor.spec.class_names == ModelSpec.load(trained_run / "spec.json").class_names
        probabilities = predictor.predict_pixels(pixels)
        assert probabilities.shape == reference.shape
        assert float(np.abs(probabilities - reference).max()) < limit, mode
    assert predictor.predict_pixels(pixels[:0]).shape == (0, reference.shape[1])


@pytest.mark.skipif(sys.platform == "darwin", reason="off Apple the native runtime does not exist")
def test_without_emulation_off_apple_it_is_a_one_line_error(exported: dict[str, Path]):
    with pytest.raises(ModelError) as error:
        Predictor.load(exported["fp32"])
    assert "\n" not in str(error.value) and exported["fp32"].name in str(error.value)


def test_an_xnnpack_program_renamed_coreml_pte_is_a_one_line_error(trained_run: Path, tmp_path: Path):
    (record,) = export_run(trained_run, [FORMATS["executorch"]], ["fp32"], tmp_path)
    renamed = tmp_path / "renamed_fp32.coreml.pte"
    (tmp_path / record.path).rename(renamed)
    with pytest.raises(ModelError, match="expected one CoreMLBackend delegate in the program, found: XnnpackBackend") as error:
        EmulatedCoreMLDelegatePredictor(renamed)
    assert "\n" not in str(error.value)


def test_a_truncated_file_is_a_one_line_error(exported: dict[str, Path], tmp_path: Path):
    truncated = tmp_path / "cut_fp32.coreml.pte"
    truncated.write_bytes(exported["fp32"].read_bytes()[:4000])
    with pytest.raises(ModelError, match="truncated|not an ExecuTorch program") as error:
        Predictor.load(truncated, emulate=True)
    assert "\n" not in str(error.value) and "cut_fp32.coreml.pte" in str(error.value)


def test_verify_scores_the_emulated_rows_against_torch(exported: dict[str, Path]):
    result = verify_export(exported["fp32"].parent, VerifyOptions(data=VERIFY_DATA, max_drop=0.05, threads=[1], runs=1, warmup=0))
    rows = {(row["format"], row["quant"]): row for row in result["artifacts"]}
    assert set(rows) == {("executorch-coreml", "fp32"), ("executorch-coreml", "fp16")}
    for row in rows.values():
        assert row["status"] == "pass" and row["emulated"], (row["message"], row["checks"])
        assert row["agreement"]["top1"] == 1.0
    assert rows[("executorch-coreml", "fp32")]["agreement"]["max_abs_prob_diff"] < 1e-4


def test_a_segmenter_exports_and_its_emulated_masks_match_torch(trained_segmenter: Path, tmp_path: Path):
    from edgederm.runtime.readout import lesion_probabilities

    (record,) = export_run(trained_segmenter, [FORMAT], ["fp32"], tmp_path)
    assert record.status == "ok", record.message
    predictor = Predictor.load(tmp_path / record.path, emulate=True)
    pixels = load_calibration("synthetic:4,seed=3", predictor.spec.preprocess, n=4).pixels
    reference = lesion_probabilities(Predictor.load(trained_segmenter).predict_pixels(pixels))
    assert float(np.abs(lesion_probabilities(predictor.predict_pixels(pixels)) - reference).max()) < 1e-4
