"""A stranger with no secret who relays a handshake between two routers (issue 12).

It connects to both routers and passes everything each one sends on to the other, so each
router's challenge reaches the other one; it watches the frames go by. Had both routers
sent AUTH_OK, it would have been accepted as each one's peer: it then injects a forged
COMMAND QUIT into both links. Run as ``python -m tests.unit._stranger HOST:PORT HOST:PORT``
(prints the outcome as one JSON line) or call `relay`.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from typing import Any

from cluster.router import protocol as p


class _Watch:
    """The frames of one direction of the relay, parsed from a copy of the bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.types: list[str] = []
        self.errors: list[str] = []
        self.shard: int | None = None  # the HELLO's shard id
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        while len(self.buf) >= p.HEADER_SIZE:
            try:
                h = p.decode_header(bytes(self.buf[: p.HEADER_SIZE]))
            except p.ProtocolError:
                self.broken = True
                return
            end = p.HEADER_SIZE + h.length
            if len(self.buf) < end:
                return
            try:
                f = p.Frame(h, p.decode_body(h, bytes(self.buf[p.HEADER_SIZE : end])))
            except p.ProtocolError:
                self.broken = True
                return
            del self.buf[:end]
            self.types.append(p.type_name(f.type))
            if isinstance(f.msg, p.Hello):
                self.shard = f.msg.shard_id
            if f.is_error and isinstance(f.msg, p.Error):
                self.errors.append(f.msg.message)


def relay(a: tuple[str, int], b: tuple[str, int], timeout: float = 10.0) -> dict[str, Any]:
    """Relay between routers ``a`` and ``b`` until both close (or ``timeout``)."""
    socks = [socket.create_connection(x, timeout=5.0) for x in (a, b)]
    watch = [_Watch(), _Watch()]  # what router a sent, what router b sent
    injected = False
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(True)
        sel.register(s, selectors.EVENT_READ, i)
    open_ = {0, 1}
    deadline = time.monotonic() + timeout
    try:
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                i = key.data
                try:
                    data = socks[i].recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(socks[i])
                    open_.discard(i)
                    continue
                watch[i].feed(data)
                if 1 - i in open_:
                    try:
                        socks[1 - i].sendall(data)
                    except OSError:
                        open_.discard(1 - i)
            if not injected and all("AUTH_OK" in w.types for w in watch):
                injected = True  # accepted by both: forge a QUIT from each one's "peer"
                for i, s in enumerate(socks):
                    claimed = watch[1 - i].shard or 0
                    quit_ = p.Command(p.CMD_QUIT, 0, 0)
                    s.sendall(p.encode_frame(quit_, src=claimed, dst=p.DST_BROADCAST))
    finally:
        sel.close()
        for s in socks:
            s.close()
    return {
        "authenticated": all("AUTH_OK" in w.types for w in watch),
        "injected_quit": injected,
        "from_a": watch[0].types,
        "from_b": watch[1].types,
        "errors_a": watch[0].errors,
        "errors_b": watch[1].errors,
        "both_closed": not open_,
    }


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    print(json.dumps(relay(_addr(sys.argv[1]), _addr(sys.argv[2]))), flush=True)
