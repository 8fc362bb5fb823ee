"""Python client of a router: talks to it over its UNIX socket exactly as a QEMU shard does.

Used by tests, the benchmark and upper layers::

    with ShardClient.connect(cfg.shard_socket, shard_id=1) as c:
        c.send(2, p.Gsi(4, 1))
        reply = c.request(2, p.PioReq(0x3F8, 1, 0, 0, 0), timeout=1.0)
        c.broadcast(p.TbInvalidate(0x1000, 4096))

Two modes. Threaded (default): a reader thread matches replies to waiting `request()`
calls, runs handlers registered with `on()`, and queues everything else for `recv()`.
Synchronous (``threaded=False``): no thread; `request()` and `recv()` read the socket in the
calling thread, which saves a thread wake-up per message (the benchmark uses this).

`attach(router, shard_id)` gives an in-process client of an in-process `Router`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from cluster.router import protocol as p
from cluster.router.routing import RoutingTable
from tests.support.requests import (
    Handler,
    Handlers,
    LinkLost,
    RequestError,
    RequestTimeout,
    RequestTracker,
    reply_result,
)

if TYPE_CHECKING:
    from cluster.router.router import Router

Dest = int | str
# everything but direct links: this client reads its router socket without taking
# descriptors (SCM_RIGHTS), so it must not ask for them
CLIENT_FEATURES = p.FEATURES_KNOWN & ~p.FEAT_DIRECT


class ShardClient:
    def __init__(
        self,
        sock: socket.socket,
        shard_id: int,
        *,
        threaded: bool = True,
        features: int = CLIENT_FEATURES,
        register_timeout: float = 5.0,
        routes: RoutingTable | None = None,
        heartbeat: bool = False,
    ) -> None:
        self.sock = sock
        self.shard_id = shard_id
        self.threaded = threaded
        self.routes = routes
        self.tracker = RequestTracker()
        self.handlers = Handlers()
        self.link_states: dict[int, int] = {}
        self.link_reasons: dict[int, int] = {}  # shard -> DQ_ERR_* of its last LINK_STATE
        self.on_link_state: Callable[[int, int, int], None] | None = None
        self._send_lock = threading.Lock()
        self._decoder = p.FrameDecoder()
        self._rbuf = bytearray(256 * 1024)
        self._inbox: queue.Queue[p.Frame | None] = queue.Queue()
        self._sync_inbox: collections.deque[p.Frame] = collections.deque()
        self._closed = False
        self.lost_reason: str | None = None
        self._reader: threading.Thread | None = None
        self.n_shards = 0
        self.router_features = 0
        self._register(features, register_timeout)
        if threaded:
            self._reader = threading.Thread(
                target=self._reader_loop, name=f"shard-client-{shard_id}", daemon=True
            )
            self._reader.start()
        if heartbeat:
            self.announce_heartbeat()

    @classmethod
    def connect(
        cls,
        path: str | Path,
        shard_id: int,
        *,
        threaded: bool = True,
        timeout: float = 5.0,
        features: int = CLIENT_FEATURES,
        routes: RoutingTable | None = None,
        heartbeat: bool = False,
    ) -> ShardClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(path))
            return cls(
                sock,
                shard_id,
                threaded=threaded,
                features=features,
                register_timeout=timeout,
                routes=routes,
                heartbeat=heartbeat,
            )
        except BaseException:
            sock.close()
            raise

    # --- set-up / tear-down --------------------------------------------------------------

    def _register(self, features: int, timeout: float) -> None:
        self.sock.settimeout(timeout)
        frame = p.encode_frame(
            p.Register(self.shard_id, os.getpid() & 0xFFFFFFFF, features),
            src=self.shard_id,
            dst=p.DST_ROUTER,
            flags=p.FLAG_WANT_REPLY,
            request_id=1,
        )
        self.sock.sendall(frame)
        deadline = time.monotonic() + timeout
        early: list[p.Frame] = []
        while True:
            try:
                frames = self._read_frames()
            except TimeoutError:
                raise RequestTimeout("no REGISTER_OK from the router") from None
            for f in frames:
                if f.is_reply and f.request_id == 1 and not early:
                    msg = reply_result(f)  # raises RequestError if refused
                    assert isinstance(msg, p.RegisterOk)
                    self.n_shards = msg.n_shards
                    self.router_features = msg.features
                    self.sock.settimeout(None)
                    continue
                early.append(f)
            if self.n_shards:
                break
            if time.monotonic() > deadline:
                raise RequestTimeout("no REGISTER_OK from the router")
        for f in early:
            self._dispatch(f)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5.0)
        self.sock.close()
        self.tracker.fail_all(LinkLost("client closed"))

    def __enter__(self) -> ShardClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- sending -------------------------------------------------------------------------

    def resolve(self, dest: Dest) -> int:
        if isinstance(dest, int):
            return dest
        if self.routes is None:
            raise ValueError(f"destination {dest!r} needs a routing table (routes=...)")
        return self.routes.resolve(dest)

    def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as e:
                raise LinkLost(f"connection to router lost: {e.strerror or e}") from None

    def send(self, dest: Dest, msg: p.Message, *, flags: int = 0, request_id: int = 0) -> None:
        """Send one message (no reply expected)."""
        self.send_raw(
            p.encode_frame(
                msg, src=self.shard_id, dst=self.resolve(dest), flags=flags, request_id=request_id
            )
        )

    def broadcast(self, msg: p.Message) -> None:
        """Send ``msg`` to every other shard of the VM."""
        self.send(p.DST_BROADCAST, msg)

    def reply(self, request: p.Frame, msg: p.Message) -> None:
        self.send(request.src, msg, flags=p.FLAG_REPLY, request_id=request.request_id)

    def reply_error(self, request: p.Frame, code: int, message: str) -> None:
        self.send_raw(
            p.encode_error_reply(
                p.REPLY_TYPE.get(request.type, p.MSG_ERROR),
                src=self.shard_id,
                dst=request.src,
                request_id=request.request_id,
                code=code,
                message=message,
            )
        )

    def request_frame(self, dest: Dest, msg: p.Message, timeout: float = 1.0) -> p.Frame:
        """Send a request and wait for the reply frame (which may be an error reply)."""
        dst = self.resolve(dest)
        rid, pend = self.tracker.new(dst, msg.TYPE)
        try:
            self.send(dst, msg, flags=p.FLAG_WANT_REPLY, request_id=rid)
        except RequestError:
            self.tracker.forget(rid)
            raise
        if self.threaded:
            pend.wait(timeout)
        else:
            self._pump_until(lambda: pend.done, timeout)
        if not pend.done:
            self.tracker.forget(rid)
            raise RequestTimeout(
                f"no reply from shard {dst} to {msg.NAME} (request {rid}) within {timeout:g} s"
            )
        if pend.error is not None:
            raise pend.error
        assert pend.reply is not None
        return pend.reply

    def request(self, dest: Dest, msg: p.Message, timeout: float = 1.0) -> p.Message:
        """Send a request and return the reply's message. Raises RequestTimeout, LinkLost
        (the link to the router or beyond it was lost) or RequestError (error reply)."""
        return reply_result(self.request_frame(dest, msg, timeout))

    def announce_heartbeat(self) -> None:
        """Send the router one PING without waiting: a router in ``shard_heartbeat =
        "auto"`` mode then pings this client every ``ping_interval`` and declares it hung
        if it stops answering (a threaded client answers in its reader thread; a
        synchronous one only while it reads)."""
        rid, _pend = self.tracker.new(p.DST_ROUTER, p.MSG_PING)
        self.send(p.DST_ROUTER, p.Ping(time.monotonic_ns()), flags=p.FLAG_WANT_REPLY,
                  request_id=rid)  # fmt: skip

    def ping_router(self, timeout: float = 1.0) -> float:
        """Round trip to the local router in seconds."""
        t0 = time.monotonic_ns()
        self.request(p.DST_ROUTER, p.Ping(t0), timeout)
        return (time.monotonic_ns() - t0) / 1e9

    # --- receiving -----------------------------------------------------------------------

    def on(self, mtype: int, handler: Handler) -> None:
        """Handle incoming frames of ``mtype`` (in the reader thread, or inside `recv` /
        `request` in synchronous mode). For requests, the handler's return value is sent as
        the reply; raising RequestError sends an error reply."""
        self.handlers.on(mtype, handler)

    def recv(self, timeout: float | None = None) -> p.Frame | None:
        """Next incoming frame that is not a reply, LINK_STATE or handled; None on timeout.
        Raises LinkLost once the connection is gone and nothing is left."""
        if self.threaded:
            try:
                f = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return None
            if f is None:
                self._inbox.put(None)
                raise LinkLost(f"connection to router lost: {self.lost_reason}")
            return f
        if not self._sync_inbox:
            self._pump_until(lambda: bool(self._sync_inbox), timeout)
        return self._sync_inbox.popleft() if self._sync_inbox else None

    def _read_frames(self) -> list[p.Frame]:
        n = self.sock.recv_into(self._rbuf)
        if n == 0:
            self._decoder.check_eof()
            raise LinkLost("connection closed by the router")
        return self._decoder.feed(memoryview(self._rbuf)[:n])

    def _pump_until(self, done: Callable[[], bool], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                frames = self._read_frames()
            except TimeoutError:
                return
            except (OSError, p.ProtocolError, LinkLost) as e:
                self._lost(str(e))
                raise LinkLost(f"connection to router lost: {e}") from None
            for f in frames:
                self._dispatch(f)

    def _dispatch(self, f: p.Frame) -> None:
        if f.is_reply:
            self.tracker.resolve(f)
            return
        if f.type == p.MSG_PING and f.wants_reply and isinstance(f.msg, p.Ping):
            # the router's heartbeat (docs/protocol.md "Liveness"): answer at once
            self.send(
                p.DST_ROUTER,
                p.Pong(f.msg.t_send, time.monotonic_ns()),
                flags=p.FLAG_REPLY,
                request_id=f.request_id,
            )
            return
        if f.type == p.MSG_LINK_STATE and isinstance(f.msg, p.LinkState):
            self.link_states[f.msg.shard_id] = f.msg.state
            self.link_reasons[f.msg.shard_id] = f.msg.reason
            if self.on_link_state is not None:
                self.on_link_state(f.msg.shard_id, f.msg.state, f.msg.reason)
            return
        handler = self.handlers.get(f.type)
        if handler is None:
            if self.threaded:
                self._inbox.put(f)
            else:
                self._sync_inbox.append(f)
            return
        try:
            result = handler(f)
        except RequestError as e:
            if f.wants_reply:
                self.reply_error(f, e.code, e.message)
            return
        except Exception as e:
            if f.wants_reply:
                self.reply_error(f, p.ERR_INTERNAL, f"handler failed: {e!r}")
            return
        if f.wants_reply:
            if result is None:
                self.reply_error(f, p.ERR_INTERNAL, "handler returned no reply")
            else:
                self.reply(f, result)

    def _reader_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                for f in self._read_frames():
                    self._dispatch(f)
        except (OSError, p.ProtocolError, LinkLost) as e:
            reason = str(e) or type(e).__name__
        finally:
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.tracker.fail_all(LinkLost(f"connection to router lost: {reason}"))
        if self.threaded:
            self._inbox.put(None)


def attach(router: Router, *, threaded: bool = True) -> ShardClient:
    """An in-process client of an in-process router, over a socketpair."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    router.attach_local(a)
    return ShardClient(b, router.id, threaded=threaded, routes=router.routes)
