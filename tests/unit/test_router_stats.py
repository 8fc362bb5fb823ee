"""Latency histogram and per-type counters (kept by the C data path)."""

from __future__ import annotations

import random

from cluster.router import protocol as p
from cluster.router._fastpath import NBUCKETS, bucket
from cluster.router.stats import Counters, LatencyHistogram, LinkStats, _bucket_low


def test_buckets_monotonic_and_bounded() -> None:
    last = -1
    for v in [*range(5000), 10**6, 10**9, 10**12, 1 << 62, (1 << 64) - 1]:
        b = bucket(v)
        assert last <= b < NBUCKETS
        last = b
        if b < 300:
            assert _bucket_low(b) <= v
            assert bucket(_bucket_low(b)) == b


def test_percentiles_within_bucket_precision() -> None:
    rng = random.Random(1)
    values = [rng.randint(10_000, 200_000) for _ in range(10_000)]
    buckets = [0] * NBUCKETS
    for v in values:
        buckets[bucket(v)] += 1
    h = LatencyHistogram(buckets, len(values), sum(values), max(values))
    values.sort()
    for q in (50, 99):
        exact = values[int(q / 100 * len(values)) - 1]
        assert abs(h.percentile(q) - exact) / exact < 0.15
    s = h.summary()
    assert s["count"] == 10_000 and s["p50_us"] > 0 and s["max_us"] <= 200


def test_empty_and_snapshot() -> None:
    assert LatencyHistogram().percentile(50) == 0.0
    counts = Counters()
    counts.rx_msgs[p.MSG_IRQ] += 3
    counts.rx_bytes[p.MSG_IRQ] += 192
    st = LinkStats(lambda: counts)
    st.drop("no route")
    st.update_rates(st.created + 1.0)
    snap = st.snapshot()
    assert snap["per_type"]["IRQ"]["rx_msgs"] == 3
    assert snap["rates"]["rx_msgs_per_s"] == 3.0
    assert snap["drop_reasons"] == {"no route": 1}
    assert snap["request_latency"]["count"] == 0
