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

The lifeline also tells the actor that a VM's controller is gone. The controller's first
line on its connection is a ticket the actor gave it for its VM (an actor call, so Ray's
token auth covers it: :meth:`LifelineServer.ticket`); when a connection that came with a
ticket ends (the controller's process died, whatever killed it, or its host closed it), the
server calls ``on_gone(key, ticket)`` and the actor stops that VM at once, instead of
waiting for its lease (which stays, for a controller whose host or network fell silent).
A stranger who connects without a ticket only receives heartbeats; at most
``MAX_WATCHERS`` connections are kept, and one that does not read is dropped once its send
buffer is full.
"""

from __future__ import annotations

import contextlib
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable

BEAT = 0.2  # seconds between two heartbeats
SILENCE = 2.0  # seconds without a heartbeat before the node is called lost
CONNECT_TIMEOUT = 10.0
MAX_WATCHERS = 256
FAREWELL = b"!"
# what the controller is told when the actor's end of the connection closes or resets
ACTOR_ENDED = "its dQEMU actor ended (its connection closed)"
TICKET_MAX = 128  # bytes of a watcher's first line (its ticket) the server reads


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class LifelineServer:
    """The node actor's end: heartbeats to every connection, on a port of ``ip``; a
    connection that came with a ticket of :meth:`ticket` calls ``on_gone(key, ticket)``
    (from a thread of its own) when it ends."""

    def __init__(self, ip: str, on_gone: Callable[[str, str], None] | None = None) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.sock = socket.create_server((ip, 0), family=family)
        port = self.sock.getsockname()[1]
        self.address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        self.on_gone = on_gone
        self.conns: list[socket.socket] = []
        self.first: dict[socket.socket, bytes] = {}  # a connection's first bytes, until "\n"
        self.bound: dict[socket.socket, tuple[str, str]] = {}  # connection -> (key, ticket)
        self.tickets: dict[str, str] = {}  # ticket -> key, until a connection brings it
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        threading.Thread(target=self._serve, name="lifeline-serve", daemon=True).start()
        threading.Thread(target=self._beat, name="lifeline-beat", daemon=True).start()

    def ticket(self, key: str) -> str:
        """A new ticket for ``key`` (a VM): the watcher that brings it stands for it."""
        ticket = secrets.token_hex(16)
        with self.lock:
            self.tickets[ticket] = key
        return ticket

    def _serve(self) -> None:
        """Accept watchers, read their tickets, and see them leave."""
        while not self.closed.is_set():
            try:
                ready = self.sel.select(timeout=1.0)
            except (OSError, ValueError):  # closed under us
                return
            for key, _ in ready:
                if key.fileobj is self.sock:
                    self._accept()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        with self.lock:
            if len(self.conns) >= MAX_WATCHERS:
                conn.close()
                return
            self.conns.append(conn)
            self.first[conn] = b""
        self.sel.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(TICKET_MAX)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        with self.lock:
            if conn not in self.first:
                return  # its ticket is read: the rest is ignored
            got = self.first[conn] + data
            if b"\n" not in got and len(got) < TICKET_MAX:
                self.first[conn] = got
                return
            del self.first[conn]
            ticket = got.split(b"\n")[0].decode(errors="replace")
            key = self.tickets.pop(ticket, None)
            if key is not None:
                self.bound[conn] = (key, ticket)

    def _drop(self, conn: socket.socket) -> None:
        """A watcher left: forget it, and call on_gone if it stood for a key."""
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        with self.lock:
            if conn in self.conns:
                self.conns.remove(conn)
            self.first.pop(conn, None)
            bound = self.bound.pop(conn, None)
        conn.close()
        if bound is not None and self.on_gone is not None and not self.closed.is_set():
            threading.Thread(target=self.on_gone, args=bound, name="lifeline-gone",
                             daemon=True).start()  # fmt: skip

    def _beat(self) -> None:
        while not self.closed.wait(BEAT):
            self._send(b".")

    def _send(self, data: bytes) -> None:
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.send(data)
            except OSError:  # the watcher left, or does not read: the serving thread drops it
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

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
            self.bound.clear()
        with contextlib.suppress(OSError):
            self.sel.close()


class Lifeline:
    """The controller's end: ``on_lost(why)`` is called once, from its own thread, when the
    node's actor is gone (unless :meth:`close` came first)."""

    def __init__(
        self,
        address: str,
        on_lost: Callable[[str], None],
        silence: float = SILENCE,
        ticket: str = "",
    ) -> None:
        self.on_lost = on_lost
        self.silence = silence
        self.sock = socket.create_connection(_split(address), timeout=CONNECT_TIMEOUT)
        if ticket:  # this connection stands for the ticket's VM: its end stops the VM there
            self.sock.sendall(ticket.encode() + b"\n")
        self.sock.settimeout(silence)
        self.closing = False
        self.last = time.monotonic()  # when the last heartbeat came
        self.ended = threading.Event()  # set once the watch ended (after on_lost, if called)
        threading.Thread(target=self._watch, name="lifeline", daemon=True).start()

    def _watch(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(512)
            except TimeoutError:
                why = f"no sign of life from its dQEMU actor in {self.silence:g} s"
                break
            except ConnectionResetError:  # it died before accepting, or with data unread
                why = ACTOR_ENDED
                break
            except OSError as e:
                why = f"the connection to its dQEMU actor failed: {e.strerror or e}"
                break
            if not data:
                why = ACTOR_ENDED
                break
            self.last = time.monotonic()
            buf = (buf + data)[-1024:]
            at = buf.find(FAREWELL)
            if at >= 0 and b"\n" in buf[at:]:
                why = buf[at + 1 :].split(b"\n")[0].decode(errors="replace")
                break
        if not self.closing:
            self.on_lost(why)
        self.ended.set()

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
