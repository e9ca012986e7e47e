"""Output-aware weight rounding against nearest rounding, for the static int8 and w8a16 exports, on a validation split.

    python benchmarks/weight_rounding.py [--run zoo:lite0-ham10000] [--data ham10000:../shared/data/ham10000]
        [--rows tflite:int8,tflite:w8a16,onnx:int8,onnx:w8a16,executorch:int8] [--roundings off,on[,auto]]

Exports RUN once per rounding and format x mode, from the same calibration images: with every weight rounded to
its nearest int8 step (``edgederm export --weight-rounding off``), with the weights rounded for each
layer's output on every calibration image (``on``, ``converters/_weight_rounding.py``), and, where --roundings
names it, with the choice between the two made per file on held-out calibration images (``auto``, the default). All go through the same
activation-range choice and bias-correction decision. Then each file is verified against torch fp32 on --split.
The split is validation, not test, because this run decides a default. Writes
benchmarks/results/weight_rounding.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _markdown import header
from _results import add_results_options, reread, run_header, write_results
from _scoring import fidelity

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "weight_rounding.json"
SHARED = REPO.parent / "shared" / "data"
logger = get_logger("benchmarks.weight_rounding")


ROUNDINGS = {"off": "nearest", "on": "output-aware", "auto": "auto"}  # --weight-rounding -> the results' name


def measure(run: str, data: str, split: str, wanted: list[tuple[str, str]], roundings: list[str], work: Path) -> dict:
    from edgederm.core.formats import FORMATS
    from edgederm.core.zoo import resolve
    from edgederm.evaluate.verify.runner import VerifyOptions, to_json, verify_export
    from edgederm.export import export_run

    run_dir = resolve(run)
    rows, images = [], 0
    for mode in roundings:
        rounding = ROUNDINGS[mode]
        out = work / rounding
        started = time.time()
        for name in dict.fromkeys(fmt for fmt, _ in wanted):
            modes = [quant for fmt, quant in wanted if fmt == name]
            export_run(run_dir, [FORMATS[name]], modes, out, calib_data=data, options={"weight_rounding": mode})
        logger.info(f"weight_rounding: {rounding} exports in {time.time() - started:.0f} s; verifying on {data} [{split}]")
        options = VerifyOptions(data=data, split=split, threads=[1], runs=1, warmup=0, saliency_images=0, reference=run_dir)
        result = to_json(verify_export(out, options))
        images = result["n_images"]
        for artifact in result["artifacts"]:
            if (artifact["format"], artifact["quant"]) not in wanted:
                continue
            if not artifact.get("deltas"):  # the export or its verification failed: a row that says so, not a gap
                rows.append({"format": artifact["format"], "quant": artifact["quant"], "rounding": rounding, "error": artifact["message"]})
                continue
            details = artifact.get("details") or {}
            correction = details.get("bias_correction") or {}
            rows.append(
                {
                    "format": artifact["format"],
                    "quant": artifact["quant"],
                    "rounding": rounding,
                    **fidelity(artifact, images),
                    "calibration_mean_abs_dp": correction.get("mean_abs_dp"),
                    "bias_correction_applied": correction.get("applied"),
                    "weight_rounding": details.get("weight_rounding"),
                }
            )
    return {"run": run, "data": data, "split": split, "images": images, "rows": rows}


def markdown(payload: dict) -> str:
    lines = header(
        "Output-aware weight rounding against nearest rounding",
        payload,
        "Every rounding of a row calibrates on the same 300 training images and goes through the same activation-range "
        "choice and bias-correction decision; Δ are percentage points against fp32.",
    )
    lines += [
        "| file | rounding | bal. acc. Δ | mel. sens. Δ | top-1 agreement [95% CI] | mean \\|Δp\\| | calibration mean \\|Δp\\| off → on "
        "(bias correction) |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    order = list(ROUNDINGS.values())
    for row in sorted(payload["rows"], key=lambda r: (r["format"], r["quant"], order.index(r["rounding"]))):
        if row.get("error"):
            lines.append(f"| {row['format']} {row['quant']} | {row['rounding']} | not verified: {row['error']} | | | | |")
            continue
        low, high = row["agreement_ci95"]
        calibration = row["calibration_mean_abs_dp"] or {}
        held = (
            f"{calibration['off']:.4f} → {calibration['on']:.4f} ({'kept' if row['bias_correction_applied'] else 'not kept'})"
            if calibration
            else ""
        )
        lines.append(
            f"| {row['format']} {row['quant']} | {_rounding(row)} | {row['balanced_accuracy_delta'] * 100:+.2f} | "
            f"{row['mel_sensitivity_delta'] * 100:+.2f} | {row['agreement']:.1%} [{low:.1%}, {high:.1%}] | {row['mean_abs_dp']:.4f} | {held} |"
        )
    footnote = (
        "Calibration mean |Δp| is measured on the held-out half of the calibration images, without and with the bias "
        "correction, as the export decides it."
    )
    if any(row["rounding"] == "auto" for row in payload["rows"]):
        footnote += (
            " An `auto` row names the weights it kept, with the held-out mean |Δp| of both all-int8 candidates "
            "(min/max ranges, no bias correction) that decided it."
        )
    return "\n".join([*lines, "", footnote, ""])


def _rounding(row: dict) -> str:
    record = row.get("weight_rounding") or {}
    if row["rounding"] != "auto" or not record.get("mean_abs_dp"):
        return row["rounding"]
    figures = record["mean_abs_dp"]
    kept = "output-aware" if record["applied"] else "nearest"
    return f"auto: {kept} kept ({figures['nearest']:.4f} nearest, {figures['rounded']:.4f} output-aware)"


def _pairs(rows: str) -> list[tuple[str, str]]:
    return [tuple(row.split(":", 1)) for row in rows.split(",")]


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="zoo:lite0-ham10000", help="a zoo entry (zoo:NAME) or a run directory")
    parser.add_argument("--data", default=f"ham10000:{SHARED / 'ham10000'}")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--rows",
        default="tflite:int8,tflite:w8a16,onnx:int8,onnx:w8a16,executorch:int8",
        help="FORMAT:QUANT pairs (TFLite's w8a16 runs reference 16x8 kernels: about 15 minutes per export for a 224 px Lite0)",
    )
    parser.add_argument("--roundings", default="off,on", help=f"--weight-rounding modes to compare ({', '.join(ROUNDINGS)})")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "weight_rounding")
    add_results_options(parser, RESULTS.stem)
    args = parser.parse_args(argv)
    unknown = set(args.roundings.split(",")) - set(ROUNDINGS)
    if unknown:
        parser.error(f"--roundings: unknown mode(s) {', '.join(sorted(unknown))}; use {', '.join(ROUNDINGS)}")
    if args.markdown_only:
        payload = reread(RESULTS, args.note)
    else:
        payload = {
            **run_header("weight_rounding", argv, args.note, omit=("--note",)),
            **measure(args.run, args.data, args.split, _pairs(args.rows), args.roundings.split(","), args.out),
        }
    write_results(RESULTS, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
