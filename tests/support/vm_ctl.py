"""The dqemu CLI against a registry of a test's own (tests/integration/test_control.py,
test_dqconsole.py)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import REPO, TEST_ENV, dqemu_cmd


class Ctl:
    """The dqemu CLI with a registry of this test's own."""

    def __init__(self, run_dir: Path) -> None:
        self.env = {**TEST_ENV, "DQEMU_RUN_DIR": str(run_dir)}
        self.run_dir = run_dir

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            dqemu_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout,
            check=False, env=self.env, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def json(self, *args: str) -> Any:
        r = self.run(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            dqemu_cmd(*args), cwd=REPO, env=self.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_dead(pids: list[int], what: str, timeout: float = 30.0) -> None:
    """Wait until none of ``pids`` runs (a zombie counts as ended); fail with ``what``."""
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
