"""The router process: one per node per VM.

Threads:
* the housekeeping loop (the caller of `serve_forever`, normally the main thread): a
  selector over the listening sockets and control connections, plus timers for dialing
  peers, heartbeats (PING every ``ping_interval`` to every peer router and, once enabled,
  to the local shard), liveness checks and rate computation. Never on the data path.
* the data loop (`dataloop.DataLoop`): one thread that runs the C data path
  (`_fastpath.c`) without the GIL: it reads every link, checks and routes each frame and
  forwards it straight to the destination link with non-blocking sends (no queue hop, no
  thread hand-off, no asyncio; all frames from one read that go to the same link leave in
  one send), and busy-polls briefly after traffic. It comes back to Python, in this thread,
  only for what needs the router (`Router._on_event`): frames to the router, frames it
  cannot deliver, protocol errors, lost links.
* short-lived set-up threads: one per dial and per accepted connection (handshake or
  REGISTER), which hand the link to the data loop once it is up.

Liveness (docs/protocol.md "Liveness"): a peer link that delivers nothing for
``link_timeout`` is closed and reported to the local shard as LINK_STATE DOWN
`ERR_HEARTBEAT`; a lost local shard is reported to every peer router as LINK_STATE DOWN
`ERR_SHARD_EXITED` (socket closed) or `ERR_SHARD_HUNG` (heartbeat unanswered), which they
forward to their shards.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.router import protocol as p
from cluster.router._fastpath import (
    EV_PROTOCOL,
    EV_ROUTER,
    EV_UNDELIVERABLE,
    PE_HEADER,
    PE_SPOOFED,
    UD_BCAST_REPLY,
    UD_MISROUTED,
    UD_NO_LOCAL,
    UD_NO_ROUTE,
)
from cluster.router.auth import HandshakeRefused, PeerIdentity, dialer_of, handshake
from cluster.router.config import RouterConfig
from cluster.router.control import ControlConnection, ControlError
from cluster.router.dataloop import DataLoop, Event
from cluster.router.direct import DirectLinks
from cluster.router.loglimit import LogLimiter
from cluster.router.page_stats import PageStatsView
from cluster.router.rdma import RdmaSetupError, connect_rdma
from cluster.router.routing import Address, RoutingTable
from cluster.router.shardproc import (
    HEARTBEAT_THREAD,
    HUNG_LINE,
    Sample,
    describe,
    peer_pid,
    sample,
    starved,
)
from cluster.router.transport import (
    KIND_LOCAL,
    KIND_PEER,
    Link,
    LinkClosed,
    connect_tcp,
    ensure_private_dir,
    listen_tcp,
    listen_unix,
    read_frame,
    tune_tcp,
)

log = logging.getLogger("dqemu.router")

_DIAL_MIN = 0.1
_DIAL_MAX = 2.0
_TICK = 0.05  # housekeeping period: bounds how late a heartbeat or a liveness check is
# a local shard starved of CPU (not hung) is given this many liveness timeouts of silence;
# by then its peers' requests to it time out anyway (the shards' request timeout is 10 s)
STARVED_LIMIT = 10
# unauthenticated TCP connections being set up at once (each has a thread until its
# handshake ends or times out); more are closed as soon as they are accepted
MAX_INBOUND_HANDSHAKES = 16


def _back_off(sid: int, backoff: dict[int, float], next_try: dict[int, float]) -> None:
    """The next dial of ``sid`` waits twice as long as the last, 0.1 .. 2 s."""
    backoff[sid] = min(_DIAL_MAX, max(_DIAL_MIN, backoff.get(sid, 0.0) * 2))
    next_try[sid] = time.monotonic() + backoff[sid]


class Router:
    def __init__(self, cfg: RouterConfig, secret: bytes) -> None:
        self.cfg = cfg
        self.id = cfg.shard_id
        self._secret = secret
        self.routes = RoutingTable(cfg.shard_id, {**cfg.peers, cfg.shard_id: None})
        self.routes.load(cfg.routes)
        self.local: Link | None = None
        self.local_pid = 0
        self._local_peer_pid: int | None = None  # its pid as the kernel says
        self._silence: Sample | None = None  # its threads, once silent for half the timeout
        self._own_silence: Sample | None = None  # this router's threads, then
        self._starved_since: float | None = None  # the silence was found to be starvation
        self.peers: dict[int, Link] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started = False
        self._dial_next: dict[int, float] = {}
        self._dial_backoff: dict[int, float] = {}
        self._dialing: set[int] = set()
        self._ping_ids = iter(range(1, 1 << 62))
        self.peer_info: dict[int, dict[str, Any]] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.started_at = time.time()
        self._created_dir = False
        self._sel: selectors.DefaultSelector | None = None
        self._tcp: socket.socket | None = None
        self._shard_srv: socket.socket | None = None
        self._ctl_srv: socket.socket | None = None
        self._wake_r = -1
        self._wake_w = -1
        self.listen_addr: Address = cfg.listen
        self.closed_link_stats: dict[str, dict[str, Any]] = {}
        self._drop_logged: set[str] = set()
        self._loop_thread: threading.Thread | None = None
        self._data = DataLoop(cfg.shard_id, cfg.busy_poll_us, cfg.busy_poll_cpu, self._on_event)
        self.local_rtt_us: float | None = None
        self.page_stats = PageStatsView()  # the local shard's DSM counters
        self._last_housekeeping = time.monotonic()
        # liveness: the local shard's heartbeat state, and what we know of down shards
        self._shard_hb = cfg.shard_heartbeat == "on"
        self.local_down: dict[str, Any] | None = None
        # the exit status our shard quit the VM with (its COMMAND QUIT to us), and the peers
        # whose routers told us theirs did: their exits are the VM ending, not a loss
        self._local_quit: int | None = None
        self._peers_quit: set[int] = set()
        self.liveness: dict[str, int] = {
            "peer_heartbeat_timeouts": 0,
            "peer_links_lost": 0,
            "local_shard_exited": 0,
            "local_shard_quit": 0,
            "local_shard_hung": 0,
            "local_shard_starved": 0,
            "remote_shard_down_reports": 0,
            "direct_links_lost": 0,
        }
        for sid in self.routes.peers():
            self.peer_info[sid] = {"state": "down", "since": time.time(), "last_error": None}
        # inbound TCP connections: handshakes in flight (capped), and what was refused
        self._inbound = 0
        self.handshakes: dict[str, int] = {
            "inbound_accepted": 0,
            "inbound_refused": 0,
            "inbound_dropped_busy": 0,
            "duplicate_links_refused": 0,
        }
        self._refusal_log = LogLimiter(log, "connection-refusal")
        # direct shard links (data_path = "direct"): data connections and the stats page
        self.direct = (
            DirectLinks(self.id, list(self.routes.peers()), rdma=cfg.transport == "rdma")
            if cfg.data_path == "direct"
            else None
        )
        self._data_dialing: set[int] = set()
        self._data_next: dict[int, float] = {}
        self._data_backoff: dict[int, float] = {}

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Create the sockets. Raises OSError with a message naming the problem."""
        cfg = self.cfg
        if cfg.transport == "rdma":
            # asked for RDMA: no usable device is an error now, never a silent TCP link
            from cluster.rdma_devices import check_usable

            check_usable(cfg.rdma_device, cfg.rdma_port, cfg.rdma_gid_index)
        self._created_dir = ensure_private_dir(cfg.socket_dir)
        try:
            try:
                self._tcp = listen_tcp(cfg.listen.host, cfg.listen.port)
            except OSError as e:
                raise OSError(f"cannot listen on {cfg.listen}: {e.strerror or e}") from None
            host, port = self._tcp.getsockname()[:2]
            self.listen_addr = Address(host, port)
            self._shard_srv = listen_unix(cfg.shard_socket)
            self._ctl_srv = listen_unix(cfg.control_socket)
        except BaseException:
            self._close_listeners()
            raise
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        sel = selectors.DefaultSelector()
        for s in (self._tcp, self._shard_srv, self._ctl_srv):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._sel = sel
        self._started = True
        log.info(
            "router for vm %s shard %d listening on %s, sockets in %s",
            cfg.vm_id,
            self.id,
            self.listen_addr,
            cfg.socket_dir,
        )

    def start_in_thread(self) -> None:
        """For in-process use (tests, embedding): start and run the loop in a thread."""
        self.start()
        t = threading.Thread(target=self.serve_forever, name=f"router-{self.id}", daemon=True)
        self._loop_thread = t
        t.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def close(self, timeout: float = 5.0) -> None:
        """Stop and wait until everything is torn down."""
        self.stop()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout)
        elif self._started:
            self._stopped.wait(timeout)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            log.info("got %s, shutting down", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve_forever(self) -> None:
        assert self._sel is not None, "start() first"
        sel = self._sel
        self._data.start(f"data-{self.id}")
        self._last_housekeeping = time.monotonic()
        next_tick = 0.0
        next_rates = time.monotonic() + 1.0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_tick:
                    self._housekeeping(now)
                    next_tick = now + _TICK
                if now >= next_rates:
                    self._update_rates(now)
                    next_rates = now + 1.0
                for key, _ev in sel.select(timeout=max(0.0, next_tick - time.monotonic())):
                    self._on_readable(key)
        except Exception:
            log.exception("internal error in the housekeeping loop; shutting down")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._stopping.set()
        self._close_listeners()
        with self._lock:
            links: list[Link] = list(self.peers.values())
            if self.local is not None:
                links.append(self.local)
        for link in links:
            link.close("router shutting down")
        self._data.stop()
        self._data.join(5.0)
        deadline = time.monotonic() + 5.0
        while True:
            with self._lock:
                threads = [t for t in self._threads if t is not threading.current_thread()]
            if not threads:
                break
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                log.warning("%d thread(s) did not stop in time", len(threads))
                break
        if self._sel is not None:
            for key in list(self._sel.get_map().values()):
                if isinstance(key.data, ControlConnection):
                    key.data.sock.close()
            self._sel.close()
        if self.direct is not None:
            self.direct.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._created_dir:
            with contextlib.suppress(OSError):
                self.cfg.socket_dir.rmdir()
        log.info("router for shard %d stopped", self.id)
        self._stopped.set()

    def _close_listeners(self) -> None:
        for attr, path in (
            ("_tcp", None),
            ("_shard_srv", self.cfg.shard_socket),
            ("_ctl_srv", self.cfg.control_socket),
        ):
            s = getattr(self, attr)
            if s is not None:
                s.close()
                setattr(self, attr, None)
                if path is not None:
                    with contextlib.suppress(OSError):
                        Path(path).unlink()

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("internal error in thread %s", name)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            if self._stopping.is_set():
                for a in args:
                    if isinstance(a, socket.socket):
                        a.close()
                return
            self._threads.add(t)
        t.start()

    # --- housekeeping loop ---------------------------------------------------------------------

    def _on_readable(self, key: selectors.SelectorKey) -> None:
        obj = key.fileobj
        if obj == self._wake_r:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            return
        if isinstance(key.data, ControlConnection):
            self._control_readable(key.data)
            return
        assert isinstance(obj, socket.socket)
        try:
            conn, addr = obj.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("accept failed: %s", e)
            return
        conn.setblocking(True)
        if obj is self._tcp:
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                busy = self._inbound >= MAX_INBOUND_HANDSHAKES
                if not busy:
                    self._inbound += 1
                self.handshakes["inbound_dropped_busy" if busy else "inbound_accepted"] += 1
            if busy:
                conn.close()
                self._refusal_log.log(
                    logging.ERROR,
                    "dropped connection from %s: %d handshakes are in progress already",
                    peer, MAX_INBOUND_HANDSHAKES,
                )  # fmt: skip
                return
            tune_tcp(conn)
            self._spawn(self._inbound_thread, f"peer-in-{peer}", conn, peer)
        elif obj is self._shard_srv:
            self._spawn(self._local_thread, "local", conn)
        elif obj is self._ctl_srv:
            conn.setblocking(False)
            assert self._sel is not None
            self._sel.register(conn, selectors.EVENT_READ, ControlConnection(conn))

    def _control_readable(self, cc: ControlConnection) -> None:
        assert self._sel is not None
        try:
            data = cc.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        keep = bool(data) and cc.feed(data, self._control_commands())
        if cc.outbuf:
            try:
                cc.sock.settimeout(2.0)
                cc.sock.sendall(cc.outbuf)
                cc.outbuf.clear()
                cc.sock.setblocking(False)
            except OSError:
                keep = False
        if not keep:
            self._sel.unregister(cc.sock)
            cc.sock.close()

    def _housekeeping(self, now: float) -> None:
        self._refusal_log.flush()
        with self._lock:
            links = dict(self.peers)
        timeout = self.cfg.link_timeout
        stalled = now - self._last_housekeeping
        self._last_housekeeping = now
        if stalled > timeout / 2:
            # this process itself was stopped or starved: what the peers sent meanwhile
            # is still unread, so restart their liveness clocks instead of blaming them
            log.warning("router was stalled for %.2f s; restarting liveness timers", stalled)
            for link in [*links.values(), *([self.local] if self.local else [])]:
                link.last_rx = max(link.last_rx, now)
        for sid, link in links.items():
            silent = now - link.last_rx
            if silent > timeout:
                why = (
                    f"shard {sid}'s router sent nothing for {silent:.2f} s "
                    f"(liveness timeout {timeout:g} s): it is hung, stopped or cut off"
                )
                if link.close(why, p.ERR_HEARTBEAT):
                    self.liveness["peer_heartbeat_timeouts"] += 1
                    log.error("heartbeat lost: %s; closing the link", why)
            elif now - link.last_ping >= self.cfg.ping_interval:
                self._ping(link, p.DST_ROUTER, now)
        local = self.local
        if local is not None and self._shard_hb and not local.closed:
            silent = now - local.last_rx
            if silent > timeout and not self._starved(silent, now):
                why = (
                    f"its QEMU (pid {self.local_pid}) did not answer the router's heartbeat "
                    f"for {silent:.2f} s (liveness timeout {timeout:g} s)"
                )
                # what the kernel says of each of its threads, so the log says why
                log.error(HUNG_LINE, self.id,
                          describe(self._shard_pid(), self._silence, now))  # fmt: skip
                local.close(why, p.ERR_SHARD_HUNG)
            else:
                if silent <= timeout / 2:
                    if self._starved_since is not None:
                        log.info("local shard %d answers again, after %.2f s of starvation",
                                 self.id, now - self._starved_since)  # fmt: skip
                    self._silence = self._own_silence = None
                    self._starved_since = None
                elif self._silence is None:  # half-way: note what each thread has run
                    self._silence = sample(self._shard_pid(), now)
                    self._own_silence = sample(os.getpid(), now)
                if now - local.last_ping >= self.cfg.ping_interval:
                    self._ping(local, self.id, now)
        if self.direct is not None:
            self._direct_housekeeping(links, now)
        for sid, addr in self.routes.peers().items():
            if sid in links or sid in self._dialing or addr is None:
                continue
            if dialer_of(self.id, sid) != self.id:
                continue  # the lower shard id dials
            if now < self._dial_next.get(sid, 0.0):
                continue
            self._dialing.add(sid)
            self.peer_info[sid]["state"] = "connecting"
            self._spawn(self._dial_thread, f"dial-{sid}", sid, addr)

    def _starved(self, silent: float, now: float) -> bool:
        """Is the local shard's silence the host's doing? Its heartbeat thread, or this
        router's data loop (which reads the PONG), is runnable but has hardly run since
        half-way through the silence: the scheduler keeps it waiting, as an overloaded
        host does (on this class of VM a runnable thread has waited 0.5 s behind busy
        vCPU threads). The silence is then no sign of a hang, for up to
        ``STARVED_LIMIT`` liveness timeouts; a stopped, blocked or looping shard is told
        from it by the kernel's view of the same threads (shardproc.py)."""
        if self._silence is None or silent > STARVED_LIMIT * self.cfg.link_timeout:
            return False
        loop = self._data.thread.native_id if self._data.thread is not None else None
        waiting = starved(self._shard_pid(), self._silence, now, comm=HEARTBEAT_THREAD)
        if waiting is None and loop and self._own_silence is not None:
            waiting = starved(os.getpid(), self._own_silence, now, tid=loop)
        if waiting is None:
            return False
        if self._starved_since is None:
            self._starved_since = now
            self.liveness["local_shard_starved"] += 1
            whose = "this router's data loop" if waiting.comm != HEARTBEAT_THREAD else (
                f"its {HEARTBEAT_THREAD} thread")  # fmt: skip
            log.warning(
                "local shard %d has not answered the heartbeat for %.2f s, but %s is "
                "runnable and got no CPU: the host is overloaded, the shard is not hung "
                "(declared hung only after %g s of silence): %s", self.id, silent, whose,
                STARVED_LIMIT * self.cfg.link_timeout,
                describe(self._shard_pid(), self._silence, now),
            )  # fmt: skip
        return True

    def _shard_pid(self) -> int:
        return self._local_peer_pid or self.local_pid

    def _ping(self, link: Link, dst: int, now: float) -> None:
        link.last_ping = now
        frame = p.encode_frame(
            p.Ping(time.monotonic_ns()),
            src=self.id,
            dst=dst,
            flags=p.FLAG_WANT_REPLY,
            request_id=next(self._ping_ids),
        )
        link.send(frame)

    def _update_rates(self, now: float) -> None:
        with self._lock:
            links: list[Link] = list(self.peers.values())
            if self.local is not None:
                links.append(self.local)
        for link in links:
            link.stats.update_rates(now)

    # --- link set-up ---------------------------------------------------------------------------

    def _connect(
        self, sid: int, addr: Address, failed: Callable[[int, str], None]
    ) -> socket.socket | None:
        try:
            return connect_tcp(addr.host, addr.port, self.cfg.handshake_timeout)
        except OSError as e:
            failed(sid, f"connect to {addr} failed: {e.strerror or e}")
            return None

    def _dial_thread(self, sid: int, addr: Address) -> None:
        try:
            sock = self._connect(sid, addr, self._dial_failed)
            if sock is not None:
                self._peer_thread(sock, str(addr), sid)
        finally:
            self._dialing.discard(sid)

    def _dial_failed(self, sid: int, reason: str) -> None:
        info = self.peer_info.setdefault(sid, {})
        if info.get("last_error") != reason:
            log.warning("shard %d: %s; retrying", sid, reason)
        info.update(state="down", last_error=reason)
        _back_off(sid, self._dial_backoff, self._dial_next)

    def _inbound_thread(self, sock: socket.socket, addr: str) -> None:
        try:
            self._peer_thread(sock, addr, None)
        finally:
            with self._lock:
                self._inbound -= 1

    def _duplicate(self, sid: int) -> str | None:
        """Why a new link for ``sid`` must be refused: a working one exists already."""
        with self._lock:
            return self._duplicate_locked(sid)

    def _duplicate_locked(self, sid: int) -> str | None:
        old = self.peers.get(sid)
        if old is None or old.closed:
            return None
        return (
            f"shard {sid} already has a working link ({old.name}, up since "
            f"{time.strftime('%H:%M:%S', time.localtime(old.up_since))}); a second link is "
            "refused, not swapped in"
        )

    def _handshake(self, sock: socket.socket, **kw: Any) -> PeerIdentity:
        """`auth.handshake` as this router: its id, VM id, secret, features and timeout."""
        return handshake(
            sock,
            own_id=self.id,
            vm_id=self.cfg.vm_id,
            secret=self._secret,
            features=self.cfg.features,
            timeout=self.cfg.handshake_timeout,
            **kw,
        )

    def _peer_thread(self, sock: socket.socket, addr: str, dialed: int | None) -> None:
        try:
            ident = self._handshake(
                sock,
                is_peer=lambda s: s != self.id and self.routes.has_shard(s),
                dialed=dialed is not None,
                admit=self._duplicate,
                admit_data=self._admit_data if self.direct is not None else None,
            )
            if dialed is not None and ident.shard_id != dialed:
                raise HandshakeRefused(
                    f"answered as shard {ident.shard_id}, expected shard {dialed}",
                    p.ERR_VM_MISMATCH,
                    ident.shard_id,
                )
        except HandshakeRefused as e:
            sock.close()
            self._refused(addr, e, dialed)
            return
        sid = ident.shard_id
        if ident.kind == p.ROLE_DATA:
            self._data_conn_up(sid, sock, addr)
            return
        handle = None
        if self.cfg.transport == "rdma":
            try:
                handle = connect_rdma(self._data.engine, sock, sid, self.cfg)
            except RdmaSetupError as e:
                sock.close()
                why = f"RDMA link to shard {sid} ({addr}) failed: {e}"
                self._refused(addr, HandshakeRefused(why, p.ERR_LINK_DOWN, sid), dialed)
                return
        kind = "rdma " if handle is not None else ""
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            why = self._duplicate_locked(sid)
            if why is None:
                link = self._data.link(sock, KIND_PEER, f"shard {sid} ({kind}{addr})", sid, handle)
                link.features = ident.features
                if self.direct is not None:
                    link.stats.extra = lambda d=self.direct, s=sid: d.counters(s)
                self.peers[sid] = link
        if why is not None:  # another link for this peer came up during our handshake
            if handle is not None:
                self._data.engine.close(handle, "refused: a duplicate")
                self._data.engine.release(handle)
            err = p.encode_frame(p.Error(p.ERR_DUPLICATE, why), src=self.id, dst=p.DST_ROUTER)
            with contextlib.suppress(OSError):
                sock.settimeout(1.0)
                sock.sendall(err)
            sock.close()
            self._refused(addr, HandshakeRefused(why, p.ERR_DUPLICATE, sid), dialed)
            return
        self._dial_backoff[sid] = 0.0
        self.peer_info[sid] = {
            "state": "up",
            "since": time.time(),
            "last_error": None,
            "addr": addr,
            "direction": "out" if dialed is not None else "in",
        }
        self.events.append({"t": time.time(), "event": "link_up", "shard": sid, "addr": addr})
        log.info("link to shard %d up (%s)", sid, addr)
        down = self.local_down
        if down is not None:  # a new link must learn that our shard is gone too
            f = p.encode_frame(
                p.LinkState(self.id, p.LINK_DOWN, down["code"]), src=self.id, dst=p.DST_ROUTER
            )
            link.send(f)
        # our shard hears LINK_UP once frames to shard sid are routed, and before any
        # frame from it
        local = self.local
        up = (local, self._to_local_link_state(sid, p.LINK_UP, 0)) if local else None
        self._data.add(link, self._link_down, notify=up)

    def _refused(self, addr: str, e: HandshakeRefused, dialed: int | None) -> None:
        """Log and count a failed link set-up. Inbound refusals are rate-limited: anybody
        who can reach the port can cause them."""
        who = f"{addr}" + (f" (shard {e.peer_shard})" if e.peer_shard is not None else "")
        with self._lock:
            if e.code == p.ERR_DUPLICATE and not e.by_peer:
                self.handshakes["duplicate_links_refused"] += 1
            if dialed is None:
                self.handshakes["inbound_refused"] += 1
        if e.by_peer:
            line, args = "peer %s refused us: %s", (who, e.reason.removeprefix("peer refused us: "))
        else:
            line, args = "refused peer %s: %s", (who, e.reason)
        # a dial fails once per attempt, and dials back off; a duplicate comes from a peer
        # that proved it has the secret: neither can flood, so neither is rate-limited
        if dialed is not None or (e.code == p.ERR_DUPLICATE and not e.by_peer):
            log.error(line, *args)
        else:
            self._refusal_log.log(logging.ERROR, line, *args)
        if dialed is not None:
            self._dial_failed(dialed, e.reason)
        self.events.append({"t": time.time(), "event": "refused", "peer": who, "reason": e.reason})

    def _local_thread(self, sock: socket.socket) -> None:
        sock.settimeout(self.cfg.handshake_timeout)
        try:
            f = read_frame(sock)
        except (p.ProtocolError, OSError, LinkClosed) as e:
            msg = str(e) if not isinstance(e, TimeoutError) else "no REGISTER within timeout"
            log.error("local shard connection refused: %s", msg)
            self._send_error_and_close(sock, p.ERR_PROTOCOL, msg, 0)
            return
        reg = f.msg
        if f.type != p.MSG_REGISTER or f.dst != p.DST_ROUTER or not f.wants_reply:
            msg = (
                "expected REGISTER (to the router, wanting a reply) first, "
                f"got {p.type_name(f.type)}"
            )
            log.error("local shard connection refused: %s", msg)
            self._send_error_and_close(sock, p.ERR_PROTOCOL, msg, f.request_id)
            return
        assert isinstance(reg, p.Register)
        if reg.shard_id != self.id or f.src != self.id:
            msg = f"shard id {reg.shard_id} does not match this router's shard id {self.id}"
            log.error("local shard (pid %d) refused: %s", reg.pid, msg)
            self._send_error_and_close(sock, p.ERR_VM_MISMATCH, msg, f.request_id)
            return
        sock.settimeout(None)
        ok = p.encode_frame(
            p.RegisterOk(self.id, len(self.routes.shard_ids), self.cfg.features),
            src=self.id,
            dst=self.id,
            flags=p.FLAG_REPLY,
            request_id=f.request_id,
        )
        was_down = False
        link: Link | None = None
        with self._lock:
            dup = self.local is not None and not self.local.closed
            if not dup:
                link = self._data.link(
                    sock, KIND_LOCAL, f"local shard {self.id} (pid {reg.pid})", self.id
                )
                link.features = reg.features
                # queued first; the data loop sends it once frames are routed to the
                # link (`add` below), so the shard can be sent to as soon as it has it
                link.send(ok, *(self._to_local_link_state(s, p.LINK_UP, 0) for s in self.peers))
                self.local = link
                self.local_pid = reg.pid
                self._local_peer_pid = peer_pid(sock)
                was_down = self.local_down is not None
                self.local_down = None
                self._local_quit = None
        if link is None:
            msg = f"shard {self.id} is already registered (pid {self.local_pid})"
            log.error("local shard (pid %d) refused: %s", reg.pid, msg)
            self._send_error_and_close(sock, p.ERR_DUPLICATE, msg, f.request_id)
            return
        if self.cfg.shard_heartbeat == "auto":
            self._shard_hb = False  # until this shard shows that it speaks PING/PONG
        self._data.add(link, self._link_down)  # routed from now on; REGISTER_OK goes out
        self.events.append({"t": time.time(), "event": "local_up", "pid": reg.pid})
        log.info("local shard %d registered (pid %d)", self.id, reg.pid)
        if was_down:
            self._tell_peers(p.LINK_UP, 0)  # peers told their shards it was down

    def _send_error_and_close(self, sock: socket.socket, code: int, msg: str, rid: int) -> None:
        if rid:
            frame = p.encode_error_reply(
                p.MSG_ERROR, src=self.id, dst=self.id, request_id=rid, code=code, message=msg
            )
        else:
            frame = p.encode_frame(p.Error(code, msg), src=self.id, dst=p.DST_ROUTER)
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            sock.sendall(frame)
        sock.close()

    def _to_local_link_state(self, shard: int, state: int, reason: int) -> bytes:
        return p.encode_frame(p.LinkState(shard, state, reason), src=self.id, dst=self.id)

    def _notify_local(self, shard: int, state: int, reason: int) -> None:
        local = self.local
        if local is not None:
            local.send(self._to_local_link_state(shard, state, reason))

    def _link_down(self, link: Link, reason: str) -> None:
        """A link left the data loop (runs in the data loop's thread)."""
        if link.kind == KIND_LOCAL and link.down_code == p.ERR_LINK_DOWN:
            # anything but a heartbeat timeout: the shard is gone (or was thrown out)
            link.down_code = p.ERR_SHARD_EXITED
            if reason == "connection closed by peer":
                reason = f"its QEMU (pid {self.local_pid}) closed the router link (it exited)"
        link.close(reason)
        with self._lock:
            if link.kind == KIND_PEER:
                current = self.peers.get(link.peer_id) is link
                if current:
                    del self.peers[link.peer_id]
            else:
                current = self.local is link
                if current:
                    self.local = None
        pend = link.take_pending()
        who = link.peer_id
        stopping = self._stopping.is_set()
        # bookkeeping first, so that whoever sees the failed requests also sees the state
        # a lost local shard and a heartbeat timeout get their own ERROR line; a peer router
        # whose shard quit the VM is expected to go
        quiet = (
            stopping
            or link.kind == KIND_LOCAL
            or link.down_code == p.ERR_HEARTBEAT
            or (link.kind == KIND_PEER and who in self._peers_quit and not pend)
        )
        level = logging.INFO if quiet else logging.WARNING
        log.log(
            level,
            "link to %s lost: %s%s",
            link.name,
            reason,
            f"; failed {len(pend)} pending request(s)" if pend else "",
        )
        self.events.append(
            {
                "t": time.time(),
                "event": "link_lost" if link.kind == KIND_PEER else "local_lost",
                "shard": who,
                "reason": reason,
                "failed_requests": len(pend),
            }
        )
        self.closed_link_stats[link.name] = link.stats.snapshot()
        if link.kind == KIND_PEER and current:
            info: dict[str, Any] = {"state": "down", "since": time.time(), "last_error": reason}
            if link.down_code == p.ERR_HEARTBEAT:
                info["cause"] = "router silent (heartbeat timeout)"
            self.peer_info[who] = info
            self._dial_next[who] = time.monotonic() + _DIAL_MIN
            if not stopping:
                self.liveness["peer_links_lost"] += 1
                self._notify_local(who, p.LINK_DOWN, link.down_code)
        elif link.kind == KIND_LOCAL and current and not stopping:
            self._local_lost(link, reason)
        if link.kind == KIND_LOCAL and current and self.direct is not None:
            self.direct.local_lost()
        for src, rid, _t0, _t in pend:
            target = self.local if src == self.id else self.peers.get(src)
            if target is None:
                continue
            err = p.encode_error_reply(
                p.MSG_ERROR,
                src=who,
                dst=src,
                request_id=rid,
                code=p.ERR_LINK_DOWN,
                message=f"link to shard {who} lost with the request pending: {reason}",
            )
            target.send(err)
        link.release()

    def _tell_peers(self, state: int, code: int) -> int:
        """LINK_STATE about our own shard to every peer router. Returns how many."""
        f = p.encode_frame(p.LinkState(self.id, state, code), src=self.id, dst=p.DST_ROUTER)
        with self._lock:
            peers = list(self.peers.values())
        return sum(link.send(f) for link in peers)

    def _local_lost(self, link: Link, reason: str) -> None:
        code = link.down_code
        hung = code == p.ERR_SHARD_HUNG
        quit_status = None if hung else self._local_quit
        if quit_status is not None:
            self.liveness["local_shard_quit"] += 1
            cause = "shard quit"
        else:
            self.liveness["local_shard_hung" if hung else "local_shard_exited"] += 1
            cause = "shard hung" if hung else "shard exited"
        with self._lock:
            if self.local is not None:
                return  # a new shard has registered already
            self.local_down = {"cause": cause, "code": code, "detail": reason, "since": time.time()}
        n = self._tell_peers(p.LINK_DOWN, code)
        if quit_status is not None:
            log.info(
                "local shard %d exited: it quit the VM (exit status %d); told %d peer router(s)",
                self.id, quit_status, n,
            )  # fmt: skip
            self.events.append(
                {"t": time.time(), "event": "local_quit", "shard": self.id, "status": quit_status}
            )
            return
        log.error(
            "local shard %d %s: %s; told %d peer router(s)",
            self.id,
            "is hung" if hung else "is gone",
            reason,
            n,
        )
        self.events.append(
            {"t": time.time(), "event": "local_down", "shard": self.id, "cause": cause,
             "reason": reason}
        )  # fmt: skip

    def _peer_link_state(self, link: Link, msg: p.LinkState) -> None:
        """LINK_STATE from a peer router about its own shard: forward it to our shard."""
        sid = link.peer_id
        if msg.shard_id != sid:
            link.stats.drop("LINK_STATE about another shard")
            log.warning(
                "dropped LINK_STATE from %s: it is about shard %d, a router may only report "
                "its own shard", link.name, msg.shard_id,
            )  # fmt: skip
            return
        info = self.peer_info.setdefault(sid, {})
        if msg.state == p.LINK_DOWN and sid in self._peers_quit:
            info["shard_down"] = {"cause": "shard quit", "code": msg.reason, "since": time.time()}
            log.info("shard %d exited: it quit the VM (reported by its router)", sid)
            self.events.append({"t": time.time(), "event": "shard_quit", "shard": sid})
        elif msg.state == p.LINK_DOWN:
            cause = p.ERROR_NAMES.get(msg.reason, f"error {msg.reason}")
            self.liveness["remote_shard_down_reports"] += 1
            info["shard_down"] = {"cause": cause, "code": msg.reason, "since": time.time()}
            log.error("shard %d is down: %s (reported by its router)", sid, cause)
            self.events.append(
                {"t": time.time(), "event": "shard_down", "shard": sid, "cause": cause}
            )
        else:
            self._peers_quit.discard(sid)
            info.pop("shard_down", None)
            log.info("shard %d is back (reported by its router)", sid)
        self._notify_local(sid, msg.state, msg.reason)

    # --- direct shard links (data_path = "direct"; direct.py) ----------------------------------

    def _direct_housekeeping(self, links: dict[int, Link], now: float) -> None:
        """Dial the data connections we dial, and hand the local shard what it lacks."""
        assert self.direct is not None
        local = self.local
        if local is None or local.closed or not local.features & p.FEAT_DIRECT:
            return
        for sid, link in links.items():
            if (
                dialer_of(self.id, sid) != self.id
                or link.closed
                or not link.features & p.FEAT_DIRECT
                or sid in self._data_dialing
                or now < self._data_next.get(sid, 0.0)
                or not self.direct.wants_dial(sid)
            ):
                continue
            addr = self.routes.peers().get(sid)
            if addr is None:
                continue
            self._data_dialing.add(sid)
            self._spawn(self._data_dial_thread, f"data-dial-{sid}", sid, addr)
        self._hand_off()

    def _data_dial_thread(self, sid: int, addr: Address) -> None:
        try:
            sock = self._connect(sid, addr, self._data_dial_failed)
            if sock is None:
                return
            try:
                ident = self._handshake(
                    sock,
                    is_peer=lambda s: s == sid,
                    dialed=True,
                    kind=p.ROLE_DATA,
                )
            except HandshakeRefused as e:
                sock.close()
                self._data_dial_failed(sid, e.reason)
                return
            self._data_backoff[sid] = 0.0
            self._data_conn_up(ident.shard_id, sock, str(addr))
        finally:
            self._data_dialing.discard(sid)

    def _data_dial_failed(self, sid: int, reason: str) -> None:
        log.info("data connection to shard %d: %s; retrying", sid, reason)
        _back_off(sid, self._data_backoff, self._data_next)

    def _admit_data(self, sid: int) -> tuple[int, str] | None:
        assert self.direct is not None
        return self.direct.refusal(sid, self.local)

    def _data_conn_up(self, sid: int, sock: socket.socket, addr: str) -> None:
        assert self.direct is not None
        if self._stopping.is_set() or not self.direct.add(sid, sock):
            sock.close()
            return
        log.info("data connection to shard %d up (%s)", sid, addr)
        self._hand_off()

    def _hand_off(self) -> None:
        assert self.direct is not None
        for sid in self.direct.hand_off(self.local):
            log.info("direct link to shard %d handed to the local shard", sid)
            self.events.append({"t": time.time(), "event": "direct_link_up", "shard": sid})

    def _direct_link_lost(self, msg: p.LinkState) -> None:
        """LINK_STATE from our own shard: its direct link to ``msg.shard_id`` failed. The
        router decides, as for every loss: it tells its shard LINK_STATE DOWN."""
        sid = msg.shard_id
        if msg.state != p.LINK_DOWN or not self.routes.has_shard(sid) or sid == self.id:
            log.warning("dropped LINK_STATE from the local shard about shard %d", sid)
            return
        self.liveness["direct_links_lost"] += 1
        cause = "direct link lost"
        self.peer_info.setdefault(sid, {})["direct_down"] = {
            "cause": cause, "code": p.ERR_LINK_DOWN, "since": time.time()
        }  # fmt: skip
        log.error("shard %d is unreachable: the local shard's direct link to it failed", sid)
        self.events.append({"t": time.time(), "event": "shard_down", "shard": sid,
                            "cause": cause})  # fmt: skip
        self._notify_local(sid, p.LINK_DOWN, p.ERR_LINK_DOWN)

    # --- the data path: what the C engine hands to Python (dataloop.py) ----------------------

    def _on_event(self, link: Link, ev: Event) -> None:
        """An event from the data path about ``link``; runs in the data loop's thread."""
        kind = ev[0]
        try:
            if kind == EV_ROUTER:
                self._router_frame(link, ev[2])
            elif kind == EV_UNDELIVERABLE:
                self._undeliverable_frame(link, *ev[2:])
            elif kind == EV_PROTOCOL:
                raise p.ProtocolError(self._frame_problem(link, ev[2], ev[3], ev[4]))
        except p.ProtocolError as e:
            reason = f"protocol error: {e}"
            log.error("closing link to %s: %s", link.name, reason)
            link.send(p.encode_frame(p.Error(e.code, str(e)), src=self.id, dst=p.DST_ROUTER))
            link.stats.drop("protocol error")
            link.close(reason)

    @staticmethod
    def _frame_problem(link: Link, kind: int, header: bytes, count: int) -> str:
        """Name what is wrong with a frame that the data path refused."""
        magic, ver, t, flags, src, _dst, length, rid = p.HEADER.unpack(header)
        if kind == PE_HEADER:
            err = p.header_error(magic, ver, t, flags, length, rid)
            return err or f"header refused by the data path: {header.hex()}"
        if kind == PE_SPOOFED:
            return (
                f"{p.type_name(t)} frame with src {src} on the link of shard "
                f"{link.peer_id} (spoofed source)"
            )
        return f"truncated frame: connection closed with {count} bytes of an incomplete frame"

    def _undeliverable_frame(
        self, link: Link, why: int, t: int, flags: int, src: int, dst: int, rid: int
    ) -> None:
        own = self.id
        if why == UD_NO_ROUTE:
            self._no_route(link, t, flags, src, dst, rid)
        elif why == UD_BCAST_REPLY:
            self._undeliverable(
                link, t, flags, src, own, rid, p.ERR_BAD_REQUEST, "a broadcast cannot want a reply"
            )
        elif why == UD_NO_LOCAL:
            self._undeliverable(
                link, t, flags, src, own, rid, p.ERR_LINK_DOWN,
                f"shard {own}'s QEMU is not connected to its router",
            )  # fmt: skip
        elif why == UD_MISROUTED:
            self._undeliverable(
                link, t, flags, src, own, rid, p.ERR_NO_ROUTE,
                f"misrouted: shard {own}'s router got a frame for shard {dst}",
            )  # fmt: skip

    def _no_route(
        self,
        link: Link,
        t: int,
        flags: int,
        src: int,
        dst: int,
        rid: int,
    ) -> None:
        if self.routes.has_shard(dst):
            info = self.peer_info.get(dst, {})
            why = info.get("last_error") or "not connected yet"
            self._undeliverable(
                link, t, flags, src, dst, rid, p.ERR_LINK_DOWN,
                f"shard {dst} is unreachable: {why}",
            )  # fmt: skip
        else:
            known = ", ".join(str(s) for s in self.routes.shard_ids)
            self._undeliverable(
                link, t, flags, src, dst, rid, p.ERR_NO_ROUTE,
                f"no route to shard {dst}: this VM's shards are {known}",
            )  # fmt: skip

    def _undeliverable(
        self,
        link: Link,
        t: int,
        flags: int,
        src: int,
        dst: int,
        rid: int,
        code: int,
        message: str,
    ) -> None:
        """Answer a request that cannot be delivered with an error reply; drop anything else.

        ``dst`` becomes the error reply's src: the shard that could not be reached (for
        the local link) or this router's own shard (for peer links, which check src).
        """
        link.stats.drop(p.ERROR_NAMES.get(code, "dropped"))
        if flags & p.FLAG_WANT_REPLY:
            err = p.encode_error_reply(
                p.MSG_ERROR,
                src=dst if dst <= p.MAX_SHARD_ID else self.id,
                dst=src,
                request_id=rid,
                code=code,
                message=message,
            )
            link.send(err)
        else:
            key = f"{link.name}: {message}"
            if key not in self._drop_logged and len(self._drop_logged) < 1000:
                self._drop_logged.add(key)
                log.warning("dropped %s from %s: %s", p.type_name(t), link.name, message)

    def _quit_notice(self, link: Link, local: bool, msg: p.Command) -> None:
        """COMMAND QUIT to this router: from our shard as it quits the VM, or from a peer
        router passing its shard's on (docs/protocol.md, "Liveness"). The shard's exit that
        follows is then the VM ending, logged as such, not as a loss."""
        if msg.command != p.CMD_QUIT:
            link.stats.drop("COMMAND to a router other than QUIT")
            return
        if local and link is self.local:
            first = self._local_quit is None
            self._local_quit = msg.arg & 0xFF
            if first:
                log.info("local shard %d quits the VM (exit status %d)", self.id, msg.arg & 0xFF)
                out = p.encode_frame(msg, src=self.id, dst=p.DST_ROUTER)
                with self._lock:
                    peers = list(self.peers.values())
                for peer in peers:  # before our report of its exit, on the same links
                    peer.send(out)
        elif not local:
            self._peers_quit.add(link.peer_id)
        else:
            link.stats.drop("COMMAND QUIT from a link that is not our shard's")

    def _router_frame(self, link: Link, raw: bytes) -> None:
        """A frame addressed to this router (dst = DST_ROUTER). Slow path."""
        f = p.decode_frame(raw)
        local = link.kind == KIND_LOCAL
        reply_dst = self.id if local else p.DST_ROUTER
        msg = f.msg
        if (
            local
            and not self._shard_hb
            and f.type in (p.MSG_PING, p.MSG_PONG)
            and self.cfg.shard_heartbeat == "auto"
            and link is self.local
        ):
            self._shard_hb = True
            log.info("local shard %d answers heartbeats: pinging it", self.id)
        if f.type == p.MSG_LINK_STATE and not local and isinstance(msg, p.LinkState):
            self._peer_link_state(link, msg)
            return
        if f.type == p.MSG_LINK_STATE and local and isinstance(msg, p.LinkState):
            self._direct_link_lost(msg)
            return
        if f.type == p.MSG_COMMAND and isinstance(msg, p.Command) and not f.is_reply:
            self._quit_notice(link, local, msg)
            return
        if f.type == p.MSG_PAGE_STATS and isinstance(msg, p.PageStats):
            if local and link is self.local:
                self.page_stats.update(msg)
            else:
                link.stats.drop("PAGE_STATS not from the local shard")
            return
        if f.is_reply and f.type == p.MSG_PONG and isinstance(msg, p.Pong):
            rtt_us = round((time.monotonic_ns() - msg.t_send) / 1000.0, 1)
            if local:
                self.local_rtt_us = rtt_us
            else:
                link.record_latency(time.monotonic_ns() - msg.t_send)
                self.peer_info.get(link.peer_id, {})["rtt_us"] = rtt_us
            return
        if f.type == p.MSG_PING and isinstance(msg, p.Ping):
            if f.wants_reply:
                out = p.encode_frame(
                    p.Pong(msg.t_send, time.monotonic_ns()),
                    src=self.id,
                    dst=reply_dst,
                    flags=p.FLAG_REPLY,
                    request_id=f.request_id,
                )
                link.send(out)
            return
        if f.is_error and isinstance(msg, p.Error):
            log.warning("%s reports error %d: %s", link.name, msg.code, msg.message)
            return
        if f.wants_reply:
            if f.type == p.MSG_REGISTER:
                code, text = p.ERR_DUPLICATE, "already registered"
            else:
                code = p.ERR_UNSUPPORTED
                text = f"the router does not handle {p.type_name(f.type)}"
            out = p.encode_error_reply(
                p.MSG_ERROR,
                src=self.id,
                dst=reply_dst,
                request_id=f.request_id,
                code=code,
                message=text,
            )
            link.send(out)
        else:
            link.stats.drop("unsupported router message")

    # --- control API ---------------------------------------------------------------------------

    def _control_commands(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "stats": lambda _r: self.stats(),
            "routes": lambda _r: self.routes.snapshot(),
            "health": lambda _r: self.health(),
            "set-route": self._cmd_set_route,
        }

    def _cmd_set_route(self, req: dict[str, Any]) -> Any:
        for k in ("kind", "key"):
            if k not in req:
                raise ControlError(f"set-route needs {k!r}")
        kind, key, value = req["kind"], req["key"], req.get("value")
        old = self.routes.address(int(key)) if kind == "shard" and self.routes.has_shard(
            int(key)
        ) else None  # fmt: skip
        self.routes.set_route(kind, key, value)
        if kind == "shard":
            sid = int(key)
            new = self.routes.address(sid) if self.routes.has_shard(sid) else None
            if sid not in self.peer_info and sid != self.id:
                self.peer_info[sid] = {"state": "down", "since": time.time(), "last_error": None}
            if new != old:
                with self._lock:
                    link = self.peers.get(sid)
                if link is not None:
                    link.close(f"route to shard {sid} changed")
                self._dial_next[sid] = 0.0
            if value is None:
                self.peer_info.pop(sid, None)
        log.info("set-route %s %s -> %s", kind, key, value)
        return self.routes.snapshot()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            links: list[Link] = list(self.peers.values())
            if self.local is not None:
                links.append(self.local)
        out: dict[str, Any] = {}
        for link in links:
            snap = link.stats.snapshot()
            snap["pending_requests"] = link.pending_count()
            snap["backlog_bytes"] = link.backlog_bytes
            key = "local" if link.kind == KIND_LOCAL else f"shard:{link.peer_id}"
            out[key] = snap
        return {
            "shard_id": self.id,
            "uptime_s": round(time.time() - self.started_at, 3),
            "links": out,
            "closed_links": dict(self.closed_link_stats),
            "liveness": dict(self.liveness),
            "handshakes": self._handshake_counts(),
            "data_loop": self._data.stats(),
            "data_path": self.cfg.data_path,
            "transport": self.cfg.transport,
            "direct_links": self.direct.counted() if self.direct is not None else [],
            "page": self.page_stats.summary(),
        }

    def _handshake_counts(self) -> dict[str, int]:
        with self._lock:
            return {**self.handshakes, "inbound_in_progress": self._inbound}

    def health(self) -> dict[str, Any]:
        with self._lock:
            local = self.local
            peers = dict(self.peers)
        peer_out: dict[str, Any] = {}
        for sid in sorted(self.routes.peers()):
            info = dict(self.peer_info.get(sid, {"state": "down"}))
            link = peers.get(sid)
            info["state"] = "up" if link is not None else info.get("state", "down")
            if link is not None:
                info["pending_requests"] = link.pending_count()
            addr = self.routes.peers().get(sid)
            info["configured_addr"] = str(addr) if addr else None
            peer_out[str(sid)] = info
        all_up = all(v["state"] == "up" for v in peer_out.values())
        # which shards are down, and why (the first cause known for each)
        down: list[dict[str, Any]] = []
        if self.local_down is not None:
            down.append({"shard": self.id, **self.local_down})
        for sid_s, info in peer_out.items():
            if "shard_down" in info:
                down.append({"shard": int(sid_s), **info["shard_down"]})
            elif "direct_down" in info:
                down.append({"shard": int(sid_s), **info["direct_down"]})
            elif info["state"] != "up" and info.get("last_error"):
                cause = info.get("cause") or "router unreachable"
                down.append({"shard": int(sid_s), "cause": cause, "detail": info["last_error"]})
        if local is not None:
            hb = "on" if self._shard_hb else "off (waiting for the shard's first PING/PONG)"
            if self.cfg.shard_heartbeat == "off":
                hb = "off (config)"
        # with data_path = "direct", a shard that takes direct links has them all before the
        # VM may run (so that a run measures one data path), from every peer that can
        direct = self.direct.handed() if self.direct is not None else []
        direct_ok = (
            self.direct is None
            or local is None
            or not local.features & p.FEAT_DIRECT
            or all(s in direct for s, lk in peers.items() if lk.features & p.FEAT_DIRECT)
        )
        return {
            "vm_id": self.cfg.vm_id,
            "shard_id": self.id,
            "listen": str(self.listen_addr),
            "uptime_s": round(time.time() - self.started_at, 3),
            "ok": local is not None and all_up and not down and direct_ok,
            "data_path": self.cfg.data_path,
            "transport": self.cfg.transport,
            "direct_links": direct,
            "local": {
                "connected": local is not None,
                "pid": self.local_pid if local is not None else None,
                "heartbeat": hb if local is not None else None,
                "rtt_us": self.local_rtt_us,
                "down": self.local_down,
            },
            "peers": peer_out,
            "down": down,
            "events": list(self.events)[-50:],
        }

    # --- in-process use ------------------------------------------------------------------------

    def attach_local(self, sock: socket.socket) -> None:
        """Serve ``sock`` (one end of a socketpair) as the local shard connection."""
        self._spawn(self._local_thread, "local", sock)
