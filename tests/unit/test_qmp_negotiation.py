"""The launcher's QMP client survives an event sent before the qmp_capabilities reply.

QEMU leaves negotiation mode inside ``qmp_capabilities`` (run in a bottom half) and sends
the reply only when its dispatcher coroutine resumes, so an event emitted in between (a
STOP or RESUME caused by another shard) arrives first. That made a CI run fail in
``test_commands_from_each_shard`` with qemu.qmp's negotiation asserting on the reply. The
server below plays that order on a real UNIX socket every time.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from loopback.qmp import Monitor

GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""},
                    "capabilities": ["oob"]}}  # fmt: skip
EVENT = {"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}


def _requests(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The client's JSON objects; like QEMU's parser, no newline is needed between them."""
    dec = json.JSONDecoder()
    buf = ""
    while chunk := conn.recv(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                obj, end = dec.raw_decode(buf.lstrip())
            except json.JSONDecodeError:
                break
            buf = buf.lstrip()[end:]
            yield obj


def _serve(listener: socket.socket) -> None:
    """One client: greeting; on qmp_capabilities an event, then the reply; then answers."""
    conn, _ = listener.accept()
    with conn:
        conn.sendall(json.dumps(GREETING).encode() + b"\r\n")
        for req in _requests(conn):
            out: list[dict[str, Any]] = []
            if req["execute"] == "qmp_capabilities":
                out.append(EVENT)
            reply: dict[str, Any] = {"return": {"status": "paused"}}
            if "id" in req:
                reply["id"] = req["id"]
            out.append(reply)
            conn.sendall(b"".join(json.dumps(m).encode() + b"\r\n" for m in out))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qmp.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    t = threading.Thread(target=_serve, args=(listener,), daemon=True)
    t.start()
    yield path
    listener.close()
    t.join(timeout=5)


def test_event_before_capabilities_reply(server: Path) -> None:
    m = Monitor(str(server))
    try:
        greeting = m.connect()
        assert greeting is not None and greeting["QMP"]["version"]["qemu"]["major"] == 10
        assert m.cmd("query-status") == {"status": "paused"}
        ev = m.pull_event(wait=5.0)
        assert ev is not None and ev["event"] == "STOP"
    finally:
        m.close()


def test_stock_negotiation_fails_on_that_order(server: Path) -> None:
    """Why Monitor exists: qemu.qmp's own negotiation takes the event for the reply."""
    m = QEMUMonitorProtocol(str(server))
    try:
        with pytest.raises(QMPError):
            m.connect()
    finally:
        m.close()
