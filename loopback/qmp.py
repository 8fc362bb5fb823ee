"""A small synchronous QMP client for the launcher (qemu.qmp's legacy API)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from cluster.errors import DqemuError


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
