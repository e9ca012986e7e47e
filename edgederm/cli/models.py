"""``edgederm models``: the registered architectures with task, parameters and MACs."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with task, params and MACs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--task", choices=["classification", "segmentation"])
    p.add_argument("--num-classes", type=int, default=7, help="head size used for the counts (default 7, HAM10000)")
    p.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import count_macs, count_parameters, create_model, get_entry, list_models

    rows = []
    for name in list_models(task=args.task):
        entry = get_entry(name)
        model = create_model(name, 1 if entry.task == "segmentation" else args.num_classes)
        rows.append(
            {
                "name": name,
                "task": entry.task,
                "family": entry.family,
                "params": count_parameters(model),
                "macs": count_macs(model, entry.default_input_size),
                "input_size": entry.default_input_size,
                "weights": sorted(entry.weights),
                "description": entry.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':24} {'task':15} {'params':>9} {'MACs':>9} {'input':>6}  weights")
    for row in rows:
        print(
            f"{row['name']:24} {row['task']:15} {row['params'] / 1e6:8.2f}M {row['macs'] / 1e6:8.1f}M {row['input_size']:>6}  {', '.join(row['weights']) or '-'}"
        )
    return 0
