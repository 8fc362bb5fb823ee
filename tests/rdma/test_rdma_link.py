"""The RDMA link between routers, on real soft-RoCE devices: runs only inside the RDMA test
host (tests/integration/test_rdma.py boots it; tests/conftest.py leaves this folder out
elsewhere). The TCP router tests' request, broadcast, control and loss cases run there too,
over RDMA (DQEMU_TEST_TRANSPORT=rdma); these are the cases that only an RDMA link has:
frames cut across RDMA messages, credits running out and coming back, the set-up's
failures, a peer that goes away, a port that goes down."""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.rdma_devices import RdmaUnavailable, check_usable, list_devices
from cluster.router import protocol as p
from cluster.router.auth import handshake
from cluster.router.config import config_from_data
from cluster.router.router import Router
from tests.support.shard_client import ShardClient
from tests.unit._router_support import (
    SECRET,
    TIMEOUT_SCALE,
    InProcessMesh,
    router_config,
    wait_for,
)

RDMA = {"transport": "rdma", "rdma_device": "rxe0"}


@pytest.fixture
def mesh2(tmp_path: Path) -> Iterator[InProcessMesh]:
    with InProcessMesh([1, 2], tmp_path, **RDMA) as m:
        m.wait_links(30)
        yield m


def page(i: int) -> p.PageReply:
    return p.PageReply(i, 0, i.to_bytes(4, "little") * 1024)


def test_the_links_are_rdma(mesh2: InProcessMesh) -> None:
    r1 = mesh2.routers[1]
    link = r1.peers[2]
    assert "rdma" in link.name
    info = r1._data.engine.rdma_info(link.handle)
    assert info is not None and info["device"] == "rxe0"
    assert [d.name for d in list_devices()] == ["rxe0", "rxe1"]


def test_bursts_keep_order_both_ways(mesh2: InProcessMesh) -> None:
    """400 frames of 4 KiB each way at once (1.6 MiB): three times what the 32 receive
    buffers of 16 KiB hold, so frames span messages and both senders run out of credits
    and get them back from each other's traffic."""
    n = 400
    c1, c2 = mesh2.client(1), mesh2.client(2)
    got: dict[int, list[int]] = {1: [], 2: []}
    done = {1: threading.Event(), 2: threading.Event()}

    def sink(me: int):  # type: ignore[no-untyped-def]
        def h(f: p.Frame) -> None:
            assert isinstance(f.msg, p.PageReply)
            assert f.msg.data == f.msg.gpa.to_bytes(4, "little") * 1024
            got[me].append(f.msg.gpa)
            if len(got[me]) == n:
                done[me].set()

        return h

    c1.on(p.MSG_PAGE_REPLY, sink(1))
    c2.on(p.MSG_PAGE_REPLY, sink(2))

    def blast(c: ShardClient, dst: int) -> None:
        for i in range(n):
            c.send(dst, page(i))

    ts = [threading.Thread(target=blast, args=a) for a in ((c1, 2), (c2, 1))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert done[1].wait(120) and done[2].wait(120), {k: len(v) for k, v in got.items()}
    assert got[1] == list(range(n)) and got[2] == list(range(n))
    # the data path counted them on the RDMA link, as on TCP
    st = mesh2.routers[1].stats()["links"]["shard:2"]["per_type"]["PAGE_REPLY"]
    assert st["tx_msgs"] == n and st["rx_msgs"] == n
    # and requests still flow, with latency recorded
    c2.on(p.MSG_PIO_REQ, lambda f: p.PioReply(f.msg.data + 1, 0))  # type: ignore[attr-defined]
    for i in range(50):
        assert c1.request(2, p.PioReq(1, 1, 0, 0, i), timeout=10) == p.PioReply(i + 1, 0)
    # only one send in signal_every asks for a completion (one per send would wake a sleeping
    # data loop once more per message), and still every send buffer comes back
    for me in (1, 2):
        r = mesh2.routers[me]
        info = r._data.engine.rdma_info(r.peers[3 - me].handle)
        assert info is not None and info["sends"] >= 1_638_400 // 16384
        assert info["send_completions"] <= info["sends"] // info["signal_every"] + 1, info

        def all_back(r: Router = r, me: int = me) -> bool:
            i = r._data.engine.rdma_info(r.peers[3 - me].handle)
            return i is not None and i["send_free"] + i["unsignaled"] == 32

        wait_for(all_back, 30, "every send buffer back")


def _raw_peer(r2: Router) -> socket.socket:
    """An authenticated TCP connection to ``r2`` as shard 1's router would make it."""
    peer = socket.create_connection(("127.0.0.1", r2.listen_addr.port), 10.0)
    handshake(
        peer, own_id=1, vm_id="vm1", secret=SECRET, features=0,
        is_peer=lambda s: s == 2, timeout=10.0, dialed=True,
    )  # fmt: skip
    return peer


@pytest.mark.parametrize("seed", [1, 2])
def test_bad_rdma_parameters_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """An authenticated peer that sends garbage (or a frame: it runs TCP) instead of RDMA
    parameters is refused with a line saying so; the router stays up."""
    caplog.set_level(logging.INFO, logger="dqemu.router")
    rng = random.Random(seed)
    cfg = router_config(2, [1, 2], tmp_path, {1: 0, 2: 0}, **RDMA)
    r2 = Router(config_from_data(cfg), SECRET)
    r2.start()
    t = threading.Thread(target=r2.serve_forever, daemon=True)
    t.start()
    try:
        ping = p.encode_frame(p.Ping(1), src=1, dst=p.DST_ROUTER, flags=p.FLAG_WANT_REPLY,
                              request_id=1)  # fmt: skip
        for blob in (ping + bytes(24), rng.randbytes(48), b"DQRDMA01" + rng.randbytes(40)):
            peer = _raw_peer(r2)
            peer.sendall(blob[:48])
            peer.settimeout(10)
            with pytest.raises(OSError):  # the router closes it (EOF or reset)
                while peer.recv(4096):
                    pass
                raise ConnectionResetError
            peer.close()
        wait_for(lambda: caplog.text.count("RDMA link to shard 1") >= 3, 10, "3 refusals")
        assert "the peer sent no RDMA parameters" in caplog.text
        assert "do not match ours" in caplog.text or "cannot move the queue pair" in caplog.text
        assert r2.health()["peers"]["1"]["state"] == "down"
    finally:
        r2.close()


def test_unknown_device_fails_at_start(tmp_path: Path) -> None:
    cfg = router_config(1, [1, 2], tmp_path, {1: 0, 2: 0}, transport="rdma", rdma_device="mlx9")
    with pytest.raises(OSError, match=r"RDMA device 'mlx9' not found \(devices: rxe0, rxe1\)"):
        Router(config_from_data(cfg), SECRET).start()


def test_port_down_is_named() -> None:
    subprocess.run(["ip", "link", "set", "dqr1", "down"], check=True)
    try:
        wait_for(lambda: _port_state("rxe1") != "ACTIVE", 10, "rxe1 down")
        with pytest.raises(RdmaUnavailable, match=r"no RDMA device has port 1 ACTIVE \(rxe1"):
            check_usable("rxe1")
    finally:
        subprocess.run(["ip", "link", "set", "dqr1", "up"], check=True)
    wait_for(lambda: _port_state("rxe1") == "ACTIVE", 10, "rxe1 up again")


def _port_state(dev: str) -> str:
    return next(d for d in list_devices() if d.name == dev).ports[0].state


def test_remote_gone_is_named(mesh2: InProcessMesh, caplog: pytest.LogCaptureFixture) -> None:
    """A peer router that goes away is seen on the RDMA link's TCP connection and named so;
    a SIGKILLed one fails the requests pending on the link at once (the TCP case
    test_kill9_fails_pending_requests_promptly, run over RDMA by test_rdma.py)."""
    caplog.set_level(logging.INFO, logger="dqemu.router")
    mesh2.routers[2].close()
    wait_for(lambda: mesh2.routers[1].health()["peers"]["2"]["state"] != "up", 10, "loss")
    assert "remote gone: the peer router closed the connection of its RDMA link" in caplog.text


class TwoDeviceMesh(InProcessMesh):
    """Router 1 on rxe0 and router 2 on rxe1: their RDMA traffic crosses the veth pair
    dqr0/dqr1 (rxe delivers within one device without the wire)."""

    def __init__(self, tmp: Path) -> None:  # the routers made here, not by InProcessMesh
        self.routers = {}
        ports = {1: 0, 2: 0}
        for i, dev in ((1, "rxe0"), (2, "rxe1")):
            cfg = router_config(i, [1, 2], tmp, ports, transport="rdma", rdma_device=dev)
            self.routers[i] = Router(config_from_data(cfg), SECRET)
            self.routers[i].start()
        r1, r2 = self.routers[1], self.routers[2]
        r1.routes.set_route("shard", 2, str(r2.listen_addr))
        r2.routes.set_route("shard", 1, str(r1.listen_addr))
        for r in (r1, r2):
            threading.Thread(target=r.serve_forever, name=f"router-{r.id}", daemon=True).start()
        self.clients = []


def first_loss(r: Router) -> str:
    """The reason of ``r``'s first link loss."""
    lost = [e for e in r.health()["events"] if e["event"] == "link_lost"]
    assert lost, r.health()["events"]
    return str(lost[0]["reason"])


@pytest.fixture
def mesh_two_devices(tmp_path: Path) -> Iterator[InProcessMesh]:
    with TwoDeviceMesh(tmp_path) as m:
        m.wait_links(30)
        yield m


def test_queue_pair_error_fails_pending_requests(mesh_two_devices: InProcessMesh) -> None:
    """The veth pair under a live link goes down (dqr1, so both rxe ports): the next send
    on it fails, its queue pair goes to the error state, and that is named on the link; the
    request pending at router 1 fails at once, not after its own timeout, and the router
    stays up and answers (its TCP side over 127.0.0.1 never noticed anything)."""
    m = mesh_two_devices
    c1, c2 = m.client(1), m.client(2)
    c1.send(2, page(0))  # the link carries traffic across the veth pair
    f = c2.recv(30 * TIMEOUT_SCALE)
    assert f is not None and f.msg == page(0), f
    # c2 has no handler for PIO_REQ: the request stays pending (a handler that returns
    # None would answer it at once with an error reply)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            c1.request(2, p.PioReq(2, 1, 0, 0, 0), timeout=600)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=ask, daemon=True)  # a failed test must not wait for it
    t.start()
    r1 = m.routers[1]
    wait_for(lambda: r1.stats()["links"]["shard:2"]["pending_requests"] == 1, 30, "pending")
    subprocess.run(["ip", "link", "set", "dqr1", "down"], check=True)
    try:
        c1.send(2, page(1))  # a send on a link whose ports are down
        t.join(120)
        assert not t.is_alive(), "the pending request was not failed"
        assert len(errors) == 1 and "link to shard 2 lost" in str(errors[0]), errors
        health = r1.health()
        assert health["peers"]["2"]["state"] != "up"
        lost = [e for e in health["events"] if e["event"] == "link_lost"]
        assert lost and lost[0]["failed_requests"] == 1, health["events"]
        # whichever end sends first (router 1's page, or either router's ping) finds its
        # queue pair in the error state: both ports go down with the veth pair. The other
        # end then sees the link's TCP connection shut ("remote gone"), or its own queue
        # pair fail; the pending request fails at once with the reason router 1 saw
        why = {i: first_loss(m.routers[i]) for i in (1, 2)}
        assert any(
            why[i].startswith(f"RDMA link on rxe{i - 1}: queue pair in the error state")
            for i in (1, 2)
        ), why
        assert all(w.startswith(("RDMA link on rxe", "remote gone: ")) for w in why.values()), why
        assert why[1] in str(errors[0]), (why, errors)
        assert c1.ping_router(timeout=10) >= 0
    finally:
        subprocess.run(["ip", "link", "set", "dqr1", "up"], check=True)
        wait_for(lambda: _port_state("rxe1") == "ACTIVE", 10, "rxe1 up again")
