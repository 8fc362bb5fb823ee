"""The guest's serial console for any number of readers and one writer.

The launcher's console reader writes the guest's output here (the hub is a sink like a
file); the hub keeps the last ``SCROLLBACK`` bytes and copies new output to every
attached reader. A reader that falls ``MAX_BACKLOG`` bytes behind is dropped, so a
stalled client never stalls the console or the VM. One client at a time may also write:
its bytes go to the guest's serial port.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from cluster.router.control import ControlError

SCROLLBACK = 1 << 20
MAX_BACKLOG = 4 << 20


class _Reader:
    def __init__(self) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue()  # None: the end
        self.backlog = 0
        self.dropped = False


class SerialHub:
    def __init__(self, send: Callable[[bytes], None] | None = None) -> None:
        self.send = send  # writes to the guest's serial port; set once it is connected
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._readers: list[_Reader] = []
        self._writer_taken = False
        self._closed = False

    # --- the console reader's side (a file-like sink) ----------------------------------------

    def write(self, data: bytes) -> int:
        with self._lock:
            self._buf += data
            if len(self._buf) > SCROLLBACK:
                del self._buf[: len(self._buf) - SCROLLBACK]
            for r in list(self._readers):
                r.backlog += len(data)
                if r.backlog > MAX_BACKLOG:
                    r.dropped = True
                    self._readers.remove(r)
                    r.q.put(None)
                else:
                    r.q.put(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        """The console ended: every reader gets the end of the stream."""
        with self._lock:
            self._closed = True
            for r in self._readers:
                r.q.put(None)
            self._readers.clear()

    def scrollback(self) -> bytes:
        with self._lock:
            return bytes(self._buf)

    # --- the control API's side -----------------------------------------------------------------

    def open_stream(self, req: dict[str, Any]) -> Callable[[socket.socket], None]:
        """``serial`` stream: the scrollback, then live output; with ``"write": true``
        the client's bytes go to the guest (one writer at a time)."""
        write = bool(req.get("write"))
        with self._lock:
            if self._closed:
                raise ControlError("the console has ended")
            if write:
                if self._writer_taken:
                    raise ControlError("another client is writing to this console")
                if self.send is None:
                    raise ControlError("the console is not connected yet")
                self._writer_taken = True
            reader = _Reader()
            reader.q.put(bytes(self._buf))
            reader.backlog = len(self._buf)
            self._readers.append(reader)

        def run(conn: socket.socket) -> None:
            # the pump reads the client's side: the writer's input for the guest, and
            # for every client the end of its connection, which ends this stream at once
            pump = threading.Thread(target=self._pump, args=(conn, reader, write), daemon=True)
            pump.start()
            try:
                while (data := reader.q.get()) is not None:
                    with self._lock:
                        reader.backlog -= len(data)
                    conn.sendall(data)
            except OSError:
                pass
            finally:
                with self._lock:
                    if reader in self._readers:
                        self._readers.remove(reader)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                pump.join(timeout=2)
                if write:
                    with self._lock:
                        self._writer_taken = False

        return run

    def _pump(self, conn: socket.socket, reader: _Reader, write: bool) -> None:
        send = self.send if write else None
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                if send is not None:
                    send(data)
        reader.q.put(None)
