"""A node actor's sign of life for the controllers of its VMs, faster than Ray's.

Ray calls an actor unavailable about 3 s after its node's raylet dies, and marks the node
dead after 15 s. A VM must stop everywhere, and say which node it lost, within 2 s. So the
node actor (:mod:`cluster.ray.node`) serves a TCP port on its node's IP
(:class:`LifelineServer`), and the controller holds one connection to it per node of each
VM (:class:`Lifeline`, kept by that node's ``RemoteHost``). The actor writes a byte on every
connection every ``BEAT`` seconds; when it leaves on purpose (its raylet died) it first
writes ``!`` and why, one line. The controller's end calls the node lost:

- at once when the connection ends: the actor's process died (its kernel closes the
  socket, whatever killed it), or it said why it leaves;
- after ``SILENCE`` seconds without a byte: the host or the network between is gone.

A stranger who connects only receives heartbeats; at most ``MAX_WATCHERS`` connections
are kept, and one that does not read is dropped once its send buffer is full.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

BEAT = 0.2  # seconds between two heartbeats
SILENCE = 2.0  # seconds without a heartbeat before the node is called lost
CONNECT_TIMEOUT = 10.0
MAX_WATCHERS = 256
FAREWELL = b"!"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class LifelineServer:
    """The node actor's end: heartbeats to every connection, on a port of ``ip``."""

    def __init__(self, ip: str) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.sock = socket.create_server((ip, 0), family=family)
        port = self.sock.getsockname()[1]
        self.address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, name="lifeline-accept", daemon=True).start()
        threading.Thread(target=self._beat, name="lifeline-beat", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setblocking(False)
            with self.lock:
                if len(self.conns) >= MAX_WATCHERS:
                    conn.close()
                    continue
                self.conns.append(conn)

    def _beat(self) -> None:
        while not self.closed.wait(BEAT):
            self._send(b".")

    def _send(self, data: bytes) -> None:
        with self.lock:
            for conn in list(self.conns):
                try:
                    conn.send(data)
                except OSError:  # the watcher left, or does not read: drop it
                    conn.close()
                    self.conns.remove(conn)

    def farewell(self, why: str) -> None:
        """Tell every watcher why this actor leaves (it leaves next)."""
        self._send(FAREWELL + why.encode(errors="replace")[:200] + b"\n")

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        with self.lock:
            for conn in self.conns:
                conn.close()
            self.conns.clear()


class Lifeline:
    """The controller's end: ``on_lost(why)`` is called once, from its own thread, when the
    node's actor is gone (unless :meth:`close` came first)."""

    def __init__(
        self, address: str, on_lost: Callable[[str], None], silence: float = SILENCE
    ) -> None:
        self.on_lost = on_lost
        self.silence = silence
        self.sock = socket.create_connection(_split(address), timeout=CONNECT_TIMEOUT)
        self.sock.settimeout(silence)
        self.closing = False
        self.last = time.monotonic()  # when the last heartbeat came
        threading.Thread(target=self._watch, name="lifeline", daemon=True).start()

    def _watch(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(512)
            except TimeoutError:
                why = f"no sign of life from its dQEMU actor in {self.silence:g} s"
                break
            except OSError as e:
                why = f"the connection to its dQEMU actor failed: {e.strerror or e}"
                break
            if not data:
                why = "its dQEMU actor ended (its connection closed)"
                break
            self.last = time.monotonic()
            buf = (buf + data)[-1024:]
            at = buf.find(FAREWELL)
            if at >= 0 and b"\n" in buf[at:]:
                why = buf[at + 1 :].split(b"\n")[0].decode(errors="replace")
                break
        if not self.closing:
            self.on_lost(why)

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
