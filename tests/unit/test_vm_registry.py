"""The VM registry: names, duplicates, entries left by a dead launcher, and the control API."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.errors import DqemuError
from cluster.router.control import ControlError
from cluster.vm import registry
from cluster.vm.control import API_VERSION, ControlServer, vm_call


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path / "run" / "vms"


def test_claim_makes_private_entry(run_dir: Path) -> None:
    c = registry.claim("alpha")
    try:
        assert c.name == "alpha"
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((run_dir / "alpha").stat().st_mode) == 0o700
        live, gone = registry.entries()
        assert [e.name for e in live] == ["alpha"] and not gone
    finally:
        c.release()
    assert not (run_dir / "alpha").exists()


def test_duplicate_name_refused() -> None:
    c = registry.claim("alpha")
    try:
        c.write_meta(pid=os.getpid())
        with pytest.raises(DqemuError, match=r"a VM named 'alpha' is already running"):
            registry.claim("alpha")
    finally:
        c.release()


def test_generated_names_differ() -> None:
    a, b = registry.claim(None), registry.claim(None)
    try:
        assert a.name != b.name and a.name.startswith("vm-")
    finally:
        a.release()
        b.release()


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "a b", "x" * 64, "../up"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(DqemuError, match="bad VM name"):
        registry.claim(bad)


def test_entry_of_a_killed_launcher_is_gone_and_reaped(run_dir: Path) -> None:
    """A launcher SIGKILLed while it holds its name: its entry is gone, not running."""
    code = (
        "import sys, time; from cluster.vm import registry; "
        "c = registry.claim('beta'); print('ready', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "DQEMU_RUN_DIR": str(run_dir.parent)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                             cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        with pytest.raises(DqemuError, match="already running"):
            registry.claim("beta")
        assert registry.find("beta").name == "beta"
    finally:
        child.kill()
        child.wait()
    gone = r"no VM named beta \(its launcher died.*\(running: none\)"
    with pytest.raises(DqemuError, match=gone):
        registry.find("beta")
    assert not (run_dir / "beta").exists()
    registry.claim("beta").release()  # the name is free again


def test_find_names_the_running_ones() -> None:
    a, b = registry.claim("a1"), registry.claim("b2")
    try:
        with pytest.raises(DqemuError, match=r"^no VM named x \(running: a1, b2\)$"):
            registry.find("x")
    finally:
        a.release()
        b.release()


def test_control_server_versioned(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    srv = ControlServer(path, {"info": lambda req: {"name": "x"}}).start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert vm_call(path, "info") == {"name": "x"}
        assert vm_call(path, "version") == {"api": API_VERSION}
        with pytest.raises(ControlError, match="version 99 is not served"):
            vm_call(path, "info", v=99)
        with pytest.raises(ControlError, match=r"unknown command 'nope' \(known: info, version\)"):
            vm_call(path, "nope")
        # garbage gets an error line, and the connection still serves the next request
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.sendall(b"{not json\n" + json.dumps({"cmd": "info"}).encode() + b"\n")
        f = s.makefile("rb")
        assert json.loads(f.readline())["error"].startswith("bad JSON")
        assert json.loads(f.readline())["result"] == {"name": "x"}
        s.close()
    finally:
        srv.close()
    assert not path.exists()


def test_stalled_client_does_not_block_others(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    srv = ControlServer(path, {"info": lambda req: 1}).start()
    try:
        stalled = socket.socket(socket.AF_UNIX)
        stalled.connect(str(path))
        stalled.sendall(b'{"cmd": "in')  # never finishes its line
        t0 = time.monotonic()
        assert vm_call(path, "info") == 1
        assert time.monotonic() - t0 < 5
        stalled.close()
    finally:
        srv.close()


def test_stream_takes_the_connection_over(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    def echo(req: dict[str, object]) -> Callable[[socket.socket], None]:
        if req.get("who") == "nobody":
            raise ControlError("nobody may echo")

        def run(conn: socket.socket) -> None:
            conn.sendall(b"hello " + str(req["who"]).encode() + b"\n")
            while data := conn.recv(100):
                conn.sendall(data.upper())

        return run

    srv = ControlServer(path, {"info": lambda req: 1}, {"echo": echo}).start()
    try:
        with pytest.raises(ControlError, match="version 2 is not served"):
            vm_call(path, "echo", v=2)
        with pytest.raises(ControlError, match="nobody may echo"):
            vm_call(path, "echo", who="nobody")
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": "echo", "v": 1, "who": "you"}).encode() + b"\n")
        f = s.makefile("rb")
        assert json.loads(f.readline()) == {"ok": True, "result": "stream"}
        assert f.readline() == b"hello you\n"
        s.sendall(b"abc\n")
        assert f.readline() == b"ABC\n"
        s.close()
    finally:
        srv.close()
