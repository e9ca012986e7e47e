"""The accuracy-latency frontier: balanced accuracy on the HAM10000 test split against TFLite int8 latency at 1 thread.

    python benchmarks/pareto.py --run runs/reference --run runs/student:48,64,96 --own-size-only runs/reference_cpu160 \
        [--sizes 96,128,160,192,224] [--data ham10000:../shared/data/ham10000]

Every run is exported to a full-integer int8 TFLite at each input size (the same weights: these
classifiers are fully convolutional, so a run trained at 224 px also runs at 128 px; the table
says at which size it was trained), calibrated on its own train split. Each artifact is scored on
its run's lesion-disjoint test split (all runs here share the seed-0 HAM10000 split) and timed at
batch 1, 1 thread, in the same process on the same machine.

The peer point (Ultralytics YOLO11n-cls trained from scratch, TFLite int8 at 160 px) is the
measurement quoted in issue #4, taken on the same split and CPU; this script does not re-measure it.

Writes benchmarks/results/pareto.{json,md} and pareto.png.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

from _results import add_results_options, command_line, reread, write_results

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
PEER = {
    "label": "Ultralytics YOLO11n-cls, from scratch (peer)",
    "balanced_accuracy": 0.359,
    "latency_ms": 0.80,
    "size": 160,
    "source": "quoted from issue #4 (same lesion-disjoint HAM10000 data and CPU, TFLite int8); not re-measured here",
}
BMA_TARGET = 0.75
logger = get_logger("benchmarks.pareto")


def measure_at(run: Path, size: int, data: str, work: Path, runs: int) -> dict:
    import dataclasses

    from parity import sized_run

    from edgederm.core.formats import FORMATS
    from edgederm.core.spec import ModelSpec
    from edgederm.data.layouts import load_dataset
    from edgederm.data.pixels import load_pixels
    from edgederm.data.selection import select_split
    from edgederm.evaluate.tuning import set_decision
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import load_truth
    from edgederm.export import export_run
    from edgederm.metrics import classification_metrics
    from edgederm.runtime import Predictor
    from edgederm.runtime.readout import describe

    spec = ModelSpec.load(run / "spec.json")
    sized = run if size == spec.preprocess.input_size else sized_run(run, size, work / run.name)
    # A rule chosen at the trained size misreads other sizes (their probabilities shift), so each size
    # gets its own, chosen the same way on the run's validation split; it travels into the artifact.
    decision = spec.decision if sized == run else set_decision(sized, data, "val")
    out = work / run.name / f"int8_{size}"
    started = time.time()
    (record,) = export_run(sized, [FORMATS["tflite"]], ["int8"], out, calib_data=data, calib_n=100)
    if record.status != "ok":
        raise RuntimeError(f"{run} at {size}px: {record.message}")
    export_s = time.time() - started
    test = select_split(load_dataset(data), "test", run / "splits.csv")
    float_model = Predictor.load(sized)
    scoring = dataclasses.replace(float_model.spec, decision=decision)
    pixels = load_pixels(test, scoring.preprocess, desc=None)
    truth = load_truth(scoring, test, pixels)
    fp32 = measure(float_model, pixels.pixels, truth, scoring)
    int8 = measure(Predictor.load(out / record.path, threads=1), pixels.pixels, truth, scoring, threads=[1], runs=runs)
    latency = int8.latency[0]
    row = {
        "run": run.name,
        "arch": spec.arch,
        "trained_px": spec.preprocess.input_size,
        "size": size,
        "recipe": {k: spec.training["recipe"].get(k) for k in ("epochs", "augment", "ema", "qat", "prune", "distill_from")},
        "n_test": len(truth.labels),
        "balanced_accuracy": int8.metrics["balanced_accuracy"],
        "mel_sensitivity": int8.metrics["mel_sensitivity"],
        "fp32_balanced_accuracy": fp32.metrics["balanced_accuracy"],
        "decision": describe(decision),
        "argmax_balanced_accuracy": classification_metrics(truth.labels, int8.probs, spec.class_names).balanced_accuracy,
        "latency_ms": latency["median_ms"],
        "latency_p90_ms": latency["p90_ms"],
        "size_bytes": record.size,
        "export_s": export_s,
    }
    logger.info(
        f"pareto: {run.name} at {size}px: BMA {row['balanced_accuracy']:.3f} (fp32 {row['fp32_balanced_accuracy']:.3f}), {row['latency_ms']:.2f} ms"
    )
    return row


def frontier(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both axes (faster or as fast, and more accurate)."""
    best, kept = -1.0, []
    for row in sorted(rows, key=lambda r: (r["latency_ms"], -r["balanced_accuracy"])):
        if row["balanced_accuracy"] > best:
            kept.append(row)
            best = row["balanced_accuracy"]
    return kept


def targets(rows: list[dict]) -> list[dict]:
    dominating = [r for r in rows if r["balanced_accuracy"] > PEER["balanced_accuracy"] and r["latency_ms"] <= PEER["latency_ms"]]
    best = max(rows, key=lambda r: r["balanced_accuracy"])
    return [
        {
            "target": f"an artifact more accurate than the peer at no more latency (<= {PEER['latency_ms']} ms)",
            "value": ", ".join(f"{r['run']} {r['size']}px: {r['balanced_accuracy']:.3f} at {r['latency_ms']:.2f} ms" for r in dominating)
            or f"none; fastest: {min(rows, key=lambda r: r['latency_ms'])['latency_ms']:.2f} ms",
            "met": bool(dominating),
        },
        {
            "target": f"best artifact balanced accuracy >= {BMA_TARGET}",
            "value": f"{best['run']} {best['size']}px: {best['balanced_accuracy']:.3f}",
            "met": best["balanced_accuracy"] >= BMA_TARGET,
        },
    ]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r["latency_ms"])
        ax.plot([r["latency_ms"] for r in mine], [r["balanced_accuracy"] for r in mine], marker="o", alpha=0.8, label=run)
        for r in mine:
            ax.annotate(f"{r['size']}", (r["latency_ms"], r["balanced_accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    edge = frontier(rows)
    ax.step(
        [r["latency_ms"] for r in edge],
        [r["balanced_accuracy"] for r in edge],
        where="post",
        color="black",
        lw=1,
        ls="--",
        label="frontier",
    )
    ax.scatter(
        [PEER["latency_ms"]], [PEER["balanced_accuracy"]], marker="X", s=90, color="crimson", zorder=5, label=PEER["label"] + " (quoted)"
    )
    ax.axhline(BMA_TARGET, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("TFLite int8 latency, batch 1, 1 thread (ms, log scale)")
    ax.set_ylabel("balanced accuracy, HAM10000 test split (int8 artifact)")
    ax.set_title("Accuracy against latency (labels: input px)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _tau(row: dict) -> str:
    found = re.search(r"tau ([0-9.]+)", row.get("decision", ""))
    return found.group(1) if found else "-"


def markdown(payload: dict) -> str:
    from _markdown import conditions_and_targets

    rows, edge = payload["rows"], {(r["run"], r["size"]) for r in frontier(payload["rows"])}
    lines = [
        "# Accuracy against latency: HAM10000 classifiers as TFLite int8",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: `{payload['machine']['platform']}`, {payload['machine']['cpus']} CPUs; every artifact timed in the same process "
        f"(batch 1, 1 thread, median of {payload['runs']} runs after warm-up, preprocessing included). "
        "Balanced accuracy and melanoma sensitivity are the int8 artifact's, on each run's lesion-disjoint test split "
        "(the same seed-0 split for every run here); `fp32 BMA` is the torch model at the same input size. "
        "A run exported at a size other than the one it was trained at keeps its weights (these networks are fully convolutional). "
        "BMA names each image's class by the balanced decision rule chosen on the run's validation split at that input size "
        "(`tau`; `-`: argmax was as good; see 'The named class' in benchmarks/README.md), stored in the artifact; "
        "`BMA argmax` is the same int8 artifact read by plain argmax.",
        *conditions_and_targets(payload.get("note", ""), payload["target_checks"]),
        "",
        f"Peer: {PEER['label']}, balanced accuracy {PEER['balanced_accuracy']} at {PEER['latency_ms']} ms ({PEER['size']} px), {PEER['source']}.",
        "",
        "| run | arch | trained px | px | recipe | tau | BMA (int8) | BMA argmax (int8) | mel sens. (int8) | fp32 BMA | ms (median) "
        "| ms (p90) | MB | frontier |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in sorted(rows, key=lambda r: r["latency_ms"]):
        recipe = ", ".join(f"{k} {v}" for k, v in r["recipe"].items() if v not in (None, False, 0, 0.0))
        mel = "-" if r["mel_sensitivity"] is None else f"{r['mel_sensitivity']:.3f}"
        lines.append(
            f"| {r['run']} | {r['arch']} | {r['trained_px']} | {r['size']} | {recipe} | {_tau(r)} | {r['balanced_accuracy']:.3f} | "
            f"{r.get('argmax_balanced_accuracy', r['balanced_accuracy']):.3f} | {mel} | "
            f"{r['fp32_balanced_accuracy']:.3f} | {r['latency_ms']:.2f} | {r['latency_p90_ms']:.2f} | {r['size_bytes'] / 1e6:.2f} | "
            f"{'yes' if (r['run'], r['size']) in edge else ''} |"
        )
    lines += ["", "![accuracy against latency](pareto.png)", ""]
    return "\n".join(lines)


def measure_all(args: argparse.Namespace, command: str) -> dict:
    import os

    import torch

    from edgederm.core.spec import ModelSpec

    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    plan = [(Path(p), [int(s) for s in own.split(",")] if own else sizes) for p, _, own in (r.partition(":") for r in args.run)]
    plan += [(run, [ModelSpec.load(run / "spec.json").preprocess.input_size]) for run in args.own_size_only]
    rows = [measure_at(run, size, args.data, args.work, args.runs) for run, run_sizes in plan for size in run_sizes]
    return {
        "command": command,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "runs": args.runs,
        "data": args.data,
        "note": args.note,
        "peer": PEER,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", action="append", required=True, help="a HAM10000 classifier run, optionally RUN:64,96 for its own sizes (repeat)"
    )
    parser.add_argument("--sizes", default="96,128,160,192,224", help="input sizes to export each run at (px)")
    parser.add_argument("--own-size-only", type=Path, action="append", default=[], help="export this run only at its training size")
    parser.add_argument("--data", default=f"ham10000:{SHARED / 'ham10000'}")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per artifact")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "pareto")
    add_results_options(parser, "pareto")
    args = parser.parse_args(argv)
    path = RESULTS / "pareto.json"
    payload = reread(path, args.note) if args.markdown_only else measure_all(args, command_line("pareto", argv))
    payload["frontier"] = [(r["run"], r["size"]) for r in frontier(payload["rows"])]
    payload["target_checks"] = targets(payload["rows"])
    write_results(path, payload, markdown(payload))
    plot(payload["rows"], RESULTS / "pareto.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
