"""The guest-visible machine options of a VM spec: CPU model, machine options, SMP
topology, NUMA layout, VGA, and the extra QEMU arguments.

Each check is a pure function that raises ``ValueError`` with a one-line message; the spec
loader (``cluster/spec.py``) turns it into a :class:`SpecError` naming the key and line.
Every shard builds the same machine, so everything here is the same on every shard except
the per-shard ``qemu_args``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Machine options that dqemu sets itself, each with what it is set from.
CONTROLLED_MACHINE_OPTIONS = {
    "type": "vm.machine",
    "accel": "dqemu (TCG, multi-threaded)",
    "memory-backend": "dqemu (the guest RAM shared by every shard)",
    "kernel": "boot.kernel",
    "initrd": "boot.initrd",
    "append": "boot.append",
    "dtb": "dqemu (no device tree on x86)",
    "pflash0": "dqemu (firmware is SeaBIOS; a flash drive would be written by every shard)",
    "pflash1": "dqemu (firmware is SeaBIOS; a flash drive would be written by every shard)",
}
# [vm] vga = MODEL: the QEMU device of each model.
VGA_MODELS = {"std": "VGA", "cirrus": "cirrus-vga", "vmware": "vmware-svga", "isa": "isa-vga"}
VGA_DEVICE_ID = "dqvga"
# The smallest RAM of one NUMA node (nodes are cut on 2 MiB boundaries).
MIN_NODE_MIB = 2

_CPU = re.compile(r"^[A-Za-z0-9_.-]+(,[+-]?[A-Za-z0-9_.-]+(=[A-Za-z0-9_.-]+)?)*$")
_MACHINE_OPT = re.compile(r"^([a-z][a-z0-9_.-]*)=([^,=\s]+)$")


@dataclass(frozen=True)
class Topology:
    sockets: int
    cores: int
    threads: int

    def socket_of(self, vcpu: int) -> int:
        return vcpu // (self.cores * self.threads)


@dataclass(frozen=True)
class NumaNode:
    shard: int
    vcpus: tuple[int, ...]
    mib: int


def check_cpu(value: str) -> str:
    """``-cpu`` MODEL[,+feature,-feature,prop=value...]; QEMU itself knows the models."""
    if not _CPU.match(value):
        raise ValueError(
            f"{value!r} is not a CPU model with optional features, e.g. qemu64,+x2apic"
        )
    return value


def check_machine_options(value: str) -> str:
    """``-machine`` options as ``key=value,key=value``, without those dqemu sets itself."""
    if not value.strip():
        return ""
    for item in value.split(","):
        m = _MACHINE_OPT.match(item.strip())
        if not m:
            raise ValueError(f"{item!r} is not key=value (options are key=value,key=value)")
        owner = CONTROLLED_MACHINE_OPTIONS.get(m.group(1))
        if owner is not None:
            raise ValueError(f"{m.group(1)!r} is set by {owner}, not a machine option here")
    return ",".join(item.strip() for item in value.split(","))


def check_topology(vcpus: int, sockets: int | None, cores: int | None, threads: int | None
                   ) -> Topology | None:  # fmt: skip
    """sockets x cores x threads must be the vCPU count; an omitted one counts as 1."""
    if sockets is None and cores is None and threads is None:
        return None
    topo = Topology(sockets or 1, cores or 1, threads or 1)
    for name, n in (("sockets", sockets), ("cores", cores), ("threads", threads)):
        if n is not None and not 1 <= n <= vcpus:
            raise ValueError(f"{name} = {n} is outside 1..{vcpus} (vm.vcpus)")
    product = topo.sockets * topo.cores * topo.threads
    if product != vcpus:
        raise ValueError(
            f"sockets x cores x threads = {topo.sockets} x {topo.cores} x {topo.threads} "
            f"= {product}, but vm.vcpus = {vcpus}"
        )
    return topo


def split_even(items: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """``items`` in order, cut into ``parts`` runs as even as possible (the first are longer)."""
    per, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        n = per + (1 if i < extra else 0)
        out.append(tuple(items[start : start + n]))
        start += n
    return out


def numa_layout(
    memory_mib: int, numa: bool, shards: Sequence[tuple[int, tuple[int, ...], int]]
) -> list[NumaNode]:
    """The NUMA nodes from (shard id, vCPUs, nodes on that shard) per shard.

    One node for the whole VM unless NUMA is on and there are several nodes in all: then
    each shard's vCPUs are split evenly over its nodes, and the RAM evenly over all nodes
    in 2 MiB aligned slices (the last node takes the rest).
    """
    total = sum(n for _, _, n in shards)
    if not numa or total == 1:
        return [NumaNode(0, tuple(c for _, cpus, _ in shards for c in cpus), memory_mib)]
    base = (memory_mib // total) // 2 * 2
    if base < MIN_NODE_MIB:
        raise ValueError(f"{memory_mib} MiB over {total} NUMA nodes leaves less than "
                         f"{MIN_NODE_MIB} MiB per node")  # fmt: skip
    nodes = [NumaNode(sid, group, base) for sid, cpus, n in shards for group in split_even(cpus, n)]
    last = nodes[-1]
    nodes[-1] = NumaNode(last.shard, last.vcpus, memory_mib - base * (total - 1))
    return nodes


def check_sockets_in_nodes(topo: Topology, nodes: Sequence[NumaNode]) -> None:
    """A socket whose vCPUs sit in two NUMA nodes makes Linux build wrong scheduling
    domains (topology_sane warnings): refuse it."""
    if len(nodes) == 1:
        return
    node_of = {c: i for i, node in enumerate(nodes) for c in node.vcpus}
    first: dict[int, int] = {}
    for c in sorted(node_of):
        s = topo.socket_of(c)
        if s in first and node_of[first[s]] != node_of[c]:
            raise ValueError(
                f"socket {s} would hold vCPU {first[s]} (NUMA node {node_of[first[s]]}) and "
                f"vCPU {c} (NUMA node {node_of[c]}): every socket must sit in one node"
            )
        first.setdefault(s, c)


def smp_arg(vcpus: int, topo: Topology | None, nodes: int) -> str:
    """``-smp``: the given topology; else with several NUMA nodes one socket per vCPU (a
    socket in two nodes confuses Linux), else QEMU's default (one socket)."""
    if topo is not None:
        return f"{vcpus},sockets={topo.sockets},cores={topo.cores},threads={topo.threads}"
    if nodes > 1:
        return f"{vcpus},sockets={vcpus},cores=1,threads=1"
    return str(vcpus)


def check_qemu_args(value: list[object]) -> tuple[str, ...]:
    for i, a in enumerate(value):
        if not isinstance(a, str):
            raise ValueError(f"element {i} is not a string")
    return tuple(str(a) for a in value)


def vga_device(model: str) -> str:
    """The ``-device`` argument of a ``[vm] vga`` model."""
    if model not in VGA_MODELS:
        raise ValueError(f"{model!r} is not one of {', '.join(VGA_MODELS)} (default: no VGA)")
    return f"{VGA_MODELS[model]},id={VGA_DEVICE_ID}"
