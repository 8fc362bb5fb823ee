"""The ``dqemu`` command: a thin dispatcher over subcommand modules.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)``, which adds its parser and
sets ``func`` (taking the parsed namespace, returning an exit code) as a default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cluster.errors import DqemuError

SUBCOMMANDS: list[str] = [
    "cluster.qemu_build",
    "cluster.guest_images",
    "loopback.command",
    "loopback.stale",
    "cluster.router.command",
    "cluster.vm.commands",
    "cluster.ray.command",
    "cluster.rdma_devices",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dqemu", description="dQEMU: one x86 guest over several QEMU shards."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for re-running detached
    try:
        code: int = args.func(args)
    except DqemuError as exc:
        print(f"dqemu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dqemu: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
