"""A small synchronous QMP client for the launcher and tests (qemu.qmp's legacy API)."""

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
from qemu.qmp.legacy import QEMUMonitorProtocol, QMPMessage

from cluster.errors import DqemuError
from cluster.vm.exit_policy import EXIT_SHARD_FAILED

CMD_TIMEOUT = 10.0


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
    """QMP connection to one shard, for single-threaded users (tests, benches); the
    launcher's own connection is ``ShardQMP``."""

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
                qmp.connect()
            except (OSError, EOFError, QMPError) as exc:  # EOF: QEMU exited meanwhile
                last = exc
                with contextlib.suppress(OSError, EOFError, QMPError):
                    qmp.close()
                time.sleep(0.05)
                continue
            qmp.settimeout(CMD_TIMEOUT)  # a hung shard fails a call instead of blocking
            self._qmp = qmp
            return
        why = f": {last}" if last else ""
        raise DqemuError(f"{self.name}: QMP did not answer within {timeout:g} s{why}")

    def cmd(self, name: str, **args: Any) -> Any:
        if self._qmp is None:
            raise DqemuError(f"{self.name}: QMP not connected")
        try:
            return self._qmp.cmd(name, **args)
        except (OSError, EOFError, QMPError, TimeoutError) as exc:
            raise DqemuError(f"{self.name}: QMP {name} failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection; a QEMU that already exited is not an error here."""
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            with contextlib.suppress(OSError, EOFError, QMPError, TimeoutError):
                qmp.close()


class ShardQMP(threading.Thread):
    """The launcher's QMP connection to a shard, kept for the VM's whole life.

    A plain JSON-lines client with a reader thread, because it must keep reading while
    the launcher waits (qemu.qmp's legacy client reads only inside a call): replies are
    matched by id, so any thread may run commands (the launcher's ``cont``, the control
    API's), and events are seen as they come, among them ``SHUTDOWN``, which says whether
    the guest ended the VM (``guest``) and why.
    """

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name=f"qmp-{name}", daemon=True)
        self.shard = name
        self.path = path
        self.shutdown: dict[str, Any] | None = None  # the SHUTDOWN event's data
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._replies: dict[str, threading.Event] = {}
        self._results: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self._next = 0
        self._write_lock = threading.Lock()
        self._eof = False  # the reader has seen the end: no reply will come
        self.on_event: Callable[[dict[str, Any]], None] | None = None

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
                # an event may come before the reply (see Monitor): wait for the reply
                while "return" not in (reply := json.loads(f.readline() or b'{"error": 0}')):
                    if "error" in reply:
                        raise OSError(f"qmp_capabilities refused: {reply['error']}")
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

    def cmd(self, name: str, timeout: float = 30.0, **args: Any) -> Any:
        """Run a command and wait for its return value; any thread may call this."""
        with self._write_lock:
            f = self._file
            if f is None:
                raise DqemuError(f"{self.shard}: QMP is not connected", EXIT_SHARD_FAILED)
            self._next += 1
            ident = f"dq{self._next}"
            done = self._replies[ident] = threading.Event()
            if self._eof:
                done.set()
            msg: dict[str, Any] = {"execute": name, "id": ident}
            if args:
                msg["arguments"] = args
            try:
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()
            except (OSError, ValueError) as exc:
                del self._replies[ident]
                raise DqemuError(
                    f"{self.shard}: QMP {name} failed: {exc}", EXIT_SHARD_FAILED
                ) from None
        try:
            if not done.wait(timeout):
                raise DqemuError(
                    f"{self.shard}: QMP {name} got no answer within {timeout:g} s",
                    EXIT_SHARD_FAILED,
                )
            if ident in self._errors:
                raise DqemuError(
                    f"{self.shard}: QMP {name} failed: {self._errors.pop(ident)}",
                    EXIT_SHARD_FAILED,
                )
            if ident not in self._results:
                raise DqemuError(f"{self.shard}: QMP {name}: the shard has exited",
                                 EXIT_SHARD_FAILED)  # fmt: skip
            return self._results.pop(ident)
        finally:
            self._replies.pop(ident, None)

    def run(self) -> None:
        f = self._file
        if f is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for raw in f:
                msg = json.loads(raw)
                if "event" in msg:
                    if msg["event"] == "SHUTDOWN":
                        self.shutdown = msg.get("data", {})
                    if self.on_event is not None:
                        self.on_event(msg)
                    continue
                ident = msg.get("id")
                done = self._replies.get(ident) if isinstance(ident, str) else None
                if done is not None:
                    if "error" in msg:
                        self._errors[ident] = str(msg["error"].get("desc", msg["error"]))
                    else:
                        self._results[ident] = msg.get("return")
                    done.set()
        with self._write_lock:
            self._eof = True
            for done in list(self._replies.values()):  # QEMU went away: nobody will answer
                done.set()

    @property
    def reason(self) -> str | None:
        """The reason of the shard's SHUTDOWN event (QEMU's ShutdownCause), if it came."""
        return str(self.shutdown.get("reason", "")) if self.shutdown is not None else None

    def wait_closed(self, timeout: float) -> bool:
        """Wait until QEMU has closed the connection and every event has been seen."""
        if self.ident is not None:
            self.join(timeout)
        return not self.is_alive()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
