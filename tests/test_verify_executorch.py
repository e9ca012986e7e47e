"""``edgederm verify`` on the ExecuTorch and w8a16 rows: verified, and timed at each thread count like TFLite and ONNX.

A module of its own, so that a second test worker runs its exports (minutes) beside test_verify's.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import VERIFY_DATA

from edgederm.core.formats import FORMATS
from edgederm.evaluate.verify.runner import VerifyOptions, exit_code, verify_export
from edgederm.export import export_run


def test_executorch_and_w8a16_rows_are_verified_and_timed_at_each_thread_count(trained_run: Path, tmp_path: Path):
    from edgederm.evaluate.verify.report import table_rows

    out = tmp_path / "export"
    # weight rounding has its own tests (test_weight_rounding); here it would only build a second int8 model per file
    calibrated = {"calib_data": "synthetic:40,seed=5", "calib_n": 40, "options": {"weight_rounding": "off"}}
    export_run(trained_run, [FORMATS["tflite"], FORMATS["onnx"]], ["w8a16"], out, **calibrated)
    export_run(trained_run, [FORMATS["executorch"]], ["fp32", "fp16", "int8", "w8a16"], out, **calibrated)
    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    statuses = {(a["format"], a["quant"]): a["status"] for a in manifest}
    assert statuses == {
        ("executorch", "fp32"): "ok", ("executorch", "fp16"): "ok", ("executorch", "int8"): "ok",
        ("executorch", "w8a16"): "skipped", ("tflite", "w8a16"): "ok", ("onnx", "w8a16"): "ok",
    }  # fmt: skip
    result = verify_export(out, VerifyOptions(data=VERIFY_DATA, max_drop=0.05, threads=[1, 2], runs=3, warmup=1))
    rows = {(a["format"], a["quant"]): a for a in result["artifacts"]}
    assert set(rows) == {key for key, status in statuses.items() if status == "ok"}  # a mode the format lacks is not verified
    for (fmt, quant), row in rows.items():
        assert row["status"] == "pass", (fmt, quant, row["message"], row["checks"])
        assert [t["threads"] for t in row["latency"]] == [1, 2] and all(t["median_ms"] > 0 for t in row["latency"])
        assert row["agreement"]["top1"] >= 0.9
    assert rows[("executorch", "fp32")]["agreement"]["max_abs_prob_diff"] < 1e-4
    assert rows[("executorch", "fp32")]["runtime"] == FORMATS["executorch"].runtime
    assert exit_code(result) == 0
    header, table = table_rows(result)
    timed = [header.index(f"median / p90 ms @{t}thr") for t in (1, 2)]
    for name in ("executorch fp32", "executorch fp16", "executorch int8", "tflite w8a16", "onnx w8a16"):
        (cells,) = [r for r in table if r[0] == name]
        assert all(cells[i] for i in timed), name
