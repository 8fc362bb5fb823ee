"""Bad command lines give one clear line on stderr, a non-zero exit and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dqemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["loopback"], "give either --spec FILE or --kernel FILE"),
        (["loopback", "--kernel", "/nonexistent/bzImage"],
         "--kernel: file '/nonexistent/bzImage' does not exist"),
        (["loopback", "--spec", "examples/linux-1shard.toml", "--vcpus", "2"],
         "--spec cannot be combined with --vcpus"),
        (["loopback", "--spec", "/nonexistent.toml"], "cannot read spec /nonexistent.toml"),
        (["loopback", "--kernel", "guest:cloud", "--vcpus", "0"], "--vcpus: 0 is outside 1..256"),
        (["loopback", "--kernel", "guest:cloud", "--memory", "lots"],
         "--memory: 'lots' is not a size"),
        (["loopback", "--kernel", "guest:cloud", "--vcpus", "2", "--shards", "3"],
         "--shards 3 is more than --vcpus 2"),
        (["loopback", "--kernel", "guest:cloud", "--vcpus", "4", "--placement", "0-1;1-3"],
         "--placement: vCPU 1 is already placed on shard 0"),
        (["loopback", "--kernel", "guest:cloud", "--vcpus", "2", "--device", "isa-debug-exit@7"],
         "shard 7 does not exist"),
    ],
)  # fmt: skip
def test_bad_loopback_args(args: list[str], expected: str) -> None:
    proc = dqemu(*args)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("dqemu: error: ")


def test_unknown_subcommand() -> None:
    proc = dqemu("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr
