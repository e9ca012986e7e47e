"""The ``edgederm`` command line: one module per command, each with ``add_parser`` and its handler.

Every user error exits non-zero with exactly one line on stderr; ``--debug`` shows the traceback.
Messages and progress bars go through ``logging`` (``edgederm.core.log``); ``--quiet`` keeps warnings only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..core.errors import EdgedermError
from ..core.log import configure
from . import device, export, models, predict, quickstart, train, tuning, verify, zoo
from .parser import Parser

COMMANDS = (models, zoo, train, predict, export, verify, device, tuning, quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="edgederm", description="Skin-lesion models from a training run to a phone.")
    parser.add_argument("--version", action="version", version=f"edgederm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take positional images after an option (`predict RUN --data X a.jpg`).
        if extra and hasattr(args, "images") and not any(e.startswith("-") for e in extra):
            args.images += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        configure(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
        return int(args.handler(args) or 0)
    except EdgedermError as error:
        if debug:
            raise
        print(f"edgederm: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("edgederm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"edgederm: internal error: {type(error).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
