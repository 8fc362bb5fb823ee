"""A shard's DSM counters as its router shows them (docs/dsm.md §12).

A ``dsm`` shard sends its router PAGE_STATS every ``PAGE_STATS_INTERVAL_MS``: cumulative
counters and two fault-latency histograms (reads; writes and upgrades) in the router's
own buckets. The router keeps the reports of about the last two seconds and shows, under
``stats["page"]``, the latest counters, per-second rates and the fault latency p50/p99
over the last interval (from the growth of the histograms since a report about one
second older).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Any

from cluster.router import protocol as p
from cluster.router.stats import LatencyHistogram, _bucket_low

INTERVAL_S = 1.0  # the interval rates and percentiles cover
KEEP_S = 2 * INTERVAL_S


def _grown(now: Sequence[int], before: Sequence[int]) -> LatencyHistogram:
    """The latencies recorded between two reports."""
    hist = [max(a - b, 0) for a, b in zip(now, before, strict=True)]
    top = max((i for i, n in enumerate(hist) if n), default=-1)
    # a report has no maximum per interval: the top bucket's upper bound stands in
    return LatencyHistogram(hist, sum(hist), 0, _bucket_low(top + 1) if top >= 0 else 0)


def _latency(h: LatencyHistogram) -> dict[str, Any]:
    return {
        "count": h.count,
        "p50_us": round(h.percentile(50) / 1000.0, 2),
        "p99_us": round(h.percentile(99) / 1000.0, 2),
    }


def _since_start(hist: Sequence[int]) -> dict[str, Any]:
    """The latencies since the shard started, with the non-empty buckets (so that a
    reader can merge shards)."""
    out = _latency(_grown(hist, [0] * len(hist)))
    out["buckets"] = {str(i): n for i, n in enumerate(hist) if n}
    return out


class PageStatsView:
    """The last PAGE_STATS reports of one shard, with their arrival times."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reports: collections.deque[tuple[float, p.PageStats]] = collections.deque()

    def update(self, msg: p.PageStats) -> None:
        now = self._clock()
        self._reports.append((now, msg))
        while len(self._reports) > 2 and now - self._reports[1][0] >= KEEP_S:
            self._reports.popleft()

    def summary(self) -> dict[str, Any] | None:
        """None until the shard reported; else counters, rates and latencies."""
        if not self._reports:
            return None
        t1, last = self._reports[-1]
        t0, first = self._reports[0]
        for t, msg in self._reports:
            if t1 - t < INTERVAL_S:
                break
            t0, first = t, msg
        dt = t1 - t0
        c1, c0 = last.counters(), first.counters()

        def rate(*names: str) -> float:
            d = sum(c1[n] - c0[n] for n in names)
            return round(max(d, 0) / dt, 1) if dt > 0 else 0.0

        if dt <= 0:  # one report: everything since the shard started
            first = p.PageStats(
                **dict.fromkeys(c0, 0),
                read_hist=(0,) * len(last.read_hist),
                write_hist=(0,) * len(last.write_hist),
            )
        reads = _grown(last.read_hist, first.read_hist)
        writes = _grown(last.write_hist, first.write_hist)
        return {
            "counters": c1,
            "age_s": round(self._clock() - t1, 3),
            "interval_s": round(dt, 3),
            "rates": {
                "faults_per_s": rate("read_faults", "write_faults", "upgrades"),
                "pages_per_s": rate("pages_in", "pages_out"),
                "invalidations_per_s": rate("invalidations_in"),
                "mb_per_s": round(rate("bytes_in", "bytes_out") / 1e6, 3),
            },
            "read_fault": _latency(reads),
            "write_fault": _latency(writes),
            "since_start": {
                "read_fault": _since_start(last.read_hist),
                "write_fault": _since_start(last.write_hist),
            },
        }
