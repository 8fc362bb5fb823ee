"""Issue 6 (time) acceptance: one clock for every shard, in loopback.

- dqtest's TSC checks (a TSC value handed from CPU A to CPU B never goes backwards) pass
  between every pair of CPUs over 2 and 4 shards, with no backward step at all.
- The Linux guest over 2 and 4 shards keeps the TSC as its clocksource without
  ``tsc=reliable`` (its own TSC sync check at CPU bring-up passed), logs no TSC warp,
  unstable TSC or clocksource watchdog line, and its clock read on one CPU after another
  never goes backwards (guests/linux/tests/clock).
- bench/clock_skew.py: the shards' virtual clocks agree within the bound documented in
  docs/shard-design.md (Clock) after the start and after a stop/cont at one instant.
- Issue 18 §3, across hosts played on one machine (the spec's test knob): with one shard's
  host clock 5 s ahead and 200 ppm fast, dqtest's TSC checks pass with ``clock_sync = "on"``
  and fail without it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from loopback.dqtest import build_dqtest, run_dqtest
from tests.conftest import REPO, TEST_ENV, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

VCPUS = 4
# docs/shard-design.md, Clock: shards on one host share the host clock, the measured
# offset is taken as exactly 0 and every shard starts and stops at the same instant.
SKEW_BOUND_ONE_HOST_NS = 0


@pytest.mark.parametrize("shards", [2, 4])
def test_dqtest_tsc_across_shards(shards: int) -> None:
    run = run_dqtest(build_dqtest(), shards=shards, vcpus=VCPUS, append="only=tsc iters=200",
                     timeout=600)  # fmt: skip
    r = run.result
    assert r.complete, f"{run.stderr}\n{run.output[-2000:]}"
    tsc = [c for c in r.checks if c.description.startswith("tsc ")]
    assert len(tsc) == VCPUS * (VCPUS - 1) + 1, r.summary()  # every ordered pair + calibration
    assert all(c.ok for c in tsc), r.summary() + "\n" + run.output[-3000:]
    assert r.info["tsc"]["max_backward_ns"] == "0", r.info["tsc"]
    assert r.info["cpu"]["invariant_tsc"] == "1"


# shard 1 plays another host: its view of the host clock runs 5 s ahead and 200 ppm fast
# (the test knob of docs/spec.md)
SKEWED_SHARD = {1: {"test_clock_skew_ns": 5_000_000_000, "test_clock_drift_ppm": 200}}
# guest time before the TSC checks: the drift (200 us/s) is then well beyond dqtest's
# 50 us bound without clock sync, and the sync has learnt the drift (3 s of estimates)
SKEW_DELAY_MS = 3000


@pytest.mark.parametrize("sync", ["on", "off"])
def test_dqtest_tsc_with_skewed_host_clock(sync: str) -> None:
    """Issue 18 §3: with clock_sync the TSC handed between shards never goes back more
    than dqtest's bound although one shard's host clock is 5 s ahead and 200 ppm fast;
    without it (only the start-time offset of 0018) the drift shows."""
    run = run_dqtest(
        build_dqtest(), shards=2, vcpus=2, timeout=600,
        append=f"only=tsc iters=200 delay_ms={SKEW_DELAY_MS}",
        vm_extra={"clock_sync": sync}, shard_extra=SKEWED_SHARD,
    )  # fmt: skip
    r = run.result
    assert r.complete, f"{run.stderr}\n{run.output[-2000:]}"
    tsc = [c for c in r.checks if c.description.startswith("tsc cpu")]
    assert len(tsc) == 2, r.summary()
    back = int(r.info["tsc"]["max_backward_ns"])
    if sync == "on":
        assert all(c.ok for c in tsc), r.summary() + "\n" + run.output[-3000:]
    else:
        assert not all(c.ok for c in tsc), r.summary()
        assert back > int(r.info["tsc"]["bound_ns"]), r.info["tsc"]


BENIGN_WATCHDOG = re.compile(
    r"retried \d+ times before success$|wd-wd read-back delay of \d+ns$|clock-skew test skipped!$"
)


@pytest.mark.parametrize("shards", [2, 4])
def test_linux_keeps_tsc_clocksource(shards: int) -> None:
    r = run_dqemu(
        "loopback", "--kernel", "guest:cloud", "--initrd", "guest:cloud", "--timeout", "600",
        "--vcpus", str(VCPUS), "--shards", str(shards), "--append", f"dq.run=clock dq.cpus={VCPUS}",
        timeout=900,
    )  # fmt: skip
    kv = r.kv()
    assert r.passed("clock"), r.stdout[-4000:] + r.stderr[-1000:]
    assert kv["online_cpus"] == str(VCPUS)
    assert kv["clocksource"] == "tsc"
    assert kv["cpu_constant_tsc"] == kv["cpu_nonstop_tsc"] == "1"
    assert kv["dmesg_clock_complaints"] == "0"
    assert kv["time_backwards"] == "0"
    # the same verdicts straight from the kernel log on the console, less the watchdog's
    # notes that a read was slow on a busy host and it read again or skipped a check (the
    # guest's own filter, guests/linux/tests/clock, passes over the same three)
    log = "\n".join(ln for ln in r.stdout.splitlines() if not BENIGN_WATCHDOG.search(ln))
    for bad in ("TSC warp", "Marking TSC unstable", "timekeeping watchdog", "unsynchronized"):
        assert bad not in log, bad
    assert "tsc=reliable" not in r.stdout
    assert r.returncode == 0, r.stderr[-2000:]


def test_skew_bench_within_documented_bound() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "clock_skew.py"), "--shards", "2", "--no-guest"],
        cwd=REPO, env=TEST_ENV, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"max_skew_ns=(\d+)", lines[-1])
    assert m, lines[-1:]
    assert int(m.group(1)) <= SKEW_BOUND_ONE_HOST_NS, proc.stdout
    after = next(ln for ln in lines if "stop/cont at one instant" in ln)
    assert re.search(r"skew_ns=(\d+)", after).group(1) == "0", after  # type: ignore[union-attr]
    paused = [int(x) for x in re.search(r"paused_ns=\[([^]]*)\]", after).group(1).split(",")]  # type: ignore[union-attr]
    assert len(set(paused)) == 1 and paused[0] > 0, after


def test_stock_qemu_keeps_its_clock(tmp_path: Path) -> None:
    # Without the dqemu-shard object nothing changes: TCG advertises no invariant TSC.
    run = run_dqtest(build_dqtest(), shards=1, vcpus=2, append="only=tsc iters=20", timeout=600)
    assert run.result.complete, run.output[-2000:]
    assert run.result.info["cpu"]["invariant_tsc"] == "0", run.result.info["cpu"]
