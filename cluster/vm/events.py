"""A VM's events: shard and link up/down, state changes, guest panic and reset, and how
the VM ended, each with a sequence number.

The last ``KEEP`` events stay buffered, so a client that reconnects with the last
``seq`` it saw misses nothing still buffered (and is told if it has missed some).
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster.router.control import ControlError

KEEP = 4096
SEND_TIMEOUT = 5.0  # a client that takes no event for this long is dropped


class VMEvents:
    def __init__(self) -> None:
        self._buf: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False
        self.state = ""

    def emit(self, kind: str, **data: Any) -> dict[str, Any]:
        with self._cond:
            self._seq += 1
            ev = {"seq": self._seq, "time": round(time.time(), 3), "type": kind, **data}
            self._buf.append(ev)
            self._cond.notify_all()
            return ev

    def state_is(self, state: str, **data: Any) -> None:
        """A ``state`` event, only when the state changes (every shard reports a STOP)."""
        with self._cond:
            if state == self.state:
                return
            self.state = state
        self.emit("state", state=state, **data)

    def close(self) -> None:
        """No more events: streams end once they have sent what is buffered."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._buf if e["seq"] > seq]

    def open_stream(self, req: dict[str, Any]) -> Callable[[socket.socket], None]:
        """``events`` stream: every buffered event after ``since`` (default 0), then live
        ones, as JSON lines, until the VM's end."""
        since = req.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise ControlError("since must be a sequence number (an integer, 0 or more)")

        def run(conn: socket.socket) -> None:
            conn.settimeout(SEND_TIMEOUT)
            last = since
            with self._cond:
                oldest = self._buf[0]["seq"] if self._buf else self._seq + 1
            if since + 1 < oldest and since < self._seq:
                gap = {"seq": oldest - 1, "type": "missed", "first": since + 1,
                       "last": oldest - 1}  # fmt: skip
                if not _send(conn, gap):
                    return
            while True:
                with self._cond:
                    if self._seq <= last and not self._closed:
                        self._cond.wait(timeout=1.0)
                    batch = [e for e in self._buf if e["seq"] > last]
                    done = self._closed and not batch
                if done:
                    return
                for ev in batch:
                    if not _send(conn, ev):
                        return
                    last = ev["seq"]

        return run


def _send(conn: socket.socket, ev: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(ev, sort_keys=True).encode() + b"\n")
    except OSError:
        return False
    return True
