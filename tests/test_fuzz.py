"""Property tests: hostile bytes and text reach the parsers and come out as one-line edgederm errors.

Manifest CSVs, model specs, and the metadata readers of every artifact format are fed random and
mutated input. Each must either parse or raise an EdgedermError subclass, never anything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgederm.core.errors import EdgedermError, ModelError
from edgederm.core.spec import ModelSpec
from edgederm.data.layouts import load_dataset
from edgederm.runtime.coreml_backend import read_coreml_spec
from edgederm.runtime.onnx_backend import OnnxPredictor
from edgederm.runtime.tflite_backend import read_tflite_metadata

# Deterministic by default so CI is repeatable; EDGEDERM_FUZZ_EXAMPLES=5000 explores with fresh random inputs.
_DEEP = int(os.environ.get("EDGEDERM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_DEEP or 200, derandomize=not _DEEP, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


def _one_line(error: EdgedermError) -> None:
    assert "\n" not in str(error) and str(error)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["image", "label", "mask", "group", "split", "x", ""]), min_size=1, max_size=6),
    rows=st.lists(st.lists(CELL, max_size=6), max_size=6),
)
def test_manifest_csv_parses_or_fails_cleanly(tmp_path: Path, header: list[str], rows: list[list[str]]):
    import csv

    manifest = tmp_path / "m.csv"
    (tmp_path / "a.jpg").write_bytes(b"")  # one real (empty) file that some rows may name
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    try:
        data = load_dataset(f"manifest:{manifest}")
    except EdgedermError as error:
        _one_line(error)
        return
    for sample in data:
        assert sample.image_path is not None and sample.image_path.resolve().is_relative_to(tmp_path.resolve())


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=10,
        ).map(json.dumps),
    )
)
def test_model_spec_json_parses_or_fails_cleanly(text: str):
    try:
        ModelSpec.from_json(text, source="spec.json")
    except ModelError as error:
        _one_line(error)
        assert str(error).startswith("spec.json: ")


@FUZZ
@given(st.binary(max_size=2048))
def test_tflite_metadata_reader_on_random_bytes(content: bytes):
    try:
        read_tflite_metadata(content, "x.tflite")
    except ModelError as error:
        _one_line(error)


@FUZZ
@given(st.binary(max_size=2048))
def test_onnx_loader_on_random_bytes(tmp_path: Path, content: bytes):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as error:
        OnnxPredictor(path)
    _one_line(error.value)


@FUZZ
@given(
    manifest=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3).map(lambda d: json.dumps(d).encode()),
    ),
    model=st.binary(max_size=1024),
)
def test_coreml_reader_on_random_packages(tmp_path: Path, manifest: bytes, model: bytes):
    package = tmp_path / "x.mlpackage"
    data = package / "Data" / "com.apple.CoreML"
    data.mkdir(parents=True, exist_ok=True)
    (package / "Manifest.json").write_bytes(manifest)
    (data / "model.mlmodel").write_bytes(model)
    with pytest.raises(ModelError) as error:
        read_coreml_spec(package)
    _one_line(error.value)
