"""Network namespaces as stand-in hosts: ``Topology(n)`` makes n "hosts" on one L2 segment.

Each host is a namespace ``dq-<pid>-<rand>-h<i>`` with ``lo`` up and an ``eth0`` whose
address is ``10.213.0.<i+1>/24``; the hosts' veth peers hang off a bridge inside a separate
namespace (``...-br``), so nothing is added to the machine's own network namespace and the
10.213.x.y addresses exist only inside ours. Needs root (or CAP_NET_ADMIN) and iproute2.

    with Topology(2) as topo:
        a, b = topo.hosts
        server = topo.popen(b, ["python3", "server.py", b.ip])
        topo.run(a, ["python3", "client.py", b.ip], check=True)
    # namespaces deleted and every process started through the topology reaped, also on
    # exceptions; `cleanup_stale()` removes namespaces left by a dead (SIGKILLed) creator.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from loopback.owner import maker_alive

PREFIX = "dq-"
NETNS_DIR = Path("/run/netns")
SUBNET = "10.213.0"
_NAME_RE = re.compile(r"^dq-(\d+)-[0-9a-f]+-(h\d+|br)$")


class NetnsError(RuntimeError):
    """Namespace set-up failed; the message names the command and its error."""


@dataclass(frozen=True)
class Host:
    index: int
    netns: str
    ip: str

    def __str__(self) -> str:
        return f"{self.netns} ({self.ip})"


def ip(*args: str) -> None:
    """Run ``ip ARGS``; a failure raises NetnsError naming the command and its error."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip() or 'failed'}")


def available() -> str | None:
    """None if namespaces can be made here, else a one-line reason."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def list_namespaces() -> list[str]:
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    """The processes that run in network namespace ``ns`` (none if it does not exist)."""
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(tok) for tok in res.stdout.split() if tok.isdigit()]


def _kill_pids_in(ns: str) -> None:
    for pid in pids_in(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def attach_host(netns: str, cidr: str, bridge: str, port: str, bridge_ns: str | None) -> None:
    """Give namespace ``netns`` ``lo`` and an ``eth0`` with address ``cidr``, whose veth peer
    ``port`` hangs off ``bridge`` (in namespace ``bridge_ns``, or the machine's own if None)."""
    on_bridge = ("-n", bridge_ns) if bridge_ns is not None else ()
    ip("-n", netns, "link", "set", "lo", "up")
    ip(*on_bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip(*on_bridge, "link", "set", port, "master", bridge)
    ip(*on_bridge, "link", "set", port, "up")
    ip("-n", netns, "addr", "add", cidr, "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")


def cleanup_stale() -> list[str]:
    """Delete ``dq-`` namespaces whose creating process is gone (dead, or its pid reused;
    see :mod:`loopback.owner`), killing what still runs in them."""
    removed = []
    for ns in list_namespaces():
        m = _NAME_RE.match(ns)
        if not m or maker_alive(int(m.group(1)), NETNS_DIR / ns):
            continue
        _kill_pids_in(ns)
        with contextlib.suppress(NetnsError):
            ip("netns", "del", ns)
            removed.append(ns)
    return removed


class Topology:
    """n hosts (network namespaces) on one bridged segment. Use as a context manager."""

    def __init__(self, n_hosts: int) -> None:
        if not 1 <= n_hosts <= 200:
            raise ValueError(f"n_hosts {n_hosts} out of range 1..200")
        self.n_hosts = n_hosts
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.bridge_ns = f"{self.tag}-br"
        self.hosts: list[Host] = [
            Host(i, f"{self.tag}-h{i}", f"{SUBNET}.{i + 1}") for i in range(n_hosts)
        ]
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._up = False

    # --- life cycle --------------------------------------------------------------------------

    def create(self) -> Topology:
        reason = available()
        if reason:
            raise NetnsError(f"cannot create network namespaces: {reason}")
        atexit.register(self.teardown)
        try:
            self._add_ns(self.bridge_ns)
            br = self.bridge_ns
            ip("-n", br, "link", "add", "br0", "type", "bridge")
            ip("-n", br, "link", "set", "br0", "up")
            for h in self.hosts:
                self._add_ns(h.netns)
                attach_host(h.netns, f"{h.ip}/24", "br0", f"h{h.index}", br)
        except BaseException:
            self.teardown()
            raise
        self._up = True
        return self

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)

    def teardown(self) -> None:
        """Reap our processes and delete our namespaces. Idempotent, never raises."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(3.0)
        self._procs.clear()
        for ns in reversed(self._made):
            _kill_pids_in(ns)
            with contextlib.suppress(NetnsError):
                ip("netns", "del", ns)
        self._made.clear()
        self._up = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)

    def __enter__(self) -> Topology:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    # --- running things ------------------------------------------------------------------------

    def host(self, which: int | Host) -> Host:
        return which if isinstance(which, Host) else self.hosts[which]

    def exec_args(self, which: int | Host, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside the host's namespace."""
        return ["ip", "netns", "exec", self.host(which).netns, *argv]

    def popen(self, which: int | Host, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in the host; it is terminated (then killed) at teardown."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_args(which, argv), **kw)
        self._procs.append(proc)
        return proc

    def run(
        self, which: int | Host, argv: Sequence[str], **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.exec_args(which, argv), **kw)
