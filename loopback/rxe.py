"""Soft-RoCE (rdma_rxe) devices for a loopback VM's RDMA links (``transport = "rdma"``).

Linux 6.1's rxe ignores network namespaces: it sends and routes in the root namespace
(``rdma system show``: ``netns shared``), so an rxe device on a shard namespace's ``eth0``
reaches ACTIVE but its queue pairs fail. So each shard gets a veth pair whose one end
``dq<pid>r<i>`` stays in the root namespace and carries the shard's rxe device
``dq<pid>rxe<i>``, and whose other end ``r<i>`` hangs off the VM's bridge, in the bridge
namespace (:mod:`loopback.netns`). The routers, in their shard namespaces, use their own
shard's device (verbs devices are shared by every namespace) with GID 0, the root end's
link-local IPv6 address (RoCE v2): a route to another device's link-local GID is bound to
the sending device, so it leaves by that veth, crosses the bridge and arrives on the other
device's veth, with no IPv4 address, policy routing, ``rp_filter`` or ``accept_local``.

Teardown deletes the devices; deleting the bridge namespace (teardown, or the next
launcher's reaping of a dead one's namespaces, :mod:`loopback.stale`) also destroys the
veth pairs, and the kernel removes an rxe device whose netdev goes. So nothing outlives
the launcher, not even a SIGKILLed one once the next launcher or ``dqemu cleanup`` runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from loopback.netns import NetnsError, ip

RXE_MODULE = Path("/sys/module/rdma_rxe")
RDMA_TIMEOUT_S = 30.0  # `rdma link add` takes seconds on a loaded TCG guest


def unavailable() -> str | None:
    """None if this machine can add rxe devices, else why not (one line)."""
    if shutil.which("rdma") is None:
        return "the 'rdma' tool (iproute2) is missing"
    if not RXE_MODULE.exists() and shutil.which("modprobe") is not None:
        subprocess.run(["modprobe", "-q", "rdma_rxe"], capture_output=True, check=False)
    if not RXE_MODULE.exists():
        return "the kernel has no soft-RoCE (the rdma_rxe module is not loaded and cannot be)"
    if os.geteuid() != 0:
        return "adding rxe devices needs root"
    return None


def _rdma(*args: str) -> None:
    try:
        res = subprocess.run(
            ["rdma", *args], capture_output=True, text=True, check=False, timeout=RDMA_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise NetnsError(f"rdma {' '.join(args)}: no answer in {RDMA_TIMEOUT_S:g} s") from None
    if res.returncode != 0:
        raise NetnsError(f"rdma {' '.join(args)}: {res.stderr.strip() or 'failed'}")


def _no_dad(netdev: str) -> None:
    conf = Path("/proc/sys/net/ipv6/conf", netdev)
    try:
        (conf / "accept_dad").write_text("0\n")
        disabled = (conf / "disable_ipv6").read_text().strip() == "1"
    except OSError as e:
        raise NetnsError(f"{conf}: {e.strerror} (rxe's GIDs need IPv6)") from None
    if disabled:
        raise NetnsError(f"IPv6 is disabled on {netdev}: rxe's link-local GIDs need it")


class RxeDevices:
    """One rxe device per shard for a VM whose bridge ``bridge`` is in ``bridge_ns``."""

    def __init__(self, bridge_ns: str, bridge: str = "br0") -> None:
        self.bridge_ns = bridge_ns
        self.bridge = bridge
        self.devices: list[str] = []  # the rxe devices added, in shard order
        self._netdevs: list[str] = []  # their root-namespace veth ends

    def add(self, n: int) -> list[str]:
        """Add ``n`` devices (shard order); on failure what was added is removed and
        NetnsError says which command failed."""
        tag = f"dq{os.getpid()}"
        try:
            for i in range(n):
                netdev, dev = f"{tag}r{i}", f"{tag}rxe{i}"
                ip("link", "add", netdev, "type", "veth", "peer", "name", f"r{i}",
                   "netns", self.bridge_ns)  # fmt: skip
                self._netdevs.append(netdev)
                # no duplicate address detection: a tentative link-local address can't
                # resolve a path (RTR fails with "Connection timed out")
                _no_dad(netdev)
                ip("-n", self.bridge_ns, "link", "set", f"r{i}", "master", self.bridge)
                ip("-n", self.bridge_ns, "link", "set", f"r{i}", "up")
                ip("link", "set", netdev, "up")
                _rdma("link", "add", dev, "type", "rxe", "netdev", netdev)
                self.devices.append(dev)
        except BaseException:
            self.remove()
            raise
        return list(self.devices)

    def remove(self) -> None:
        """Delete the devices and their veth pairs. Idempotent, never raises."""
        for dev in reversed(self.devices):
            with contextlib.suppress(NetnsError):
                _rdma("link", "delete", dev)
        self.devices.clear()
        for netdev in reversed(self._netdevs):
            with contextlib.suppress(NetnsError):
                ip("link", "del", netdev)
        self._netdevs.clear()
