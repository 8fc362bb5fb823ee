"""The C data path (`cluster/router/_fastpath.c`) on its own: its header check agrees with
`protocol.header_error`, and it routes, counts, queues and measures as the router needs."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.router import _fastpath as fp
from cluster.router import protocol as p
from cluster.router.stats import Counters
from cluster.router.transport import read_frame

OWN, PEER = 1, 2


def engine(busy_poll_us: float = 0.0) -> fp.Engine:
    return fp.Engine(OWN, p.SIZE_LO, p.SIZE_HI, busy_poll_us, 0.5)


def test_constants_agree_with_protocol() -> None:
    for name in (
        "MAGIC", "VERSION", "HEADER_SIZE", "MAX_PAYLOAD", "FLAG_REPLY", "FLAG_ERROR",
        "FLAG_WANT_REPLY", "DST_BROADCAST", "DST_ROUTER", "MSG_ERROR",
    ):  # fmt: skip
        assert getattr(fp, name) == getattr(p, name), name


_ENG = engine()
_TYPES = st.one_of(st.sampled_from(sorted(p.MESSAGES)), st.integers(0, 255))
_LENGTHS = st.one_of(
    st.sampled_from(sorted({*p.SIZE_LO, *p.SIZE_HI, p.MAX_PAYLOAD, p.MAX_PAYLOAD + 1})),
    st.integers(0, (1 << 32) - 1),
)


@settings(max_examples=3000, deadline=None)
@given(
    magic=st.one_of(st.just(p.MAGIC), st.integers(0, (1 << 32) - 1)),
    ver=st.one_of(st.just(p.VERSION), st.integers(0, 255)),
    t=_TYPES,
    flags=st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF)),
    length=_LENGTHS,
    rid=st.one_of(st.just(0), st.integers(1, (1 << 64) - 1)),
)
def test_header_check_agrees(
    magic: int, ver: int, t: int, flags: int, length: int, rid: int
) -> None:
    hdr = p.HEADER.pack(magic, ver, t, flags, 1, 2, length, rid)
    assert _ENG.header_ok(hdr) == (p.header_error(magic, ver, t, flags, length, rid) is None)


class Pair:
    """An engine serving a local link and a peer link, each a socketpair."""

    def __init__(self) -> None:
        self.e = engine()
        self.local_far, local_near = socket.socketpair()
        self.peer_far, peer_near = socket.socketpair()
        self.near = [local_near, peer_near]
        for s in (self.local_far, self.peer_far):
            s.settimeout(5.0)
        self.local = self.e.add(local_near.fileno(), True, OWN)
        self.peer = self.e.add(peer_near.fileno(), False, PEER)
        self.e.start(self.local)
        self.e.start(self.peer)
        self.events: list[tuple[object, ...]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (evs := self.e.run()) is not None:
            self.events += evs

    def close(self) -> None:
        self.e.stop()
        self.thread.join(5)
        for s in (self.local_far, self.peer_far, *self.near):
            s.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    pr = Pair()
    yield pr
    pr.close()


def test_forward_count_and_measure(pair: Pair) -> None:
    req = p.encode_frame(
        p.PioReq(0x3F8, 1, 0, 0, 0), src=OWN, dst=PEER, flags=p.FLAG_WANT_REPLY, request_id=7
    )
    pair.local_far.sendall(req)
    f = read_frame(pair.peer_far)
    assert (f.type, f.src, f.dst, f.request_id) == (p.MSG_PIO_REQ, OWN, PEER, 7)
    assert pair.e.info(pair.peer)[0] == 1  # pending on the link it went out on
    rep = p.encode_frame(
        p.PioReply(5, 0), src=PEER, dst=OWN, flags=p.FLAG_REPLY, request_id=7
    )  # fmt: skip
    pair.peer_far.sendall(rep)
    assert read_frame(pair.local_far).msg == p.PioReply(5, 0)
    assert pair.e.info(pair.peer)[0] == 0
    c = Counters(pair.e.counters(pair.peer))
    assert c.tx_msgs[p.MSG_PIO_REQ] == 1 and c.tx_bytes[p.MSG_PIO_REQ] == len(req)
    assert c.rx_msgs[p.MSG_PIO_REPLY] == 1 and c.latency.count == 1
    cl = Counters(pair.e.counters(pair.local))
    assert cl.rx_msgs[p.MSG_PIO_REQ] == 1 and cl.tx_msgs[p.MSG_PIO_REPLY] == 1


def test_own_requests_are_not_pending(pair: Pair) -> None:
    """The router's own PINGs (sent from Python) are answered to DST_ROUTER, never matched
    against the forwarded requests: they must not be recorded as pending."""
    ping = p.encode_frame(
        p.Ping(1), src=OWN, dst=p.DST_ROUTER, flags=p.FLAG_WANT_REPLY, request_id=5
    )  # fmt: skip
    assert pair.e.send(pair.peer, ping)
    assert read_frame(pair.peer_far).type == p.MSG_PING
    assert pair.e.info(pair.peer)[0] == 0
    assert Counters(pair.e.counters(pair.peer)).tx_msgs[p.MSG_PING] == 1


def test_many_pending_replied_in_any_order(pair: Pair) -> None:
    n = 3000
    reqs = b"".join(
        p.encode_frame(p.Gsi(i, 1), src=OWN, dst=PEER, flags=p.FLAG_WANT_REPLY, request_id=i)
        for i in range(1, n + 1)
    )
    pair.local_far.sendall(reqs)
    for _ in range(n):
        read_frame(pair.peer_far)
    assert pair.e.info(pair.peer)[0] == n
    order = list(range(1, n + 1))
    random.Random(3).shuffle(order)
    half = order[: n // 2]
    pair.peer_far.sendall(
        b"".join(
            p.encode_frame(p.Gsi(i, 1), src=PEER, dst=OWN, flags=p.FLAG_REPLY, request_id=i)
            for i in half
        )
    )
    for _ in half:
        read_frame(pair.local_far)
    assert pair.e.info(pair.peer)[0] == n - len(half)
    left = sorted((src, rid) for src, rid, _t0, _t in pair.e.take_pending(pair.peer))
    assert left == sorted((OWN, i) for i in order[n // 2 :])


def test_router_frames_and_undeliverable_go_to_python(pair: Pair) -> None:
    ping = p.encode_frame(
        p.Ping(1), src=PEER, dst=p.DST_ROUTER, flags=p.FLAG_WANT_REPLY, request_id=3
    )  # fmt: skip
    lost = p.encode_frame(p.Gsi(1, 1), src=OWN, dst=9)
    pair.peer_far.sendall(ping)
    pair.local_far.sendall(lost)
    deadline = 50
    while len(pair.events) < 2 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    kinds = {ev[0]: ev for ev in pair.events}
    assert kinds[fp.EV_ROUTER] == (fp.EV_ROUTER, pair.peer, ping)
    assert kinds[fp.EV_UNDELIVERABLE][:3] == (fp.EV_UNDELIVERABLE, pair.local, fp.UD_NO_ROUTE)


def test_backlog_and_close(pair: Pair) -> None:
    frame = p.encode_frame(p.Gsi(1, 1), src=OWN, dst=PEER)
    sent = 0
    while pair.e.info(pair.peer)[1] == 0:
        assert pair.e.send(pair.peer, frame * 1000)
        sent += 1000
    got = 0
    pair.peer_far.settimeout(5.0)
    while got < sent * len(frame):
        got += len(pair.peer_far.recv(1 << 20))
    assert got == sent * len(frame) and pair.e.info(pair.peer)[1] == 0
    assert pair.e.close(pair.peer, "test") and not pair.e.close(pair.peer, "again")
    assert not pair.e.send(pair.peer, frame)
