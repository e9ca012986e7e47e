"""``edgederm train classify`` and ``edgederm train segment``.

Their options are the fields of ``TrainConfig`` and ``SegmentConfig`` (``edgederm.training.config``):
each field becomes ``--field-name`` with the help, choices and metavar it declares, and the parsed
arguments become the config. ``--quiet`` only sets the log level.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from .parser import Parser

QUIET_HELP = "warnings and errors only: no progress bars"


def add_parser(sub) -> None:
    from ..training.config import SegmentConfig, TrainConfig  # torch-free: --help stays fast

    train = sub.add_parser("train", help="train a model")
    tasks = train.add_subparsers(dest="task", required=True, parser_class=Parser)
    commands = (
        ("classify", "train a lesion classifier", TrainConfig, cmd_train_classify),
        ("segment", "train a lesion segmenter (needs a mask per image)", SegmentConfig, cmd_train_segment),
    )
    for name, help_text, config_type, handler in commands:
        p = tasks.add_parser(name, help=help_text)
        add_config_arguments(p, config_type)
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
        p.set_defaults(handler=handler)


def _cli_fields(config_type: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_type) if f.metadata.get("cli", True)]


def _value_type(hint: Any) -> Any:
    """``int | None`` -> int: the type argparse converts a value to (None for plain strings)."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    return None if kinds[0] is str else kinds[0]


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One ``--kebab-case`` argument per config field, in the fields' order; a field without a default is required."""
    hints = typing.get_type_hints(config_type)
    for f in _cli_fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        meta = {key: f.metadata[key] for key in ("help", "choices", "metavar") if f.metadata.get(key) is not None}
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", **meta)
            continue
        if f.default is dataclasses.MISSING:
            meta["required"] = True
        else:
            meta["default"] = f.default
        value_type = _value_type(hints[f.name])
        if value_type is not None:
            meta["type"] = value_type
        parser.add_argument(flag, **meta)


def config_from_args(config_type: type, args: argparse.Namespace) -> Any:
    return config_type(**{f.name: getattr(args, f.name) for f in _cli_fields(config_type)})


def cmd_train_classify(args: argparse.Namespace) -> int:
    from ..training.classification import TrainConfig, train_classifier

    train_classifier(config_from_args(TrainConfig, args))
    return 0


def cmd_train_segment(args: argparse.Namespace) -> int:
    from ..training.segmentation import SegmentConfig, train_segmenter

    train_segmenter(config_from_args(SegmentConfig, args))
    return 0
