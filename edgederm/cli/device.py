"""``edgederm device setup arm64``: build the emulated ARM64 environment that ``verify --emulate`` runs in."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("device", help="set up an emulated device environment (ARM64 under QEMU) for verify --emulate")
    actions = p.add_subparsers(dest="action", required=True)
    setup = actions.add_parser("setup", help="build it once (a Debian arm64 Python with the runtime's aarch64 wheels)")
    setup.add_argument("target", choices=["arm64"])
    setup.add_argument("--rebuild", action="store_true", help="build it again even if it is ready")
    setup.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    setup.set_defaults(handler=cmd_device_setup)


def cmd_device_setup(args: argparse.Namespace) -> int:
    from ..evaluate.verify.emulation import WHEELS, setup_arm64

    env = setup_arm64(rebuild=args.rebuild)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env.versions().items()) if k.lower() in WHEELS)
    print(f"arm64 environment ready: {env.root} ({versions})")
    return 0
