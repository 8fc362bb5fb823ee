"""RDMA devices as the router would use them, via pyverbs: discovery, `dqemu rdma-check`,
and the check that refuses ``transport = "rdma"`` before anything starts when no device
can carry it (never a silent fall-back to TCP).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import DqemuError

PORT_STATES = {0: "NOP", 1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
MTUS = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}
SYS_IB = "/sys/class/infiniband"


class RdmaUnavailable(OSError):
    """No usable RDMA device; the message says why and what would fix it."""


@dataclass
class Port:
    number: int
    state: str
    mtu: int
    gids: list[tuple[int, str]] = field(default_factory=list)  # (index, GID) non-zero only


@dataclass
class Device:
    name: str
    ports: list[Port]


def _no_devices() -> str:
    if not os.path.isdir(SYS_IB):
        return (
            f"no RDMA device: this kernel has no RDMA support ({SYS_IB} is missing; "
            "CONFIG_INFINIBAND is off or ib_core is not loaded)"
        )
    return (
        "no RDMA device: the kernel has RDMA support but no device (add a soft-RoCE one: "
        "modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0)"
    )


def list_devices() -> list[Device]:
    """Every RDMA device with its ports and non-zero GIDs. Raises RdmaUnavailable."""
    try:
        from pyverbs import enums as e
        from pyverbs.device import Context, get_device_list
        from pyverbs.pyverbs_error import PyverbsError
    except ImportError:
        raise RdmaUnavailable(
            "pyverbs is not installed (apt-get install python3-pyverbs; scripts/bootstrap)"
        ) from None
    try:
        names = [d.name.decode() for d in get_device_list()]
    except PyverbsError:
        names = []
    if not names:
        raise RdmaUnavailable(_no_devices())
    out = []
    for name in names:
        with Context(name=name) as ctx:
            ports = []
            for n in range(1, ctx.query_device().phys_port_cnt + 1):
                pa = ctx.query_port(n)
                gids = []
                for i in range(pa.gid_tbl_len):
                    try:
                        g = str(ctx.query_gid(n, i))
                    except PyverbsError:
                        continue
                    if g.replace(":", "").strip("0"):
                        gids.append((i, g))
                state = PORT_STATES.get(pa.state, str(pa.state))
                ports.append(Port(n, state, MTUS.get(pa.active_mtu, 0), gids))
        out.append(Device(name, ports))
    assert e.IBV_PORT_ACTIVE == 4  # PORT_STATES follows libibverbs' numbering
    return out


def check_usable(device: str = "", port: int = 1, gid_index: int = 0) -> Device:
    """The device the router would use (``device``, or the first with ``port`` ACTIVE);
    RdmaUnavailable says why there is none."""
    devs = list_devices()
    have = ", ".join(d.name for d in devs)
    cands = [d for d in devs if d.name == device] if device else devs
    if not cands:
        raise RdmaUnavailable(f"RDMA device {device!r} not found (devices: {have})")
    for d in cands:
        p = next((q for q in d.ports if q.number == port), None)
        if p is None or p.state != "ACTIVE":
            continue
        if all(i != gid_index for i, _g in p.gids):
            raise RdmaUnavailable(f"RDMA device {d.name} port {port} has no GID {gid_index}")
        return d
    states = "; ".join(
        f"{d.name} port {q.number} {q.state}" for d in cands for q in d.ports if q.number == port
    )
    raise RdmaUnavailable(f"no RDMA device has port {port} ACTIVE ({states or 'no such port'})")


def report(devs: list[Device]) -> str:
    lines = []
    for d in devs:
        lines.append(f"device {d.name}")
        for p in d.ports:
            lines.append(f"  port {p.number}: {p.state}, mtu {p.mtu}")
            for i, g in p.gids:
                lines.append(f"    gid {i}: {g}")
    return "\n".join(lines)


def _rdma_check(ns: argparse.Namespace) -> int:
    try:
        devs = list_devices()
    except RdmaUnavailable as e:
        raise DqemuError(str(e)) from None
    print(report(devs))
    try:
        d = check_usable(ns.device or "", ns.port, ns.gid_index)
    except RdmaUnavailable as e:
        raise DqemuError(f"transport rdma would fail: {e}") from None
    print(f"transport rdma would use {d.name} port {ns.port} gid {ns.gid_index}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rdma-check",
        help="list the RDMA devices, ports, GIDs and states that transport rdma would use",
    )
    p.add_argument("--device", help="the device the routers are told to use (default: first)")
    p.add_argument("--port", type=int, default=1, help="port number (default 1)")
    p.add_argument("--gid-index", type=int, default=0, help="GID index (default 0)")
    p.set_defaults(func=_rdma_check)
