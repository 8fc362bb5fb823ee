"""A signal during a VM's teardown does not cut it short (the launcher's children, run
directory and namespaces would stay): it is ignored and the teardown goes on. Each case runs
in a child Python, so that the old behaviour fails the case, not the test run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# argv: the signal sent during the teardown (0: none), and "main" or "thread": where
# run_plan runs (a VM controller runs it in a thread of a Ray actor)
CHILD = """
import os, signal, sys, threading
from cluster.errors import DqemuError
from cluster.qemu_cmdline import BootFiles
from cluster.spec import parse_spec
from cluster.vm.orchestrator import VMOrchestrator
from cluster.vm.plan import make_plan

SIG, WHERE = int(sys.argv[1]), sys.argv[2]


class Host:
    torn_down = False

    def prepare(self, plan, ids):
        raise DqemuError("shard 0 failed to start")

    def stop(self):
        if SIG:
            os.kill(os.getpid(), SIG)  # handled at once: this is the main thread

    def teardown(self):
        Host.torn_down = True


spec = parse_spec('[vm]\\nvcpus = 1\\nmemory = 64\\n[[shard]]\\nid = 0\\nvcpus = "0"\\n')
plan = make_plan(spec, qemu="qemu", boot=BootFiles(None, None, ""), vm_id="t")
sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
before = [signal.getsignal(s) for s in sigs]
errors = []


def run():
    try:
        VMOrchestrator().run_plan(plan, dict.fromkeys(plan.hosts, Host()))
    except DqemuError as e:
        errors.append(e)


if WHERE == "main":
    run()
else:
    t = threading.Thread(target=run)
    t.start()
    t.join()
print("error:", *errors)
print("torn_down:", Host.torn_down)
print("handlers_back:", [signal.getsignal(s) for s in sigs] == before)
"""
EXPECTED = ["error: shard 0 failed to start", "torn_down: True", "handlers_back: True"]


def _child(sig: int, where: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(sig), where], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_teardown_is_ignored(sig: signal.Signals) -> None:
    out = _child(sig, "main")
    assert out.returncode == 0, f"{sig.name} ended the run (exit {out.returncode}): {out.stderr}"
    assert out.stdout.splitlines() == EXPECTED, out.stdout + out.stderr


def test_a_run_outside_the_main_thread_tears_down_without_signals() -> None:
    """No signal handling outside the main thread (signal.signal() would raise there): the
    teardown still runs and nothing is touched."""
    out = _child(0, "thread")
    assert out.returncode == 0 and out.stdout.splitlines() == EXPECTED, out.stdout + out.stderr
