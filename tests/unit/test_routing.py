"""Routing table: shard ids, vCPU/APIC/device owners, broadcast, unknown destinations."""

from __future__ import annotations

import pytest

from cluster.router import protocol as p
from cluster.router.routing import Address, RoutingTable, UnknownDestination


def table() -> RoutingTable:
    t = RoutingTable(1, {1: None, 2: Address("10.213.0.2", 7002), 3: Address.parse("h:7003")})
    t.load(
        {"vcpus": {"0": 1, "1": 2, "2": 3}, "apic_ids": {"0": 1, "4": 3}, "devices": {"ioapic": 1}}
    )
    return t


def test_address_parse() -> None:
    assert Address.parse("127.0.0.1:80") == Address("127.0.0.1", 80)
    assert Address.parse("[::1]:9") == Address("::1", 9)
    assert str(Address("::1", 9)) == "[::1]:9"
    for bad in ("nohost", ":80", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            Address.parse(bad)


def test_lookups() -> None:
    t = table()
    assert t.shard_ids == [1, 2, 3]
    assert t.shard_of_vcpu(1) == 2
    assert t.shard_of_apic(4) == 3
    assert t.owner_of_device("ioapic") == 1
    assert t.broadcast_targets(2) == [1, 3]
    assert set(t.peers()) == {2, 3}
    assert t.resolve(3) == 3
    assert t.resolve("vcpu:2") == 3
    assert t.resolve("apic:0") == 1
    assert t.resolve("device:ioapic") == 1
    assert t.resolve("shard:2") == 2
    assert t.resolve("broadcast") == p.DST_BROADCAST
    assert t.resolve("router") == p.DST_ROUTER


@pytest.mark.parametrize(
    ("dest", "needle"),
    [
        (7, "no route to shard 7: this VM's shards are 1, 2, 3"),
        ("shard:9", "no route to shard 9"),
        ("vcpu:9", "no route for vCPU 9: known vCPUs are 0, 1, 2"),
        ("apic:1", "no route for APIC id 1: known APIC ids are 0, 4"),
        ("device:hpet", "no owner for device 'hpet': known devices are ioapic"),
        ("bogus", "is not shard:N"),
        ("vcpu:x", "is not a number"),
    ],
)
def test_unknown_destinations(dest: int | str, needle: str) -> None:
    with pytest.raises(UnknownDestination) as ei:
        table().resolve(dest)
    assert needle in str(ei.value)


def test_set_route_at_run_time() -> None:
    t = table()
    v0 = t.version
    t.set_route("vcpu", 0, 3)
    assert t.shard_of_vcpu(0) == 3
    t.set_route("device", "hpet", 2)
    assert t.owner_of_device("hpet") == 2
    t.set_route("device", "hpet", None)
    with pytest.raises(UnknownDestination):
        t.owner_of_device("hpet")
    t.set_route("shard", 4, "10.213.0.4:7004")
    assert t.address(4) == Address("10.213.0.4", 7004)
    t.set_route("vcpu", 3, 4)
    t.set_route("shard", 4, None)
    assert not t.has_shard(4)
    assert t.version > v0
    snap = t.snapshot()
    assert snap["shards"]["2"] == "10.213.0.2:7002"
    assert snap["vcpus"]["0"] == 3


@pytest.mark.parametrize(
    ("kind", "key", "value", "needle"),
    [
        ("cpu", 0, 1, "route kind 'cpu' is not one of"),
        ("vcpu", 0, 9, "no such shard"),
        ("vcpu", -1, 1, "negative"),
        ("vcpu", "x", 1, "not an integer"),
        ("device", "", 1, "non-empty"),
        ("shard", 2, "nohost", "not host:port"),
        ("shard", 1, None, "own shard"),
        ("shard", 70000, "h:1", "out of range"),
    ],
)
def test_set_route_errors(kind: str, key: object, value: object, needle: str) -> None:
    with pytest.raises(ValueError) as ei:
        table().set_route(kind, key, value)
    assert needle in str(ei.value)


def test_load_rejects_unknown_section() -> None:
    with pytest.raises(ValueError, match="unknown section 'cpus'"):
        table().load({"cpus": {}})
