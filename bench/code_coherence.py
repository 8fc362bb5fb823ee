#!/usr/bin/env python3
"""Code announcements, "fast" against "plain" (issue 14, docs/shard-design.md §6).

Boots the Linux test guest (``dq.run=cpus``) over 2 and 4 shards with each
``code_announce`` mode, the modes taking turns so that both see the same load, and prints
per layout and mode the wall time and the shards' own counters (patch 0034, summed over
the shards): announcements sent and the seconds their senders waited for all acks, the
translations that needed none because an announcement was remembered, and the
invalidations and their wait. Last line, the announcement wait of "fast" as a fraction
of "plain" per layout: ``announce_wait_ratio_2=<x> announce_wait_ratio_4=<y>``.

Run from the repository with the venv's python:
``.venv/bin/python bench/code_coherence.py [--vcpus 4] [--runs 1]``. Figures, never
assertions; on this shared 2-CPU machine only orders of magnitude.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.linux_guest import FIGURES, boot_once  # noqa: E402

MODES = ("plain", "fast")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    ratios: dict[int, float] = {}
    for shards in (2, 4):
        runs: dict[str, list[tuple[float, dict[str, float]]]] = {m: [] for m in MODES}
        for _ in range(args.runs):
            for mode in MODES:
                runs[mode].append(boot_once(args.vcpus, shards, "--code-announce", mode))
        wait: dict[str, float] = {}
        for mode in MODES:
            wall = statistics.median(t for t, _ in runs[mode])
            figures = {k: statistics.median(c[k] for _, c in runs[mode]) for k in FIGURES}
            wait[mode] = figures["announce_wait_s"]
            print(f"shards={shards} vcpus={args.vcpus} code_announce={mode} wall_s={wall:.1f} "
                  + " ".join(f"{k}={v:.2f}" if k.endswith("_s") else f"{k}={v:.0f}"
                             for k, v in figures.items() if k != "posted_sent"))  # fmt: skip
        ratios[shards] = wait["fast"] / wait["plain"] if wait["plain"] else float("nan")
    print(f"announce_wait_ratio_2={ratios[2]:.2f} announce_wait_ratio_4={ratios[4]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
