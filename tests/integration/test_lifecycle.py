"""Issue 6 acceptance: the VM's life cycle across shards, in loopback (2 shards, 2 vCPUs).

- stop, cont (QMP and HMP), system_reset, system_powerdown and quit issued on either shard
  act on the whole VM; query-status agrees on both shards; query-cpus-fast and `info cpus`
  name the shard of every vCPU.
- The guest reboots twice (a CMOS byte counts the boots) and powers off: every shard and
  the launcher exit 0.
- A shard's QEMU or router killed (SIGKILL) or hung (SIGSTOP): the other shard stops the VM
  within 2 s with a message naming the lost shard; the launcher exits 4; nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from loopback.qmp import Monitor
from tests.conftest import REPO, TEST_ENV, dqemu_cmd, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud")
TWO_SHARDS = ("--vcpus", "2", "--shards", "2")
BOOT_TIMEOUT = 300.0
# the bound: every other shard stops within 2 s of a loss
STOP_BOUND_S = 2.0


class VM:
    """A loopback VM run by the launcher in the background, with QMP on every shard."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.qmp_dir = tmp / "qmp"
        self.log_dir = tmp / "logs"
        self.qmp_dir.mkdir()
        self.log_dir.mkdir()
        self.proc = subprocess.Popen(
            dqemu_cmd("loopback", *GUEST, *TWO_SHARDS, "--timeout", "900",
                      "--qmp-dir", str(self.qmp_dir), "--log-dir", str(self.log_dir), *args),
            cwd=REPO, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def count(self, line: str) -> int:
        return sum(1 for ln in list(self.out) if ln.strip() == line)

    def wait_line(self, line: str, n: int = 1, timeout: float = BOOT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.count(line) < n:
            assert self.proc.poll() is None, f"VM ended early: {self.err[-5:]}"
            assert time.monotonic() < deadline, f"no {line!r} #{n}: {self.out[-20:]}"
            time.sleep(0.2)

    def qmp(self, shard: int) -> Monitor:
        m = Monitor(str(self.qmp_dir / f"shard{shard}.qmp"))
        m.connect()
        return m

    def cmd(self, shard: int, name: str, **args: Any) -> Any:
        m = self.qmp(shard)
        try:
            return m.cmd(name, **args)
        finally:
            m.close()

    def status(self, shard: int) -> str:
        return str(self.cmd(shard, "query-status")["status"])

    def wait_status(self, want: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = [self.status(s) for s in (0, 1)]
            if got == [want, want]:
                return
            assert time.monotonic() < deadline, f"query-status {got}, want {want} on both"
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        return {k: int(v) for k, v in json.loads((self.log_dir / "pids.json").read_text()).items()}

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            code = self.proc.wait(timeout=30)
        for t in self._readers:
            t.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def vm_factory(tmp_path: Path) -> Iterator[Any]:
    vms: list[VM] = []

    def make(*args: str) -> VM:
        vm = VM(tmp_path, *args)
        vms.append(vm)
        return vm

    yield make
    for vm in vms:
        vm.kill()


def _hmp(vm: VM, shard: int, line: str) -> str:
    return str(vm.cmd(shard, "human-monitor-command", **{"command-line": line}))


@pytest.mark.parametrize("issuer", [0, 1])
def test_commands_from_each_shard(vm_factory: Any, issuer: int) -> None:
    vm = vm_factory("--append", "dq.run=sleep")
    vm.wait_line("DQ KV sleeping=1")
    vm.wait_status("running")

    # every vCPU, with the shard that runs it, on either shard
    for s in (0, 1):
        cpus = vm.cmd(s, "query-cpus-fast")
        assert [(c["cpu-index"], c.get("dqemu-shard")) for c in cpus] == [(0, 0), (1, 1)]
        info = _hmp(vm, s, "info cpus")
        assert re.search(r"CPU #0: thread_id=\d+ shard=0", info), info
        assert re.search(r"CPU #1: thread_id=\d+ shard=1", info), info

    vm.cmd(issuer, "stop")
    vm.wait_status("paused")
    vm.cmd(issuer, "cont")
    vm.wait_status("running")
    _hmp(vm, issuer, "stop")
    vm.wait_status("paused")
    _hmp(vm, issuer, "cont")
    vm.wait_status("running")

    # system_powerdown reaches every shard (the ACPI device's owner presses the button)
    monitors = [vm.qmp(s) for s in (0, 1)]
    try:
        monitors[issuer].cmd("system_powerdown")  # one client per QMP socket at a time
        for s, m in enumerate(monitors):
            ev = m.pull_event(wait=10.0)
            while ev is not None and ev["event"] != "POWERDOWN":
                ev = m.pull_event(wait=10.0)
            assert ev is not None, f"no POWERDOWN event on shard {s}"
    finally:
        for m in monitors:
            m.close()

    # system_reset reboots the guest: it runs its test again, with both CPUs
    vm.cmd(issuer, "system_reset")
    vm.wait_line("DQ KV sleeping=1", n=2)
    vm.wait_status("running")
    assert sum("smp: Brought up 2 nodes, 2 CPUs" in ln for ln in vm.out) == 2, vm.out[-30:]

    # quit from one shard ends every shard, each with status 0
    with contextlib.suppress(EOFError, OSError):  # QEMU may close before it answers
        vm.cmd(issuer, "quit")
    code = vm.finish()
    assert code == 0, vm.err[-5:]
    assert any("every shard exited 0" in ln for ln in vm.err), vm.err[-5:]
    assert_routers_saw_a_quit(vm.log_dir)


def assert_routers_saw_a_quit(log_dir: Path) -> None:
    """Every router logged its shard's exit as the VM quitting (0044), with no ERROR
    line: a quit is not a lost shard."""
    for s in (0, 1):
        log = (log_dir / f"router{s}.log").read_text(errors="replace")
        assert f"local shard {s} exited: it quit the VM (exit status 0)" in log, log[-2000:]
        assert f"shard {1 - s} exited: it quit the VM" in log, log[-2000:]
        errors = [ln for ln in log.splitlines() if " ERROR: " in ln]
        assert not errors, errors


@pytest.mark.parametrize(
    "args",
    [
        # `reboot -f` then port 0xCF9, both from CPU 1 (shard 1, which owns no device)
        ("--append", "dq.run=reboot dq.reboot_via=kernel,cf9 dq.cpu=1"),
        # the keyboard controller then `reboot -f` from CPU 0, with the platform on shard 1
        ("--io-shard", "1", "--append", "dq.run=reboot dq.reboot_via=kbd,kernel dq.cpu=0"),
    ],
    ids=["kernel-cf9", "kbd-kernel-platform-on-1"],
)
def test_reboot_twice_then_poweroff(tmp_path: Path, args: tuple[str, ...]) -> None:
    r = run_dqemu("loopback", *GUEST, *TWO_SHARDS, "--timeout", "900",
                  "--log-dir", str(tmp_path), *args, timeout=1200)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.passed("reboot"), r.stdout[-3000:]
    assert r.kv()["boot"] == "3"
    assert r.stdout.count("smp: Brought up 2 nodes, 2 CPUs") == 3, r.stdout[-3000:]
    assert "every shard exited 0" in r.stderr, r.stderr[-2000:]
    assert_routers_saw_a_quit(tmp_path)


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z .*dqemu: shard (\d+) lost \((.*)\)")


def _loss_lines(log: Path) -> list[tuple[float, int, str]]:
    """(time, lost shard, cause) of every 'dqemu: shard N lost (...)' line in a shard log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = _TS.match(line)
        if m:
            ts = datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
            out.append((ts, int(m.group(2)), m.group(3)))
    return out


def _netns_of(pid: int) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [ln for ln in names.stdout.splitlines() if ln.startswith(f"dq-{pid}-")]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
@pytest.mark.parametrize("victim", ["shard 1", "router 1"])
def test_loss_stops_the_vm(vm_factory: Any, victim: str, sig: signal.Signals) -> None:
    vm = vm_factory("--append", "dq.run=sleep")
    vm.wait_line("DQ KV sleeping=1")
    pid = vm.pids()[victim]
    t0 = time.time()
    os.kill(pid, sig)
    code = vm.finish(timeout=30)
    assert code == 4, vm.err[-5:]
    # shard 0 stopped the VM by itself, in time, naming shard 1 and the cause
    losses = _loss_lines(vm.log_dir / "shard0.log")
    assert losses, (vm.log_dir / "shard0.log").read_text()[-2000:]
    ts, lost, cause = losses[0]
    reason = next((ln for ln in vm.err if ln.startswith("dqemu: error:")), "")
    print(f"{victim} {sig.name}: shard 0 stopped after {ts - t0:.2f} s ({cause}); {reason}")
    assert lost == 1, losses
    assert ts - t0 < STOP_BOUND_S, f"shard 0 noticed after {ts - t0:.2f} s: {cause}"
    assert "shard 1" in reason, vm.err[-5:]
    if victim == "shard 1" and sig == signal.SIGSTOP:
        # the error says why the router took it for hung: its threads, as the kernel saw them
        said = r"router 1 said: local shard 1 is silent; its threads: \S+ T"
        assert re.search(said, reason), reason
    assert not _netns_of(vm.proc.pid)
