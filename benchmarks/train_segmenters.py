"""Train the four ISIC 2017 segmenters (mobilegan and tinyseg, adversarial on and off) and tabulate them.

    python benchmarks/train_segmenters.py [--data-root ../shared/data/isic2017] [--img-size 256] [--parallel]

Each run is `edgederm train segment` on isic2017/train (15% of it held out as a test split), with
the official isic2017/val as validation; the saved model is the epoch with the best val Jaccard.
--parallel starts the four at once (for a GPU); otherwise they run one after another. Runs go to
runs/seg<px>_<arch>_<adv|plain>; the table goes to benchmarks/results/segmenter_training_isic2017.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from _machine import training_machine, where
from _results import command_line

from edgederm.core.log import configure, get_logger

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EPOCHS = {"mobilegan": 40, "tinyseg": 50}
logger = get_logger("benchmarks.train_segmenters")


def run_name(arch: str, adversarial: str, img_size: int) -> str:
    return f"seg{img_size}_{arch}_{'adv' if adversarial == 'on' else 'plain'}"


def train_command(args: argparse.Namespace, arch: str, adversarial: str) -> list[str]:
    return [
        sys.executable, "-m", "edgederm", "train", "segment",
        "--data", f"isic2017:{args.data_root}/train", "--val-data", f"isic2017:{args.data_root}/val", "--test-fraction", "0.15",
        "--arch", arch, "--adversarial", adversarial, "--img-size", str(args.img_size), "--epochs", str(args.epochs or EPOCHS[arch]),
        "--batch-size", str(args.batch_size), "--device", args.device,
        "--out", str(args.runs / run_name(arch, adversarial, args.img_size)),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, help=f"for every run (default {EPOCHS})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--collect", action="store_true", help="only rebuild the table from existing runs")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the committed .json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        result = json.loads((RESULTS / "segmenter_training_isic2017.json").read_text())
        (RESULTS / "segmenter_training_isic2017.md").write_text(_markdown(result))
        return 0
    configs = [(arch, adv) for arch in EPOCHS for adv in ("on", "off")]
    if not args.collect:
        args.runs.mkdir(parents=True, exist_ok=True)
        processes = {}
        for arch, adv in configs:
            name = run_name(arch, adv, args.img_size)
            logger.info("$ " + shlex.join(train_command(args, arch, adv)))
            with open(args.runs / f"{name}.log", "w") as log:
                processes[name] = subprocess.Popen(train_command(args, arch, adv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            if not args.parallel:
                processes[name].wait()
        failed = [name for name, process in processes.items() if process.wait() != 0]
        if failed:
            logger.error(f"failed: {', '.join(failed)} (see their logs in {args.runs})")
            return 1
    rows = [_row(args.runs / run_name(arch, adv, args.img_size)) for arch, adv in configs]
    command = command_line("train_segmenters", argv)
    result = {"command": command, "machine": training_machine(), "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "segmenter_training_isic2017.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "segmenter_training_isic2017.md").write_text(_markdown(result))
    return 0


def _train_seconds(log: Path) -> int | None:
    found = re.search(r"edgederm: trained in (\d+) s", log.read_text(errors="replace")) if log.is_file() else None
    return int(found.group(1)) if found else None


def _row(run: Path) -> dict:
    spec = json.loads((run / "spec.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = spec["training"]["recipe"]
    return {
        "run": run.name,
        "arch": recipe["arch"],
        "adversarial": recipe["adversarial"],
        "img_size": recipe["img_size"],
        "epochs": recipe["epochs"],
        "params": spec["training"]["params"],
        "train_seconds": _train_seconds(run.parent / f"{run.name}.log"),
        "val": metrics["val"],
        "test": metrics.get("test"),
    }


def _markdown(result: dict) -> str:
    lines = [
        "# Training the ISIC 2017 segmenters",
        "",
        f"Command: `{result['command']}` (on {where(result['machine'])}).",
        "",
        *([result["note"], ""] if result.get("note") else []),
        "Train: isic2017/train less a 15% lesion-disjoint test split (seed 0); validation: the official isic2017/val (150 images). "
        "Metrics per image at the image's own size, after the spec's post-processing, thresholded at 0.5, then averaged.",
        "",
        "| run | arch | params | adversarial | px | epochs | train min | val Jaccard | val Dice | val pixel acc. | test Jaccard | test Dice |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        v, t = r["val"], r["test"] or {}
        minutes = "-" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f}"
        lines.append(
            f"| {r['run']} | {r['arch']} | {r['params'] / 1e6:.3f}M | {r['adversarial']} | {r['img_size']} | {r['epochs']} | {minutes} "
            f"| {v['jaccard']:.3f} | {v['dice']:.3f} | {v['pixel_accuracy']:.3f} | {t.get('jaccard', float('nan')):.3f} | {t.get('dice', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
