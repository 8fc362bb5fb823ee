#!/usr/bin/env python3
"""Boot time of the Linux test guest over 1, 2 and 4 shards with the same vCPU count.

The sharded layouts run once per data path (``--data-paths``, default both: through the
routers, and on direct shard-to-shard links). Every run boots each layout once, one after
the other, with the paths' order swapped from one run to the next, so that a change in
the machine's load hits every layout alike. Prints every boot as it ends, then one line per
layout (medians over the runs) and per sharded layout the shards' own counters (each
shard logs them as it exits; medians): the posted writes sent (docs/shard-design.md,
"Posted writes") and the synchronous code announcements and invalidations (§6) with the
seconds spent waiting for their acks, summed over the shards. Then the load average; per
data path the ratios against one shard over the guest's own clock at power-off
(``<path>: guest_ratio_2=<x> guest_ratio_4=<y>``: the boot without the launcher's set-up
and teardown of namespaces, routers and shards, which the wall time includes) and over the
wall time (``<path>: boot_ratio_2=<x> boot_ratio_4=<y>``); and, last, the default path's
(the spec's, direct) wall-time ratios: ``boot_ratio_2=<x> boot_ratio_4=<y>``. Run it from
the repository with the venv's python: ``.venv/bin/python bench/boot.py [--vcpus 4]
[--runs 3] [--data-paths router,direct] [--posted-writes off|auto|on]`` (``--vcpus``: at
least 4, one per shard of the 4-shard layout).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.linux_guest import (  # noqa: E402
    FIGURES,
    Layout,
    add_vm_choices,
    boot_once,
    loadavg,
    vm_flags,
)
from cluster.spec import DATA_PATHS, default_data_path  # noqa: E402

# the sharded layouts' shard counts; every boot needs a vCPU per shard
SHARDED = (2, 4)
MOST_SHARDS = max(SHARDED)


def run_order(run: int, paths: list[str]) -> list[Layout]:
    """The layouts of run number ``run`` (from 0) in the order they boot: one shard, then
    2 and 4 shards on every path, the paths' order reversed in every other run."""
    order = paths if run % 2 == 0 else paths[::-1]
    return [Layout(1), *(Layout(s, p) for s in SHARDED for p in order)]


def ratio_line(times: dict[Layout, float], path: str, name: str) -> str:
    """``<name>_2=<x> <name>_4=<y>``: the sharded layouts' ``times`` on ``path`` over one
    shard's (None where one shard's is unknown)."""
    one = times[Layout(1)]
    return " ".join(
        f"{name}_{n}={times[Layout(n, path)] / one:.2f}" if one else f"{name}_{n}=None"
        for n in SHARDED
    )


def vcpus_arg(value: str) -> int:
    """``--vcpus``: at least one per shard of the largest layout (4), so that every layout
    boots; an argparse error otherwise, before any boot."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if n < MOST_SHARDS:
        raise argparse.ArgumentTypeError(
            f"{n}: the {MOST_SHARDS}-shard layout needs at least {MOST_SHARDS} vCPUs"
        )
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=vcpus_arg, default=4)
    ap.add_argument("--runs", type=int, default=3)
    add_vm_choices(ap, ",".join(DATA_PATHS), "the sharded boots")
    args = ap.parse_args()
    paths: list[str] = args.data_paths
    runs: dict[Layout, list[tuple[float, dict[str, float]]]] = {}
    for n in range(args.runs):
        for layout in run_order(n, paths):
            more = vm_flags(args, layout.data_path)
            runs.setdefault(layout, []).append(boot_once(args.vcpus, layout.shards, *more))
            print(f"run={n + 1} {layout.name} boot_s={runs[layout][-1][0]:.2f}", flush=True)
    medians: dict[Layout, float] = {}
    for layout in run_order(0, paths):
        times = [t for t, _ in runs[layout]]
        medians[layout] = statistics.median(times)
        print(f"{layout.name} vcpus={args.vcpus} boot_s_median={medians[layout]:.2f} "
              f"runs={' '.join(f'{t:.2f}' for t in times)}")  # fmt: skip
        if layout.shards > 1:
            figures = {k: statistics.median(c[k] for _, c in runs[layout]) for k in FIGURES}
            print(f"  {layout.name} " + " ".join(
                f"{k}={v:.0f}" if not k.endswith("_s") else f"{k}={v:.2f}"
                for k, v in figures.items()))  # fmt: skip
    print(loadavg())
    # the same over the guest's own clock at power-off (no launcher set-up or teardown)
    guest = {layout: statistics.median(c["guest_s"] for _, c in runs[layout]) for layout in runs}
    print(f"guest_s_median shards=1 {guest[Layout(1)]:.2f}")
    for p in paths:
        print(f"{p}: {ratio_line(guest, p, 'guest_ratio')}")
    ratios = {p: ratio_line(medians, p, "boot_ratio") for p in paths}
    for p, line in ratios.items():
        print(f"{p}: {line}")
    print(ratios.get(default_data_path(), ratios[paths[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
