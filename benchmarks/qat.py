"""What quantization-aware training buys: int8 artifacts of a run and of its QAT fine-tune, side by side.

    python benchmarks/qat.py --pair runs/reference:runs/reference_qat \
        --pair runs/mnv3_isic:runs/mnv3_isic_qat --eval mnv3_isic=isic2017:../shared/data/isic2017/val

For each pair (the post-training-quantized run, and the run fine-tuned from it with
``edgederm train classify --init-from RUN --qat``), both runs are exported to TFLite and ONNX int8
(calibrated the same way, on their shared train split) and scored on the same images: the run's
lesion-disjoint test split, or ``--eval NAME=SPEC`` for a run trained with an external validation
set. Each int8 artifact is compared with its own run's torch fp32 model (the drop PTQ causes) and
with the PTQ run's fp32 model (what a user switching to the QAT run gets).

Writes benchmarks/results/qat.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from _results import add_results_options, command_line, reread, write_results

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
logger = get_logger("benchmarks.qat")


def _images(run: Path, eval_spec: str | None, data: str):
    from edgederm.data.layouts import load_dataset
    from edgederm.data.selection import select_split

    if eval_spec:
        return load_dataset(eval_spec), eval_spec
    return select_split(load_dataset(data), "test", run / "splits.csv"), f"{data} (test split)"


def score(run: Path, images, work: Path, calib: str) -> dict:
    from _scoring import export_and_measure, metric_row

    spec, measured = export_and_measure(run, images, work, calib)
    rows = {name: metric_row(measurement) for name, (_, measurement) in measured.items()}
    _, torch_fp32 = measured["torch fp32"]
    return {"run": run.name, "n": len(torch_fp32.probs), "recipe": spec.training.get("recipe", {}), "rows": rows}


def markdown(payload: dict) -> str:
    lines = [
        "# Quantization-aware training against post-training quantization",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: `{payload['machine']}`. Every row of a pair is scored on the same images. `agreement` and `max |dprob|` "
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
            f"QAT recipe: `--init-from {ptq['run']} --qat --epochs {recipe.get('epochs')} --lr {recipe.get('lr')}`.",
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


def measure_all(args: argparse.Namespace, command: str) -> dict:
    evals = dict(item.split("=", 1) for item in args.eval)
    calibs = dict(item.split("=", 1) for item in args.calib)
    pairs = []
    for item in args.pair:
        ptq_run, qat_run = (Path(p) for p in item.split(":", 1))
        images, described = _images(ptq_run, evals.get(ptq_run.name), args.data)
        calib = calibs.get(ptq_run.name, args.data)
        pair = {"images": described, "ptq": score(ptq_run, images, args.work, calib), "qat": score(qat_run, images, args.work, calib)}
        scores = (f"{s['run']} {k} BMA {v['balanced_accuracy']:.3f}" for s in (pair["ptq"], pair["qat"]) for k, v in s["rows"].items())
        logger.info(f"qat: {item}: " + ", ".join(scores))
        pairs.append(pair)
    return {"command": command, "machine": platform.platform(), "note": args.note, "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", required=True, help="PTQ_RUN:QAT_RUN (repeat)")
    parser.add_argument("--eval", action="append", default=[], help="RUN_NAME=SPEC: score this pair on SPEC instead of the test split")
    parser.add_argument("--data", default=f"ham10000:{SHARED / 'ham10000'}", help="the data the runs' splits.csv index")
    parser.add_argument("--calib", action="append", default=[], help="RUN_NAME=SPEC: calibration data (default --data)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "qat_bench")
    add_results_options(parser, "qat")
    args = parser.parse_args(argv)
    path = RESULTS / "qat.json"
    payload = reread(path, args.note) if args.markdown_only else measure_all(args, command_line("qat", argv))
    write_results(path, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
