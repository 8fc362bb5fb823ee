"""A VM controller's control API, reached through Ray actor calls.

The VM controller (:mod:`cluster.ray.controller`) serves the control API of every VM
(``docs/control.md``) on a UNIX socket on its own node, with the same server and commands
as a loopback VM. Whoever runs ``dqemu info`` or dqconsole is elsewhere, so the bytes of
each connection travel over actor calls, which carry Ray's token auth: the controller's
:class:`RelayServer` holds a connection to its own socket per client (``open``, ``send``,
``recv`` with a short wait, ``close``), and :func:`relay_connect` gives the client a local
socket (one end of a socketpair) whose other end two threads copy to and from those calls.
The client side sees an ordinary connected socket: every command and stream works as on
this machine, with no second copy of their logic.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from pathlib import Path
from typing import Any

from cluster.router.control import connect_unix

RECV_WAIT = 0.5  # seconds a recv call waits for bytes before it returns b""
IDLE = 60.0  # a connection nobody has called for this long is closed (its client died)
CHUNK = 1 << 16


class RelayServer:
    """The controller's side: connections to its control socket, by id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._conns: dict[int, tuple[socket.socket, list[float]]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._reap, name="relay-reaper", daemon=True).start()

    def open(self) -> int:
        sock = connect_unix(self.path, 10.0)
        cid = next(self._ids)
        with self._lock:
            self._conns[cid] = (sock, [time.monotonic()])
        return cid

    def _get(self, cid: int) -> socket.socket:
        with self._lock:
            sock, used = self._conns[cid]
            used[0] = time.monotonic()
            return sock

    def send(self, cid: int, data: bytes) -> None:
        sock = self._get(cid)
        sock.settimeout(10.0)
        sock.sendall(data)

    def recv(self, cid: int, wait: float = RECV_WAIT) -> bytes | None:
        """The next bytes (b"" if none came within ``wait``), None once the VM's side closed."""
        try:
            sock = self._get(cid)
        except KeyError:
            return None
        sock.settimeout(wait)
        try:
            data = sock.recv(CHUNK)
        except TimeoutError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.close(cid)
            return None
        return data

    def close(self, cid: int) -> None:
        with self._lock:
            got = self._conns.pop(cid, None)
        if got is not None:
            got[0].close()

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._conns)
        for cid in ids:
            self.close(cid)

    def _reap(self) -> None:
        while True:
            time.sleep(IDLE / 4)
            self.reap_idle()

    def reap_idle(self) -> None:
        """Close the connections nobody has called for IDLE seconds (their client died)."""
        now = time.monotonic()
        with self._lock:
            idle = [cid for cid, (_s, used) in self._conns.items() if now - used[0] > IDLE]
        for cid in idle:
            self.close(cid)


def relay_connect(actor: Any, timeout: float) -> socket.socket:
    """A local socket connected, through ``actor``'s relay calls, to its control API.
    Raises OSError when the controller cannot be reached or its API is gone."""
    import ray

    try:
        cid = ray.get(actor.relay_open.remote(), timeout=timeout)
    except Exception as exc:  # the actor is gone, or its control socket is
        text = str(exc).strip().splitlines()
        raise OSError(f"the VM controller did not answer: {text[0] if text else exc!r}") from None
    mine, theirs = socket.socketpair()
    mine.settimeout(timeout)
    done = threading.Event()

    def down() -> None:  # controller -> client
        with contextlib.suppress(Exception):
            while (data := ray.get(actor.relay_recv.remote(cid, RECV_WAIT))) is not None:
                if data:
                    theirs.sendall(data)
                elif done.is_set():
                    break
        done.set()
        with contextlib.suppress(OSError):
            theirs.shutdown(socket.SHUT_RDWR)

    def up() -> None:  # client -> controller
        with contextlib.suppress(Exception):
            while data := theirs.recv(CHUNK):
                ray.get(actor.relay_send.remote(cid, data))
        done.set()
        with contextlib.suppress(Exception):
            ray.get(actor.relay_close.remote(cid))

    threads = [threading.Thread(target=f, name=f"relay-{f.__name__}", daemon=True)
               for f in (down, up)]  # fmt: skip
    for t in threads:
        t.start()

    def close_when_done() -> None:
        for t in threads:
            t.join()
        theirs.close()

    threading.Thread(target=close_when_done, name="relay-close", daemon=True).start()
    return mine
