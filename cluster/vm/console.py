"""The guest's serial console: copied from the I/O shard's serial link to the user, and watched.

The watcher recognises a kernel panic and the test guest's ``DQ ...`` result lines, so the
launcher can end a panicked VM at once and callers can read results without re-parsing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import BinaryIO

from cluster.vm.host import SerialLink
from cluster.vm.serial_hub import SerialHub

PANIC_MARKER = b"Kernel panic - not syncing"


class ConsoleReader(threading.Thread):
    def __init__(self, link: SerialLink, sink: BinaryIO | None) -> None:
        super().__init__(name="console", daemon=True)
        self.link = link
        self.sink = sink
        self.connected = threading.Event()
        self.panic: str | None = None
        self.panic_seen = threading.Event()
        self._buf = bytearray()
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.received = 0  # bytes the guest printed
        self.hub: SerialHub | None = None  # the control API's readers and writer

    def connect(self, timeout: float) -> bool:
        """Connect to the serial console (QEMU waits for us before it starts the guest)."""
        if not self.link.connect(timeout):
            return False
        self.connected.set()
        return True

    def run(self) -> None:
        if not self.connected.is_set():
            return
        try:
            while True:
                data = self.link.recv()
                if not data:
                    break
                self.received += len(data)
                if self.sink is not None:
                    with contextlib.suppress(OSError, ValueError):  # a closed terminal
                        self.sink.write(data)
                        self.sink.flush()
                if self.hub is not None:
                    self.hub.write(data)
                self._feed(data)
        except OSError:
            pass
        finally:
            self.link.close()
            self._feed(b"\n")
            if self.hub is not None:
                self.hub.close()

    def send(self, data: bytes) -> None:
        """Bytes for the guest's serial port (what a user types)."""
        if self.connected.is_set():
            self.link.send(data)

    def forward_input(self, fd: int) -> None:
        """Copy what arrives on ``fd`` (the user's stdin) to the guest's serial port, as
        ``qemu -serial stdio`` does, until its end of file."""
        if not self.connected.is_set():
            return

        def copy() -> None:
            with contextlib.suppress(OSError):
                while data := os.read(fd, 4096):
                    self.link.send(data)

        threading.Thread(target=copy, name="console-input", daemon=True).start()

    def _feed(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            while (nl := self._buf.find(b"\n")) >= 0:
                raw = bytes(self._buf[:nl]).rstrip(b"\r")
                del self._buf[: nl + 1]
                line = raw.decode("utf-8", "replace")
                self._lines.append(line)
                if PANIC_MARKER in raw and self.panic is None:
                    self.panic = line[line.find("Kernel panic") :]
                    self.panic_seen.set()

    def silent(self) -> bool:
        """The guest has printed nothing at all yet."""
        return self.received == 0

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)
