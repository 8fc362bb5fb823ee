"""The VM's merged stats: rates and latency percentiles over the interval, not since boot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster.vm.stats import StatsView

REPO = Path(__file__).resolve().parents[2]


def _router(ipis: int, pios: int, buckets: dict[str, int]) -> dict[str, Any]:
    return {
        "links": {
            "local": {"per_type": {"IRQ": {"tx_msgs": 999, "tx_bytes": 1}}},
            "shard:1": {
                "per_type": {
                    "IRQ": {"tx_msgs": ipis, "tx_bytes": ipis * 72},
                    "PIO_REQ": {"tx_msgs": pios, "tx_bytes": pios * 56},
                },
                "latency_buckets": buckets,
                "latency_max_ns": 10**6,
            },
        }
    }


class Clock:
    """A monotonic clock the test moves by hand: intervals are exact, not slept."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_and_latency_over_the_interval() -> None:
    clock = Clock()
    view = StatsView(clock)
    first = view.snapshot({0: _router(100, 10, {"40": 1000})})
    assert first["links"]["0->1"]["mechanisms"]["ipi"]["total"] == 100
    assert first["mechanisms"]["ipi"]["msgs_per_s"] == 0.0  # no interval yet
    clock.now += 0.25
    second = view.snapshot({0: _router(300, 10, {"40": 1000, "80": 10})})
    assert second["seq"] > first["seq"]
    assert second["interval_s"] == 0.25
    link = second["links"]["0->1"]
    assert link["mechanisms"]["ipi"]["total"] == 300
    assert link["mechanisms"]["ipi"]["msgs_per_s"] == 800.0  # 200 messages in 0.25 s
    assert second["mechanisms"]["ipi"]["msgs_per_s"] == 800.0
    assert link["mechanisms"]["pio"]["msgs_per_s"] == 0.0
    # only the 10 requests of this interval count: all in bucket 80, none of the 1000 old
    assert link["requests"] == 10
    slow = second["links"]["0->1"]["latency_p50_us"]
    assert (
        slow
        > StatsView().snapshot({0: _router(1, 1, {"40": 5})})["links"]["0->1"]["latency_p50_us"]
    )
    assert "local" not in str(second["links"])  # a router's own shard link is not a hop


def test_each_view_has_its_own_interval() -> None:
    clock = Clock()
    a, b = StatsView(clock), StatsView(clock)
    a.snapshot({0: _router(0, 0, {})})
    b.snapshot({0: _router(0, 0, {})})
    clock.now += 0.1
    assert a.snapshot({0: _router(50, 0, {})})["mechanisms"]["ipi"]["msgs_per_s"] == 500.0
    clock.now += 0.1
    # b's interval starts at its own previous reading: 50 messages in 0.2 s
    snap = b.snapshot({0: _router(50, 0, {})})
    assert snap["links"]["0->1"]["mechanisms"]["ipi"]["total"] == 50
    assert snap["mechanisms"]["ipi"]["msgs_per_s"] == 250.0


def _dqemu(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"DQEMU_RUN_DIR": str(tmp), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=60, check=False)  # fmt: skip


def test_commands_name_a_vm_that_is_not_running(tmp_path: Path) -> None:
    for cmd in (["info", "nosuch"], ["suspend", "nosuch"], ["console", "nosuch"],
                ["stats", "nosuch"], ["qmp", "nosuch", '{"execute": "query-status"}']):  # fmt: skip
        r = _dqemu(tmp_path, *cmd)
        assert r.returncode == 1, (cmd, r.stderr)
        assert r.stderr == "dqemu: error: no VM named nosuch (running: none)\n", cmd
    r = _dqemu(tmp_path, "list")
    assert r.returncode == 0 and r.stdout.startswith("NAME")


def test_bad_names_and_qmp_json(tmp_path: Path) -> None:
    r = _dqemu(tmp_path, "loopback", "--kernel", "x", "--name", "bad name")
    assert r.returncode == 2 and "bad VM name 'bad name'" in r.stderr
    r = _dqemu(tmp_path, "qmp", "x", "{nope")
    assert r.returncode == 2 and "qmp: the command is not JSON" in r.stderr
