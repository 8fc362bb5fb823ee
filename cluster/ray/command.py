"""``dqemu cluster up/down/status/env``: a Ray cluster of network namespaces on this machine
(:mod:`cluster.ray.local_cluster`), for trying the cluster mode and for tests."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cluster.errors import DqemuError, end_by_signal
from cluster.vm.signals import Terminated, terminate_on_signals


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _up(ns: argparse.Namespace) -> int:
    from cluster.ray import local_cluster as lc

    sizes = lc.Sizes(
        cpus=ns.cpus, memory_mib=ns.memory_mib, object_store_mib=ns.object_store_mib,
        shards_per_node=ns.shards_per_node,
    )  # fmt: skip
    for flag, v, low in (("--cpus", ns.cpus, 1), ("--memory-mib", ns.memory_mib, 256),
                         ("--object-store-mib", ns.object_store_mib, 80),
                         ("--shards-per-node", ns.shards_per_node, 1)):  # fmt: skip
        if v < low:
            raise DqemuError(f"{flag} {v}: at least {low}")
    try:
        with terminate_on_signals():
            st = lc.up(ns.name, ns.nodes, sizes, say=_say)
    except Terminated as t:
        end_by_signal(t.signum)
        return 128 + t.signum
    for line in lc.env_lines(st):
        print(line)
    return 0


def _down(ns: argparse.Namespace) -> int:
    from cluster.ray import local_cluster as lc

    try:
        with terminate_on_signals():
            found = lc.down(ns.name, say=_say)
    except Terminated as t:
        end_by_signal(t.signum)
        return 128 + t.signum
    if not found:
        _say(f"dqemu: no cluster {ns.name} (nothing to do)")
    return 0


def _status(ns: argparse.Namespace) -> int:
    from cluster.ray import local_cluster as lc

    got = lc.status(ns.name)
    if got is None:
        raise DqemuError(f"no cluster {ns.name}", 1)
    st, running = got
    print(f"cluster {st.name}: {'up' if st.up else 'not up'}, RAY_ADDRESS={st.address}, "
          f"dashboard {st.dashboard}")  # fmt: skip
    for node in st.nodes:
        state = "running" if running[node.name] else "down"
        print(f"  {node.name:8} {node.ip:15} {node.netns:24} raylet {state}")
    return 0 if st.up and all(running.values()) else 1


def _env(ns: argparse.Namespace) -> int:
    from cluster.ray import local_cluster as lc

    st = lc.load_state(ns.name)
    if st is None or not st.up:
        raise DqemuError(f"no cluster {ns.name} is up", 1)
    for line in lc.env_lines(st):
        print(line)
    return 0


def _run(ns: argparse.Namespace) -> int:
    from cluster.ray.run import run_on_ray
    from cluster.spec import load_spec
    from loopback.command import report_end

    spec = load_spec(ns.spec)
    if ns.timeout is not None:
        if ns.timeout <= 0:
            raise DqemuError(f"--timeout {ns.timeout:g}: give a positive number of seconds")
        spec = dataclasses.replace(spec, boot=dataclasses.replace(spec.boot, timeout=ns.timeout))
    result = run_on_ray(spec, sys.stdout.buffer, ns.address)
    return report_end(result)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a VM on a Ray cluster (foreground; works under `ray job submit`)",
        description="Run a VM on the Ray cluster at RAY_ADDRESS (or --address): place its "
        "shards, stream its serial console to stdout and exit with the VM's status, as "
        "`dqemu loopback` does (docs/cluster.md). Until the DSM issue lands, every shard "
        "of a VM runs on one node.",
    )
    p.add_argument("spec", type=Path, help="VM spec (TOML); see docs/spec.md")
    p.add_argument("--address", help="the Ray cluster (default: $RAY_ADDRESS)")
    p.add_argument("--timeout", type=float, help="seconds before giving up (default: the spec's)")
    p.set_defaults(func=_run)
    parser = sub.add_parser(
        "cluster",
        help="a Ray cluster of network namespaces on this machine",
        description="A Ray head and worker nodes on this machine, each in its own network "
        "namespace with its own IP on a bridge, with Ray's token auth (docs/cluster.md).",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def named(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default="dqemu", help="the cluster's name (default: dqemu)")

    p = verbs.add_parser("up", help="start a head and N worker nodes")
    named(p)
    p.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    p.add_argument("--cpus", type=int, default=1, help="--num-cpus of each node (default 1)")
    p.add_argument("--memory-mib", type=int, default=2048,
                   help="Ray's logical memory per node, MiB (default 2048)")  # fmt: skip
    p.add_argument("--object-store-mib", type=int, default=100,
                   help="object store per node, MiB (default 100)")  # fmt: skip
    p.add_argument("--shards-per-node", type=int, default=4,
                   help="the dqemu_shard resource of each worker (default 4)")  # fmt: skip
    p.set_defaults(func=_up)
    p = verbs.add_parser("down", help="stop every process of the cluster and remove it")
    named(p)
    p.set_defaults(func=_down)
    p = verbs.add_parser("status", help="the cluster's nodes and whether they run")
    named(p)
    p.set_defaults(func=_status)
    p = verbs.add_parser("env", help="print the environment for Ray commands (for eval)")
    named(p)
    p.set_defaults(func=_env)
