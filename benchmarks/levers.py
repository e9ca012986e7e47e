"""Training levers for the zoo's classifier, each measured against its entry on validation and the external set only.

    python benchmarks/levers.py --lever head_isic=runs/head_isic --lever finetune_isic=runs/finetune_isic [--results-name NAME]

A lever is a training run that starts from the entry (``--init-from zoo:lite0-ham10000``), which
makes it keep the entry's lesion-disjoint split: ``--init-from`` refuses another. Every run is
scored here by its torch fp32 model, named class by its stored decision rule, on:

- the HAM10000 validation split of that split (what a lever is judged by);
- ISIC 2017 val, another source and device (melanoma, seborrheic keratosis as bkl, naevus), with
  melanoma-vs-naevus AUC, the zoo's external figure.

Both with 95% intervals (bootstrap over lesions). The test split is not read: a lever that wins on
validation is trained into the zoo entry, and the zoo's numerics score it on test once.
Writes benchmarks/results/levers_lite0.{json,md}, or NAME.{json,md} for another batch of levers.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import UTC, datetime
from pathlib import Path

from _machine import training_machine
from _results import add_results_options, command_line, reread, write_results
from zoo import _intervals, _mel_vs_nv_auc, _scored, _with_intervals

from edgederm.core.log import configure

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "zoo:lite0-ham10000"
KEYS = ("balanced_accuracy", "macro_auc", "mel_sensitivity", "mel_vs_nv_auc")
NAMES = {"balanced_accuracy": "BMA", "macro_auc": "macro AUC", "mel_sensitivity": "mel sens.", "mel_vs_nv_auc": "mel-vs-nv AUC"}
RECIPE_KEYS = ("mode", "epochs", "lr", "weight_decay", "label_smoothing", "augment", "ema", "extra_train")


def score_run(run: str, shared: Path) -> dict:
    from edgederm.data.layouts import load_dataset
    from edgederm.data.selection import select_split
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import score
    from edgederm.models import checkpoint
    from edgederm.runtime import Predictor

    run_dir = checkpoint.resolve_checkpoint(run)[1].parent
    baseline = checkpoint.resolve_checkpoint(BASELINE)[1].parent
    if _val_ids(run_dir) != _val_ids(baseline):
        raise SystemExit(f"{run}: its validation split is not {BASELINE}'s; train it with --init-from {BASELINE}")
    predictor = Predictor.load(run_dir)
    spec = predictor.spec
    sets = {
        "val": select_split(load_dataset(f"ham10000:{shared}/ham10000"), "val", run_dir / "splits.csv"),
        "external": load_dataset(f"isic2017:{shared}/isic2017/val"),
    }
    recipe = {k: spec.training.get("recipe", {}).get(k) for k in RECIPE_KEYS}
    if recipe["extra_train"]:
        recipe["extra_train"] = recipe["extra_train"].replace(str(shared), "DATA")
    row = {"run": run, "recipe": recipe, "saved_epoch": _saved_epoch(run_dir), "scores": {}}
    for name, dataset in sets.items():
        cache, truth, groups = _scored(spec, dataset, name)
        probs = measure(predictor, cache.pixels, spec=spec).probs
        metrics = {**score(spec, truth, probs), "mel_vs_nv_auc": _mel_vs_nv_auc(spec, truth.labels, probs)}
        scored = _with_intervals(metrics, _intervals(spec, truth, probs, groups))
        row["scores"][name] = {k: scored.get(k, {"value": None, "ci95": None}) for k in KEYS} | {"n": len(cache.kept)}
    return row


def _val_ids(run_dir: Path) -> set[str]:
    from edgederm.training.common import split_rows

    return {image for image, split in split_rows(run_dir / "splits.csv") if split == "val"}


def _saved_epoch(run_dir: Path) -> int | None:
    """The epoch the run kept (best validation balanced accuracy, uncalibrated), from its metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return int(max(rows, key=lambda r: float(r["val_balanced_accuracy"]))["epoch"]) if rows else None


def _cell(value: dict) -> str:
    if value.get("value") is None:
        return "-"
    low, high = value.get("ci95") or (None, None)
    return f"{value['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value['value']:.3f}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Training levers for lite0-ham10000, on validation and the external set",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['created'][:10]}. Scored on `{result['machine']['platform']}` (torch fp32, "
        f"{result['machine']['cpu_threads']} CPU threads). Each lever is a run started from `{BASELINE}` on its split; "
        "its training command is the row's recipe plus `edgederm train classify --data ham10000:DATA/ham10000 --test-fraction 0.15 "
        f"--init-from {BASELINE}` (`DATA`: the data folder). A run keeps its epoch of best validation balanced accuracy. "
        "Intervals: 95%, bootstrap over lesions (1000 resamples). The test split is not read.",
        "",
    ]
    if result.get("note"):
        lines += [f"Conditions: {result['note']}", ""]
    for name, title in (("val", "HAM10000 validation split"), ("external", "ISIC 2017 val (another source)")):
        n = rows[0]["scores"][name]["n"]
        lines += [f"## {title} ({n} images)", "", "| run | " + " | ".join(NAMES[k] for k in KEYS) + " | recipe | saved epoch |"]
        lines.append("|---|" + "---:|" * len(KEYS) + "---|---:|")
        for row in rows:
            recipe = (
                ", ".join(f"{k}={v}" for k, v in row["recipe"].items() if v not in (None, 0)) if row["name"] != "baseline" else "the entry"
            )
            cells = " | ".join(_cell(row["scores"][name][k]) for k in KEYS)
            lines.append(f"| {row['name']} | {cells} | {recipe} | {row.get('saved_epoch') or '-'} |")
        lines.append("")
    best = max(rows, key=lambda r: r["scores"]["val"]["balanced_accuracy"]["value"])
    gain = 100 * (best["scores"]["val"]["balanced_accuracy"]["value"] - rows[0]["scores"]["val"]["balanced_accuracy"]["value"])
    lines.append(f"Best validation balanced accuracy: **{best['name']}** ({gain:+.1f} pt against the entry).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lever", action="append", default=[], metavar="NAME=RUN_DIR", help="a run started from the entry (repeatable)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--results-name", default="levers_lite0", help="benchmarks/results/NAME.{json,md}")
    add_results_options(parser, "NAME")
    args = parser.parse_args(argv)
    out = RESULTS / f"{args.results_name}.json"
    if args.markdown_only:
        payload = reread(out, args.note)
    else:
        if not args.lever:
            parser.error("give at least one --lever NAME=RUN_DIR")
        runs = [("baseline", BASELINE)] + [tuple(text.split("=", 1)) for text in args.lever]
        payload = {
            "command": command_line("levers", argv, omit=("--note",)),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": training_machine(),
            "note": args.note,
            "rows": [{"name": name, **score_run(run, args.shared)} for name, run in runs],
        }
    write_results(out, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
