"""Choose the reference classifier recipe from candidate runs by validation metrics alone.

    python benchmarks/reference_sweep.py

Each file in benchmarks/results/reference_sweep/ is one candidate's train_reference.py result.
A candidate's saved model is its epoch with the best validation balanced accuracy; it is scored by
how close that epoch's validation accuracy, balanced accuracy and macro AUC come to the targets
(the sum of metric / target). The test split plays no part in the choice: its columns are shown
so a reader can see how much the validation ranking carries over.
Writes benchmarks/results/reference_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _machine import where

from edgederm.core.log import configure

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("accuracy", "balanced_accuracy", "macro_auc")


def candidate(path: Path) -> dict:
    result = json.loads(path.read_text())
    best = max(result["validation_curve"], key=lambda row: row["val_balanced_accuracy"])
    val = {key: best[f"val_{key}"] for key in KEYS}
    targets = result["targets"]
    return {
        "name": path.stem,
        "recipe": result["recipe"],
        "device": where(result["machine"]),
        "train_seconds": result["train_seconds"],
        "saved_epoch": int(best["epoch"]),
        "val": val,
        "score": sum(val[key] / targets[key] for key in KEYS),
        "test": {key: result["test"][key] for key in (*KEYS, "melanoma_sensitivity")},
        "command": result["command"],
    }


def main(argv: list[str] | None = None) -> int:
    configure()
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    rows = sorted((candidate(p) for p in sorted((RESULTS / "reference_sweep").glob("*.json"))), key=lambda r: -r["score"])
    targets = json.loads(next((RESULTS / "reference_sweep").glob("*.json")).read_text())["targets"]
    chosen = rows[0]
    (RESULTS / "reference_sweep.json").write_text(
        json.dumps({"targets": targets, "chosen": chosen["name"], "candidates": rows}, indent=2) + "\n"
    )
    lines = [
        "# Choosing the reference classifier recipe (EfficientNet-Lite0, HAM10000)",
        "",
        "Command: `python benchmarks/reference_sweep.py` (reads benchmarks/results/reference_sweep/*.json, one per "
        "`benchmarks/train_reference.py` run; each file holds its exact command).",
        "",
        "All candidates use the same lesion-disjoint 70/15/15 split (seed 0). A candidate is scored on validation only: "
        "the sum of val metric / target over accuracy, balanced accuracy and macro AUC, at its saved epoch (best val "
        f"balanced accuracy). Chosen: **{chosen['name']}**. Test columns are for reading, not for choosing.",
        "",
        f"Targets: accuracy {targets['accuracy']}, balanced accuracy {targets['balanced_accuracy']}, macro AUC {targets['macro_auc']}.",
        "",
        "| candidate | px | epochs | augment | EMA | class-weight power | lr | device | train min | val acc | val BMA | val AUC "
        "| score | test acc | test BMA | test AUC | test mel sens. |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, v, t = row["recipe"], row["val"], row["test"]
        lines.append(
            f"| {'**' + row['name'] + '**' if row is chosen else row['name']} | {r['img_size']} | {r['epochs']} | {r.get('augment', 'basic')} "
            f"| {r.get('ema', 0.0) or '-'} | {r['class_weight_power']} | {r['lr']:g} | {row['device']} | {row['train_seconds'] / 60:.1f} "
            f"| {v['accuracy']:.3f} | {v['balanced_accuracy']:.3f} | {v['macro_auc']:.3f} | {row['score']:.3f} "
            f"| {t['accuracy']:.3f} | {t['balanced_accuracy']:.3f} | {t['macro_auc']:.3f} | {t['melanoma_sensitivity']:.3f} |"
        )
    (RESULTS / "reference_sweep.md").write_text("\n".join(lines) + "\n")
    print(f"chosen: {chosen['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
