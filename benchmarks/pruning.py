"""What structured pruning buys: the reference and its pruned fine-tunes, every TFLite and ONNX artifact, side by side.

    python benchmarks/pruning.py --reference runs/reference --run runs/reference_p30 --run runs/reference_p50 \
        [--data ham10000:../shared/data/ham10000]

Each RUN was made with ``edgederm train classify --init-from REFERENCE --prune SHARE --distill-from REFERENCE``
(same split, same input size). Every run is exported to TFLite and ONNX at fp32 and int8 (calibrated
on its train split), scored on the lesion-disjoint test split and timed at batch 1, 1 thread, in this
one process. Deltas and latency ratios are against the *reference's* torch fp32 model and its ONNX
Runtime fp32 artifact, so a pruned int8 artifact is judged against what it replaces.

Writes benchmarks/results/pruning.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from _results import add_results_options, command_line, reread, write_results
from parity import TARGETS  # the bounds, shared with the parity run

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
logger = get_logger("benchmarks.pruning")


def measure(run: Path, data: str, work: Path, runs: int) -> dict:
    from _scoring import export_and_measure, metric_row

    from edgederm.data.layouts import load_dataset
    from edgederm.data.selection import select_split
    from edgederm.models import count_macs, count_parameters
    from edgederm.models.pruning import mid_channels

    test = select_split(load_dataset(data), "test", run / "splits.csv")
    spec, measured = export_and_measure(run, test, work, data, quants=("fp32", "int8"), latency_runs=runs)
    reference, torch_fp32 = measured["torch fp32"]
    model = reference.model
    side = spec.preprocess.input_size
    artifacts = {}
    for name, (predictor, measurement) in measured.items():
        row = metric_row(measurement)
        row["latency"] = {k: v for k, v in measurement.latency[0].items() if k != "threads"}
        row["size_bytes"] = None if name == "torch fp32" else predictor.path.stat().st_size
        artifacts[name] = row
        logger.info(f"pruning: {run.name} {name}: BMA {row['balanced_accuracy']:.3f}, {row['latency']['median_ms']:.2f} ms")
    return {
        "run": run.name,
        "mid_channels": sum(mid_channels(model)),
        "params": count_parameters(model),
        "macs": count_macs(model, side),
        "prune": spec.training.get("recipe", {}).get("prune", 0.0),
        "recipe": {k: spec.training.get("recipe", {}).get(k) for k in ("init_from", "prune", "distill_from", "epochs", "lr", "ema")},
        "decision": spec.decision.get("tau"),
        "n_test": len(torch_fp32.probs),
        "artifacts": artifacts,
    }


def compare(rows: list[dict]) -> list[dict]:
    """Every artifact against the reference (the first row): BMA / melanoma drops and latency ratios."""
    base = rows[0]["artifacts"]
    torch_ms, ort_ms = base["torch fp32"]["latency"]["median_ms"], base["onnx fp32"]["latency"]["median_ms"]
    out = []
    for row in rows:
        for name, a in row["artifacts"].items():
            mel, ref_mel = a["mel_sensitivity"], base["torch fp32"]["mel_sensitivity"]
            out.append(
                {
                    "run": row["run"],
                    "artifact": name,
                    "balanced_accuracy": a["balanced_accuracy"],
                    "mel_sensitivity": mel,
                    "macro_auc": a["macro_auc"],
                    "bma_delta": a["balanced_accuracy"] - base["torch fp32"]["balanced_accuracy"],
                    "mel_delta": None if mel is None or ref_mel is None else mel - ref_mel,
                    "agreement_own_fp32": a["agreement"],
                    "median_ms": a["latency"]["median_ms"],
                    "vs_ort_fp32": a["latency"]["median_ms"] / ort_ms,
                    "vs_torch_fp32": a["latency"]["median_ms"] / torch_ms,
                    "size_bytes": a["size_bytes"],
                }
            )
    return out


def targets(table: list[dict]) -> list[dict]:
    int8 = [r for r in table if r["artifact"].endswith("int8")]
    fast = [r for r in int8 if r["vs_ort_fp32"] <= TARGETS["int8_latency_vs_ort_fp32"]]
    good = [r for r in fast if -r["bma_delta"] <= TARGETS["bma_drop"] and -(r["mel_delta"] or 0.0) <= TARGETS["mel_sensitivity_drop"]]
    fastest = min(int8, key=lambda r: r["vs_ort_fp32"])
    best_fast = max(fast, key=lambda r: r["balanced_accuracy"], default=None)
    return [
        {
            "target": f"an int8 artifact at <= {TARGETS['int8_latency_vs_ort_fp32']}x the reference's ONNX Runtime fp32 latency (1 thread)",
            "value": f"fastest: {fastest['run']} {fastest['artifact']} {fastest['vs_ort_fp32']:.2f}x"
            + (
                f"; most accurate of those: {best_fast['run']} {best_fast['artifact']} BMA {best_fast['balanced_accuracy']:.3f}"
                if best_fast
                else ""
            ),
            "met": bool(fast),
        },
        {
            "target": f"... that also drops <= {TARGETS['bma_drop'] * 100:.1f} pt balanced accuracy and <= "
            f"{TARGETS['mel_sensitivity_drop'] * 100:.0f} pt melanoma sensitivity against the reference's torch fp32",
            "value": ", ".join(f"{r['run']} {r['artifact']}" for r in good) or "none",
            "met": bool(good),
        },
    ]


def markdown(payload: dict) -> str:
    from _markdown import conditions_and_targets

    lines = [
        "# Structured pruning: the reference and its pruned fine-tunes, side by side",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: `{payload['machine']['platform']}`, {payload['machine']['cpus']} CPUs; every artifact scored on the same "
        f"{payload['rows'][0]['n_test']} lesion-disjoint HAM10000 test images and timed in this one process (batch 1, 1 thread, "
        f"median of {payload['runs']} runs after warm-up, preprocessing included). `d BMA` / `d mel` are against the reference's "
        "torch fp32 model; `x ORT fp32` / `x torch fp32` divide by the reference's ONNX Runtime fp32 and torch eager fp32 latency. "
        "Each run names its class by its own stored decision rule (balanced, tau chosen on validation).",
        *conditions_and_targets(payload.get("note", ""), payload["target_checks"]),
        "",
        "## Runs",
        "",
        "| run | pruned share | expansion channels | params (M) | MACs (M) | tau | recipe |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in payload["rows"]:
        recipe = ", ".join(f"{k} {v}" for k, v in row["recipe"].items() if v not in (None, 0, 0.0))
        lines.append(
            f"| {row['run']} | {row['prune'] or 0:.2f} | {row['mid_channels']} | {row['params'] / 1e6:.2f} | "
            f"{row['macs'] / 1e6:.0f} | {row['decision'] if row['decision'] is not None else '-'} | {recipe or 'the reference recipe'} |"
        )
    lines += [
        "",
        "## Every artifact",
        "",
        "| run | artifact | BMA | mel sens. | macro AUC | d BMA (pt) | d mel (pt) | agreement with own fp32 | ms | x ORT fp32 | x torch fp32 | MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["table"]:
        mel = "-" if r["mel_sensitivity"] is None else f"{r['mel_sensitivity']:.3f}"
        dmel = "-" if r["mel_delta"] is None else f"{r['mel_delta'] * 100:+.1f}"
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.2f}"
        lines.append(
            f"| {r['run']} | {r['artifact']} | {r['balanced_accuracy']:.3f} | {mel} | {r['macro_auc']:.3f} | {r['bma_delta'] * 100:+.1f} | "
            f"{dmel} | {r['agreement_own_fp32']:.3f} | {r['median_ms']:.2f} | {r['vs_ort_fp32']:.2f} | {r['vs_torch_fp32']:.2f} | {size} |"
        )
    return "\n".join([*lines, ""])


def measure_all(args: argparse.Namespace, command: str) -> dict:
    import torch

    torch.set_num_threads(1)
    rows = [measure(run, args.data, args.work, args.runs) for run in [args.reference, *args.run]]
    return {
        "command": command,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": args.runs,
        "data": args.data,
        "note": args.note,
        "targets": TARGETS,
        "rows": rows,
        "table": compare(rows),
    }


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=REPO / "runs" / "reference")
    parser.add_argument("--run", type=Path, action="append", default=[], help="a pruned fine-tune of the reference (repeat)")
    parser.add_argument("--data", default=f"ham10000:{SHARED / 'ham10000'}")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per artifact")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "pruning_bench")
    add_results_options(parser, "pruning")
    args = parser.parse_args(argv)
    path = RESULTS / "pruning.json"
    payload = reread(path, args.note) if args.markdown_only else measure_all(args, command_line("pruning", argv))
    payload["target_checks"] = targets(payload["table"])
    write_results(path, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
