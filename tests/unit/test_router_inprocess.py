"""Routers running in this process: routing, requests, broadcast, errors, control API."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from cluster.router import protocol as p
from cluster.router.control import ControlError, control_call
from tests.support.requests import LinkLost, RequestError, RequestTimeout
from tests.support.shard_client import ShardClient, attach
from tests.unit._router_support import InProcessMesh, wait_for


@pytest.fixture
def mesh3(tmp_path: Path):  # type: ignore[no-untyped-def]
    with InProcessMesh([1, 2, 3], tmp_path) as m:
        m.wait_links()
        yield m


def echo_pio(f: p.Frame) -> p.Message:
    assert isinstance(f.msg, p.PioReq)
    return p.PioReply(f.msg.data + 1, p.MEMTX_OK)


def test_request_reply_broadcast(mesh3: InProcessMesh) -> None:
    c1, c2, c3 = mesh3.client(1), mesh3.client(2), mesh3.client(3)
    c2.on(p.MSG_PIO_REQ, echo_pio)
    assert c1.request(2, p.PioReq(0x3F8, 1, 0, 0, 41)) == p.PioReply(42, 0)
    c1.broadcast(p.TbInvalidate(0x1000, 4096))
    for c in (c2, c3):
        f = c.recv(2.0)
        assert f is not None and f.msg == p.TbInvalidate(0x1000, 4096) and f.src == 1
    assert c1.recv(0.2) is None  # not to the sender
    c3.send(1, p.Irq(p.DM_FIXED, 0x30, 0, 1 << 3))
    f = c1.recv(2.0)
    assert f is not None and f.msg == p.Irq(p.DM_FIXED, 0x30, 0, 8) and f.src == 3
    # routing by vCPU through the client's table
    mesh3.routers[1].routes.set_route("vcpu", 5, 2)
    c1.routes = mesh3.routers[1].routes
    assert c1.request("vcpu:5", p.PioReq(1, 1, 0, 5, 1)) == p.PioReply(2, 0)
    assert 0 < c1.ping_router() < 1.0


def test_sync_client(mesh3: InProcessMesh) -> None:
    c1 = mesh3.client(1, threaded=False)
    c2 = mesh3.client(2)
    c2.on(p.MSG_CLOCK_REQ, lambda f: p.ClockReply(0, f.msg.t1, 5, 6))  # type: ignore[attr-defined]
    assert c1.request(2, p.ClockReq(0, 77)) == p.ClockReply(0, 77, 5, 6)
    c2.send(1, p.Gsi(9, 1))
    f = c1.recv(2.0)
    assert f is not None and f.msg == p.Gsi(9, 1)


def test_errors_unknown_and_unreachable(tmp_path: Path) -> None:
    with InProcessMesh([1, 2], tmp_path) as m:
        m.wait_links()
        c1 = m.client(1)
        with pytest.raises(RequestError) as ei:
            c1.request(7, p.PioReq(1, 1, 0, 0, 0))
        assert ei.value.code == p.ERR_NO_ROUTE
        assert "no route to shard 7: this VM's shards are 1, 2" in str(ei.value)
        # shard 2's router is up but its QEMU is not connected
        with pytest.raises(LinkLost, match="not connected"):
            c1.request(2, p.PioReq(1, 1, 0, 0, 0))
        # broadcast wanting a reply is refused
        with pytest.raises(RequestError) as ei:
            c1.request(p.DST_BROADCAST, p.PioReq(1, 1, 0, 0, 0))
        assert ei.value.code == p.ERR_BAD_REQUEST
        # no handler on the far side: the requester times out, nothing hangs
        c2 = m.client(2)
        with pytest.raises(RequestTimeout):
            c1.request(2, p.PioReq(1, 1, 0, 0, 0), timeout=0.2)
        assert c2.recv(1.0) is not None
        # unsupported router message
        with pytest.raises(RequestError) as ei:
            c1.request(p.DST_ROUTER, p.PioReq(1, 1, 0, 0, 0))
        assert ei.value.code == p.ERR_UNSUPPORTED
        stats = m.routers[1].stats()["links"]["local"]
        assert stats["dropped"] >= 2


def test_register_rules(tmp_path: Path) -> None:
    with InProcessMesh([1], tmp_path) as m:
        r = m.routers[1]
        with pytest.raises(RequestError) as ei:
            ShardClient.connect(r.cfg.shard_socket, 5)
        assert ei.value.code == p.ERR_VM_MISMATCH
        c = m.client(1)
        with pytest.raises(RequestError) as ei:
            ShardClient.connect(r.cfg.shard_socket, 1)
        assert ei.value.code == p.ERR_DUPLICATE
        c.close()
        wait_for(lambda: r.local is None, what="local link gone")
        m.client(1)  # a new QEMU can register once the old one is gone


def test_attach_in_process(tmp_path: Path) -> None:
    with InProcessMesh([1], tmp_path) as m:
        c = attach(m.routers[1])
        try:
            assert c.ping_router() < 1.0
        finally:
            c.close()


def test_local_shard_loss_fails_remote_requests(mesh3: InProcessMesh) -> None:
    c1, c2 = mesh3.client(1), mesh3.client(2)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            c1.request(2, p.MmioReq(0xFEE00000, 0, 4, 0, 0, 0), timeout=10.0)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
    wait_for(lambda: mesh3.routers[2].local.pending_count() == 5, what="5 pending")  # type: ignore[union-attr]
    t0 = time.monotonic()
    c2.close()  # "QEMU" on shard 2 dies with 5 requests pending
    for t in threads:
        t.join(5.0)
    assert time.monotonic() - t0 < 2.0
    assert len(errors) == 5 and all(isinstance(e, LinkLost) for e in errors)
    assert "lost with the request pending" in str(errors[0])


def test_control_api(mesh3: InProcessMesh) -> None:
    c1, c2 = mesh3.client(1), mesh3.client(2)
    c2.on(p.MSG_PIO_REQ, echo_pio)
    for i in range(20):
        c1.request(2, p.PioReq(1, 1, 0, 0, i))
    c1.send(2, p.Eoi(0x30))
    wait_for(lambda: c2.recv(0.1) is not None, what="EOI")
    path = mesh3.routers[1].cfg.control_socket
    stats = control_call(path, "stats")
    link = stats["links"]["shard:2"]
    assert link["per_type"]["PIO_REQ"]["tx_msgs"] == 20
    assert link["per_type"]["PIO_REPLY"]["rx_msgs"] == 20
    assert link["per_type"]["EOI"]["tx_msgs"] == 1
    assert link["request_latency"]["count"] >= 20
    assert link["request_latency"]["p99_us"] >= link["request_latency"]["p50_us"] > 0
    assert stats["links"]["local"]["per_type"]["PIO_REQ"]["rx_msgs"] == 20
    health = control_call(path, "health")
    assert health["ok"] and health["peers"]["2"]["state"] == "up"
    routes = control_call(path, "set-route", kind="device", key="ioapic", value=1)
    assert routes["devices"] == {"ioapic": 1}
    assert control_call(path, "routes")["devices"] == {"ioapic": 1}
    with pytest.raises(ControlError, match="no such shard"):
        control_call(path, "set-route", kind="device", key="hpet", value=9)
    with pytest.raises(ControlError, match="unknown command 'bogus'"):
        control_call(path, "bogus")


def test_peer_loss_reported(mesh3: InProcessMesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dqemu.router")
    c1 = mesh3.client(1)
    mesh3.routers[3].close()
    wait_for(lambda: mesh3.routers[1].health()["peers"]["3"]["state"] != "up", what="loss")
    h = mesh3.routers[1].health()
    assert not h["ok"]
    assert any(e["event"] == "link_lost" and e["shard"] == 3 for e in h["events"])
    assert "link to shard 3" in caplog.text and "lost" in caplog.text
    wait_for(lambda: c1.link_states.get(3) == p.LINK_DOWN, what="LINK_STATE down")
    with pytest.raises(LinkLost):
        c1.request(3, p.PioReq(1, 1, 0, 0, 0))
