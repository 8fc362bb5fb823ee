"""A small synchronous QMP client for the launcher and tests (qemu.qmp's legacy API)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol, QMPMessage

from cluster.errors import DqemuError


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
    """QMP connection to one shard."""

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
            except (OSError, QMPError) as exc:
                last = exc
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
            with contextlib.suppress(OSError, EOFError, QMPError):
                qmp.close()
