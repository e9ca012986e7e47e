"""What quantization-aware training buys: int8 artifacts of a run and of its QAT fine-tune, side by side.

    python benchmarks/qat.py --pair zoo:lite0-ham10000:runs/lite0_qat --split val
    python benchmarks/qat.py --pair zoo:lite0-ham10000:runs/lite0_qat --pair zoo:lite0-ham10000:runs/lite0_qat3 --resume

For each pair (the post-training-quantized run or zoo entry, and the run fine-tuned from it with
``edgederm train classify --init-from RUN --qat``), both are exported to int8 in every format of
``--formats`` (calibrated the same way, on their shared train split) and scored on the same images:
the run's lesion-disjoint ``--split``, or ``--eval NAME=SPEC`` for a run trained with an external
validation set. Each int8 artifact is compared with its own run's torch fp32 model (the drop PTQ
causes); the absolute columns compare the two runs (what a user switching to the QAT run gets).
Judge a recipe on ``--split val``; the test split is for the model kept. With ``--resume``, a run that
qat.json already scored on the same images, formats and calibration count keeps its rows, so adding a
second recipe exports only the new run.

Writes benchmarks/results/qat.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _results import add_results_options, reread, run_header, write_results

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
logger = get_logger("benchmarks.qat")


def _images(run: Path, eval_spec: str | None, data: str, split: str):
    from edgederm.data.layouts import load_dataset
    from edgederm.data.selection import select_split

    if eval_spec:
        return load_dataset(eval_spec), eval_spec
    return select_split(load_dataset(data), split, run / "splits.csv"), f"{data} ({split} split)"


def score(run: Path, images, args: argparse.Namespace, calib: str) -> dict:
    from _scoring import export_and_measure, metric_row

    formats = tuple(args.formats.split(","))
    spec, measured = export_and_measure(run, images, args.work, calib, formats=formats, calib_n=args.calib_n)
    rows = {name: metric_row(measurement) for name, (_, measurement) in measured.items()}
    _, torch_fp32 = measured["torch fp32"]
    recipe = spec.training.get("recipe", {})
    return {"run": run.name, "n": len(torch_fp32.probs), "recipe": recipe, "decision": spec.decision.get("rule", "argmax"), "rows": rows}


def markdown(payload: dict) -> str:
    lines = [
        "# Quantization-aware training against post-training quantization",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Run on {payload['created']} on `{payload['platform']}` ({payload['cpus']} CPUs), int8 calibrated on "
        f"{payload['calib_n']} images of the runs' train split. Every row of a pair is scored on the same images. `agreement` and `max |dprob|` "
        "compare an artifact with its own run's torch fp32 model; `drop` is its balanced accuracy / melanoma sensitivity "
        "minus that fp32 model's (negative: worse).",
        *(["", f"Conditions: {payload['note']}"] if payload.get("note") else []),
        "",
    ]
    for pair in payload["pairs"]:
        ptq, qat = pair["ptq"], pair["qat"]
        recipe = qat["recipe"]
        lines += [
            f"## {ptq['run']} -> {qat['run']} ({pair['images']}, n={ptq['n']})",
            "",
            f"QAT recipe: `--init-from {ptq['run']} --qat --epochs {recipe.get('epochs')} --lr {recipe.get('lr')}`. "
            f"Each run names classes by its own decision rule, chosen on validation: {ptq['run']} `{ptq.get('decision', '-')}`, "
            f"{qat['run']} `{qat.get('decision', '-')}`.",
            "",
            "| run | artifact | accuracy | BMA | mel sens. | macro AUC | agreement | max abs dprob | BMA drop (pt) | mel sens. drop (pt) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for side in (ptq, qat):
            base = side["rows"]["torch fp32"]
            for name, row in side["rows"].items():
                mel = row["mel_sensitivity"]
                dmel = "-" if mel is None or base["mel_sensitivity"] is None else f"{(mel - base['mel_sensitivity']) * 100:+.1f}"
                lines.append(
                    f"| {side['run']} | {name} | {row['accuracy']:.3f} | {row['balanced_accuracy']:.3f} | "
                    f"{'-' if mel is None else f'{mel:.3f}'} | {row['macro_auc'] or 0:.3f} | {row['agreement']:.3f} | "
                    f"{row['max_abs_dprob']:.3f} | {(row['balanced_accuracy'] - base['balanced_accuracy']) * 100:+.1f} | {dmel} |"
                )
        lines.append("")
    return "\n".join(lines)


def scored_before(path: Path, args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """{(run name, images): side} from the committed results, for every side measured as this invocation would."""
    if not (args.resume and path.is_file()):
        return {}
    payload = json.loads(path.read_text())
    wanted = {"torch fp32", *(f"{name} int8" for name in args.formats.split(","))}
    if payload.get("calib_n") != args.calib_n:
        return {}
    return {
        (side["run"], pair["images"]): side
        for pair in payload["pairs"]
        for side in (pair["ptq"], pair["qat"])
        if set(side["rows"]) == wanted
    }


def measure_all(args: argparse.Namespace, argv: list[str] | None, path: Path) -> dict:
    from edgederm.core.zoo import resolve

    evals = dict(item.split("=", 1) for item in args.eval)
    calibs = dict(item.split("=", 1) for item in args.calib)
    scored = scored_before(path, args)
    pairs = []
    for item in args.pair:
        ptq_run, qat_run = (resolve(p) for p in item.rsplit(":", 1))
        images, described = _images(ptq_run, evals.get(ptq_run.name), args.data, args.split)
        calib = calibs.get(ptq_run.name, args.data)
        for run in (ptq_run, qat_run):
            if (run.name, described) in scored:
                logger.info(f"qat: {run.name} on {described}: kept from {path.name}")
            else:
                scored[run.name, described] = score(run, images, args, calib)
        pair = {"images": described, "ptq": scored[ptq_run.name, described], "qat": scored[qat_run.name, described]}
        scores = (f"{s['run']} {k} BMA {v['balanced_accuracy']:.3f}" for s in (pair["ptq"], pair["qat"]) for k, v in s["rows"].items())
        logger.info(f"qat: {item}: " + ", ".join(scores))
        pairs.append(pair)
    return {**run_header("qat", argv, args.note), "calib_n": args.calib_n, "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", required=True, help="PTQ_RUN:QAT_RUN, where PTQ_RUN may be zoo:NAME (repeat)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="the runs' split to score on")
    parser.add_argument("--eval", action="append", default=[], help="RUN_NAME=SPEC: score this pair on SPEC instead of --split")
    parser.add_argument("--formats", default="tflite,onnx,executorch", help="comma-separated formats exported to int8")
    parser.add_argument("--calib-n", type=int, default=300, help="calibration images per export")
    parser.add_argument("--data", default=f"ham10000:{SHARED / 'ham10000'}", help="the data the runs' splits.csv index")
    parser.add_argument("--calib", action="append", default=[], help="RUN_NAME=SPEC: calibration data (default --data)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "qat_bench")
    parser.add_argument("--resume", action="store_true", help="keep the rows of runs that qat.json already scored the same way")
    add_results_options(parser, "qat")
    args = parser.parse_args(argv)
    path = RESULTS / "qat.json"
    payload = reread(path, args.note) if args.markdown_only else measure_all(args, argv, path)
    write_results(path, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
