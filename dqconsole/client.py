"""The console's side of the VM control API (``docs/control.md``), with no Textual in it.

Everything here blocks: the app calls it from worker threads only. A request is one
connection (``vm_call``); a stream (``stats`` with watch, ``events``, ``serial``) holds its
own connection and is read with a short timeout, so a worker can notice it was cancelled.
A lost connection is retried with ``Backoff``; whether the VM is still there is the
registry's lock (``Entry.alive``), and how it ended is the registry's ``.ended/`` record.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import DqemuError
from cluster.router.control import ControlError
from cluster.vm import registry
from cluster.vm.control import API_VERSION, vm_call

READ_POLL_S = 0.5


class ClientError(Exception):
    """A request failed; the message names the problem in one line."""


class VMGone(ClientError):
    """The VM is not running (any more); the message says what is known of its end."""


class ConnectionLost(ClientError):
    """The control socket did not answer or closed, while the VM's launcher still lives."""


@dataclass
class Backoff:
    """Delays between reconnection attempts: 0.5 s doubling up to ``cap``; ``reset`` on success."""

    first: float = 0.5
    cap: float = 8.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def ended_reason(name: str) -> str | None:
    """``exit N: reason`` from the registry's record of how ``name`` ended, if there is one."""
    found = None
    for rec in registry.ended_records():
        if rec.get("name") == name:
            found = f"exit {rec.get('status')}: {rec.get('reason')}"
    return found


@dataclass
class VMRow:
    """One line of the VM list."""

    name: str
    state: str
    shards: int
    vcpus: int | None
    started: float | None

    def uptime(self, now: float | None = None) -> str:
        if self.started is None:
            return "-"
        s = int((now if now is not None else time.time()) - self.started)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def list_vms() -> list[VMRow]:
    """Every running VM on this machine, with what its ``info`` says (``starting`` when its
    control API does not answer yet)."""
    live, _gone = registry.entries()
    rows = []
    for e in live:
        try:
            info = vm_call(e.control, "info", timeout=3.0)
        except (ControlError, OSError, ValueError):
            rows.append(VMRow(e.name, "starting", 0, None, e.meta().get("started")))
            continue
        shards = len(info.get("shards") or [])
        rows.append(VMRow(e.name, str(info.get("state")), shards, info.get("vcpus"),
                          info.get("started")))  # fmt: skip
    return rows


@dataclass
class VMClient:
    """One VM's control API, by name."""

    name: str
    timeout: float = 10.0
    _entry: registry.Entry | None = field(default=None, repr=False)

    def entry(self) -> registry.Entry:
        if self._entry is not None and self._entry.alive():
            return self._entry
        try:
            self._entry = registry.find(self.name)
        except DqemuError as e:
            raise VMGone(str(e)) from None
        return self._entry

    def alive(self) -> bool:
        try:
            return self.entry().alive()
        except VMGone:
            return False

    def gone_message(self) -> str:
        reason = ended_reason(self.name)
        return f"{self.name} has ended ({reason})" if reason else f"{self.name} is not running"

    def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        entry = self.entry()
        try:
            return vm_call(entry.control, cmd, timeout=timeout or self.timeout, **args)
        except ControlError as e:
            raise ClientError(str(e)) from None
        except (OSError, ValueError) as e:
            if not entry.alive():
                raise VMGone(self.gone_message()) from None
            raise ConnectionLost(f"control API did not answer: {e}") from None

    def info(self) -> dict[str, Any]:
        return dict(self.call("info"))

    def qmp(self, shard: int, execute: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.call("qmp", shard=shard, execute=execute, arguments=arguments or {})

    def open_stream(self, req: dict[str, Any]) -> Stream:
        """A stream connection; raises ClientError with the VM's refusal, VMGone, ConnectionLost."""
        entry = self.entry()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(entry.control))
            sock.sendall(json.dumps({"v": API_VERSION, **req}).encode() + b"\n")
            first = bytearray()
            while not first.endswith(b"\n"):
                b = sock.recv(1)
                if not b:
                    raise OSError("the control API closed the connection")
                first += b
        except OSError as e:
            sock.close()
            if not entry.alive():
                raise VMGone(self.gone_message()) from None
            raise ConnectionLost(f"{req.get('cmd')}: {e}") from None
        try:
            resp = json.loads(first)
        except ValueError:
            sock.close()
            raise ConnectionLost(f"{req.get('cmd')}: not a JSON answer") from None
        if not resp.get("ok"):
            sock.close()
            raise ClientError(str(resp.get("error", "refused")))
        sock.settimeout(READ_POLL_S)
        return Stream(sock)


class Stream:
    """An open stream connection: raw bytes (serial) or JSON lines (stats, events)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self.closed = False

    def read(self) -> bytes | None:
        """The next bytes; b"" when nothing came within READ_POLL_S; None once closed."""
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

    def lines(self, cancelled: Callable[[], bool]) -> Iterator[dict[str, Any] | None]:
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


def start_spec(spec: Path, timeout: float = 600.0) -> str:
    """``dqemu loopback --spec FILE --detach``; the VM's name, or ClientError with dqemu's
    own message."""
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "loopback", "--spec", str(spec), "--detach"],
        capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise ClientError(lines[-1] if lines else f"dqemu loopback exited {proc.returncode}")
    out = proc.stdout.split()
    if not out:
        raise ClientError("dqemu loopback --detach printed no VM name")
    return out[0]
