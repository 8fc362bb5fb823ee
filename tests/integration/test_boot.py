"""The patched QEMU boots the Linux test guest from the loopback launcher."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest

from tests.conftest import REPO, TEST_ENV, Run, dqemu_cmd, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]


def test_version_marks_dqemu_build() -> None:
    qemu = run_dqemu("build-qemu", "--print-path").stdout.strip()
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout
    assert "10.0.2+dqemu" in out


def boot(test: str, *extra: str, timeout: str = "300") -> Run:
    """Boot the Linux test guest on one shard, running guest test ``test``."""
    return run_dqemu(
        "loopback", "--kernel", "guest:cloud", "--initrd", "guest:cloud",
        "--append", f"dq.run={test}", "--timeout", timeout, *extra,
    )  # fmt: skip


@pytest.mark.parametrize("vcpus", [1, 4])
def test_guest_reports_cpu_count(vcpus: int) -> None:
    r = boot("cpus", "--vcpus", str(vcpus))
    assert r.returncode == 0, r.stderr
    assert r.passed("cpus"), r.stdout[-2000:]
    assert r.kv()["online_cpus"] == str(vcpus)
    assert "guest powered off" in r.stderr


def test_spec_file_boot() -> None:
    r = run_dqemu("loopback", "--spec", "examples/linux-1shard.toml")
    assert r.returncode == 0, r.stderr
    assert r.kv()["online_cpus"] == "2"


def test_guest_panic_exits_nonzero() -> None:
    r = boot("panic")
    assert r.returncode == 6  # even: no guest's isa-debug-exit status is
    assert "dqemu: error: guest panic: Kernel panic - not syncing" in r.stderr


def test_timeout_exits_nonzero() -> None:
    r = boot("sleep", timeout="20")
    assert r.returncode == 124
    assert "guest did not finish within 20 s" in r.stderr


def test_isa_debug_exit_status_passes_through() -> None:
    # The guest writes 0x10 to port 0xf4: QEMU exits with (0x10 << 1) | 1 = 33.
    r = boot("debugexit", "--device", "isa-debug-exit,iobase=0xf4,iosize=4@0")
    assert r.returncode == 33, r.stderr
    # the guest's own choice, not an error (issue 12.12)
    assert "dqemu: the guest ended the VM with status 33 (isa-debug-exit value 0x10)" in r.stderr
    assert "(the shard exited 33)" in r.stderr
    assert "error" not in r.stderr, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_boot_leaves_nothing(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        dqemu_cmd("loopback", "--kernel", "guest:cloud", "--initrd", "guest:cloud",
                  "--append", "dq.run=sleep", "--timeout", "300"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TEST_ENV,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if "DQ KV sleeping=1" in line or time.monotonic() > deadline:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("qemu-system" in " ".join(c.cmdline()) for c in children)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # SIGINT: 130; SIGTERM ends dqemu by the same signal, after its teardown (an exit
    # status 128 + 15 would be odd, as a guest's isa-debug-exit status is)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), err[-2000:]
    assert "Traceback" not in err
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE, c
