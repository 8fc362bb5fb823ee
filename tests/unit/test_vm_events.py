"""VM events: numbered, buffered for clients that reconnect, and told when they missed some."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from cluster.router.control import ControlError
from cluster.vm import events as ev_mod
from cluster.vm.control import ControlServer, vm_call
from cluster.vm.events import VMEvents


def _lines(path: Path, since: int, n: int) -> list[dict[str, object]]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.settimeout(10)
    s.sendall(json.dumps({"cmd": "events", "since": since}).encode() + b"\n")
    f = s.makefile("rb")
    assert json.loads(f.readline())["result"] == "stream"
    out = [json.loads(f.readline()) for _ in range(n)]
    s.close()
    return out


def test_reconnect_with_since_misses_nothing(tmp_path: Path) -> None:
    evs = VMEvents()
    path = tmp_path / "c.sock"
    srv = ControlServer(path, {}, {"events": evs.open_stream}).start()
    try:
        evs.state_is("starting")
        evs.state_is("starting")  # no change, no event
        evs.emit("shard", shard=0, state="up")
        first = _lines(path, 0, 2)
        assert [(e["seq"], e["type"]) for e in first] == [(1, "state"), (2, "shard")]
        threading.Timer(0.2, lambda: evs.emit("link", shard=0, peer=1, state="up")).start()
        later = _lines(path, 2, 1)  # a reconnect after seq 2 gets only what came since
        assert [(e["seq"], e["type"]) for e in later] == [(3, "link")]
        with pytest.raises(ControlError, match="since must be"):
            vm_call(path, "events", since=-1)
    finally:
        evs.close()
        srv.close()


def test_a_client_too_far_behind_is_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev_mod, "KEEP", 3)
    evs = VMEvents()
    for i in range(5):
        evs.emit("x", i=i)
    path = tmp_path / "c.sock"
    srv = ControlServer(path, {}, {"events": evs.open_stream}).start()
    try:
        got = _lines(path, 0, 4)
        assert got[0] == {"seq": 2, "type": "missed", "first": 1, "last": 2}
        assert [e["seq"] for e in got[1:]] == [3, 4, 5]
    finally:
        evs.close()
        srv.close()


def test_stream_ends_with_the_vm(tmp_path: Path) -> None:
    evs = VMEvents()
    path = tmp_path / "c.sock"
    srv = ControlServer(path, {}, {"events": evs.open_stream}).start()
    try:
        evs.emit("ended", status=0, reason="guest powered off")
        evs.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.settimeout(10)
        s.sendall(b'{"cmd": "events"}\n')
        data = s.makefile("rb").read()  # to the end: the stream closes after the last event
        lines = [json.loads(x) for x in data.splitlines()]
        assert lines[-1]["type"] == "ended" and lines[-1]["status"] == 0
        s.close()
    finally:
        srv.close()
