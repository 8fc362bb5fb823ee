"""A small synchronous QMP client for the launcher and tests (qemu.qmp's legacy API)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol, QMPMessage

from cluster.errors import DqemuError
from loopback.unix_socket import connect_when_ready

CMD_TIMEOUT = 10.0
CLOSE_WAIT = 0.5


class Monitor(QEMUMonitorProtocol):
    """qemu.qmp's legacy client, with a capabilities negotiation that tolerates events.

    QEMU runs ``qmp_capabilities`` in a bottom half: the monitor leaves negotiation mode
    there, and the reply is sent only when the dispatcher coroutine resumes. An event
    emitted in between (a STOP or RESUME that another shard caused, say) reaches the client
    *before* the reply. qemu.qmp's own negotiation takes the first message after its
    request for the reply and fails with ``NegotiationError`` (an ``AssertionError`` on
    ``'return' in reply``). Here the greeting is awaited as usual, but ``qmp_capabilities``
    goes out as an ordinary command once the reader runs: its reply is matched by id, and
    an early event lands in the event queue like any other.
    """

    def connect(self, negotiate: bool = True) -> QMPMessage | None:
        # the legacy API keeps its asyncio client in _qmp and its address in _address
        self._qmp.await_greeting = True
        self._qmp.negotiate = False
        self._sync(self._qmp.connect(self._address))
        if negotiate:
            self.cmd("qmp_capabilities")
        return self._get_greeting()


class ShardMonitor:
    """QMP connection to one shard, usable from any thread.

    qemu.qmp's legacy clients run on the asyncio loop of the thread that made them, one
    loop for all of them, so every call on any monitor takes one lock: the launcher's
    main thread and the control API's threads take turns.
    """

    _loop_lock = threading.Lock()

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._qmp: Monitor | None = None

    def connect(self, timeout: float, alive: Any) -> None:
        """Connect, retrying until the socket answers, ``alive()`` turns false, or timeout."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline and alive():
            qmp = Monitor(str(self.path), nickname=self.name)
            try:
                with self._loop_lock:
                    qmp.connect()
            except (OSError, QMPError) as exc:
                last = exc
                with self._loop_lock:
                    qmp.close()
                time.sleep(0.05)
                continue
            qmp.settimeout(CMD_TIMEOUT)  # a hung shard fails a call, never blocks the VM
            self._qmp = qmp
            return
        why = f": {last}" if last else ""
        raise DqemuError(f"{self.name}: QMP did not answer within {timeout:g} s{why}")

    def cmd(self, name: str, **args: Any) -> Any:
        with self._loop_lock:
            qmp = self._qmp
            if qmp is None:
                raise DqemuError(f"{self.name}: QMP not connected")
            try:
                return qmp.cmd(name, **args)
            except (OSError, EOFError, QMPError, TimeoutError) as exc:
                raise DqemuError(f"{self.name}: QMP {name} failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection; a QEMU that already exited is not an error here. While
        another thread waits on a hung shard, leave the socket to the process's exit."""
        if not self._loop_lock.acquire(timeout=CLOSE_WAIT):
            self._qmp = None
            return
        try:
            qmp, self._qmp = self._qmp, None
            if qmp is not None:
                with contextlib.suppress(OSError, EOFError, QMPError, TimeoutError):
                    qmp.close()
        finally:
            self._loop_lock.release()


class EventLog:
    """A QMP connection of its own that only collects the shard's events.

    Negotiated before the guest runs, never read while it runs (QEMU queues the few
    events in the socket), and read to its end once the shard has exited: which events
    the shard sent is then known exactly, e.g. a SHUTDOWN caused by a guest reset.
    """

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, timeout: float, alive: Any) -> None:
        s = self._sock = connect_when_ready(self.path, timeout, alive)
        if s is None:
            raise DqemuError(f"{self.name}: QMP event socket did not answer within {timeout:g} s")
        s.settimeout(timeout)
        try:
            self._message()  # the greeting
            s.sendall(b'{"execute": "qmp_capabilities"}\n')
            while "return" not in self._message():
                pass
        except (OSError, ValueError) as exc:
            raise DqemuError(f"{self.name}: QMP event socket: {exc}") from None

    def _message(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            data = self._sock.recv(65536)
            if not data:
                raise ValueError("closed")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ValueError(f"not a QMP message: {line[:80]!r}")
        return msg

    def events(self) -> list[dict[str, Any]]:
        """Every event the shard sent, read to the end (call once it has exited)."""
        out: list[dict[str, Any]] = []
        if self._sock is None:
            return out
        self._sock.settimeout(2.0)
        with contextlib.suppress(OSError, ValueError):
            while True:
                msg = self._message()
                if "event" in msg:
                    out.append(msg)
        return out

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
