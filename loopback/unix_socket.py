"""Connecting to a UNIX socket that a starting QEMU has not necessarily created yet."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


def connect_when_ready(
    path: Path, timeout: float, alive: Callable[[], bool], interval: float = 0.02
) -> socket.socket | None:
    """A stream connection to ``path``, retried until it is accepted; None once ``alive()``
    turns false or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            time.sleep(interval)
            continue
        return s
    return None
