"""``dqemu router``: run the router for one shard of one VM (one process per node per VM).

The per-VM secret comes from ``--secret-fd N`` (an inherited, readable fd; read to EOF and
closed) or ``--secret-file PATH`` (mode 0600 or stricter). Never from the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cluster.errors import DqemuError
from cluster.router.auth import SecretError, load_secret_fd, load_secret_file
from cluster.router.config import ConfigError, load_config
from cluster.router.router import Router

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="router config file (.toml or .json)")
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument(
        "--secret-fd", type=int, metavar="FD", help="read the VM secret from this inherited fd"
    )
    secret.add_argument(
        "--secret-file", metavar="PATH", help="read the VM secret from this 0600 file"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "router",
        help="run the message router for one shard",
        description="Run the dQEMU router for one shard: the local QEMU shard connects over "
        "a UNIX socket, peer routers over TCP (see docs/protocol.md).",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise DqemuError(str(e)) from None
    try:
        if args.secret_fd is not None:
            secret = load_secret_fd(args.secret_fd)
        else:
            secret = load_secret_file(args.secret_file)
    except SecretError as e:
        raise DqemuError(str(e)) from None
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format=f"%(asctime)s dqemu-router[{cfg.vm_id}/{cfg.shard_id}] %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    router = Router(cfg, secret)
    del secret
    try:
        router.start()
    except OSError as e:
        raise DqemuError(
            f"router for shard {cfg.shard_id}: {e.args[-1] if e.args else e}"
        ) from None
    router.install_signal_handlers()
    router.serve_forever()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cluster.router``: the same as ``dqemu router``."""
    parser = argparse.ArgumentParser(prog="python -m cluster.router", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DqemuError as e:
        print(f"dqemu router: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
