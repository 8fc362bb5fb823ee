"""``dqemu loopback``: placeholder until the launcher module lands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("loopback", help="run a VM with every shard on this machine")
    p.set_defaults(func=lambda _args: 0)
