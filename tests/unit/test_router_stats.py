"""Latency histogram and per-type counters."""

from __future__ import annotations

import random

from cluster.router import protocol as p
from cluster.router.stats import LatencyHistogram, LinkStats, _bucket, _bucket_low


def test_buckets_monotonic_and_bounded() -> None:
    last = -1
    for v in [*range(5000), 10**6, 10**9, 10**12, 1 << 62]:
        b = _bucket(v)
        assert b >= last
        last = b
        if b < 300:
            assert _bucket_low(b) <= v


def test_percentiles_within_bucket_precision() -> None:
    h = LatencyHistogram()
    rng = random.Random(1)
    values = [rng.randint(10_000, 200_000) for _ in range(10_000)]
    for v in values:
        h.record(v)
    values.sort()
    for q in (50, 99):
        exact = values[int(q / 100 * len(values)) - 1]
        assert abs(h.percentile(q) - exact) / exact < 0.15
    s = h.summary()
    assert s["count"] == 10_000 and s["p50_us"] > 0 and s["max_us"] <= 200


def test_empty_and_snapshot() -> None:
    st = LinkStats()
    assert st.latency.percentile(50) == 0.0
    st.rx_msgs[p.MSG_IRQ] += 3
    st.rx_bytes[p.MSG_IRQ] += 192
    st.drop("no route")
    st.update_rates(st.created + 1.0)
    snap = st.snapshot()
    assert snap["per_type"]["IRQ"]["rx_msgs"] == 3
    assert snap["rates"]["rx_msgs_per_s"] == 3.0
    assert snap["drop_reasons"] == {"no route": 1}
