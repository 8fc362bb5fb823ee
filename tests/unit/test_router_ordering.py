"""Frames from one link reach the local shard in the order they were sent, including the
LINK_STATE a router handles itself.

A shard that quits the VM broadcasts a COMMAND QUIT and exits; its router then reports
LINK_STATE DOWN on the same link. A receiving router that read both at once used to tell its
shard about the loss first, and that shard stopped the VM with "shard N lost" (exit 4)
instead of quitting with the others.

The same order holds over every transport: the ``router`` case runs two real routers, and
runs over RDMA in the RDMA test host (tests/integration/test_rdma.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.router import protocol as p
from cluster.router.auth import handshake
from cluster.router.config import config_from_data
from cluster.router.router import Router
from cluster.router.transport import read_frame
from tests.unit._router_support import (
    SECRET,
    TIMEOUT_SCALE,
    InProcessMesh,
    register_raw,
    router_config,
    wait_for,
)

QUITS = [p.encode_frame(p.Command(p.CMD_QUIT, 0, i), src=1, dst=p.DST_BROADCAST) for i in range(8)]


@contextlib.contextmanager
def raw_peer(tmp: Path) -> Iterator[socket.socket]:
    """Router 2 alone; the test plays shard 1's router (the dialer) on a raw, authenticated
    TCP link and sends the QUITs and its LINK_STATE DOWN in one write, so that router 2
    reads them at once. TCP only. Yields shard 2's socket."""
    r2 = Router(config_from_data(router_config(2, [1, 2], tmp, {1: 0, 2: 0})), SECRET)
    r2.start()
    t = threading.Thread(target=r2.serve_forever, name="router-2", daemon=True)
    t.start()
    shard2 = peer = None
    try:
        shard2 = register_raw(r2.cfg.shard_socket, 2)
        peer = socket.create_connection(("127.0.0.1", r2.listen_addr.port), 5.0)
        handshake(
            peer, own_id=1, vm_id="vm1", secret=SECRET, features=0,
            is_peer=lambda s: s == 2, timeout=5.0, dialed=True,
        )  # fmt: skip
        wait_for(lambda: r2.health()["peers"]["1"]["state"] == "up", what="link from shard 1")
        down = p.encode_frame(
            p.LinkState(1, p.LINK_DOWN, p.ERR_SHARD_EXITED), src=1, dst=p.DST_ROUTER
        )
        peer.sendall(b"".join([*QUITS, down]))  # one write: the router reads them at once
        yield shard2
    finally:
        for s in (shard2, peer):
            if s is not None:
                s.close()
        r2.close()


@contextlib.contextmanager
def router_peer(tmp: Path) -> Iterator[socket.socket]:
    """Two real routers on the transport the tests run over (TCP, or RDMA in the test
    host, DQEMU_TEST_TRANSPORT): shard 1 sends the QUITs in one write and closes its
    link, so router 1 sends them and, right behind them, its LINK_STATE DOWN."""
    with InProcessMesh([1, 2], tmp) as m:
        m.wait_links()
        shard2 = register_raw(m.routers[2].cfg.shard_socket, 2)
        try:
            with register_raw(m.routers[1].cfg.shard_socket, 1) as shard1:
                shard1.sendall(b"".join(QUITS))
            yield shard2
        finally:
            shard2.close()


PEERS = {"raw": raw_peer, "router": router_peer}


@pytest.mark.parametrize("peer", list(PEERS))
def test_link_state_does_not_overtake_earlier_frames(tmp_path: Path, peer: str) -> None:
    with PEERS[peer](tmp_path) as shard2:
        shard2.settimeout(5.0 * TIMEOUT_SCALE)
        got = []
        while len(got) < 9:
            f = read_frame(shard2)
            if isinstance(f.msg, p.Command) or (
                isinstance(f.msg, p.LinkState) and f.msg.state == p.LINK_DOWN
            ):
                got.append(f.msg)
        assert got[:8] == [p.Command(p.CMD_QUIT, 0, i) for i in range(8)], got
        assert got[8] == p.LinkState(1, p.LINK_DOWN, p.ERR_SHARD_EXITED), got
