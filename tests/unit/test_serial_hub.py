"""The serial hub: scrollback for late readers, many readers, one writer, no stalls."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from cluster.router.control import ControlError
from cluster.vm import serial_hub
from cluster.vm.control import ControlServer, vm_call
from cluster.vm.serial_hub import SerialHub


def _open(path: Path, **req: object) -> tuple[socket.socket, object]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.settimeout(10)
    s.sendall(json.dumps({"cmd": "serial", **req}).encode() + b"\n")
    f = s.makefile("rb")
    assert json.loads(f.readline()) == {"ok": True, "result": "stream"}
    return s, f


def _read_until(f: object, want: bytes) -> bytes:
    got = b""
    while want not in got:
        chunk = f.read1(4096)  # type: ignore[attr-defined]
        assert chunk, f"stream ended before {want!r}: {got!r}"
        got += chunk
    return got


@pytest.fixture
def hub_server(tmp_path: Path) -> tuple[SerialHub, Path, list[bytes]]:
    sent: list[bytes] = []
    hub = SerialHub(send=sent.append)
    path = tmp_path / "c.sock"
    srv = ControlServer(path, {}, {"serial": hub.open_stream}).start()
    yield hub, path, sent
    hub.close()
    srv.close()


def test_late_readers_see_scrollback_and_live_output(hub_server) -> None:  # type: ignore[no-untyped-def]
    hub, path, _ = hub_server
    hub.write(b"boot log line 1\r\n")
    a, fa = _open(path)
    b, fb = _open(path)
    assert _read_until(fa, b"line 1").startswith(b"boot log")
    assert _read_until(fb, b"line 1").startswith(b"boot log")
    hub.write(b"# live\r\n")
    assert b"# live" in _read_until(fa, b"# live")
    assert b"# live" in _read_until(fb, b"# live")
    a.close()
    b.close()


def test_one_writer(hub_server) -> None:  # type: ignore[no-untyped-def]
    _, path, sent = hub_server
    w, wf = _open(path, write=True)
    with pytest.raises(ControlError, match="another client is writing"):
        vm_call(path, "serial", write=True)
    w.sendall(b"echo hi\n")
    deadline = time.monotonic() + 5
    while b"".join(sent) != b"echo hi\n":
        assert time.monotonic() < deadline, sent
        time.sleep(0.01)
    wf.close()  # type: ignore[attr-defined]
    w.close()
    deadline = time.monotonic() + 5
    while True:  # the writer's place is free again once it has gone
        try:
            w2, _ = _open(path, write=True)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    w2.close()


def test_scrollback_is_bounded_and_keeps_the_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = SerialHub()
    hub.write(b"x" * (serial_hub.SCROLLBACK + 10) + b"END")
    sb = hub.scrollback()
    assert len(sb) == serial_hub.SCROLLBACK and sb.endswith(b"END")


def test_stalled_reader_is_dropped_not_waited_for(hub_server) -> None:  # type: ignore[no-untyped-def]
    hub, path, _ = hub_server
    stalled, _f = _open(path)  # never reads
    t0 = time.monotonic()
    for _ in range(serial_hub.MAX_BACKLOG // 65536 + 64):
        hub.write(b"y" * 65536)
    assert time.monotonic() - t0 < 5  # the console never waited for the reader
    assert not hub._readers  # dropped
    stalled.close()
