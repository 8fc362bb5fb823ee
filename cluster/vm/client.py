"""The client side of a VM's control API (``docs/control.md``), shared by the ``dqemu``
commands (``cluster/vm/commands.py``) and the console (``dqconsole/client.py``).

``vm_call`` (``cluster/vm/control.py``) is one request; a stream request (``stats`` with
watch, ``events``, ``serial``) holds its connection: ``open_stream`` sends it and reads the
VM's answer, ``StreamReader`` reads what follows, with a short timeout so that a reader
can notice it should stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from cluster.errors import DqemuError
from cluster.router.control import ControlError
from cluster.vm import registry
from cluster.vm.control import API_VERSION, Connector, connect_to, vm_call

READ_POLL_S = 0.5


def open_stream(
    target: Path | Connector, req: dict[str, Any], timeout: float = 10.0
) -> socket.socket:
    """The connection of a stream request, once the VM has said yes. Raises ControlError
    with the VM's refusal, OSError when it cannot be reached or closes, ValueError when
    its answer is not JSON. The answer is read a byte at a time: the stream's own bytes
    (a console's) follow it at once and must stay in the socket."""
    sock = connect_to(target, timeout)
    try:
        sock.sendall(json.dumps({"v": API_VERSION, **req}).encode() + b"\n")
        first = bytearray()
        while not first.endswith(b"\n"):
            b = sock.recv(1)
            if not b:
                raise OSError("the control API closed the connection")
            first += b
        resp = json.loads(first)
        if not isinstance(resp, dict):
            raise ValueError("the control API's answer is not a JSON object")
        if not resp.get("ok"):
            raise ControlError(str(resp.get("error", "refused")))
    except BaseException:
        sock.close()
        raise
    return sock


class StreamReader:
    """An open stream connection: raw bytes (serial) or JSON lines (stats, events)."""

    def __init__(self, sock: socket.socket, poll_s: float = READ_POLL_S) -> None:
        self.sock = sock
        self.sock.settimeout(poll_s)
        self._buf = bytearray()
        self.closed = False

    def read(self) -> bytes | None:
        """The next bytes; b"" when nothing came within the poll time; None once closed."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return None
        return data

    def lines(self, cancelled: Callable[[], bool] = bool) -> Iterator[dict[str, Any] | None]:
        """JSON objects as they come; None when nothing came for a while (a chance to check
        ``cancelled``, which ends the iteration). Ends when the VM closes the stream."""
        while not cancelled():
            data = self.read()
            if data is None:
                return
            if not data:
                yield None
                continue
            self._buf += data
            while (nl := self._buf.find(b"\n")) >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict):
                        yield obj

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


class VMHandle(Connector, Protocol):
    """A running VM, wherever it runs: a registry entry on this machine
    (:class:`cluster.vm.registry.Entry`) or a VM controller on a Ray cluster
    (:class:`cluster.ray.vms.RayVM`). Every command reaches it the same way."""

    @property
    def name(self) -> str: ...

    def alive(self) -> bool:
        """True while the VM runs (its launcher or controller lives)."""
        ...

    def meta(self) -> dict[str, Any]:
        """What is known of it without its control API (``started``)."""
        ...


def ray_address(given: str | None = None) -> str | None:
    """The Ray cluster whose VMs the commands see beside this machine's: ``--ray``, else
    ``$RAY_ADDRESS``; None for none."""
    return given or os.environ.get("RAY_ADDRESS") or None


def find_vm(name: str, ray: str | None = None) -> VMHandle:
    """The running VM called ``name``: on this machine, else on the Ray cluster ``ray``.
    A DqemuError naming what runs where when there is none."""
    try:
        return registry.find(name)
    except DqemuError as e:
        if not ray:
            raise
        from cluster.ray.vms import find_ray_vm

        found, running = find_ray_vm(name, ray)
        if found is not None:
            return found
        there = ", ".join(running) or "none"
        raise DqemuError(f"{e}; none on the Ray cluster at {ray} either (running there: {there})",
                         1) from None  # fmt: skip


def ray_vms(ray: str | None) -> list[VMHandle]:
    """The VMs running on the Ray cluster ``ray`` (none without one); an unreachable
    cluster is a warning on stderr, so that this machine's VMs are still listed."""
    if not ray:
        return []
    from cluster.ray.vms import list_ray_vms

    try:
        return list(list_ray_vms(ray))
    except DqemuError as e:
        print(f"dqemu: warning: {e}; listing this machine's VMs only", file=sys.stderr)
        return []


def running_vms(ray: str | None = None) -> list[VMHandle]:
    """Every running VM: this machine's (stale entries removed), then the Ray cluster's."""
    live, _gone = registry.entries()
    return [*live, *ray_vms(ray)]


def info_or_starting(entry: VMHandle, timeout: float = 3.0) -> dict[str, Any]:
    """A running VM's ``info``; while its control API does not answer yet, a stand-in
    that says ``starting`` with what its registry entry knows."""
    try:
        return dict(vm_call(entry, "info", timeout=timeout))
    except (ControlError, OSError, ValueError):
        return {"name": entry.name, "state": "starting", "shards": [], "vcpus": None,
                "started": entry.meta().get("started")}  # fmt: skip


def uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
