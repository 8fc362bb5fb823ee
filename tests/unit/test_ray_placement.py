"""Placement of a VM's shards on Ray nodes: the pure parts (matching, requests, messages)."""

from __future__ import annotations

import pytest

from cluster.ray.placement import (
    NodeView,
    PlacementError,
    describe,
    match_host,
    nodes_from_ray,
    not_ready,
    request,
)

HEAD = NodeView("h" * 8, "10.214.0.2", {"dqemu-host": "head", "ray.io/node-id": "h" * 8})
N1 = NodeView("a" * 8, "10.214.0.3", {"dqemu-host": "node1", "ray.io/node-id": "a" * 8}, 4, 4)
N2 = NodeView("b" * 8, "10.214.0.4", {"dqemu-host": "node2", "zone": "z2"}, 4, 1)
NODES = [HEAD, N1, N2]


def test_nodes_from_ray_keeps_alive_ones_with_their_resources() -> None:
    raw = [
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.214.0.10",
         "Labels": {"dqemu-host": "node9"}, "Resources": {"dqemu_shard": 4.0, "CPU": 1.0}},
        {"NodeID": "b", "Alive": False, "NodeManagerAddress": "10.214.0.3", "Resources": {}},
        {"NodeID": "c", "Alive": True, "NodeManagerAddress": "10.214.0.2", "Resources": {}},
    ]  # fmt: skip
    got = nodes_from_ray(raw, {"a": {"dqemu_shard": 3.0}})
    assert [n.node_id for n in got] == ["c", "a"]  # by IP, numerically
    assert got[1].shards_total == 4 and got[1].shards_free == 3
    assert got[1].name == "node9 (10.214.0.10)"


def test_a_host_is_an_ip_or_a_label_value() -> None:
    assert match_host("10.214.0.3", NODES) is N1
    assert match_host("node2", NODES) is N2
    assert match_host("z2", NODES) is N2
    with pytest.raises(PlacementError) as exc:
        match_host("node7", NODES)
    msg = str(exc.value)
    assert "'node7'" in msg and "node1 (10.214.0.3): 4 of 4 dqemu_shard free" in msg
    assert "node2 (10.214.0.4): 1 of 4" in msg and "1 node(s) without dqemu_shard" in msg
    # the node-id label is Ray's, not a host name
    with pytest.raises(PlacementError):
        match_host("a" * 8, NODES)


def test_an_ambiguous_label_is_refused() -> None:
    twin = NodeView("c" * 8, "10.214.0.5", {"dqemu-host": "node1"}, 4, 4)
    with pytest.raises(PlacementError, match="names 2 nodes"):
        match_host("node1", [*NODES, twin])


def test_a_shared_memory_vm_keeps_to_one_node() -> None:
    req = request([None, None], NODES)
    assert req.strategy == "STRICT_PACK" and req.shards == 2 and req.bundle_of == (0, 1)
    assert req.bundles == ({"dqemu_shard": 1.0},) * 2 and req.selectors == ({}, {})
    pinned = request(["node1", None, "10.214.0.3"], NODES)
    assert pinned.selectors == ({"ray.io/node-id": N1.node_id},) * 3
    with pytest.raises(PlacementError) as exc:
        request(["node1", "node2"], NODES)
    msg = str(exc.value)
    assert "shard 0 on node1 (10.214.0.3), shard 1 on node2 (10.214.0.4)" in msg
    assert 'with memory_mode "shared" a VM keeps all its shards on one node' in msg
    assert 'set memory_mode = "dsm"' in msg


def test_too_many_shards_for_any_node() -> None:
    with pytest.raises(PlacementError, match="no node can take all 5 shards"):
        request([None] * 5, NODES)
    with pytest.raises(PlacementError, match=r"5 shards on node1 .* which has 4 dqemu_shard"):
        request(["node1"] * 5, NODES)
    with pytest.raises(PlacementError, match="none with the dqemu_shard resource"):
        request([None], [HEAD])


N3 = NodeView("c" * 8, "10.214.0.5", {"dqemu-host": "node3"}, 4, 4)


def test_a_dsm_vm_spreads_shards_without_a_host_one_per_node() -> None:
    req = request([None, None, None], [HEAD, N1, N2, N3], spanning=True)
    assert req.strategy == "STRICT_SPREAD" and req.bundle_of == (0, 1, 2)
    assert req.bundles == ({"dqemu_shard": 1.0},) * 3 and req.selectors == ({}, {}, {})
    with pytest.raises(PlacementError) as exc:
        request([None] * 3, NODES, spanning=True)
    assert "3 shard(s) without a host need 3 node(s) with dqemu_shard, one each" in str(exc.value)
    assert "node2 (10.214.0.4): 1 of 4" in str(exc.value)


def test_a_dsm_vm_puts_named_shards_on_their_nodes() -> None:
    # shards 0 and 2 on node2 (one bundle of 2), shard 1 on node1, shard 3 anywhere else
    req = request(["node2", "node1", "10.214.0.4", None], [HEAD, N1, N2, N3], spanning=True)
    assert req.strategy == "STRICT_SPREAD"
    assert req.bundles == ({"dqemu_shard": 2.0}, {"dqemu_shard": 1.0}, {"dqemu_shard": 1.0})
    assert req.selectors == ({"ray.io/node-id": N2.node_id}, {"ray.io/node-id": N1.node_id}, {})
    assert req.bundle_of == (0, 1, 0, 2)
    # every shard on one named node: one bundle
    one = request(["node1", "node1"], NODES, spanning=True)
    assert one.strategy == "STRICT_PACK" and one.bundles == ({"dqemu_shard": 2.0},)
    assert one.bundle_of == (0, 0)
    with pytest.raises(PlacementError, match=r"5 shards on node1 .* which has 4 dqemu_shard"):
        request(["node1"] * 5, NODES, spanning=True)
    # node1 and node2 are named: the shard without a host has no node left
    with pytest.raises(PlacementError, match="besides the 2 the spec names"):
        request(["node1", "node2", None], NODES, spanning=True)


def test_messages_say_what_the_cluster_has() -> None:
    assert describe([]) == "the cluster has no alive node"
    err = not_ready(request([None, None], NODES), 20.0, NODES)
    assert "could not place 2 shard(s) on one node within 20 s" in str(err)
    assert "node1 (10.214.0.3): 4 of 4 dqemu_shard free" in str(err)
