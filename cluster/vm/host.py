"""What one host does for a VM: the ``ShardHost`` interface.

The orchestrator (:mod:`cluster.vm.orchestrator`) runs a VM from its plan
(:mod:`cluster.vm.plan`) through one ``ShardHost`` per host of the plan. Loopback mode has
one host, this machine (:class:`loopback.host.LoopbackHost`); the cluster mode has a node
actor per Ray node. Everything that crosses this interface is plain data, bytes or a small
connection object, so that a host can live in another process: the orchestrator never sees
a host's files or sockets. Shards and routers are named as in the plan (``"shard 1"``,
``"router 1"``) and referred to by shard id.

The orchestrator calls, in order:

1. ``prepare(plan, shards)``: the run directory, the guest RAM files.
2. ``start_router(k, secret)`` for each of the host's shards, then ``router_ready(k)``
   (its real listen address), then ``set_peers(k, ...)`` once every host's routers listen.
3. ``start_shard(k)``; the I/O shard's host ``open_serial(k)``; ``open_qmp(k)`` for each.
4. ``router_health(k)`` until the mesh is up; ``ram_mapped()``; then ``cont`` over QMP.
5. While the VM runs: ``poll()``, ``router_health``, ``router_stats``, ``processes()``.
6. At the end, whatever happened: ``stop()`` (every child, reaped), ``teardown()``.

Every start-up failure raises :class:`cluster.errors.DqemuError` with a message that names
what failed; ``last_words`` tells the orchestrator why a child ended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.vm.plan import VMPlan

# a QMP event as QEMU sends it: {"event": NAME, "data": {...}, "timestamp": {...}}
QMPEvent = dict[str, Any]


class QMPLink(Protocol):
    """The orchestrator's QMP connection to one shard, kept for the VM's whole life
    (``loopback.qmp.ShardQMP``'s semantics). Any thread may run commands; events go to the
    callback given to ``ShardHost.open_qmp`` as they come, on the link's own thread."""

    def cmd(self, name: str, timeout: float = 30.0, **args: Any) -> Any:
        """Run one QMP command and return its ``return`` value. Raises DqemuError (status
        EXIT_SHARD_FAILED) naming the shard when QEMU refuses, does not answer within
        ``timeout`` seconds, or has gone."""
        ...

    @property
    def reason(self) -> str | None:
        """The reason of the shard's SHUTDOWN event (QEMU's ShutdownCause), if it came."""
        ...

    def wait_closed(self, timeout: float) -> bool:
        """Wait until QEMU has closed the connection (every event before its exit has
        been delivered); False if it is still open after ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Close the connection; a shard that already exited is not an error."""
        ...


class SerialLink(Protocol):
    """The I/O shard's serial console, as a byte stream in both directions."""

    def connect(self, timeout: float) -> bool:
        """Connect (QEMU waits for this before the guest starts); False if the shard
        ended or did not open its console within ``timeout`` seconds."""
        ...

    def recv(self) -> bytes:
        """The guest's next output; blocks; b"" once the console has ended."""
        ...

    def send(self, data: bytes) -> None:
        """Bytes for the guest's serial port; dropped silently once the console is gone."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Started:
    """A child the host started."""

    name: str  # "shard 1", "router 1"
    pid: int  # on the host
    where: str | None  # where it runs (a netns, a node): None for the orchestrator's machine


@dataclass(frozen=True)
class ProcessInfo:
    """One child of the host, as ``info`` shows it."""

    name: str
    pid: int
    code: int | None  # its exit status; -N: killed by signal N; None: still running
    cpu_pct: float  # since the previous ``processes()`` call; 0 once it ended
    rss_mib: float


@dataclass(frozen=True)
class LastWords:
    """How a child ended, from its log (``cluster.vm.exit_policy.last_words``)."""

    code: int | None  # as in ProcessInfo
    tail: str  # its log's last three lines, joined by " | " (start-up failures)
    said: str  # what it said about its end (the exit policy's ``Ending.said``)
    said_at: float | None  # wall-clock time of that line, when its log stamps it


class ShardHost(ABC):
    """One host's side of a VM: its run directory, RAM, routers and shards."""

    @abstractmethod
    def prepare(self, plan: VMPlan, shards: Sequence[int]) -> None:
        """Make the run directory and the guest RAM files (``plan.ram``; zero-filled,
        readable by the owner only) for ``shards``, which this host will run. Called
        once, first; the plan is the one every later call refers to."""

    @abstractmethod
    def start_router(self, shard: int, secret: bytes) -> Started:
        """Start the shard's router with the VM secret (32 bytes; passed to the router
        over a pipe, never on its command line or in a file). Returns at once."""

    @abstractmethod
    def router_ready(self, shard: int, timeout: float) -> str:
        """Wait until the router listens and serves its shard socket; its real listen
        address, "IP:PORT", as peers reach it. Raises DqemuError naming the router and
        its last words if it ended, or if it did not start within ``timeout``."""

    @abstractmethod
    def set_peers(self, shard: int, peers: Mapping[int, str]) -> None:
        """Every other shard's router address ("IP:PORT" by shard id): the router dials
        those it is to dial (the lower shard id dials)."""

    @abstractmethod
    def start_shard(self, shard: int) -> Started:
        """Start the shard's QEMU (the plan's argv, in the run directory); it builds its
        machine and waits, stopped (-S), for ``cont``. Returns at once."""

    @abstractmethod
    def open_serial(self, shard: int) -> SerialLink:
        """The serial console of the I/O shard (``plan.io_shard``), not yet connected."""

    @abstractmethod
    def open_qmp(self, shard: int, on_event: Callable[[QMPEvent], None], timeout: float) -> QMPLink:
        """Connect to the shard's QMP (leaving capability negotiation) and deliver its
        events to ``on_event`` from now on. Raises DqemuError if the shard ended or did
        not answer within ``timeout``."""

    @abstractmethod
    def router_health(self, shard: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """The router's ``health`` (``cluster/router``: ``ok`` once its shard is
        registered and every peer link is up, ``peers`` with each link's state); None if
        the router is not running or does not answer."""

    @abstractmethod
    def router_stats(self, shard: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """The router's ``stats`` counters; None if it is not running or does not answer."""

    @abstractmethod
    def poll(self) -> dict[str, int | None]:
        """Every child started so far, by name: its exit status, None while it runs."""

    @abstractmethod
    def processes(self) -> list[ProcessInfo]:
        """Every child started so far, with its CPU use and memory."""

    @abstractmethod
    def last_words(self, name: str) -> LastWords:
        """What the child ``name`` said last (its log), and its exit status."""

    @abstractmethod
    def ram_mapped(self) -> None:
        """Every shard of this host has mapped the guest RAM: drop the RAM files' names,
        so that nothing is left behind even if the host is killed."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after a grace period; a stopped child
        is woken up) and reap it. Safe to call more than once and after a failed start."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything ``prepare`` and the children made: the run directory, RAM
        files, sockets, networks. Called after ``stop``, on every path."""
