"""Links: a byte stream to the local QEMU shard (UNIX socket) or a peer router (TCP).

Once set up (HELLO/AUTH or REGISTER, in Python with blocking I/O), a link's socket is
served by the C data path (`cluster/router/_fastpath.c`, driven by `dataloop.DataLoop`):
it reads, routes and sends every frame, keeps the link's send queue, its counters and the
table of requests pending on it. `Link` is the router's handle on that: a send path that
never blocks the caller (a non-blocking send; the rest is queued in C and sent when the
socket is writable, so two routers can't deadlock on full buffers), an idempotent close,
and read access to the counters, the pending requests and the time of the last read.
Each link in the data path has its own read, send and close (a `LinkOps` table in C):
a stream socket's, or an RDMA link's (`_rdma.c`: an RC queue pair, set up by
`cluster/router/rdma.py`), which shares the framing, routing and counters.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

from cluster.router import protocol as p
from cluster.router._fastpath import Engine
from cluster.router.stats import Counters, LinkStats

Buffer = bytes | bytearray | memoryview

KIND_LOCAL = "local"
KIND_PEER = "peer"


class LinkClosed(Exception):
    """The link is gone; the message says why."""


class Link:
    """A socket handed to the C data path (``engine``); ``peer_id`` is the shard at the far
    end (our own id for the local link), which every frame it sends must carry as src."""

    def __init__(
        self,
        engine: Engine,
        sock: socket.socket,
        kind: str,
        name: str,
        peer_id: int,
        handle: int | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.kind = kind
        self.name = name  # e.g. "shard 2 (127.0.0.1:7002)"
        self.peer_id = peer_id
        self.features = 0
        self._engine = engine
        # ``handle``: a link the engine made already (an RDMA link over ``sock``)
        self.handle: int = (
            engine.add(sock.fileno(), kind == KIND_LOCAL, peer_id) if handle is None else handle
        )
        self.lock = threading.Lock()
        self.closed = False
        self.close_reason = ""
        self.down_code = p.ERR_LINK_DOWN  # the LINK_STATE reason its loss is reported with
        self.last_ping = time.monotonic()
        self.up_since = time.time()
        self.stats = LinkStats(self._counters)
        self._released = False
        self._final = Counters()
        self._final_rx = time.monotonic()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, *frames: Buffer) -> bool:
        """Queue whole frames and send what the socket takes now (before the data loop
        serves the link: once it does). False if closed."""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        return bool(self._engine.send(self.handle, data))

    def send_fd(self, frame: bytes, fd: int) -> bool:
        """Send one frame carrying ``fd`` (SCM_RIGHTS), in order with what is queued. False
        means not now (something is queued, the data loop does not serve the link yet, or
        the socket is full): try again later."""
        return bool(self._engine.send_fd(self.handle, frame, fd))

    def close(self, reason: str, code: int | None = None) -> bool:
        """Close the link (idempotent). Returns True for the call that closed it, which
        also sets ``down_code`` (the LINK_STATE reason) if ``code`` is given. The data
        loop then reports it down (``on_down``) from its thread."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
            self.close_reason = reason
            if code is not None:
                self.down_code = code
            if not self._released:
                self._engine.close(self.handle, reason)
            return True

    def release(self) -> None:
        """Forget the link in the data path and close the socket (after it is down)."""
        with self.lock:
            if self._released:
                return
            self._final = self._counters_locked()
            self._final_rx = self._info_locked()[2]
            self._released = True
            self._engine.release(self.handle)
            self.sock.close()

    # --- figures kept by the data path ---------------------------------------------------------

    def _counters(self) -> Counters:
        with self.lock:
            return self._counters_locked()

    def _counters_locked(self) -> Counters:
        if self._released:
            return self._final
        return Counters(self._engine.counters(self.handle))

    def _info_locked(self) -> tuple[int, int, float]:
        if self._released:
            return 0, 0, self._final_rx
        pend, backlog, rx_ns = self._engine.info(self.handle)
        return pend, backlog, rx_ns / 1e9

    def pending_count(self) -> int:
        """Requests forwarded on this link whose reply has not come back yet."""
        with self.lock:
            return self._info_locked()[0]

    @property
    def backlog_bytes(self) -> int:
        with self.lock:
            return self._info_locked()[1]

    @property
    def last_rx(self) -> float:
        """`time.monotonic()` of the last read that returned data."""
        with self.lock:
            return self._info_locked()[2]

    @last_rx.setter
    def last_rx(self, t: float) -> None:
        with self.lock:
            if not self._released:
                self._engine.set_last_rx(self.handle, int(t * 1e9))

    def record_latency(self, ns: int) -> None:
        with self.lock:
            if not self._released:
                self._engine.record(self.handle, ns)

    def take_pending(self) -> list[tuple[int, int, int, int]]:
        """After close: the requests that will never get a reply over this link, as
        (requester shard, request_id, start ns, type)."""
        with self.lock:
            assert self.closed
            if self._released:
                return []
            pend: list[tuple[int, int, int, int]] = self._engine.take_pending(self.handle)
            return pend


# --- blocking frame I/O for handshakes and simple clients --------------------------------------


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """Read exactly ``n`` bytes. With a ``deadline`` (`time.monotonic()`), the whole read
    must end by then (TimeoutError), however slowly the peer trickles bytes in."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0:
                raise LinkClosed("connection closed by peer")
            raise p.ProtocolError(f"truncated frame: stream ended after {got} of {n} bytes")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket, deadline: float | None = None) -> p.Frame:
    """Read and decode exactly one frame (blocking; honours the socket's timeout, or
    ``deadline`` as in `recv_exact`)."""
    head = recv_exact(sock, p.HEADER_SIZE, deadline)
    h = p.decode_header(head)
    payload = recv_exact(sock, h.length, deadline) if h.length else b""
    return p.Frame(h, p.decode_body(h, payload))


# --- sockets ------------------------------------------------------------------------------------


def tune_tcp(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    tune_tcp(sock)
    return sock


def listen_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` mode 0700, or check an existing one. Returns True if created."""
    try:
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
        return True
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"socket dir {path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise OSError(f"socket dir {path} is not owned by this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise OSError(f"socket dir {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700")
    return False


def listen_unix(path: Path) -> socket.socket:
    """A listening UNIX socket with mode 0600. Removes a stale socket file first."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody listening
        else:
            raise OSError(f"{path} is in use by another process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock
