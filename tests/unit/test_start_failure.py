"""A VM that fails to start names the shard that failed, not one that stopped for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.errors import DqemuError
from cluster.qemu_cmdline import BootFiles
from cluster.spec import parse_spec
from cluster.vm.exit_policy import EXIT_SHARD_FAILED
from cluster.vm.orchestrator import (
    START_TIMEOUT,
    START_TIMEOUT_ENV,
    VMOrchestrator,
    start_timeout,
)
from cluster.vm.plan import make_plan
from loopback.host import LoopbackHost
from loopback.procs import Child


def _dead(name: str, status: int, log: Path, words: str) -> Child:
    log.write_text(words + "\n")
    proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({status})"])
    proc.wait()
    return Child(name, proc, log)


def test_start_failure_names_the_shard_that_failed(tmp_path: Path) -> None:
    spec = parse_spec('[vm]\nvcpus = 2\nmemory = 64\n[[shard]]\nid = 0\nvcpus = "0"\n'
                      '[[shard]]\nid = 1\nvcpus = "1"\n')  # fmt: skip
    vm = VMOrchestrator()
    vm.plan = make_plan(spec, qemu="qemu", boot=BootFiles(None, None, ""), vm_id="t")
    host = LoopbackHost()
    vm.hosts = dict.fromkeys(vm.plan.hosts, host)
    # shard 0 stopped because it lost shard 1 (exit 4) and is listed first
    host.sup.children = [
        _dead("shard 0", EXIT_SHARD_FAILED, tmp_path / "0.log", "dqemu: shard 1 lost"),
        _dead("shard 1", 1, tmp_path / "1.log", "Block node is read-only"),
    ]
    err = vm._start_failure()
    assert str(err).startswith("shard 1 failed to start (exit 1): Block node is read-only")


def test_start_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """DQEMU_START_TIMEOUT stretches every start-up stage's bound (the RDMA test host needs
    it: TCG inside TCG); a value that is no positive number of seconds is named."""
    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    assert start_timeout() == START_TIMEOUT
    monkeypatch.setenv(START_TIMEOUT_ENV, "600")
    assert start_timeout() == 600.0
    for bad in ("soon", "0", "-5", "nan", "1e9"):
        monkeypatch.setenv(START_TIMEOUT_ENV, bad)
        with pytest.raises(DqemuError, match=rf"DQEMU_START_TIMEOUT='{bad}': not a number"):
            start_timeout()
