"""``edgederm operating-point`` and ``edgederm decision``: choices stored in a classifier run's spec.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import UsageError


def _add_operating_point(sub) -> None:
    p = sub.add_parser("operating-point", help="set a classifier's referral threshold for a target sensitivity (stored in spec.json)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", required=True, help="labelled data, normally the run's own --data with --split val")
    p.add_argument("--split", choices=["train", "val", "test"], help="a split of the run's splits.csv (use val; never test)")
    p.add_argument("--target-sensitivity", type=float, default=0.9)
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_operating_point)


def _add_decision(sub) -> None:
    p = sub.add_parser(
        "decision", help="choose how a classifier names the class (balanced or argmax) on validation data (stored in spec.json)"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", help="labelled data, normally the run's own --data with --split val (not needed for --rule argmax)")
    p.add_argument("--split", choices=["train", "val", "test"], help="a split of the run's splits.csv (use val; never test)")
    p.add_argument("--rule", choices=["balanced", "argmax"], default="balanced")
    p.add_argument(
        "--min-sensitivity",
        metavar="CLASS=SENSITIVITY",
        help="then name this class at least this often on the data (e.g. mel=0.75): its offset rises until it does",
    )
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_decision)


def cmd_operating_point(args: argparse.Namespace) -> int:
    from ..evaluate.tuning import set_operating_point

    if not 0 < args.target_sensitivity <= 1:
        raise UsageError("--target-sensitivity must be in (0, 1]")
    point = set_operating_point(args.run_dir, args.data, args.split, args.target_sensitivity)
    print(
        f"refer when {'+'.join(point['classes'])} >= {point['threshold']:.4f}: sensitivity {point['sensitivity']:.3f}, "
        f"specificity {point['specificity']:.3f} on {point['chosen_on']} ({point['n_malignant']} malignant, {point['n_benign']} benign)"
    )
    return 0


def cmd_decision(args: argparse.Namespace) -> int:
    from ..evaluate.tuning import set_decision
    from ..metrics.decision import describe_floor
    from ..runtime.readout import describe

    if (args.rule == "balanced" or args.min_sensitivity) and not args.data:
        raise UsageError("the rule is chosen on labelled data", fix="add --data SPEC --split val")
    decision = set_decision(args.run_dir, args.data, args.split, args.rule, args.min_sensitivity)
    if not decision:
        print("decision: argmax" + (" (the balanced rule did not beat it on this data)" if args.rule == "balanced" else ""))
        return 0
    print(f"decision: {describe(decision)}")
    if "balanced_accuracy" in decision:
        scores = decision["balanced_accuracy"]
        print(f"  balanced accuracy {scores['argmax']:.3f} (argmax) -> {scores['balanced']:.3f} (balanced) on {decision['n']} images")
    if floor := decision.get("floor"):
        print(f"  {describe_floor(floor)}")
    return 0


def add_parser(sub) -> None:
    _add_operating_point(sub)
    _add_decision(sub)
