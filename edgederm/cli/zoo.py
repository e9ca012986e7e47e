"""``edgederm zoo list``: the trained models that ship with edgederm, usable anywhere as ``zoo:NAME``."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="the shipped, verified models (use them anywhere as zoo:NAME)")
    actions = p.add_subparsers(dest="zoo_command", required=True)
    listing = actions.add_parser("list", help="every zoo entry with its task, size, test figures and license")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=cmd_list)
    show = actions.add_parser("show", help="one entry's card, numerics and perf as JSON")
    show.add_argument("name", help="an entry name, with or without zoo:")
    show.set_defaults(handler=cmd_show)


def _figure(value: dict | None) -> str:
    if not value:
        return "-"
    low, high = value.get("ci95") or (None, None)
    return f"{value['value']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def cmd_list(args: argparse.Namespace) -> int:
    from ..core import zoo

    found = zoo.entries()
    if args.json:
        print(json.dumps([{**entry.to_dict(), "size_bytes": entry.size_bytes} for entry in found.values()], indent=2))
        return 0
    if not found:
        print("no zoo entries are installed")
        return 0
    for entry in found.values():
        print(f"zoo:{entry.name}  ({entry.task}, {entry.arch} at {entry.img_size} px, {entry.size_bytes / 1e6:.1f} MB)")
        print(f"    {entry.description}")
        for metric, value in entry.headline.items():
            print(f"    {metric}: {_figure(value)}")
        print(f"    trained on {entry.data}; license {entry.license}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..core import zoo

    entry = zoo.get(args.name)
    out = {"card": entry.to_dict(), "size_bytes": entry.size_bytes}
    for name in ("numerics.json", "perf.json"):
        if name in entry.files:
            out[name.removesuffix(".json")] = json.loads(entry.file(name).read_text())
    print(json.dumps(out, indent=2))
    return 0
