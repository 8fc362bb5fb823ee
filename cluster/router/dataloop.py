"""The router's data path: one thread that runs the C engine serving every link.

The per-frame work is C (`cluster/router/_fastpath.c`): the thread calls
``Engine.run()``, which releases the GIL and, in one epoll loop over every link's
non-blocking socket, reads into a preallocated per-link buffer, checks each frame header
(the rules of `protocol.header_error`, and src = the shard at the far end), routes it by
dst (a table of shard id -> peer link, the local link, broadcast) and queues it on the
destination link; after each read every link that got frames is sent them with one
non-blocking send(), and what a socket does not take is sent when epoll reports it
writable. Per-link, per-type counters, the requests pending on each link and the request
latency histogram are kept there too. Why C: each Python hop cost about 5 us of CPU and a
request through two routers makes four hops (measured; docs/protocol.md, appendix "Data
path").

``run()`` returns to Python only with events that need it, which this thread handles in
order (`Router._on_event`): frames addressed to the router (DST_ROUTER: PING, PONG,
LINK_STATE, ...), frames that cannot be delivered (the router answers requests with an
error reply and logs drops), protocol errors (the router names the problem, logs it, sends
an ERROR frame and closes the link), and links that went down (``on_down``, here).

Why one thread and why it spins (measured, see docs/protocol.md):

* On this class of VM an idle vCPU halts, and waking a thread that sleeps on another CPU
  costs about 30 us (a C ping-pong between two CPUs takes 68 us per round trip when both
  ends sleep in read(), 5 us when both spin). A request through two routers crosses six
  threads, so sleeping readers made the router round trip 100-160 us on an idle machine.
* Several reader threads in one process would hand the GIL to each other on every frame.

After any traffic the engine busy-polls (``epoll_wait`` with a zero timeout) for a short
window before it blocks, like the kernel's ``busy_poll``: a request/reply burst never
sleeps. The window adapts to the traffic: when a spin runs out and the next frame then
comes after a long gap (more than 4 windows), the window halves, down to 1/8 of
``busy_poll_us``; when the next frame comes soon after, or while spinning, it doubles, up
to ``busy_poll_us``. While spinning the thread calls sched_yield(), so a runnable task on
its CPU (often the very client or shard it waits for) runs at once. The CPU time spent
spinning (the thread's own CPU time, so not the time sched_yield() gave to other tasks) is
capped at ``busy_poll_cpu`` of one CPU per 100 ms (once reached, the loop blocks for the
rest of those 100 ms), and an idle router never spins: it only spins after traffic.
``busy_poll_us = 0`` turns spinning off. RDMA links (`_rdma.c`) are polled in the same
window: each spin round also polls their completion queues, and when the loop sleeps their
completion channels' fds wake it, in the same epoll set.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.router import _fastpath
from cluster.router import protocol as p
from cluster.router._fastpath import EV_DOWN, Engine
from cluster.router.transport import Link

log = logging.getLogger("dqemu.router")


def _check_build() -> None:
    """Refuse a build of _fastpath.c older than the source beside it (a checkout that
    changed it without rebuilding would silently run the old data path)."""
    src = Path(__file__).with_name("_fastpath.c")
    if not src.exists():
        return  # installed without sources
    # setup.py hashes _fastpath.c and the _rdma.c it includes
    data = src.read_bytes() + src.with_name("_rdma.c").read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    if digest != _fastpath.SOURCE_HASH:
        raise ImportError(
            f"{_fastpath.__file__} was built from another version of {src} "
            f"(source {digest}, built {_fastpath.SOURCE_HASH}): rebuild it with "
            "`.venv/bin/pip install -e .` (scripts/bootstrap does it when pyproject.toml "
            "changes)"
        )


_check_build()

Event = tuple[Any, ...]  # (kind, link handle, details...), see _fastpath.c


class DataLoop:
    def __init__(
        self,
        own_id: int,
        busy_poll_us: float,
        busy_poll_cpu: float,
        on_event: Callable[[Link, Event], None],
    ) -> None:
        self.engine = Engine(own_id, p.SIZE_LO, p.SIZE_HI, busy_poll_us, busy_poll_cpu)
        self._on_event = on_event
        self._entries: dict[int, tuple[Link, Callable[[Link, str], None]]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self.thread: threading.Thread | None = None

    # --- from any thread ---------------------------------------------------------------------

    def link(
        self, sock: socket.socket, kind: str, name: str, peer_id: int, handle: int | None = None
    ) -> Link:
        """A link on ``sock``: it can send at once; `add` makes the loop read it and route
        frames to it. ``handle``: one the engine made already (`rdma.connect_rdma`)."""
        return Link(self.engine, sock, kind, name, peer_id, handle)

    def start(self, name: str) -> None:
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def add(
        self,
        link: Link,
        on_down: Callable[[Link, str], None],
        notify: tuple[Link, bytes] | None = None,
    ) -> None:
        """Serve ``link``: read it and route frames to it. What was sent on it so far goes
        out now, once frames can be routed to it. ``notify`` (a link and frames) is queued
        in the same step: after the route exists, before any frame read from ``link``.
        When the link closes, it leaves the loop and ``on_down(link, reason)`` runs in the
        loop's thread (or here, if the loop is stopping or the link closed already)."""
        h = link.handle
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._entries[h] = (link, on_down)
        if stopping:
            link.close("router shutting down")
            on_down(link, link.close_reason)
            return
        try:
            if notify is None:
                self.engine.start(h)
            else:
                self.engine.start(h, notify[0].handle, notify[1])
        except (OSError, ValueError) as e:
            link.close(f"cannot serve the link: {e}")
            self._down(h, link.close_reason)

    def stop(self) -> None:
        """Make the loop hand every remaining link to its ``on_down`` and return. The
        caller closes the links first."""
        with self._lock:
            self._stopping = True
        self.engine.stop()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        st: dict[str, Any] = self.engine.stats()
        for k in ("busy_poll_us", "window_us"):
            st[k] = round(st[k], 1)
        st["spin_cpu_s"] = round(st["spin_cpu_s"], 3)
        return st

    # --- the loop's thread -------------------------------------------------------------------

    def _down(self, h: int, reason: str) -> None:
        with self._lock:
            entry = self._entries.pop(h, None)
        if entry is None:
            return
        link, on_down = entry
        try:
            on_down(link, reason)
        except Exception:
            log.exception("internal error while closing the link to %s", link.name)

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            h = ev[1]
            entry = self._entries.get(h)
            if entry is None:
                continue
            link = entry[0]
            if ev[0] == EV_DOWN:
                self._down(h, link.close_reason if link.closed else ev[2])
                continue
            try:
                self._on_event(link, ev)
            except Exception as e:
                log.exception("internal error on link to %s", link.name)
                link.close(f"internal error: {e!r}")

    def _run(self) -> None:
        try:
            while True:
                events = self.engine.run()
                if events is None:
                    break
                self._dispatch(events)
        except Exception:
            log.exception("internal error in the data loop")
        finally:
            with self._lock:
                self._stopping = True
                entries = list(self._entries.items())
            for _h, (link, _f) in entries:
                link.close("router shutting down")
            for h, (link, _f) in entries:
                self._down(h, link.close_reason)
