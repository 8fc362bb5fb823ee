"""The VM controller's side of the relayed control API (``cluster/ray/relay.py``): a
connection per client to the VM's own control socket, driven by calls."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.ray import relay
from cluster.vm.control import ControlServer, StreamRunner


def _serve(path: Path) -> ControlServer:
    def echo_stream(_req: dict[str, Any]) -> StreamRunner:
        def run(conn: socket.socket) -> None:
            conn.sendall(b"one\n")
            conn.sendall(conn.recv(100).upper())  # what the client typed, back

        return run

    return ControlServer(path, {"info": lambda req: {"name": "x"}}, {"echo": echo_stream}).start()


def _recv_until(server: relay.RelayServer, cid: int, want: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 10
    while want not in got and time.monotonic() < deadline:
        data = server.recv(cid, 0.1)
        assert data is not None, got
        got += data
    return got


def test_a_command_and_a_stream_through_the_relay(tmp_path: Path) -> None:
    ctl = _serve(tmp_path / "c.sock")
    server = relay.RelayServer(tmp_path / "c.sock")
    try:
        cid = server.open()
        assert server.recv(cid, 0.05) == b""  # nothing yet: the wait ends with no bytes
        server.send(cid, json.dumps({"cmd": "info", "v": 1}).encode() + b"\n")
        line = _recv_until(server, cid, b"\n")
        assert json.loads(line) == {"ok": True, "result": {"name": "x"}}
        server.close(cid)
        assert server.recv(cid, 0.05) is None  # closed: the client's reader ends
        cid = server.open()
        server.send(cid, b'{"cmd": "echo"}\n')
        assert _recv_until(server, cid, b"one\n").endswith(b"one\n")
        server.send(cid, b"typed")
        assert _recv_until(server, cid, b"TYPED").endswith(b"TYPED")
        # the VM's side closed the stream: None, and the id is gone
        deadline = time.monotonic() + 10
        while (data := server.recv(cid, 0.1)) is not None and time.monotonic() < deadline:
            assert data == b""
        assert data is None
    finally:
        server.close_all()
        ctl.close()


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    ctl = _serve(tmp_path / "c.sock")
    server = relay.RelayServer(tmp_path / "c.sock")
    try:
        cid = server.open()
        server._conns[cid][1][0] -= relay.IDLE + 1  # as if its client died a minute ago
        server.reap_idle()
        assert server.recv(cid, 0.05) is None
    finally:
        server.close_all()
        ctl.close()


def test_a_gone_control_socket_is_an_oserror(tmp_path: Path) -> None:
    server = relay.RelayServer(tmp_path / "none.sock")
    with pytest.raises(OSError):
        server.open()
