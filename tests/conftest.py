"""Shared fixtures: the built QEMU and guest, and a runner for the dqemu CLI."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from loopback.owner import maker_alive

REPO = Path(__file__).resolve().parents[1]
# Every process a test starts carries this in its environment (and so do their children),
# so leftovers are found exactly, even with other dQEMU runs on the machine.
TEST_TAG = f"dqemu-test-{os.getpid()}-{secrets.token_hex(4)}"
TEST_ENV = {**os.environ, "DQEMU_TEST_TAG": TEST_TAG}
# Tests that send SIGINT stand for a Ctrl-C at a terminal. A suite started in the background
# by a non-interactive shell (`( ... ) &`) inherits SIGINT ignored, and every process the
# tests start would inherit that too, so dqemu would rightly ignore the "Ctrl-C" (ci16 failed
# three such tests, and left the cluster that one of them interrupted). A Python handler here
# means the children start with SIGINT at its default, as under a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# tests/rdma/ needs soft-RoCE devices: it runs inside the RDMA test host (which sets
# DQEMU_RDMA_HOST: tests/support/rdma_host.py), booted by tests/integration/test_rdma.py
collect_ignore = [] if os.environ.get("DQEMU_RDMA_HOST") else ["rdma"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def kv(self) -> dict[str, str]:
        """The guest's ``DQ KV key=value`` lines."""
        out: dict[str, str] = {}
        for line in self.stdout.splitlines():
            if line.startswith("DQ KV "):
                key, _, value = line[6:].strip().partition("=")
                out[key] = value
        return out

    def passed(self, name: str) -> bool:
        return any(line.strip() == f"DQ PASS {name}" for line in self.stdout.splitlines())


def dqemu_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cluster.cli", *args]


def run_dqemu(*args: str, timeout: float = 600) -> Run:
    proc = subprocess.run(
        dqemu_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout,
        check=False, env=TEST_ENV, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def built() -> None:
    """Build (or find cached) the patched QEMU and the guest before integration tests."""
    for cmd in (("build-qemu",), ("build-guest",)):
        r = run_dqemu(*cmd, timeout=3000)
        assert r.returncode == 0, r.stderr


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail the test if a process it started, a dqemu shm file or a launcher's run
    directory outlives it."""
    before = {p.name for p in Path("/dev/shm").glob("dqemu-*")}
    tmp = Path(tempfile.gettempdir())
    dirs_before = {p.name for p in tmp.glob("dqemu-*")}
    ours = _Descendants().start()
    try:
        yield
    finally:
        ours.stop()
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and p.environ().get("DQEMU_TEST_TAG") == TEST_TAG:
                left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    # new RAM files whose launcher no longer runs (another launcher on the machine, alive,
    # may have its own there for a while)
    shm = sorted(
        name
        for name in {p.name for p in Path("/dev/shm").glob("dqemu-*")} - before
        if not _maker_alive(Path("/dev/shm") / name) and _maker_pid(name) in ours.pids
    )
    # new run directories (/tmp/dqemu-<pid>-...) of a launcher that the test started (or
    # of this process: an in-process run removes its own before it returns) and that no
    # longer runs: nothing would remove them but the next launcher's reap
    rundirs = sorted(
        name
        for name in {p.name for p in tmp.glob("dqemu-*")} - dirs_before
        if (tmp / name).is_dir()
        and _maker_pid(name) in ours.pids
        and (_maker_pid(name) == os.getpid() or not _maker_alive(tmp / name))
    )
    assert not left, f"processes left behind: {left}"
    assert not shm, f"shared memory left behind: {shm}"
    assert not rundirs, f"run directories left behind: {rundirs}"


class _Descendants:
    """Every pid that this test process and its children started while a test ran
    (sampled every 0.2 s; a launcher lives for seconds at least). RAM files of other
    launchers on the machine (another engineer's, killed meanwhile) are not the test's."""

    def __init__(self) -> None:
        self.pids = {os.getpid()}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="descendants", daemon=True)

    def start(self) -> _Descendants:
        self._look()
        self._thread.start()
        return self

    def _look(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.pids.update(c.pid for c in psutil.Process().children(recursive=True))

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self._look()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._look()


def _maker_pid(name: str) -> int:
    pid = name.split("-")[1]
    return int(pid) if pid.isdigit() else -1


def _maker_alive(path: Path) -> bool:
    """Is the launcher that made this ``dqemu-<pid>-...`` file still running?"""
    pid = path.name.split("-")[1]
    return pid.isdigit() and maker_alive(int(pid), path)
