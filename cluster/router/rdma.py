"""RDMA links between routers: the set-up, over the peer's authenticated TCP connection.

The queue pair is made in C (`_rdma.c`, `Engine.add_rdma`): pyverbs cannot hand its
``ibv_*`` objects to a C extension. After the HMAC handshake (`auth.py`) each router sends
its 48-byte RDMA parameters on that TCP connection and reads the peer's, readies its queue
pair with them and sends one READY byte, all within 10 s (or ``handshake_timeout`` if
longer); once the peer's READY byte is in, both queue pairs can receive, and the link joins
the data loop. The TCP connection stays open beside the queue pair: its end means that the
peer is gone (docs/protocol.md "RDMA links").
"""

from __future__ import annotations

import contextlib
import socket
import time

from cluster.router._fastpath import Engine
from cluster.router.config import RouterConfig
from cluster.router.transport import recv_exact

PARAMS_SIZE = 48
READY = b"R"
# the exchange may take longer than the TCP handshake: making a queue pair and registering
# its buffers is slow on a loaded machine (soft-RoCE under TCG: seconds)
MIN_SETUP_TIMEOUT = 10.0


class RdmaSetupError(OSError):
    """The RDMA link could not be set up; the message says why."""


def connect_rdma(engine: Engine, sock: socket.socket, peer_id: int, cfg: RouterConfig) -> int:
    """Make the RDMA link to ``peer_id`` over ``sock`` (authenticated, blocking) and return
    its engine handle, ready for `DataLoop.link`. Raises RdmaSetupError."""
    timeout = max(cfg.handshake_timeout, MIN_SETUP_TIMEOUT)
    deadline = time.monotonic() + timeout
    try:
        handle, mine = engine.add_rdma(
            sock.fileno(), peer_id, cfg.rdma_device or None, cfg.rdma_port, cfg.rdma_gid_index
        )
    except OSError as e:
        raise RdmaSetupError(str(e)) from None
    try:
        sock.settimeout(timeout)
        sock.sendall(mine)
        theirs = recv_exact(sock, PARAMS_SIZE, deadline)
        engine.rdma_connect(handle, theirs)
        sock.sendall(READY)
        if recv_exact(sock, 1, deadline) != READY:
            raise RdmaSetupError("the peer did not confirm its RDMA queue pair")
        sock.settimeout(None)
    except BaseException as e:
        with contextlib.suppress(ValueError):
            engine.close(handle, "RDMA set-up failed")
            engine.release(handle)
        if isinstance(e, RdmaSetupError):
            raise
        if isinstance(e, TimeoutError):
            raise RdmaSetupError("the peer sent no RDMA parameters in time") from None
        if isinstance(e, OSError):
            raise RdmaSetupError(str(e) or type(e).__name__) from None
        raise RdmaSetupError(f"RDMA set-up failed: {e}") from None
    return int(handle)
