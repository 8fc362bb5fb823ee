"""Per-link, per-message-type counters and a request-latency histogram.

The counters live in the C data path (`cluster/router/_fastpath.c`), which updates them
for every frame it reads or queues (exact: one writer, under the engine's lock); this
module turns a copy of them into the control API's figures. Latencies go into a
log-linear histogram of nanoseconds with 8 sub-buckets per power of two
(`_fastpath.bucket` gives a value's bucket; `_bucket_low` is a bucket's lower bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from cluster.router._fastpath import NBUCKETS
from cluster.router.protocol import type_name

_SUB_BITS = 3
_SUB = 1 << _SUB_BITS
_NBUCKETS = NBUCKETS


def _bucket_low(idx: int) -> int:
    if idx < _SUB:
        return idx
    e = idx // _SUB + _SUB_BITS
    return (_SUB + idx % _SUB) << (e - _SUB_BITS - 1)


class LatencyHistogram:
    """A read-only view of histogram buckets (nanosecond values)."""

    __slots__ = ("buckets", "count", "max_ns", "sum_ns")

    def __init__(
        self, buckets: Sequence[int] = (), count: int = 0, sum_ns: int = 0, max_ns: int = 0
    ) -> None:
        self.buckets = list(buckets) or [0] * _NBUCKETS
        self.count = count
        self.sum_ns = sum_ns
        self.max_ns = max_ns

    def percentile(self, q: float) -> float:
        """Approximate q-th percentile (0..100) in ns; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, round(q / 100.0 * self.count))
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                lo = _bucket_low(i)
                hi = _bucket_low(i + 1) if i + 1 < _NBUCKETS else lo
                return min((lo + hi) / 2.0, float(self.max_ns))
        return float(self.max_ns)

    def summary(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50_us": round(self.percentile(50) / 1000.0, 2),
            "p99_us": round(self.percentile(99) / 1000.0, 2),
            "max_us": round(self.max_ns / 1000.0, 2),
            "mean_us": round(self.sum_ns / self.count / 1000.0, 2) if self.count else 0.0,
        }


class Counters:
    """One copy of a link's counters, as laid out by ``_fastpath.Engine.counters``."""

    __slots__ = ("latency", "rx_bytes", "rx_msgs", "tx_bytes", "tx_msgs")

    def __init__(self, raw: bytes | None = None) -> None:
        if raw is None:
            raw = bytes(8 * (4 * 256 + _NBUCKETS + 3))
        v = memoryview(raw).cast("Q")
        self.rx_msgs = v[0:256].tolist()
        self.rx_bytes = v[256:512].tolist()
        self.tx_msgs = v[512:768].tolist()
        self.tx_bytes = v[768:1024].tolist()
        h = 1024 + _NBUCKETS
        self.latency = LatencyHistogram(v[1024:h].tolist(), v[h], v[h + 1], v[h + 2])

    def add(self, other: Counters) -> None:
        """Add ``other`` (e.g. a shard's direct link to the same peer) into this copy."""
        for mine, theirs in (
            (self.rx_msgs, other.rx_msgs),
            (self.rx_bytes, other.rx_bytes),
            (self.tx_msgs, other.tx_msgs),
            (self.tx_bytes, other.tx_bytes),
            (self.latency.buckets, other.latency.buckets),
        ):
            for i, v in enumerate(theirs):
                mine[i] += v
        lat, o = self.latency, other.latency
        lat.count += o.count
        lat.sum_ns += o.sum_ns
        lat.max_ns = max(lat.max_ns, o.max_ns)

    def totals(self) -> tuple[int, int, int, int]:
        return (sum(self.rx_msgs), sum(self.rx_bytes), sum(self.tx_msgs), sum(self.tx_bytes))


class LinkStats:
    """A link's figures: counters read from the data path, drops counted by the router."""

    __slots__ = ("_last", "_read", "created", "drop_reasons", "dropped", "extra", "rates")

    def __init__(self, read: Callable[[], Counters] = Counters) -> None:
        self._read = read
        # counters kept elsewhere for the same peer (the shard's direct link), added in
        self.extra: Callable[[], Counters | None] | None = None
        self.dropped = 0
        self.drop_reasons: dict[str, int] = {}
        self.created = time.monotonic()
        self.rates: dict[str, float] = {
            "rx_msgs_per_s": 0.0,
            "rx_bytes_per_s": 0.0,
            "tx_msgs_per_s": 0.0,
            "tx_bytes_per_s": 0.0,
        }
        self._last: tuple[float, int, int, int, int] = (self.created, 0, 0, 0, 0)

    def counters(self) -> Counters:
        c = self._read()
        more = self.extra() if self.extra is not None else None
        if more is not None:
            c.add(more)
        return c

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def update_rates(self, now: float | None = None) -> None:
        """Called about once a second by the router's housekeeping loop."""
        now = time.monotonic() if now is None else now
        t0, a0, b0, c0, d0 = self._last
        a, b, c, d = self.counters().totals()
        dt = now - t0
        if dt <= 0:
            return
        self.rates = {
            "rx_msgs_per_s": round((a - a0) / dt, 1),
            "rx_bytes_per_s": round((b - b0) / dt, 1),
            "tx_msgs_per_s": round((c - c0) / dt, 1),
            "tx_bytes_per_s": round((d - d0) / dt, 1),
        }
        self._last = (now, a, b, c, d)

    def snapshot(self) -> dict[str, Any]:
        c = self.counters()
        per_type: dict[str, dict[str, int]] = {}
        for t in range(256):
            if c.rx_msgs[t] or c.tx_msgs[t]:
                per_type[type_name(t)] = {
                    "rx_msgs": c.rx_msgs[t],
                    "rx_bytes": c.rx_bytes[t],
                    "tx_msgs": c.tx_msgs[t],
                    "tx_bytes": c.tx_bytes[t],
                }
        rx_m, rx_b, tx_m, tx_b = c.totals()
        return {
            "rx_msgs": rx_m,
            "rx_bytes": rx_b,
            "tx_msgs": tx_m,
            "tx_bytes": tx_b,
            "dropped": self.dropped,
            "drop_reasons": dict(self.drop_reasons),
            "rates": dict(self.rates),
            "request_latency": c.latency.summary(),
            # the raw histogram, so that a reader can take percentiles over an interval
            "latency_buckets": {str(i): n for i, n in enumerate(c.latency.buckets) if n},
            "latency_max_ns": c.latency.max_ns,
            "per_type": per_type,
            "age_s": round(time.monotonic() - self.created, 3),
        }
