"""A VM's forwarding statistics: every router's counters merged into one snapshot.

Routers count since their start. A ``StatsView`` keeps the previous reading, so that
each snapshot gives rates and request-latency percentiles over the last interval, not
since boot. Every reader (the one-shot ``stats`` command, each ``stats --watch``
stream) has its own view, so readers at different rates do not disturb each other.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from cluster.forwarding_stats import MECHANISMS
from cluster.router.stats import LatencyHistogram

_SEQ = itertools.count(1)  # one sequence for the whole VM: snapshots are totally ordered


def _buckets(link: Mapping[str, Any]) -> dict[int, int]:
    return {int(k): int(v) for k, v in link.get("latency_buckets", {}).items()}


class StatsView:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._prev: dict[str, Any] | None = None
        self._prev_t = 0.0

    def snapshot(self, routers: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """``routers``: shard id -> that router's ``stats`` reply (absent if it is gone)."""
        now = self._clock()
        prev = self._prev or {}
        dt = now - self._prev_t if self._prev is not None else 0.0
        links: dict[str, Any] = {}
        mechs: dict[str, dict[str, Any]] = {
            m: {"total": 0, "msgs_per_s": 0.0, "bytes_per_s": 0.0} for m in MECHANISMS.values()
        }
        for sid, stats in sorted(routers.items()):
            for name, link in stats.get("links", {}).items():
                if not name.startswith("shard:"):
                    continue
                key = f"{sid}->{name.split(':', 1)[1]}"
                links[key] = self._link(link, prev.get(key), dt, mechs)
        _page_counters(routers, mechs["page"])
        self._prev = {k: v["_raw"] for k, v in links.items()}
        self._prev_t = now
        for v in links.values():
            del v["_raw"]
        return {
            "seq": next(_SEQ),
            "time": time.time(),
            "interval_s": round(dt, 3),
            "links": links,
            "mechanisms": mechs,
        }

    @staticmethod
    def _link(
        link: Mapping[str, Any],
        prev: Mapping[str, Any] | None,
        dt: float,
        mechs: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        per_type = link.get("per_type", {})
        raw = {
            "types": {
                t: (int(c.get("tx_msgs", 0)), int(c.get("tx_bytes", 0)))
                for t, c in per_type.items()
            },
            "buckets": _buckets(link),
            "max_ns": int(link.get("latency_max_ns", 0)),
        }
        before = prev or {"types": {}, "buckets": {}}
        out: dict[str, Any] = {"mechanisms": {}, "msgs_per_s": 0.0, "bytes_per_s": 0.0}
        for tname, (msgs, nbytes) in raw["types"].items():
            m0, b0 = before["types"].get(tname, (0, 0))
            dm, db = (msgs - m0, nbytes - b0) if dt > 0 else (0, 0)
            rate = {
                "total": msgs,
                "msgs_per_s": round(max(dm, 0) / dt, 1) if dt > 0 else 0.0,
                "bytes_per_s": round(max(db, 0) / dt, 1) if dt > 0 else 0.0,
            }
            out["msgs_per_s"] += rate["msgs_per_s"]
            out["bytes_per_s"] += rate["bytes_per_s"]
            mech = MECHANISMS.get(tname)
            if mech is not None:
                out["mechanisms"][mech] = rate
                for k in ("total", "msgs_per_s", "bytes_per_s"):
                    mechs[mech][k] += rate[k]
        # request latency over the interval: the histogram's growth since the last reading
        grown = {i: n - before["buckets"].get(i, 0) for i, n in raw["buckets"].items()}
        hist = [0] * (max(grown, default=-1) + 1)
        for i, n in grown.items():
            hist[i] = max(n, 0)
        count = sum(hist)
        h = LatencyHistogram(hist or (), count, 0, raw["max_ns"])
        out["requests"] = count
        out["latency_p50_us"] = round(h.percentile(50) / 1000.0, 2)
        out["latency_p99_us"] = round(h.percentile(99) / 1000.0, 2)
        out["_raw"] = raw
        return out


def _page_counters(routers: Mapping[int, Mapping[str, Any]], page: dict[str, Any]) -> None:
    """Add the dsm shards' page counters (PAGE_STATS, as each router shows them) to the
    mechanism "page": summed over shards, and each shard's own with its fault latency."""
    shards = {sid: s["page"] for sid, s in sorted(routers.items()) if s.get("page")}
    if not shards:
        return
    total: dict[str, int] = {}
    for v in shards.values():
        for k, n in v["counters"].items():
            total[k] = total.get(k, 0) + int(n)
    page["counters"] = total
    page["shards"] = {str(sid): v for sid, v in shards.items()}
