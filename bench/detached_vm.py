"""A detached loopback VM for benches that watch a running VM (bench/control.py,
bench/console.py): started in a registry of its own, destroyed on the way out."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.vm import registry  # noqa: E402


def dqemu(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    """``dqemu ARGS``' output; the bench ends with dqemu's own message if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"dqemu {args[0]} failed: {tail}")
    return proc.stdout


@contextmanager
def detached_vm(*loopback_args: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``dqemu loopback ARGS --detach`` in a private registry (also set in this process's
    environment): the VM's name and the environment that finds it."""
    with tempfile.TemporaryDirectory(prefix="dqbench-") as run_dir:
        env = {**os.environ, "DQEMU_RUN_DIR": run_dir}
        os.environ["DQEMU_RUN_DIR"] = run_dir
        name = dqemu(env, "loopback", *loopback_args, "--detach").strip()
        try:
            yield name, env
        finally:
            dqemu(env, "destroy", name)
            deadline = time.monotonic() + 30
            while registry.entries()[0] and time.monotonic() < deadline:
                time.sleep(0.2)
