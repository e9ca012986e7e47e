"""Training levers for a zoo entry, each measured against the entry on validation and the external set only.

    python benchmarks/levers.py --lever head_isic=runs/head_isic --lever finetune_isic=runs/finetune_isic [--results-name NAME]
    python benchmarks/levers.py --baseline zoo:tinyseg-isic2017 --lever tiny256_ham=runs/tiny256_ham --results-name levers_tinyseg

A lever is a training run with the entry's lesion-disjoint validation and test splits (a classifier
started with ``--init-from zoo:lite0-ham10000`` keeps them, since ``--init-from`` refuses another; a
segmenter trained with the entry's ``--test-fraction`` and seed has them). Every run is scored here
by its torch fp32 model, with 95% intervals (bootstrap over lesions):

- a classifier (named class by its stored decision rule) on the HAM10000 validation split (what a
  lever is judged by) and on ISIC 2017 val, another source and device (melanoma, seborrheic
  keratosis as bkl, naevus), with melanoma-vs-naevus AUC, the zoo's external figure;
- a segmenter on the official ISIC 2017 val (its validation set, which picks its epoch) and on the
  HAM10000 masks of lite0-ham10000's test split, lesions that neither entry trains on.

The test split is not read: a lever that wins on validation is trained into a zoo entry, and the
zoo's numerics score it on test once. Writes benchmarks/results/levers_lite0.{json,md}, or
NAME.{json,md} for another batch of levers.
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
KEYS = {
    "classification": ("balanced_accuracy", "macro_auc", "mel_sensitivity", "mel_vs_nv_auc"),
    "segmentation": ("jaccard", "dice"),
}
NAMES = {
    "balanced_accuracy": "BMA",
    "macro_auc": "macro AUC",
    "mel_sensitivity": "mel sens.",
    "mel_vs_nv_auc": "mel-vs-nv AUC",
    "jaccard": "Jaccard",
    "dice": "Dice",
}
RECIPE_KEYS = (
    "mode",
    "arch",
    "img_size",
    "epochs",
    "lr",
    "weight_decay",
    "label_smoothing",
    "augment",
    "ema",
    "adversarial",
    "extra_train",
)
SETS = {  # per task: (title, data spec, split of lite0-ham10000 or None); {shared} is the data folder
    "classification": {
        "val": ("HAM10000 validation split", "ham10000:{shared}/ham10000", "val"),
        "external": ("ISIC 2017 val (another source)", "isic2017:{shared}/isic2017/val", None),
    },
    "segmentation": {
        "val": ("ISIC 2017 val (picks the epoch)", "isic2017:{shared}/isic2017/val", None),
        "external": ("HAM10000 masks of lite0-ham10000's test split", "ham10000:{shared}/ham10000", "test"),
    },
}


def score_run(run: str, shared: Path, baseline_run: str) -> dict:
    from edgederm.data.layouts import load_dataset
    from edgederm.data.selection import select_split
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import score
    from edgederm.models import checkpoint
    from edgederm.runtime import Predictor

    run_dir = checkpoint.resolve_checkpoint(run)[1].parent
    baseline = checkpoint.resolve_checkpoint(baseline_run)[1].parent
    if _held_out_ids(run_dir) != _held_out_ids(baseline):
        raise SystemExit(f"{run}: its validation or test split is not {baseline_run}'s (train a classifier with --init-from)")
    predictor = Predictor.load(run_dir)
    spec = predictor.spec
    reference = checkpoint.resolve_checkpoint(BASELINE)[1].parent / "splits.csv"
    sets = {}
    for name, (_, data, split) in SETS[spec.task].items():
        dataset = load_dataset(data.format(shared=shared))
        sets[name] = select_split(dataset, split, reference) if split else dataset
    keys = KEYS[spec.task]
    recipe = {k: spec.training.get("recipe", {}).get(k) for k in RECIPE_KEYS}
    if recipe["extra_train"]:
        recipe["extra_train"] = recipe["extra_train"].replace(str(shared), "DATA").replace("../shared/data", "DATA")
    row = {"run": run, "task": spec.task, "recipe": recipe, "saved_epoch": _saved_epoch(run_dir), "scores": {}}
    for name, dataset in sets.items():
        cache, truth, groups = _scored(spec, dataset, name)
        probs = measure(predictor, cache.pixels, spec=spec).probs
        metrics = score(spec, truth, probs)
        if spec.task == "classification":
            metrics["mel_vs_nv_auc"] = _mel_vs_nv_auc(spec, truth.labels, probs)
        scored = _with_intervals(metrics, _intervals(spec, truth, probs, groups))
        row["scores"][name] = {k: scored.get(k, {"value": None, "ci95": None}) for k in keys} | {"n": len(cache.kept)}
    return row


def _held_out_ids(run_dir: Path) -> set[tuple[str, str]]:
    from edgederm.training.common import split_rows

    return {(image, split) for image, split in split_rows(run_dir / "splits.csv") if split in ("val", "test")}


def _saved_epoch(run_dir: Path) -> int | None:
    """The epoch the run kept (best validation balanced accuracy or Jaccard), from its metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    key = "val_balanced_accuracy" if rows and "val_balanced_accuracy" in rows[0] else "val_jaccard"
    return int(max(rows, key=lambda r: float(r[key]))["epoch"]) if rows else None


def _cell(value: dict) -> str:
    if value.get("value") is None:
        return "-"
    low, high = value.get("ci95") or (None, None)
    return f"{value['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value['value']:.3f}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    baseline, task = result.get("baseline", BASELINE), result.get("task", "classification")
    keys, judged = KEYS[task], KEYS[task][0]
    if task == "classification":
        how = (
            f"Each lever is a run started from `{baseline}` on its split; its training command is the row's recipe plus "
            "`edgederm train classify --data ham10000:DATA/ham10000 --test-fraction 0.15 "
            f"--init-from {baseline}` (`DATA`: the data folder). A run keeps its epoch of best validation balanced accuracy."
        )
    else:
        how = (
            f"Each lever is a run on `{baseline}`'s split; its training command is the row's recipe plus `edgederm train segment "
            "--data isic2017:DATA/isic2017/train --val-data isic2017:DATA/isic2017/val --test-fraction 0.15 --skip-test` "
            "(`DATA`: the data folder). A run keeps its epoch of best ISIC 2017 val Jaccard, so that figure is optimistic for "
            "every row alike; the HAM10000 set is the unbiased one."
        )
    lines = [
        f"# Training levers for {baseline.removeprefix('zoo:')}, on validation and the external set",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['created'][:10]}. Scored on `{result['machine']['platform']}` (torch fp32, "
        f"{result['machine']['cpu_threads']} CPU threads). {how} "
        "Intervals: 95%, bootstrap over lesions (1000 resamples). The test split is not read.",
        "",
    ]
    if result.get("note"):
        lines += [f"Conditions: {result['note']}", ""]
    for name, (title, _, _) in SETS[task].items():
        n = rows[0]["scores"][name]["n"]
        lines += [f"## {title} ({n} images)", "", "| run | " + " | ".join(NAMES[k] for k in keys) + " | recipe | saved epoch |"]
        lines.append("|---|" + "---:|" * len(keys) + "---|---:|")
        for row in rows:
            recipe = (
                ", ".join(f"{k}={v}" for k, v in row["recipe"].items() if v not in (None, 0)) if row["name"] != "baseline" else "the entry"
            )
            cells = " | ".join(_cell(row["scores"][name][k]) for k in keys)
            lines.append(f"| {row['name']} | {cells} | {recipe} | {row.get('saved_epoch') or '-'} |")
        lines.append("")
    best = max(rows, key=lambda r: r["scores"]["val"][judged]["value"])
    gain = 100 * (best["scores"]["val"][judged]["value"] - rows[0]["scores"]["val"][judged]["value"])
    what = "balanced accuracy" if task == "classification" else "Jaccard"
    lines.append(f"Best validation {what}: **{best['name']}** ({gain:+.1f} pt against the entry).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="the zoo entry the levers are compared with (default %(default)s)")
    parser.add_argument("--lever", action="append", default=[], metavar="NAME=RUN_DIR", help="a run on the entry's split (repeatable)")
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
        runs = [("baseline", args.baseline)] + [tuple(text.split("=", 1)) for text in args.lever]
        rows = [{"name": name, **score_run(run, args.shared, args.baseline)} for name, run in runs]
        payload = {
            "command": command_line("levers", argv, omit=("--note",)),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": training_machine(),
            "baseline": args.baseline,
            "task": rows[0]["task"],
            "note": args.note,
            "rows": [{k: v for k, v in row.items() if k != "task"} for row in rows],
        }
    write_results(out, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
