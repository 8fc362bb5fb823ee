"""Direct shard links (``data_path = "direct"``): the router's side.

Once the link to a peer router is up, the router of the lower shard id dials a second TCP
connection to the peer, the *data connection*, authenticated with the same handshake under
another label (`auth.handshake` with ``kind=ROLE_DATA``). Each router hands its end to its
own shard over the UNIX socket (SHARD_FD with SCM_RIGHTS) and keeps nothing of it: the two
shards then exchange frames without a router thread in between. The routers keep set-up,
authentication, routing, liveness and stats; the shard counts every frame of its direct
links in the *stats page*, a memfd the router created and maps read-only, laid out as the
data path's own per-link counters, so `stats` adds them to the router link of the same
peer. See docs/protocol.md, "Direct shard links".

This module holds that state; `router.Router` calls it from its set-up threads, its
housekeeping loop and its data loop (every method takes the lock).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import threading

from cluster.router import protocol as p
from cluster.router.stats import Counters
from cluster.router.transport import Link


class DirectLinks:
    def __init__(self, own_id: int, peers: list[int], rdma: bool = False) -> None:
        self.own_id = own_id
        # with transport "rdma" the shards set up a queue pair over the data connection
        self.fd_kind = p.FD_DIRECT_RDMA if rdma else p.FD_DIRECT
        # one stats slot per possible peer, fixed for the router's life
        self.slots: dict[int, int] = {sid: i for i, sid in enumerate(sorted(peers))}
        self._lock = threading.Lock()
        self._socks: dict[int, socket.socket] = {}  # authenticated, not handed yet
        self._handed: set[int] = set()  # peers whose link the current shard has
        # peers whose slot has counts: they stay readable after the shard is gone (the
        # launcher reads the final stats after the shards exit), and keep adding up if a
        # shard registers again
        self._counted: set[int] = set()
        self._page_sent_to: Link | None = None
        size = max(1, len(self.slots)) * p.STATS_SLOT_SIZE
        self._memfd = os.memfd_create("dqemu-stats", os.MFD_CLOEXEC)
        os.ftruncate(self._memfd, size)
        self._page = mmap.mmap(self._memfd, size, prot=mmap.PROT_READ)
        self.handed_total = 0

    def close(self) -> None:
        with self._lock:
            for s in self._socks.values():
                s.close()
            self._socks.clear()
            if self._memfd >= 0:
                self._page.close()
                os.close(self._memfd)
                self._memfd = -1

    # --- set-up --------------------------------------------------------------------------------

    def refusal(self, sid: int, local: Link | None) -> tuple[int, str] | None:
        """Why a data connection from ``sid`` must be refused now (an ``admit_data``)."""
        if local is None or local.closed or not local.features & p.FEAT_DIRECT:
            return p.ERR_UNSUPPORTED, f"shard {self.own_id} takes no direct links (yet)"
        with self._lock:
            if sid in self._socks or sid in self._handed:
                return p.ERR_DUPLICATE, f"shard {sid} has a data connection already"
        return None

    def wants_dial(self, sid: int) -> bool:
        with self._lock:
            return sid not in self._socks and sid not in self._handed

    def add(self, sid: int, sock: socket.socket) -> bool:
        """An authenticated data connection to ``sid``; False (closed) if one exists."""
        with self._lock:
            if sid in self._socks or sid in self._handed or self._memfd < 0:
                sock.close()
                return False
            self._socks[sid] = sock
            return True

    def hand_off(self, local: Link | None) -> list[int]:
        """Give the local shard the stats page (once per registration) and every data
        connection not given yet, as far as its link takes them now. Returns the peers
        handed this time."""
        if local is None or local.closed or not local.features & p.FEAT_DIRECT:
            return []
        done: list[int] = []
        with self._lock:
            if self._memfd < 0:
                return []
            if self._page_sent_to is not local:
                msg = p.ShardFd(self.own_id, p.FD_STATS, max(1, len(self.slots)))
                if not local.send_fd(self._frame(msg), self._memfd):
                    return []
                self._page_sent_to = local
                self._handed.clear()
            for sid, sock in list(self._socks.items()):
                msg = p.ShardFd(sid, self.fd_kind, self.slots[sid])
                if not local.send_fd(self._frame(msg), sock.fileno()):
                    break
                sock.close()  # the shard has its own copy now
                del self._socks[sid]
                self._handed.add(sid)
                self._counted.add(sid)
                self.handed_total += 1
                done.append(sid)
        return done

    def local_lost(self) -> None:
        """The shard is gone: its direct links went with it."""
        with self._lock:
            self._handed.clear()
            self._page_sent_to = None

    def _frame(self, msg: p.ShardFd) -> bytes:
        return p.encode_frame(msg, src=self.own_id, dst=self.own_id)

    # --- figures -------------------------------------------------------------------------------

    def handed(self) -> list[int]:
        """Peers the current shard has a direct link to."""
        with self._lock:
            return sorted(self._handed)

    def counted(self) -> list[int]:
        """Peers whose direct link counts are in the stats page (also after the shard)."""
        with self._lock:
            return sorted(self._counted)

    def counters(self, sid: int) -> Counters | None:
        """What the shard counted on its direct link to ``sid`` (None if it has none)."""
        with self._lock:
            if sid not in self._counted or self._memfd < 0:
                return None
            off = self.slots[sid] * p.STATS_SLOT_SIZE
            with contextlib.suppress(ValueError):
                return Counters(bytes(self._page[off : off + p.STATS_SLOT_SIZE]))
        return None
