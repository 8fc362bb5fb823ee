"""The router's data path: one thread that reads, routes and writes every link.

Why one thread and why it spins (measured, see docs/protocol.md "Router data path"):

* On this class of VM an idle vCPU halts, and waking a thread that sleeps on another CPU
  costs about 30 us (a C ping-pong between two CPUs takes 68 us per round trip when both
  ends sleep in read(), 5 us when both spin). A request through two routers crosses six
  threads, so sleeping readers made the router round trip 100-160 us on an idle machine
  and much less on a loaded one, where no CPU is idle.
* Several reader threads in one process also hand the GIL to each other on every frame.

So every link's socket is non-blocking and registered in one epoll set. The loop's thread
reads a link, parses its frames from a preallocated buffer and forwards each straight to
its destination link with a non-blocking send (see `Router._pump`); what a socket does not
take stays queued on that link and is flushed when epoll reports it writable. No frame is
handed to another thread.

After any traffic the loop busy-polls (``epoll_wait`` with a zero timeout) for a short
window before it blocks, like the kernel's ``busy_poll``: a request/reply burst never
sleeps. The window adapts to the traffic: when a spin runs out and the next frame then
comes after a long gap (more than 4 windows), the window halves, down to 1/8 of
``busy_poll_us``; when the next frame comes soon after, or while spinning, it doubles, up
to ``busy_poll_us``. While spinning the thread calls sched_yield(), so a runnable task on
its CPU (often the very client or shard it waits for) runs at once. The CPU time spent
spinning is capped at ``busy_poll_cpu`` of one CPU per 100 ms (once reached, the loop
blocks for the rest of those 100 ms), and an idle router never spins: it only spins after
traffic. ``busy_poll_us = 0`` turns spinning off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from cluster.router.transport import Link

log = logging.getLogger("dqemu.router")

Reader = Generator[None, None, str]  # yields when it would block, returns the close reason
_EPOCH = 0.1  # s: the CPU cap applies per epoch
_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT


class _Entry:
    __slots__ = ("link", "on_down", "reader")

    def __init__(self, link: Link, reader: Reader, on_down: Callable[[Link, str], None]) -> None:
        self.link = link
        self.reader = reader
        self.on_down = on_down


class DataLoop:
    def __init__(self, busy_poll_us: float, busy_poll_cpu: float) -> None:
        self.window_max = busy_poll_us / 1e6
        self.cpu_cap = busy_poll_cpu
        self._ep = select.epoll()
        self._entries: dict[int, _Entry] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        self.thread: threading.Thread | None = None
        # busy-poll counters (read by the control API)
        self.window = self.window_max
        self.spin_s = 0.0
        self.hits = 0
        self.misses = 0
        self.cap_stops = 0

    # --- from any thread ---------------------------------------------------------------------

    def start(self, name: str) -> None:
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def add(self, link: Link, reader: Reader, on_down: Callable[[Link, str], None]) -> None:
        """Serve ``link``: ``reader`` is resumed whenever it is readable; when it returns
        (the link closed), the link leaves the loop and ``on_down(link, reason)`` runs in
        the loop's thread."""
        fd = link.fileno()
        ep = self._ep

        def want_write(on: bool) -> None:
            with contextlib.suppress(OSError, ValueError):
                ep.modify(fd, _IN | _OUT if on else _IN)

        with link.lock:
            try:
                if self._stopping:
                    raise ValueError("the data loop is stopping")
                ep.register(fd, _IN | (_OUT if link.backlog_bytes else 0))
            except (OSError, ValueError):
                registered = False  # the router is shutting down
            else:
                registered = True
                self._entries[fd] = _Entry(link, reader, on_down)
                link.want_write = want_write
        if not registered:
            link.close("router shutting down")
            reader.close()
            on_down(link, link.close_reason)

    def stop(self) -> None:
        """Make the loop hand every remaining link to its ``on_down`` and return. The
        caller closes the links first."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "busy_poll_us": round(self.window_max * 1e6, 1),
            "window_us": round(self.window * 1e6, 1),
            "cpu_cap": self.cpu_cap,
            "spin_cpu_s": round(self.spin_s, 3),
            "spin_hits": self.hits,
            "spin_misses": self.misses,
            "spin_cap_stops": self.cap_stops,
        }

    # --- the loop's thread -------------------------------------------------------------------

    def _down(self, fd: int, entry: _Entry, reason: str) -> None:
        self._entries.pop(fd, None)
        with entry.link.lock:
            entry.link.want_write = None
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)
        try:
            entry.on_down(entry.link, reason)
        except Exception:
            log.exception("internal error while closing the link to %s", entry.link.name)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("internal error in the data loop")
        finally:
            for fd, entry in list(self._entries.items()):
                entry.link.close("router shutting down")
                self._down(fd, entry, entry.link.close_reason)
            self._ep.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _loop(self) -> None:
        poll = self._ep.poll
        entries = self._entries
        wake = self._wake_r
        clock = time.perf_counter
        yield_cpu = os.sched_yield
        w_max = self.window_max
        w_min = w_max / 8
        w = w_max
        cap = self.cpu_cap * _EPOCH
        epoch_end = epoch_spin = 0.0
        spin_from = spin_until = missed_at = 0.0
        events: list[tuple[int, int]]
        while True:
            if spin_until:
                events = poll(0)
                now = clock()
                spun = now - spin_from
                if not events:
                    if now < spin_until and epoch_spin + spun < cap:
                        yield_cpu()
                        continue
                    if now < spin_until:
                        self.cap_stops += 1
                    else:
                        self.misses += 1
                        missed_at = now
                    self.spin_s += spun
                    epoch_spin += spun
                    spin_until = 0.0
                    continue
                self.spin_s += spun
                epoch_spin += spun
                self.hits += 1
                if w < w_max:
                    w = min(w_max, w * 2)
                    self.window = w
                spin_until = 0.0
            else:
                events = poll()
                if missed_at:
                    # traffic came back after a spin ran out: soon (the window was a bit
                    # short: grow it) or after a long idle gap (spinning is wasted: shrink)
                    gap = clock() - missed_at
                    w = min(w_max, w * 2) if gap < 4 * w_max else max(w_min, w / 2)
                    self.window = w
                    missed_at = 0.0
            for fd, ev in events:
                entry = entries.get(fd)
                if entry is None:
                    if fd == wake:
                        with contextlib.suppress(OSError):
                            os.read(wake, 4096)
                        if self._stopping:
                            return
                    continue
                if ev & _OUT:
                    entry.link.flush()
                    if not ev & ~_OUT:
                        continue
                try:
                    next(entry.reader)
                except StopIteration as stop:
                    self._down(fd, entry, stop.value or entry.link.close_reason or "closed")
                except Exception as e:
                    log.exception("internal error on link to %s", entry.link.name)
                    entry.link.close(f"internal error: {e!r}")
                    self._down(fd, entry, entry.link.close_reason)
            if w_max:
                now = clock()
                if now >= epoch_end:
                    epoch_end = now + _EPOCH
                    epoch_spin = 0.0
                if epoch_spin < cap:
                    spin_from = now
                    spin_until = now + w
