#!/usr/bin/env python3
"""Boot time of the Linux test guest over 1, 2 and 4 shards with the same vCPU count.

Prints one line per layout, then the ratios against one shard. Last line:
``boot_ratio_2=<x> boot_ratio_4=<y>``. Run it from the repository with the venv's python:
``.venv/bin/python bench/boot.py [--vcpus 4] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def boot_once(vcpus: int, shards: int) -> float:
    return boot_run(vcpus, shards)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    medians: dict[int, float] = {}
    for shards in (1, 2, 4):
        times = [boot_once(args.vcpus, shards) for _ in range(args.runs)]
        medians[shards] = statistics.median(times)
        print(f"shards={shards} vcpus={args.vcpus} boot_s_median={medians[shards]:.2f} "
              f"runs={' '.join(f'{t:.2f}' for t in times)}")  # fmt: skip
    print(f"boot_ratio_2={medians[2] / medians[1]:.2f} boot_ratio_4={medians[4] / medians[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
