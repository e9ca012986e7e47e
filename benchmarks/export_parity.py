"""Export runs to every format x {fp32, fp16, int8} and check each artifact against torch fp32.

    python benchmarks/export_parity.py --run zoo:lite0-ham10000 --run zoo:lite0-ham10000-s64 \
        [--eval-data isic2017:../shared/data/isic2017/val] [--calib-data isic2017:../shared/data/isic2017/train]

A run is a run directory or a zoo entry (``zoo:NAME``); every export takes `edgederm export`'s defaults but
the calibration images (``--calib-data``, ``--calib-n``).

Writes benchmarks/results/export_times.{json,md} (seconds per artifact, same machine, one run)
and benchmarks/results/export_parity.{json,md}: for every artifact, top-1 agreement with the torch
reference on the evaluation images, max |delta prob|, and size against fp32. CoreML cannot run on
Linux: its rows come from edgederm's MIL reference executor and say "emulated". The export-time
target covers fp32/fp16/int8; int8-aa (accuracy-aware, a layer-sensitivity search) is timed apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

from _results import command_line

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
TARGETS = {"agreement_fp": 0.99, "agreement_int8": 0.97, "int8_size_ratio": 0.30, "total_export_seconds": 300}
TARGET_ARCHS = {"efficientnet_lite0": "Lite0", "mobilenetv3_large_100": "MobileNetV3-Large"}  # what the export-time target covers
logger = get_logger("benchmarks.export_parity")


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="a run directory or zoo:NAME (repeat for several)")
    parser.add_argument("--eval-data", default=f"isic2017:{SHARED / 'isic2017' / 'val'}")
    parser.add_argument("--calib-data", default=f"isic2017:{SHARED / 'isic2017' / 'train'}")
    parser.add_argument("--calib-n", type=int, default=100)
    parser.add_argument("--quant", default="fp32,fp16,int8,int8-aa")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "export_parity")
    parser.add_argument("--results-suffix", default="", help="write export_parity_SUFFIX and export_times_SUFFIX, keeping the plain ones")
    args = parser.parse_args(argv)

    from edgederm.bench import cpu_model
    from edgederm.core.formats import FORMATS, parse_quant_modes
    from edgederm.core.zoo import is_reference, resolve
    from edgederm.data.layouts import load_dataset
    from edgederm.data.pixels import load_pixels
    from edgederm.evaluate.verify.measure import load_artifact, measure
    from edgederm.export import export_run
    from edgederm.runtime import Predictor

    quants = parse_quant_modes(args.quant)
    eval_set = load_dataset(args.eval_data)
    times, parity = [], []
    for given in args.run:
        run = resolve(given)
        name = given.removeprefix("zoo:") if is_reference(given) else run.name
        reference = Predictor.load(run)
        arch = reference.spec.arch
        top1 = dataclasses.replace(reference.spec, decision={})  # agreement on the most probable class, whatever rule names it
        pixels = load_pixels(eval_set, reference.spec.preprocess, desc="eval").pixels
        torch_fp32 = measure(reference, pixels)
        out = args.out / name
        started = time.time()
        records = export_run(run, list(FORMATS.values()), quants, out, calib_data=args.calib_data, calib_n=args.calib_n)
        logger.info(f"{arch}: exported {len(records)} artifacts in {time.time() - started:.0f} s")
        sizes = {(r.format, r.quant): r.size for r in records if r.status == "ok"}
        for record in records:
            times.append(
                {
                    "model": arch,
                    "run": name,
                    **{k: getattr(record, k) for k in ("format", "quant", "status", "seconds", "size", "message")},
                }
            )
            if record.status == "failed":  # e.g. int8-aa refusing a float-sized file: a row that says why
                parity.append({"model": arch, "run": name, "format": record.format, "quant": record.quant, "error": record.message})
            if record.status != "ok":
                continue
            predictor = load_artifact(out / record.path, threads=1)
            agreement = measure(predictor, pixels, spec=top1, reference=torch_fp32).agreement
            fp32_size = sizes.get((record.format, "fp32"))
            parity.append(
                {
                    "model": arch,
                    "run": name,
                    "format": record.format,
                    "quant": record.quant,
                    "backend": "MIL emulator (torch)" if getattr(predictor, "emulated", False) else getattr(predictor, "backend_name", ""),
                    "images": len(pixels),
                    "top1_agreement": agreement["top1"],
                    "max_abs_dprob": agreement["max_abs_prob_diff"],
                    "size": record.size,
                    "size_vs_fp32": record.size / fp32_size if fp32_size else None,
                }
            )
    command = command_line("export_parity", argv)
    machine = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()}
    machine["python"] = platform.python_version()
    per_run = {}
    for t in times:
        if t["quant"] in ("fp32", "fp16", "int8"):
            per_run[(t["model"], t["run"])] = per_run.get((t["model"], t["run"]), 0.0) + (t["seconds"] or 0)
    # The target is for one classifier of each architecture: the first run given of each.
    firsts: dict[str, float] = {}
    for (model, _), seconds in per_run.items():
        firsts.setdefault(model, seconds)
    total = sum(firsts.values())
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.results_suffix}" if args.results_suffix else ""
    (RESULTS / f"export_times{suffix}.json").write_text(
        json.dumps({"command": command, "machine": machine, "total_seconds": total, "artifacts": times}, indent=2) + "\n"
    )
    (RESULTS / f"export_parity{suffix}.json").write_text(
        json.dumps({"command": command, "machine": machine, "eval_data": args.eval_data, "targets": TARGETS, "artifacts": parity}, indent=2)
        + "\n"
    )
    (RESULTS / f"export_times{suffix}.md").write_text(_times_markdown(command, machine, times, total, per_run))
    (RESULTS / f"export_parity{suffix}.md").write_text(_parity_markdown(command, machine, args.eval_data, parity))
    return 0


def _where(machine: dict) -> str:
    return f"Date: {machine['date']}. Machine: {machine['cpu']}, {machine['cpus']} CPUs, `{machine['platform']}`, Python {machine['python']}, one process."


def _times_markdown(command: str, machine: dict, times: list[dict], total: float, per_run: dict[tuple[str, str], float]) -> str:
    runs = ", ".join(f"{run} ({model}) {seconds:.0f} s" for (model, run), seconds in per_run.items())
    missing = [name for arch, name in TARGET_ARCHS.items() if arch not in {model for model, _ in per_run}]
    verdict = f"; these runs have no {' and no '.join(missing)}, so the target is not measured" if missing else ""
    lines = [
        "# Export time per artifact",
        "",
        f"Command: `{command}`",
        "",
        _where(machine),
        "",
        f"Total for fp32/fp16/int8: {total:.0f} s for the first run of each architecture (target: {TARGETS['total_export_seconds']} s "
        f"for a Lite0 and a MobileNetV3-Large{verdict}); per run: {runs}. int8-aa rows are extra.",
        "",
        "| run | model | format | quant | status | seconds | size (MB) | note |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for t in times:
        size = f"{t['size'] / 1e6:.2f}" if t["size"] else ""
        lines.append(
            f"| {t['run']} | {t['model']} | {t['format']} | {t['quant']} | {t['status']} | {t['seconds'] or ''} | {size} | {t['message']} |"
        )
    return "\n".join(lines) + "\n"


def _parity_markdown(command: str, machine: dict, eval_data: str, parity: list[dict]) -> str:
    lines = [
        "# Exported artifacts against the torch fp32 reference",
        "",
        f"Command: `{command}`",
        "",
        _where(machine),
        "",
        f"Images: `{eval_data}`. Targets: top-1 agreement >= {TARGETS['agreement_fp']:.0%} (fp32/fp16), >= {TARGETS['agreement_int8']:.0%} (int8); "
        f"int8 size <= {TARGETS['int8_size_ratio']}x fp32. CoreML rows ran in edgederm's MIL reference executor (CoreML itself runs only on Apple platforms).",
        "",
        "| run | model | format | quant | runtime | top-1 agreement | max abs dprob | size (MB) | size vs fp32 | target met |",
        "|---|---|---|---|---|---:|---:|---:|---:|:---:|",
    ]
    for p in parity:
        if "error" in p:
            lines.append(f"| {p['run']} | {p['model']} | {p['format']} | {p['quant']} | not written: {p['error']} |  |  |  |  | no |")
            continue
        int8 = p["quant"].startswith("int8")
        met = p["top1_agreement"] >= (TARGETS["agreement_int8"] if int8 else TARGETS["agreement_fp"])
        if p["quant"] in ("int8", "int8-aa") and p["size_vs_fp32"] is not None:
            met = met and p["size_vs_fp32"] <= TARGETS["int8_size_ratio"]
        ratio = "" if p["size_vs_fp32"] is None else f"{p['size_vs_fp32']:.2f}"
        lines.append(
            f"| {p['run']} | {p['model']} | {p['format']} | {p['quant']} | {p['backend']} | {p['top1_agreement']:.3f} | {p['max_abs_dprob']:.4f} | "
            f"{p['size'] / 1e6:.2f} | {ratio} | {'yes' if met else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
