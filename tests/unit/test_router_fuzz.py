"""Fuzz a live router with random and mutated frames on both kinds of link: the local
shard's, a peer's before the handshake, at its AUTH stage and after it has authenticated.

The router must survive, close only the offending link with a log line naming the peer and
the problem, and never forward a malformed frame (the receiving client would fail to decode
it and lose its link). Every test runs with several seeds."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.router import protocol as p
from cluster.router.auth import ROLE_DIALER, compute_mac, handshake
from cluster.router.config import config_from_data
from cluster.router.router import Router
from cluster.router.transport import read_frame
from tests.support.shard_client import ShardClient
from tests.unit._router_support import (
    SECRET,
    InProcessMesh,
    register_raw,
    router_config,
    wait_for,
)

SEEDS = [0xD0E, 0x5EED, 12]

VALID = [
    p.encode_frame(p.Gsi(3, 1), src=1, dst=2),
    p.encode_frame(p.Irq(p.DM_FIXED, 0x31, 0, 5), src=1, dst=2),
    p.encode_frame(p.TbInvalidate(0, 4096), src=1, dst=p.DST_BROADCAST),
    p.encode_frame(p.MmioReq(0xFED00000, 0, 4, 0, 1, 0), src=1, dst=2),
    p.encode_frame(p.Error(1, "x"), src=1, dst=2),
]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    choice = rng.randrange(8)
    if choice == 0:  # random byte flips anywhere
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif choice == 1:  # length field
        b[12:16] = rng.choice([0, 1, 7, 65537, 0xFFFFFFFF, len(b)]).to_bytes(4, "little")
    elif choice == 2:  # unknown type
        b[5] = rng.choice([0, 0x0F, 0x14, 0x7F, 0xFF])
    elif choice == 3:  # reserved flags
        b[6:8] = rng.choice([8, 0x100, 0x8000]).to_bytes(2, "little")
    elif choice == 4:  # truncated
        b = b[: rng.randrange(1, len(b))]
    elif choice == 5:  # oversize payload
        b[12:16] = (p.MAX_PAYLOAD + 1).to_bytes(4, "little")
        b += bytes(64)
    elif choice == 6:  # spoofed source
        b[8:10] = (3).to_bytes(2, "little")
    else:  # pure garbage
        b = bytearray(rng.randbytes(rng.randint(1, 120)))
    return bytes(b)


def send_and_drain(s: socket.socket, data: bytes) -> None:
    """Send, then read until the router closes (it may close before we finish sending)."""
    with contextlib.suppress(OSError):
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    drain(s)


def drain(s: socket.socket) -> None:
    s.settimeout(2.0)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_local_and_peer_links(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    caplog.set_level(logging.INFO, logger="dqemu.router")
    rng = random.Random(seed)
    with InProcessMesh([1, 2], tmp_path) as m:
        m.wait_links()
        c2 = m.client(2)
        got: list[p.Frame] = []

        def collect(f: p.Frame) -> None:
            got.append(f)

        c2.on(p.MSG_GSI, collect)
        r1 = m.routers[1]
        for _ in range(60):
            s = register_raw(r1.cfg.shard_socket, 1)
            good = rng.choice(VALID)
            bad = mutate(rng, rng.choice(VALID))
            send_and_drain(s, good + bad + good)
            s.close()
            wait_for(lambda: r1.local is None, what="fuzz link closed")
        # peer (TCP) side: random bytes and mutated HELLOs at router 2's listener
        hello = p.encode_frame(
            p.Hello(1, p.ROLE_ROUTER, 0, b"n" * 32, "vm1"), src=1, dst=p.DST_ROUTER
        )
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", m.routers[2].listen_addr.port), 5.0)
            send_and_drain(s, mutate(rng, hello) if rng.random() < 0.7 else rng.randbytes(100))
            s.close()
        # both routers are alive and still route real traffic
        m.wait_links()
        c1 = m.client(1)
        c2.on(p.MSG_PIO_REQ, lambda f: p.PioReply(7, 0))
        assert c1.request(2, p.PioReq(1, 1, 0, 0, 0)) == p.PioReply(7, 0)
        assert c2.lost_reason is None  # never received anything undecodable
        assert got and all(f.src == 1 and isinstance(f.msg, p.Gsi) for f in got)
        log = caplog.text
        assert "closing link to local shard 1" in log and "protocol error" in log
        assert "refused peer 127.0.0.1:" in log
        # every fuzzed connection was refused; the log lines about them are rate-limited
        r2 = m.routers[2]
        wait_for(lambda: r2.stats()["handshakes"]["inbound_refused"] == 40, what="refusals")
        for needle in ("unknown message type", "spoofed source"):
            assert needle in log, needle
        assert "Traceback" not in log


def closed_by_router(s: socket.socket, timeout: float = 10.0) -> bool:
    """Read until the router closes the connection: True, or False if it did not within
    ``timeout`` (a hang)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


@contextlib.contextmanager
def lone_router(tmp: Path) -> Iterator[tuple[Router, ShardClient]]:
    """Router 2 of a VM of shards 1 and 2, with its shard connected; the test plays shard
    1's router, which dials it (router 1's address is a closed port, never dialed)."""
    r2 = Router(config_from_data(router_config(2, [1, 2], tmp, {1: 0, 2: 0})), SECRET)
    r2.start_in_thread()
    c2 = ShardClient.connect(r2.cfg.shard_socket, 2)
    try:
        yield r2, c2
    finally:
        c2.close()
        r2.close()


def dial(r: Router) -> socket.socket:
    return socket.create_connection(("127.0.0.1", r.listen_addr.port), 5.0)


def dial_authenticated(r: Router) -> socket.socket:
    """A link to router 2 as shard 1's router, with the secret."""
    s = dial(r)
    handshake(
        s, own_id=1, vm_id="vm1", secret=SECRET, features=0,
        is_peer=lambda x: x == 2, timeout=5.0, dialed=True,
    )  # fmt: skip
    return s


def send_last(r: Router, s: socket.socket, data: bytes) -> None:
    """Send ``data`` and EOF; the router must close the connection and drop the link."""
    with contextlib.suppress(OSError):
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    assert closed_by_router(s), "router kept a fuzzed connection open"
    s.close()
    wait_for(lambda: 1 not in r.peers, what="fuzzed link gone")


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_auth_stage(tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int) -> None:
    """A peer that knows the secret sends a good HELLO, then a mutated AUTH (or garbage)."""
    caplog.set_level(logging.INFO, logger="dqemu.router")
    rng = random.Random(seed)
    with lone_router(tmp_path) as (r2, c2):
        for _ in range(30):
            s = dial(r2)
            nonce = rng.randbytes(32)
            s.sendall(
                p.encode_frame(p.Hello(1, p.ROLE_ROUTER, 0, nonce, "vm1"), src=1, dst=p.DST_ROUTER)
            )
            theirs = read_frame(s)
            assert isinstance(theirs.msg, p.Hello)
            mac = compute_mac(SECRET, "vm1", ROLE_DIALER, 1, 2, nonce, theirs.msg.nonce)
            auth = p.encode_frame(p.Auth(mac), src=1, dst=p.DST_ROUTER)
            bad = mutate(rng, auth) if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 80))
            send_last(r2, s, bad)
        # still alive: a genuine dialer gets a link that delivers
        s = dial_authenticated(r2)
        s.sendall(p.encode_frame(p.Gsi(2, 1), src=1, dst=2))
        f = c2.recv(5.0)
        while f is not None and not isinstance(f.msg, p.Gsi):
            f = c2.recv(5.0)
        assert f is not None and f.msg == p.Gsi(2, 1)
        s.close()
        assert c2.lost_reason is None

        # each fuzzed AUTH was refused, unless the mutation left it valid (then the link
        # came up and our EOF closed it); refusals are logged, rate-limited, and counted
        def counts() -> tuple[int, int]:
            ups = sum(1 for e in r2.events if e["event"] == "link_up")
            return r2.stats()["handshakes"]["inbound_refused"], ups

        # the last refusal is counted just after the router closed the connection
        wait_for(lambda: sum(counts()) == 30 + 1, what=f"refusals and links: {counts()}")
        assert counts()[0] >= 20, counts()
    log = caplog.text
    assert "refused peer 127.0.0.1:" in log
    assert "Traceback" not in log and "internal error" not in log


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_after_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int) -> None:
    """An authenticated peer link carrying good frames around a mutated one: the link is
    closed with a log line naming it and the problem; the shard gets only good frames."""
    caplog.set_level(logging.INFO, logger="dqemu.router")
    rng = random.Random(seed)
    with lone_router(tmp_path) as (r2, c2):
        got: list[p.Frame] = []
        c2.on(p.MSG_GSI, got.append)
        c2.on(p.MSG_PIO_REQ, lambda f: p.PioReply(5, 0))
        for _ in range(30):
            s = dial_authenticated(r2)
            good = rng.choice(VALID)
            send_last(r2, s, good + mutate(rng, rng.choice(VALID)) + good)
        # still alive and routing: a request over a fresh authenticated link is answered
        s = dial_authenticated(r2)
        s.sendall(
            p.encode_frame(
                p.PioReq(1, 1, 0, 0, 0), src=1, dst=2, flags=p.FLAG_WANT_REPLY, request_id=77
            )
        )
        s.settimeout(5.0)
        while True:
            f = read_frame(s)
            if f.request_id == 77:
                break
        assert f.msg == p.PioReply(5, 0)
        s.close()
        assert c2.lost_reason is None  # never received anything undecodable
        assert got and all(f.src == 1 and isinstance(f.msg, p.Gsi) for f in got)
    log = caplog.text
    assert "closing link to shard 1 (127.0.0.1:" in log and "protocol error" in log
    assert "Traceback" not in log and "internal error" not in log
