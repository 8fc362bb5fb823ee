"""The pure parts of `dqemu cluster up`: names, addresses, `ray start` arguments."""

from __future__ import annotations

import itertools
import json

import pytest

from cluster.errors import DqemuError
from cluster.ray import local_cluster as lc


def test_plan_names_addresses_and_temp_dirs() -> None:
    st = lc.plan("t1", 2, "10.214.3")
    assert [n.name for n in st.nodes] == ["head", "node1", "node2"]
    assert [n.ip for n in st.nodes] == ["10.214.3.2", "10.214.3.3", "10.214.3.4"]
    assert st.address == "10.214.3.2:6379"
    assert st.dashboard == "http://10.214.3.2:8265"
    # every node its own temp dir (a shared one makes every log monitor tail every node)
    assert len({n.temp_dir for n in st.nodes}) == 3
    # interface names fit Linux's 15 characters
    big = lc.plan("abcdefgh", lc.MAX_NODES, "10.214.0")
    assert all(len(n.port) <= 15 for n in big.nodes) and len(big.bridge) <= 15
    assert len({n.port for n in big.nodes}) == lc.MAX_NODES + 1


def test_state_round_trips_through_json() -> None:
    st = lc.plan("t1", 1, "10.214.0")
    st.made_ns.append(st.head.netns)
    back = lc.ClusterState.from_json(json.loads(json.dumps(lc.asdict(st))))
    assert back == st


def test_free_subnet_skips_the_ones_in_use() -> None:
    assert lc.free_subnet(["127.0.0.1/8", "192.0.2.2/24"]) == "10.214.0"
    assert lc.free_subnet(["10.214.0.1/24", "10.214.1.7/24"]) == "10.214.2"
    # a wider network on the machine covers many /24s
    assert lc.free_subnet(["10.214.0.1/23"]) == "10.214.2"
    with pytest.raises(DqemuError, match="no free /24"):
        lc.free_subnet(["10.0.0.1/8"])


def test_ray_start_arguments_bound_the_node_and_name_it() -> None:
    st = lc.plan("t1", 1, "10.214.0")
    sizes = lc.Sizes(cpus=1, memory_mib=1024, object_store_mib=100, shards_per_node=3)
    head = lc.ray_start_argv(st, st.head, sizes)
    worker = lc.ray_start_argv(st, st.nodes[1], sizes)
    for argv, node in ((head, st.head), (worker, st.nodes[1])):
        opts = dict(itertools.pairwise(argv))
        assert opts["--node-ip-address"] == node.ip
        assert opts["--temp-dir"] == node.temp_dir
        assert opts["--num-cpus"] == "1"
        assert opts["--object-store-memory"] == str(100 << 20)
        assert opts["--labels"] == f"dqemu-host={node.name}"
    assert "--head" in head and "--resources" not in head
    opts = dict(itertools.pairwise(worker))
    assert opts["--address"] == st.address
    assert json.loads(opts["--resources"]) == {"dqemu_shard": 3}


def test_env_lines_hand_over_the_token_and_address() -> None:
    st = lc.plan("t1", 1, "10.214.0")
    lines = lc.env_lines(st)
    assert "export RAY_ADDRESS=10.214.0.2:6379" in lines
    assert "export RAY_AUTH_MODE=token" in lines
    assert any(ln.startswith("export RAY_AUTH_TOKEN_PATH=") for ln in lines)
    assert any("http://10.214.0.2:8265" in ln for ln in lines)


@pytest.mark.parametrize("bad", ["", "UP", "a-b", "toolongname"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(DqemuError, match="cluster name"):
        lc.check_name(bad)
