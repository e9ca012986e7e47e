"""Accuracy-aware int8 at tighter bounds than the default, against plain int8, on one split.

    python benchmarks/int8_aa.py [--run zoo:lite0-ham10000] [--data ham10000:../shared/data/ham10000]
        [--formats executorch] [--max-drops 0.003] [--split val]

Exports RUN at int8 once and at int8-aa once per --max-drops bound (``edgederm export --quant int8-aa --max-drop X``),
every file calibrated on the same 300 training images, then verifies every file against torch fp32 on --split.
An export already in --out with the same bound is reused, so the files scored on val are the files later scored
on test. Writes benchmarks/results/int8_aa_SPLIT.{json,md}: the bound is chosen on val, and test is scored once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _markdown import header
from _results import add_results_options, reread, run_header, write_results
from _scoring import fidelity

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
logger = get_logger("benchmarks.int8_aa")
# what each int8-aa export recorded (``_accuracy_aware.AwareResult``) that the results keep
AWARE_KEYS = (
    "max_drop",
    "candidates",
    "kept_float",
    "disagreement",
    "full_int8_disagreement",
    "latency_ms",
    "full_int8_latency_ms",
    "size_ratio",
    "seconds",
)


def _exported(folder: Path, fmt: str, quant: str) -> dict | None:
    """The manifest row of a file already exported to ``folder``; a failed export counts, since it would fail again."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    return next((a for a in manifest["artifacts"] if (a["format"], a["quant"]) == (fmt, quant)), None)


def export(run: str, data: str, formats: list[str], bounds: list[float], work: Path) -> dict[str, Path]:
    """Per setting (``int8``, ``int8-aa X``), the export directory holding its files."""
    from edgederm.core.formats import FORMATS
    from edgederm.core.zoo import resolve
    from edgederm.export import export_run

    run_dir = resolve(run)
    settings = {"int8": (work / "int8", "int8", {})}
    for bound in bounds:
        settings[f"int8-aa {bound:g}"] = (work / f"int8-aa_{bound:g}", "int8-aa", {"max_drop": bound})
    for name, (folder, quant, options) in settings.items():
        for fmt in formats:
            if _exported(folder, fmt, quant):
                logger.info(f"int8_aa: {fmt} {name} already exported to {folder}, kept")
                continue
            started = time.time()
            export_run(run_dir, [FORMATS[fmt]], [quant], folder, calib_data=data, options=options)
            logger.info(f"int8_aa: {fmt} {name} exported in {time.time() - started:.0f} s")
    return {name: folder for name, (folder, _, _) in settings.items()}


def measure(run: str, data: str, split: str, formats: list[str], folders: dict[str, Path]) -> dict:
    from edgederm.core.zoo import resolve
    from edgederm.evaluate.verify.runner import VerifyOptions, to_json, verify_export

    options = VerifyOptions(data=data, split=split, threads=[1], runs=1, warmup=0, saliency_images=0, reference=resolve(run))
    rows, images = [], 0
    for setting, folder in folders.items():
        result = to_json(verify_export(folder, options))
        images = result["n_images"]
        for artifact in result["artifacts"]:
            if artifact["format"] not in formats:
                continue
            if not artifact.get("deltas"):  # the export or its verification failed: a row that says so, not a gap
                rows.append({"format": artifact["format"], "setting": setting, "error": artifact["message"]})
                continue
            details = artifact.get("details") or {}
            aware = details.get("int8_aa") or {}
            record = _exported(folder, artifact["format"], artifact["quant"]) or {}
            rows.append(
                {
                    "format": artifact["format"],
                    "setting": setting,
                    **fidelity(artifact, images),
                    "size_bytes": artifact["size_bytes"],
                    "export_seconds": record.get("seconds"),
                    "int8_aa": {key: aware.get(key) for key in AWARE_KEYS} if aware else None,
                }
            )
    return {"images": images, "rows": rows}


def markdown(payload: dict) -> str:
    lines = header(
        f"Accuracy-aware int8 at tighter bounds ({payload['split']} split)",
        payload,
        "Every file calibrates on the same 300 training images, with the default weight rounding, activation-range "
        "choice and bias-correction decision; Δ are percentage points against fp32. The bound is top-1 disagreement "
        "with fp32 on those calibration images; the layers kept float, the calibration disagreement and the 1-thread "
        "latency are what the export measured.",
    )
    lines += [
        "| file | bal. acc. Δ | mel. sens. Δ | top-1 agreement [95% CI] | mean \\|Δp\\| | layers kept float | calibration "
        "disagreement | size | latency, 1 thread (all-int8) | export |",
        "|---|---:|---:|---|---:|---|---:|---:|---|---:|",
    ]
    for row in payload["rows"]:
        name = f"{row['format']} {row['setting']}"
        if row.get("error"):
            lines.append(f"| {name} | not verified: {row['error']} | | | | | | | | |")
            continue
        low, high = row["agreement_ci95"]
        aware = row["int8_aa"]
        kept = calibration = latency = ""
        if aware:
            kept = f"{len(aware['kept_float'])} of {aware['candidates']}"
            calibration = f"{aware['disagreement']:.1%}"
            latency = f"{aware['latency_ms']:.2f} ms ({aware['full_int8_latency_ms']:.2f})"
        seconds = f"{row['export_seconds']:.0f} s" if row.get("export_seconds") else ""
        lines.append(
            f"| {name} | {row['balanced_accuracy_delta'] * 100:+.2f} | {row['mel_sensitivity_delta'] * 100:+.2f} | "
            f"{row['agreement']:.1%} [{low:.1%}, {high:.1%}] | {row['mean_abs_dp']:.4f} | {kept} | {calibration} | "
            f"{row['size_bytes'] / 1e6:.2f} MB | {latency} | {seconds} |"
        )
    floats = [
        (f"{row['format']} {row['setting']}", row["int8_aa"]["kept_float"])
        for row in payload["rows"]
        if (row.get("int8_aa") or {}).get("kept_float")
    ]
    if floats:
        lines += ["", "Layers kept float, most sensitive first:", ""]
        lines += [f"- {name}: {', '.join(f'`{layer}`' for layer in layers)}" for name, layers in floats]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="zoo:lite0-ham10000", help="a zoo entry (zoo:NAME) or a run directory")
    parser.add_argument("--data", default=f"ham10000:{SHARED / 'ham10000'}")
    parser.add_argument("--split", default="val")
    parser.add_argument("--formats", default="executorch", help="formats with int8-aa (tflite, onnx, executorch)")
    parser.add_argument("--max-drops", default="0.003", help="int8-aa bounds on top-1 disagreement with fp32, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "int8_aa")
    add_results_options(parser, "int8_aa_SPLIT")
    args = parser.parse_args(argv)
    results = RESULTS / f"int8_aa_{args.split}.json"
    formats = args.formats.split(",")
    if args.markdown_only:
        payload = reread(results, args.note)
    else:
        folders = export(args.run, args.data, formats, [float(b) for b in args.max_drops.split(",")], args.out)
        payload = {
            **run_header("int8_aa", argv, args.note, omit=("--note",)),
            "run": args.run,
            "data": args.data,
            "split": args.split,
            **measure(args.run, args.data, args.split, formats, folders),
        }
    write_results(results, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
