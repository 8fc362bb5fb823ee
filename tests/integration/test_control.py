"""Issue 15 acceptance: named VMs that outlive the terminal, driven by virsh-style commands.

A 2-shard Linux guest in its shell mode is started with ``--detach``; then ``list``,
``info``, ``console`` (two readers, one of them writing a command the guest runs),
``stats --watch``, ``suspend``/``resume`` (every shard paused; the guest's clock does not
jump), ``shutdown`` (the guest powers off, exit 0, the VM leaves the list). A second VM's
launcher is SIGKILLed: no QEMU is left, and its entry is reported gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.vm_ctl import Ctl, wait_dead

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--vcpus", "2", "--shards", "2")
BOOT_TIMEOUT = 300.0


class Console:
    """``dqemu console NAME`` in the background, its output collected."""

    def __init__(self, ctl: Ctl, name: str, *extra: str) -> None:
        self.proc = ctl.popen("console", name, *extra)
        self.out = b""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while data := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            self.out += data

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT, after: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern.encode(), self.out[after:])
            if m:
                return m  # type: ignore[return-value]
            assert self.proc.poll() is None, f"console ended: {self.out[-500:]!r}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {self.out[-800:]!r}"
            time.sleep(0.1)

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def detach(self) -> int:
        self.type("\x1d")
        return self.proc.wait(timeout=30)


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Ctl]:
    c = Ctl(tmp_path / "run")
    yield c
    # whatever a failed test left running: destroy it by name
    for name in (p.name for p in (tmp_path / "run" / "vms").glob("*") if p.is_dir()):
        if not name.startswith("."):
            c.run("destroy", name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        p.is_dir() and not p.name.startswith(".") for p in (tmp_path / "run" / "vms").glob("*")
    ):
        time.sleep(0.2)


def _uptime(con: Console, tag: str) -> tuple[float, float]:
    """The guest's /proc/uptime, read through the console, and the host's time then."""
    mark = len(con.out)
    con.type(f"echo {tag} $(cut -d' ' -f1 /proc/uptime)\n")
    m = con.wait_for(rf"{tag} (\d+\.\d+)", timeout=60, after=mark)
    return float(m.group(1)), time.monotonic()


def test_detached_vm_driven_by_name(ctl: Ctl) -> None:
    name = f"ctl-{os.getpid()}"
    r = ctl.run("loopback", *GUEST, "--append", "dq.run=shell", "--name", name, "--detach",
                timeout=BOOT_TIMEOUT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name

    # list and info: both shards, their vCPUs
    rows = ctl.json("list")
    assert [(v["name"], len(v["shards"]), v["vcpus"]) for v in rows] == [(name, 2, 2)]
    info = ctl.json("info", name)
    assert info["state"] == "running"
    assert [(s["id"], s["vcpus"], s["state"]) for s in info["shards"]] == [
        (0, [0], "up"), (1, [1], "up"),
    ]  # fmt: skip
    assert info["shards"][0]["links"] == {"1": "up"}
    # each shard's own vCPU, with the QEMU thread that runs it (a thread of that shard)
    for s in info["shards"]:
        (t,) = s["vcpu_threads"]
        assert t["vcpu"] == s["vcpus"][0], s
        assert os.path.exists(f"/proc/{s['pid']}/task/{t['thread']}"), s
        assert t["thread"] != s["pid"] and t["cpu_pct"] >= 0.0

    # two consoles: a reader and a writer see the same output; the writer's command runs
    reader = Console(ctl, name, "--read-only")
    writer = Console(ctl, name)
    for con in (reader, writer):
        con.wait_for(r"DQ KV shell=1")  # the boot log comes from the scrollback
    writer.wait_for(r"/ # ")
    writer.type("echo HELLO-$((6*7))\n")
    for con in (reader, writer):
        con.wait_for(r"HELLO-42")

    # stats --watch: the IPI counters rise while the guest moves a task between CPUs
    watch = ctl.popen("stats", name, "--watch", "--json", "--hz", "5")
    assert watch.stdout is not None and watch.stderr is not None
    # the stream runs before the task moves (the CLI may take seconds to start on a
    # loaded machine), and goes on until a snapshot taken after the move
    lines = [watch.stdout.readline()]
    assert lines[0], watch.stderr.read()
    writer.type("for i in $(seq 40); do taskset -c $((i % 2)) true; done; echo MOVED\n")
    writer.wait_for(r"[\r\n]MOVED", timeout=120)  # the output, not the typed line's echo
    moved = time.time()
    while (line := watch.stdout.readline()) and json.loads(line)["time"] <= moved:
        lines.append(line)
    lines.append(line)
    watch.terminate()
    out, _ = watch.communicate(timeout=30)
    snaps = [json.loads(ln) for ln in [*lines, *out.splitlines()] if ln.strip()]
    assert len(snaps) >= 2, out[-500:]
    assert [s["seq"] for s in snaps] == sorted(s["seq"] for s in snaps)
    ipis = [s["mechanisms"]["ipi"]["total"] for s in snaps]
    assert ipis[-1] > ipis[0], ipis
    assert any(s["mechanisms"]["ipi"]["msgs_per_s"] > 0 for s in snaps[1:])

    # suspend: every shard paused; resume: the guest's clock did not run meanwhile
    up0, t0 = _uptime(writer, "UP0")
    r = ctl.run("suspend", name)
    assert r.returncode == 0, r.stderr
    for k in (0, 1):
        r = ctl.run("qmp", name, "--shard", str(k), '{"execute": "query-status"}')
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "paused", r
    time.sleep(6.0)
    r = ctl.run("resume", name)
    assert r.returncode == 0, r.stderr
    up1, t1 = _uptime(writer, "UP1")
    assert 0 < up1 - up0 < (t1 - t0) - 4.0, (up0, up1, t1 - t0)

    assert reader.detach() == 0
    assert writer.detach() == 0

    # shutdown: the guest powers off through ACPI, exit 0, and the VM leaves the list;
    # an events client that joins now still gets every event from the start
    ev_proc = ctl.popen("events", name, "--json")
    r = ctl.run("shutdown", name)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 120
    while ctl.json("list"):
        assert time.monotonic() < deadline, "the VM did not end after shutdown"
        time.sleep(0.5)
    events = [json.loads(ln) for ln in ev_proc.communicate(timeout=60)[0].splitlines()]
    kinds = [(e["type"], e.get("state") or e.get("event")) for e in events]
    for want in [("state", "starting"), ("router", "up"), ("shard", "up"), ("link", "up"),
                 ("state", "running"), ("state", "paused"), ("guest", "shutdown"),
                 ("shard", "down"), ("ended", None), ("state", "ended")]:  # fmt: skip
        assert want in kinds, (want, kinds)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert next(e for e in events if e["type"] == "ended")["status"] == 0
    ended = [v for v in ctl.json("list", "--all") if v["name"] == name]
    assert ended and ended[0]["ended"]["status"] == 0, ended
    r = ctl.run("info", name)
    assert r.returncode == 1
    assert f"no VM named {name} (it ended with exit 0" in r.stderr
    # the entry goes a moment before the launcher process itself ends (or it has already)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.wait_procs([psutil.Process(info["launcher_pid"])], timeout=30)


def test_killed_launcher_leaves_no_qemu(ctl: Ctl) -> None:
    name = f"kill-{os.getpid()}"
    r = ctl.run("loopback", *GUEST, "--append", "dq.run=sleep", "--name", name, "--detach",
                timeout=BOOT_TIMEOUT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = ctl.json("info", name)
    launcher = info["launcher_pid"]
    qemus = [s["pid"] for s in info["shards"]]
    os.kill(launcher, signal.SIGKILL)
    wait_dead(qemus, "QEMU outlived its killed launcher")
    rows = ctl.json("list", "--all")
    assert [(v["name"], v["state"]) for v in rows] == [(name, "gone")]
    assert ctl.json("list", "--all") == []  # the stale entry was removed
    r = ctl.run("info", name)
    assert r.returncode == 1 and f"no VM named {name} (running: none)" in r.stderr
    ctl.run("cleanup")  # the namespaces of the killed launcher
