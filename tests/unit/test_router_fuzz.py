"""Fuzz a live router with random and mutated frames on both kinds of link.

The router must survive, close only the offending link with a log line naming the peer and
the problem, and never forward a malformed frame (the receiving client would fail to decode
it and lose its link)."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from pathlib import Path

import pytest

from cluster.router import protocol as p
from tests.unit._router_support import InProcessMesh, register_raw, wait_for

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


def test_fuzz_local_and_peer_links(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dqemu.router")
    rng = random.Random(0xD0E)
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
        for needle in ("unknown message type", "truncated frame", "spoofed source"):
            assert needle in log, needle
        assert "Traceback" not in log
