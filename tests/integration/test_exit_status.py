"""Issue 12 items 5, 8, 9, 10, 12 and issue 13 §2.7, with real QEMU and guests.

- The guest's isa-debug-exit status comes back exactly, as the guest's (no "error:"),
  from every shard, with the writing vCPU on another shard than the device (2 shards,
  device on 0; 4 shards, device on 2).
- A kernel QEMU's loader refuses ends the run at once with QEMU's complaint.
- A drive that QEMU cannot open is reported as its owner's, shard 1.
- A SIGKILLed launcher's namespaces, run directory and RAM files are reaped by the next
  launcher and by `dqemu cleanup`, and a running launcher's are left alone.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, TEST_ENV, dqemu_cmd, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud")
TWO_SHARDS = ("--vcpus", "2", "--shards", "2")
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=4"


@pytest.mark.parametrize(
    ("shards", "device_shard", "cpu"),
    [(2, 0, 1), (4, 2, 1)],
    ids=["2-shards-device-on-0-cpu-1", "4-shards-device-on-2-cpu-1"],
)
def test_guest_status_comes_back_from_another_shard(
    shards: int, device_shard: int, cpu: int
) -> None:
    r = run_dqemu("loopback", *GUEST, "--vcpus", str(shards), "--shards", str(shards),
                  "--timeout", "600",
                  "--append", f"dq.run=debugexit dq.cpu={cpu}",
                  "--device", f"{DEBUG_EXIT}@{device_shard}", timeout=900)  # fmt: skip
    assert r.kv().get("debugexit_cpu") == str(cpu), r.stdout[-2000:]
    assert r.returncode == 33, r.stderr[-2000:]
    # the guest's choice, not an error, and every shard's own status (0019)
    assert (
        "dqemu: the guest ended the VM with status 33 (isa-debug-exit value 0x10) (every "
        "shard exited 33)" in r.stderr
    ), r.stderr[-2000:]
    assert "error" not in r.stderr, r.stderr[-2000:]


def test_drive_that_cannot_be_opened_names_its_owner(tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    r = run_dqemu("loopback", *GUEST, *TWO_SHARDS, "--timeout", "60",
                  "--drive", f"file={missing},if=none,id=d1,format=raw@1",
                  "--device", "virtio-blk-pci,drive=d1@1", timeout=300)  # fmt: skip
    assert r.returncode == 4, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("dqemu: error: shard 1 "), err
    assert str(missing) in err, err


def _netns(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(f"dq-{pid}-")]


def _leftovers(pid: int) -> list[str]:
    tmp = Path(tempfile.gettempdir())
    return (
        _netns(pid)
        + [str(p) for p in tmp.glob(f"dqemu-{pid}-*")]
        + [str(p) for p in Path("/dev/shm").glob(f"dqemu-{pid}-*")]
    )


def _launch(log_dir: Path) -> subprocess.Popen[str]:
    log_dir.mkdir()
    return subprocess.Popen(
        dqemu_cmd("loopback", *GUEST, *TWO_SHARDS, "--append", "dq.run=sleep",
                  "--timeout", "900", "--log-dir", str(log_dir)),
        cwd=REPO, env=TEST_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(what: str, cond: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killed_launchers_leftovers_are_reaped(tmp_path: Path) -> None:
    dead = _launch(tmp_path / "a")
    live: subprocess.Popen[str] | None = None
    try:
        pids_file = tmp_path / "a" / "pids.json"
        _wait_for("the first launcher's children", pids_file.exists)
        os.kill(dead.pid, signal.SIGKILL)
        dead.communicate(timeout=30)
        children = json.loads(pids_file.read_text()).values()
        left = _leftovers(dead.pid)
        assert _netns(dead.pid), left
        assert any(x.startswith(tempfile.gettempdir()) for x in left), left  # its run dir
        for ram in Path("/dev/shm").glob(f"dqemu-{dead.pid}-*"):
            assert stat.S_IMODE(ram.stat().st_mode) == 0o600, ram  # guest RAM: owner only
        _wait_for("the dead launcher's children to die",
                  lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                                  != psutil.STATUS_ZOMBIE for p in children), 30)  # fmt: skip

        # the next launcher reaps them when it starts, and keeps its own
        live = _launch(tmp_path / "b")
        assert live.stdout is not None
        for line in live.stdout:
            if "DQ KV sleeping=1" in line:
                break
        assert live.poll() is None
        assert _leftovers(dead.pid) == []
        mine = _leftovers(live.pid)
        assert len(_netns(live.pid)) == 3, mine  # two hosts and the bridge

        # `dqemu cleanup` beside a running launcher leaves it alone
        r = run_dqemu("cleanup", timeout=120)
        assert r.returncode == 0, r.stderr
        assert live.poll() is None
        assert _leftovers(live.pid) == mine
    finally:
        for p in (dead, live):
            if p is not None and p.poll() is None:
                p.terminate()
                p.communicate(timeout=60)
    assert live.returncode == -signal.SIGTERM, live.stderr
    assert _leftovers(live.pid) == []


def test_kernel_qemu_cannot_load_ends_at_once_with_its_complaint() -> None:
    # an ELF file (passes the format check) without a PVH note: QEMU's loader refuses it
    for _ in range(3):  # QEMU exits during the launcher's QMP handshake now and then
        r = run_dqemu("loopback", "--kernel", "/bin/true", "--timeout", "300", timeout=120)
        assert r.returncode == 4, r.stderr[-2000:]
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("dqemu: error: shard 0 failed to start (exit 1): "), last
        assert last.endswith("Error loading uncompressed kernel without PVH ELF Note"), last
