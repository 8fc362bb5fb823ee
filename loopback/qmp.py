"""A small synchronous QMP client for the launcher (qemu.qmp's legacy API)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from cluster.errors import DqemuError
from loopback.exit_policy import EXIT_SHARD_FAILED


class ShardMonitor:
    """QMP connection to one shard."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._qmp: QEMUMonitorProtocol | None = None

    def connect(self, timeout: float, alive: Any) -> None:
        """Connect, retrying until the socket answers, ``alive()`` turns false, or timeout."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline and alive():
            qmp = QEMUMonitorProtocol(str(self.path), nickname=self.name)
            try:
                qmp.connect()
            # a QEMU that exits during the greeting: EOFError, or qemu.qmp's own assertion
            except (OSError, EOFError, AssertionError, QMPError) as exc:
                last = exc
                with contextlib.suppress(OSError, EOFError, AssertionError, QMPError):
                    qmp.close()
                time.sleep(0.05)
                continue
            self._qmp = qmp
            return
        why = f": {last}" if last else ""
        raise DqemuError(f"{self.name}: QMP did not answer within {timeout:g} s{why}")

    def cmd(self, name: str, **args: Any) -> Any:
        if self._qmp is None:
            raise DqemuError(f"{self.name}: QMP not connected")
        try:
            return self._qmp.cmd(name, **args)
        except (OSError, QMPError) as exc:
            raise DqemuError(f"{self.name}: QMP {name} failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection; a QEMU that already exited is not an error here."""
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            with contextlib.suppress(OSError, EOFError, AssertionError, QMPError):
                qmp.close()


class ShutdownWatch(threading.Thread):
    """The launcher's QMP connection to a running shard: sends ``cont`` and then listens
    for the ``SHUTDOWN`` event, which says whether the guest ended the VM (``guest``) and
    why. A plain JSON-lines client, because it must keep reading while the launcher
    waits (qemu.qmp's legacy client reads only inside a call)."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name=f"qmp-{name}", daemon=True)
        self.shard = name
        self.path = path
        self.shutdown: dict[str, Any] | None = None  # the SHUTDOWN event's data
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._replies: dict[str, threading.Event] = {}
        self._errors: dict[str, str] = {}
        self._next = 0

    def connect(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Connect and leave capability negotiation, retrying until the socket answers,
        ``alive()`` turns false, or timeout. The shard's QMP must be free."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(str(self.path))
                f = sock.makefile("rwb")
                if "QMP" not in json.loads(f.readline() or b"{}"):
                    raise OSError("no QMP greeting")
                f.write(b'{"execute": "qmp_capabilities"}\n')
                f.flush()
                if "return" not in json.loads(f.readline() or b"{}"):
                    raise OSError("qmp_capabilities refused")
            except (OSError, ValueError) as exc:
                sock.close()
                if time.monotonic() > deadline or not alive():
                    raise DqemuError(
                        f"{self.shard}: QMP did not answer: {exc}", EXIT_SHARD_FAILED
                    ) from None
                time.sleep(0.05)
                continue
            sock.settimeout(None)
            self._sock, self._file = sock, f
            return

    def cmd(self, name: str, timeout: float = 30.0) -> None:
        """Run a command without arguments and wait for its (empty) return."""
        assert self._file is not None
        self._next += 1
        ident = f"dq{self._next}"
        done = self._replies[ident] = threading.Event()
        self._file.write(json.dumps({"execute": name, "id": ident}).encode() + b"\n")
        self._file.flush()
        if not done.wait(timeout):
            raise DqemuError(
                f"{self.shard}: QMP {name} got no answer within {timeout:g} s", EXIT_SHARD_FAILED
            )
        if ident in self._errors:
            raise DqemuError(
                f"{self.shard}: QMP {name} failed: {self._errors[ident]}", EXIT_SHARD_FAILED
            )

    def run(self) -> None:
        f = self._file
        if f is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for raw in f:
                msg = json.loads(raw)
                if msg.get("event") == "SHUTDOWN":
                    self.shutdown = msg.get("data", {})
                ident = msg.get("id")
                if isinstance(ident, str) and ident in self._replies:
                    if "error" in msg:
                        self._errors[ident] = str(msg["error"].get("desc", msg["error"]))
                    self._replies[ident].set()
        for done in self._replies.values():  # QEMU went away: nobody will answer
            done.set()

    @property
    def guest_reason(self) -> str | None:
        """The SHUTDOWN reason if the guest caused it, else None."""
        if self.shutdown and self.shutdown.get("guest"):
            return str(self.shutdown.get("reason", "guest-shutdown"))
        return None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
