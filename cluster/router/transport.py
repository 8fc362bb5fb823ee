"""Links: a byte stream to the local QEMU shard (UNIX socket) or a peer router (TCP).

`Link` holds what the router needs from any transport: a send path that never blocks the
caller (it tries a non-blocking send and otherwise queues the rest, which the router's data
loop flushes when the transport is writable, so two routers can't deadlock on full buffers
and no frame waits for a thread hand-off), the table of requests pending on this link,
counters, and an idempotent close. `SocketLink` implements it over a non-blocking stream
socket. An RDMA link would subclass `Link` and implement `fileno` (something epoll can
wait on), `recv_into`, `_try_send` and `_abort`; nothing else in the router knows the
transport.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cluster.router import protocol as p
from cluster.router.stats import LinkStats

log = logging.getLogger("dqemu.router")

Buffer = bytes | bytearray | memoryview

KIND_LOCAL = "local"
KIND_PEER = "peer"


class LinkClosed(Exception):
    """The link is gone; the message says why."""


class Link:
    """Transport-independent part of a link."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name  # e.g. "peer shard 2 (127.0.0.1:7002)"
        self.peer_id: int = -1  # shard id at the far end, once known
        self.features = 0
        self.stats = LinkStats()
        self.lock = threading.Lock()
        self._backlog: list[Buffer] = []
        self._backlog_bytes = 0
        self.closed = False
        self.close_reason = ""
        self.down_code = p.ERR_LINK_DOWN  # the LINK_STATE reason its loss is reported with
        # (requester shard, request_id) -> (start ns, request type)
        self.pending: dict[tuple[int, int], tuple[int, int]] = {}
        self.last_rx = time.monotonic()
        self.last_ping = time.monotonic()
        self.up_since = time.time()
        # set by the data loop: called with True when bytes are queued, False when drained
        self.want_write: Callable[[bool], None] | None = None

    # --- transport-specific ------------------------------------------------------------------

    def fileno(self) -> int:
        raise NotImplementedError

    def recv_into(self, buf: memoryview) -> int:
        """Non-blocking read: bytes read, 0 at end of stream; BlockingIOError if none."""
        raise NotImplementedError

    def _try_send(self, data: Buffer) -> int:
        """Send without blocking; return bytes sent. May raise BlockingIOError (= 0)."""
        raise NotImplementedError

    def _abort(self) -> None:
        """Stop the transport so that the data loop sees end of stream (idempotent)."""
        raise NotImplementedError

    # --- common --------------------------------------------------------------------------------

    def send(
        self,
        parts: Sequence[Buffer],
        types: Sequence[int] = (),
        sizes: Sequence[int] = (),
        requests: Sequence[tuple[int, int, int]] = (),
        before: Callable[[], None] | None = None,
    ) -> bool:
        """Queue whole frames for sending. Returns False if the link is closed.

        ``types``/``sizes`` feed the per-type send counters; ``requests`` (requester,
        request_id, type) are recorded as pending on this link under the same lock, so a
        concurrent close fails them exactly once. ``before`` runs under the send lock
        first (used to publish a new link so that nothing overtakes its first frames).
        """
        with self.lock:
            if self.closed:
                return False
            if before is not None:
                before()
            if requests:
                now = time.monotonic_ns()
                for src, rid, t in requests:
                    self.pending[(src, rid)] = (now, t)
            st = self.stats
            for t, n in zip(types, sizes, strict=False):
                st.tx_msgs[t] += 1
                st.tx_bytes[t] += n
            data: Buffer = parts[0] if len(parts) == 1 else b"".join(parts)
            return self._write_locked(data, len(data))

    def send1(self, data: Buffer, t: int, nbytes: int, req: tuple[int, int] | None) -> bool:
        """`send` for one frame: the hot path when a read held a single frame."""
        with self.lock:
            if self.closed:
                return False
            if req is not None:
                self.pending[req] = (time.monotonic_ns(), t)
            st = self.stats
            st.tx_msgs[t] += 1
            st.tx_bytes[t] += nbytes
            return self._write_locked(data, nbytes)

    def _write_locked(self, data: Buffer, nbytes: int) -> bool:
        """Send now if nothing is queued, else (or for what the transport did not take)
        queue for `flush`, so frames never overtake each other. Holds ``self.lock``."""
        if self._backlog:
            self._backlog.append(bytes(data))
            self._backlog_bytes += nbytes
            return True
        n = self._send_some(data)
        if n is None:
            return True
        if n < nbytes:
            self._backlog.append(bytes(memoryview(data)[n:]))
            self._backlog_bytes += nbytes - n
            if self.want_write is not None:
                self.want_write(True)
        return True

    def _send_some(self, data: Buffer) -> int | None:
        """Bytes the transport took now (0 if it would block), or None if the send failed
        and closed the link. Holds ``self.lock``."""
        try:
            return self._try_send(data)
        except BlockingIOError:
            return 0
        except OSError as e:
            self._close_locked(f"send failed: {e.strerror or e}")
            return None

    def flush(self) -> None:
        """Send queued bytes (the data loop calls this when the transport is writable)."""
        with self.lock:
            if self.closed or not self._backlog:
                return
            data = b"".join(self._backlog) if len(self._backlog) > 1 else self._backlog[0]
            nbytes = len(data)
            n = self._send_some(data)
            if n is None:
                return
            if n == nbytes:
                self._backlog.clear()
                self._backlog_bytes = 0
                if self.want_write is not None:
                    self.want_write(False)
            else:
                self._backlog[:] = [memoryview(data)[n:]]
                self._backlog_bytes = nbytes - n

    @property
    def backlog_bytes(self) -> int:
        return self._backlog_bytes

    def close(self, reason: str, code: int | None = None) -> bool:
        """Close the link (idempotent). Returns True for the call that closed it, which
        also sets ``down_code`` (the LINK_STATE reason) if ``code`` is given."""
        with self.lock:
            if self.closed:
                return False
            if code is not None:
                self.down_code = code
            return self._close_locked(reason)

    def _close_locked(self, reason: str) -> bool:
        if self.closed:
            return False
        self.closed = True
        self.close_reason = reason
        with contextlib.suppress(OSError):
            self._abort()
        return True

    def take_pending(self) -> dict[tuple[int, int], tuple[int, int]]:
        """After close: the requests that will never get a reply over this link."""
        with self.lock:
            assert self.closed
            pend, self.pending = self.pending, {}
            return pend


class SocketLink(Link):
    def __init__(self, sock: socket.socket, kind: str, name: str) -> None:
        super().__init__(kind, name)
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._fd_closed = False
        # the hot path calls the socket's own methods, without a Python frame in between
        self.recv_into = sock.recv_into  # type: ignore[method-assign, assignment]
        self._try_send = sock.send  # type: ignore[method-assign, assignment]

    def fileno(self) -> int:
        return self._fd

    def recv_into(self, buf: memoryview) -> int:
        return self.sock.recv_into(buf)

    def _try_send(self, data: Buffer) -> int:
        return self.sock.send(data)

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Close the fd; only after the reader thread has stopped using it."""
        if not self._fd_closed:
            self._fd_closed = True
            self.sock.close()


# --- blocking frame I/O for handshakes and simple clients --------------------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0:
                raise LinkClosed("connection closed by peer")
            raise p.ProtocolError(f"truncated frame: stream ended after {got} of {n} bytes")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket) -> p.Frame:
    """Read and decode exactly one frame (blocking; honours the socket's timeout)."""
    head = recv_exact(sock, p.HEADER_SIZE)
    h = p.decode_header(head)
    payload = recv_exact(sock, h.length) if h.length else b""
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
