"""Per-link, per-message-type counters and a request-latency histogram.

Cheap enough to leave on: the hot path does list increments indexed by the type byte.
Receive counters are written only by the link's reader thread; send counters only under
the link's send lock, so counts are exact.
"""

from __future__ import annotations

import time
from typing import Any

from cluster.router.protocol import type_name

_SUB_BITS = 3
_SUB = 1 << _SUB_BITS
_NBUCKETS = 42 * _SUB


def _bucket(v: int) -> int:
    if v < _SUB:
        return v
    e = v.bit_length()
    idx = (e - _SUB_BITS) * _SUB + ((v >> (e - _SUB_BITS - 1)) & (_SUB - 1))
    return idx if idx < _NBUCKETS else _NBUCKETS - 1


def _bucket_low(idx: int) -> int:
    if idx < _SUB:
        return idx
    e = idx // _SUB + _SUB_BITS
    return (_SUB + idx % _SUB) << (e - _SUB_BITS - 1)


class LatencyHistogram:
    """Log-linear histogram of nanosecond values (8 sub-buckets per power of two)."""

    __slots__ = ("buckets", "count", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self.buckets = [0] * _NBUCKETS
        self.count = 0
        self.sum_ns = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        if ns < 0:
            ns = 0
        self.buckets[_bucket(ns)] += 1
        self.count += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

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


class LinkStats:
    __slots__ = (
        "_last",
        "created",
        "drop_reasons",
        "dropped",
        "latency",
        "rates",
        "rx_bytes",
        "rx_msgs",
        "tx_bytes",
        "tx_msgs",
    )

    def __init__(self) -> None:
        self.rx_msgs = [0] * 256
        self.rx_bytes = [0] * 256
        self.tx_msgs = [0] * 256
        self.tx_bytes = [0] * 256
        self.dropped = 0
        self.drop_reasons: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.created = time.monotonic()
        self.rates: dict[str, float] = {
            "rx_msgs_per_s": 0.0,
            "rx_bytes_per_s": 0.0,
            "tx_msgs_per_s": 0.0,
            "tx_bytes_per_s": 0.0,
        }
        self._last: tuple[float, int, int, int, int] = (self.created, 0, 0, 0, 0)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def totals(self) -> tuple[int, int, int, int]:
        return (sum(self.rx_msgs), sum(self.rx_bytes), sum(self.tx_msgs), sum(self.tx_bytes))

    def update_rates(self, now: float | None = None) -> None:
        """Called about once a second by the router's housekeeping loop."""
        now = time.monotonic() if now is None else now
        t0, a0, b0, c0, d0 = self._last
        a, b, c, d = self.totals()
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
        per_type: dict[str, dict[str, int]] = {}
        for t in range(256):
            if self.rx_msgs[t] or self.tx_msgs[t]:
                per_type[type_name(t)] = {
                    "rx_msgs": self.rx_msgs[t],
                    "rx_bytes": self.rx_bytes[t],
                    "tx_msgs": self.tx_msgs[t],
                    "tx_bytes": self.tx_bytes[t],
                }
        rx_m, rx_b, tx_m, tx_b = self.totals()
        return {
            "rx_msgs": rx_m,
            "rx_bytes": rx_b,
            "tx_msgs": tx_m,
            "tx_bytes": tx_b,
            "dropped": self.dropped,
            "drop_reasons": dict(self.drop_reasons),
            "rates": dict(self.rates),
            "request_latency": self.latency.summary(),
            "per_type": per_type,
            "age_s": round(time.monotonic() - self.created, 3),
        }
