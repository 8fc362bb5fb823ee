"""loopback/netns.py: namespaces joined by veth, reachable from each other, torn down."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopback import netns

SERVER = """
import socket
s = socket.socket(); s.bind(("10.213.0.3", 7999)); s.listen(); print("ready", flush=True)
c, _ = s.accept(); c.sendall(b"hello from 10.213.0.3"); c.close()
"""
CLIENT = """
import socket
print(socket.create_connection(("10.213.0.3", 7999), timeout=5).recv(100).decode())
"""

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


def test_topology_ping_and_teardown() -> None:
    with netns.Topology(3) as topo:
        names = [h.netns for h in topo.hosts] + [topo.bridge_ns]
        assert all(n.startswith("dq-") for n in names)
        assert set(names) <= set(netns.list_namespaces())
        assert [h.ip for h in topo.hosts] == ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
        server = topo.popen(2, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"ready"
        res = topo.run(0, [sys.executable, "-c", CLIENT], capture_output=True, timeout=20)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == b"hello from 10.213.0.3"
        assert topo.run(2, ["ip", "-4", "addr"], capture_output=True).stdout.count(b"10.213") == 1
        sleeper = topo.popen(1, ["sleep", "30"])
    assert sleeper.poll() is not None  # reaped
    assert not set(names) & set(netns.list_namespaces())


def test_teardown_on_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), netns.Topology(2) as topo:
        names = [h.netns for h in topo.hosts]
        raise RuntimeError("boom")
    assert not set(names) & set(netns.list_namespaces())


def test_cleanup_stale() -> None:
    # a namespace named as if made by a dead process
    dead = "dq-999999-abcdef-h0"
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        assert dead in netns.cleanup_stale()
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)
    assert dead not in netns.list_namespaces()
