"""PAGE_STATS (docs/dsm.md §12): the codec, a router's view of its shard's reports, the
control API's mechanism "page", and each router showing its own shard's."""

from __future__ import annotations

from pathlib import Path

from cluster.router import protocol as p
from cluster.router._fastpath import NBUCKETS, bucket
from cluster.router.page_stats import PageStatsView
from cluster.vm.stats import StatsView
from tests.unit._router_support import InProcessMesh, wait_for
from tests.unit.test_vm_stats import Clock


def report(faults: int, read_ns: list[int], write_ns: list[int], **kw: int) -> p.PageStats:
    reads, writes = [0] * NBUCKETS, [0] * NBUCKETS
    for v in read_ns:
        reads[bucket(v)] += 1
    for v in write_ns:
        writes[bucket(v)] += 1
    counters = dict.fromkeys(p.PAGE_STATS_COUNTERS, 0) | {"read_faults": faults} | kw
    return p.PageStats(**counters, read_hist=tuple(reads), write_hist=tuple(writes))


def test_codec_round_trip() -> None:
    m = report(7, [30_000] * 3, [90_000], pages_in=5, bytes_in=5 * 4160, lent_pages=2)
    body = m.encode()
    assert len(body) == 5568 == p.SIZE_LO[p.MSG_PAGE_STATS]
    assert p.PageStats.decode(body) == m
    assert m.counters()["lent_pages"] == 2


def test_view_rates_and_latency_over_the_last_interval() -> None:
    clock = Clock()
    view = PageStatsView(clock)
    assert view.summary() is None
    view.update(report(0, [], []))
    first = view.summary()
    assert first is not None and first["read_fault"]["count"] == 0
    # 1000 slow faults long ago, then 100 fast ones in the last second
    clock.now += 0.5
    view.update(report(1000, [5_000_000] * 1000, []))
    for _ in range(4):
        clock.now += 0.5
        view.update(report(1000, [5_000_000] * 1000, [], pages_in=0))
    clock.now += 0.5
    view.update(report(1100, [5_000_000] * 1000 + [40_000] * 100, [200_000] * 10, pages_in=50))
    s = view.summary()
    assert s is not None
    assert s["counters"]["read_faults"] == 1100
    assert s["interval_s"] == 1.0
    assert s["rates"]["faults_per_s"] == 100.0
    assert s["rates"]["pages_per_s"] == 50.0
    assert s["read_fault"]["count"] == 100
    assert 35 <= s["read_fault"]["p50_us"] <= 45, s  # not the old 5 ms faults
    assert s["write_fault"]["count"] == 10 and 180 <= s["write_fault"]["p99_us"] <= 220
    total = s["since_start"]["read_fault"]
    assert total["count"] == 1100 and total["p50_us"] > 4000
    assert sum(total["buckets"].values()) == 1100 and len(total["buckets"]) == 2


def test_merged_stats_show_page_counters_per_shard() -> None:
    clock = Clock()
    views = {0: PageStatsView(clock), 1: PageStatsView(clock)}
    views[0].update(report(3, [50_000] * 3, [], pages_in=3))
    views[1].update(report(4, [60_000] * 4, [], pages_in=4))
    routers = {sid: {"links": {}, "page": v.summary()} for sid, v in views.items()}
    routers[2] = {"links": {}, "page": None}  # a shard in shared mode, or not reported yet
    page = StatsView().snapshot(routers)["mechanisms"]["page"]
    assert page["counters"]["read_faults"] == 7 and page["counters"]["pages_in"] == 7
    assert sorted(page["shards"]) == ["0", "1"]
    assert page["shards"]["1"]["read_fault"]["count"] == 4
    # without dsm shards the mechanism is as before
    assert "counters" not in StatsView().snapshot({0: {"links": {}}})["mechanisms"]["page"]


def test_each_router_shows_its_own_shard_page_stats(tmp_path: Path) -> None:
    with InProcessMesh([1, 2], tmp_path) as mesh:
        mesh.wait_links()
        c1, c2 = mesh.client(1), mesh.client(2)
        c1.send(p.DST_ROUTER, report(9, [30_000], []))
        r1 = mesh.routers[1]
        wait_for(lambda: r1.stats()["page"] is not None, what="router 1's page stats")
        assert r1.stats()["page"]["counters"]["read_faults"] == 9
        c2.send(p.DST_ROUTER, report(2, [], []))
        wait_for(lambda: mesh.routers[2].stats()["page"] is not None, what="router 2's")
        assert mesh.routers[2].stats()["page"]["counters"]["read_faults"] == 2
        assert r1.stats()["page"]["counters"]["read_faults"] == 9
