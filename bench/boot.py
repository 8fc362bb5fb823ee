#!/usr/bin/env python3
"""Boot time of the Linux test guest over 1, 2 and 4 shards with the same vCPU count.

Prints one line per layout, then the ratios against one shard. Per sharded layout also
the shards' own counters (each shard logs them as it exits; medians over the runs): the
posted writes sent (docs/shard-design.md, "Posted writes") and the synchronous code
announcements and invalidations (§6) with the seconds spent waiting for their acks, summed
over the shards. Last line: ``boot_ratio_2=<x> boot_ratio_4=<y>``. Run it from the
repository with the venv's python:
``.venv/bin/python bench/boot.py [--vcpus 4] [--runs 3] [--posted-writes off|auto|on]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# "dqemu: shard N counters: posted {...} tb {...}" (patch 0034), once per shard log
COUNTERS = re.compile(r"dqemu: shard \d+ counters: posted (\{.*?\}) tb (\{.*?\})")
FIGURES = (
    "posted_sent", "announces", "announce_wait_s", "remembered", "invalidates",
    "invalidate_wait_s",
)  # fmt: skip


def boot_run(
    vcpus: int, shards: int, *extra: str, timeout: int = 600
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Boot the test guest with ``dq.run=cpus`` (plus ``extra`` loopback arguments): the
    wall time from launch to its end, and the run; exits naming the failure."""
    cmd = [
        sys.executable, "-m", "cluster.cli", "loopback", "--kernel", "guest:cloud",
        "--initrd", "guest:cloud", "--append", "dq.run=cpus", "--vcpus", str(vcpus),
        "--shards", str(shards), "--timeout", str(timeout), *extra,
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0 or f"DQ KV online_cpus={vcpus}" not in proc.stdout:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        sys.exit(f"boot over {shards} shard(s) {' '.join(extra)} failed: {tail[0]}")
    return elapsed, proc


def shard_counters(log_dir: Path) -> dict[str, float]:
    """The figures of one run, summed over its shards' logs."""
    out = dict.fromkeys(FIGURES, 0.0)
    for log in log_dir.glob("shard*.log"):
        m = COUNTERS.search(log.read_text(errors="replace"))
        if not m:
            continue
        posted, tb = json.loads(m.group(1)), json.loads(m.group(2))
        out["posted_sent"] += posted.get("sent", 0)
        out["announces"] += tb.get("announces", 0)
        out["announce_wait_s"] += tb.get("announce_ns", 0) / 1e9
        out["invalidates"] += tb.get("invalidates", 0)
        out["invalidate_wait_s"] += tb.get("invalidate_ns", 0) / 1e9
        out["remembered"] += tb.get("remembered", 0)
    return out


def boot_once(vcpus: int, shards: int, *extra: str) -> tuple[float, dict[str, float]]:
    """One boot (``extra``: loopback arguments): its wall time and the shards' counters."""
    with tempfile.TemporaryDirectory(prefix="dqemu-boot-bench-") as logs:
        elapsed, _ = boot_run(vcpus, shards, "--log-dir", logs, *extra)
        return elapsed, shard_counters(Path(logs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--posted-writes", choices=("auto", "on", "off"), default="off")
    args = ap.parse_args()
    medians: dict[int, float] = {}
    for shards in (1, 2, 4):
        runs = [
            boot_once(args.vcpus, shards, "--posted-writes", args.posted_writes)
            for _ in range(args.runs)
        ]
        times = [t for t, _ in runs]
        medians[shards] = statistics.median(times)
        print(f"shards={shards} vcpus={args.vcpus} boot_s_median={medians[shards]:.2f} "
              f"runs={' '.join(f'{t:.2f}' for t in times)}")  # fmt: skip
        if shards > 1:
            figures = {k: statistics.median(c[k] for _, c in runs) for k in FIGURES}
            print(f"  shards={shards} " + " ".join(
                f"{k}={v:.0f}" if not k.endswith("_s") else f"{k}={v:.2f}"
                for k, v in figures.items()))  # fmt: skip
    print(f"boot_ratio_2={medians[2] / medians[1]:.2f} boot_ratio_4={medians[4] / medians[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
