"""A VM's control API: JSON lines on a 0600 UNIX socket in its registry entry.

The request and reply lines are the router's (``cluster/router/control.py``):
``{"cmd": NAME, "v": 1, ...}`` and ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. ``v`` is the API version (``docs/control.md``); a request
for another version is refused, one without ``v`` is taken as version 1. Each client gets
its own thread, so a slow client never holds up another one or the VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cluster.router.control import (
    MAX_LINE,
    CommandFn,
    ControlError,
    call_on,
    connect_unix,
    handle_line,
)

API_VERSION = 1
ACCEPT_POLL_S = 0.2


def _versioned(commands: dict[str, CommandFn]) -> dict[str, CommandFn]:
    def wrap(fn: CommandFn) -> CommandFn:
        def call(req: dict[str, Any]) -> Any:
            v = req.get("v", API_VERSION)
            if v != API_VERSION:
                raise ControlError(
                    f"control API version {v!r} is not served (this VM speaks {API_VERSION})"
                )
            return fn(req)

        return call

    out = {name: wrap(fn) for name, fn in commands.items()}
    out["version"] = lambda _req: {"api": API_VERSION}
    return out


# A stream takes the connection over. Opening it with the request either raises
# ControlError (sent back as an error line), returns None (the request is an ordinary
# command of the same name after all, e.g. ``stats`` without ``watch``), or returns the
# runner, which gets the socket after the ``{"ok": true, "result": "stream"}`` line and
# returns when the client or the VM is gone.
StreamRunner = Callable[[socket.socket], None]
StreamFn = Callable[[dict[str, Any]], StreamRunner | None]


def _no_result(_req: dict[str, Any]) -> None:
    return None


class ControlServer:
    """Serves ``commands`` and ``streams`` on ``path`` from a thread until ``close()``."""

    def __init__(
        self,
        path: Path,
        commands: dict[str, CommandFn],
        streams: dict[str, StreamFn] | None = None,
    ) -> None:
        self.path = path
        self.streams = dict(streams or {})
        # streams are known commands too, so that a request for one in another API
        # version gets handle_line's version error
        self.commands = _versioned({**dict.fromkeys(self.streams, _no_result), **commands})
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="vm-control", daemon=True)

    def start(self) -> ControlServer:
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(self.path))
        finally:
            os.umask(old)
        self._sock.listen(16)
        self._sock.settimeout(ACCEPT_POLL_S)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buf = bytearray()
        with conn, contextlib.suppress(OSError):
            while not self._closing.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if not line.strip():
                        continue
                    stream = self._stream_of(line)
                    if stream is not None:
                        try:
                            runner = stream[0](stream[1])
                        except ControlError as e:
                            err = {"ok": False, "error": str(e)}
                            conn.sendall(json.dumps(err).encode() + b"\n")
                            continue
                        if runner is None:
                            conn.sendall(handle_line(line, self.commands) + b"\n")
                            continue
                        conn.settimeout(None)
                        ok = {"ok": True, "result": "stream"}
                        conn.sendall(json.dumps(ok).encode() + b"\n")
                        runner(conn)
                        return
                    conn.sendall(handle_line(line, self.commands) + b"\n")
                if len(buf) > MAX_LINE:
                    err = {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}
                    conn.sendall(json.dumps(err).encode() + b"\n")
                    return

    def _stream_of(self, line: bytes) -> tuple[StreamFn, dict[str, Any]] | None:
        """The stream a request line asks for, if it is a valid stream request."""
        try:
            req = json.loads(line)
        except ValueError:
            return None
        if not isinstance(req, dict) or req.get("cmd") not in self.streams:
            return None
        if req.get("v", API_VERSION) != API_VERSION:
            return None  # handle_line answers with the version error
        return self.streams[req["cmd"]], req


class Connector(Protocol):
    """Whatever reaches a VM's control API: a connected stream socket per request (a
    registry entry's UNIX socket, or a Ray VM controller's relay, ``cluster/ray/relay.py``)."""

    def connect(self, timeout: float) -> socket.socket: ...


def connect_to(target: Path | Connector, timeout: float) -> socket.socket:
    """A connection to the control API at ``target`` (a socket path, or a Connector),
    with ``timeout`` on its operations. Raises OSError when it cannot be reached."""
    if isinstance(target, str | Path):
        return connect_unix(target, timeout)
    return target.connect(timeout)


def vm_call(target: Path | Connector, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """One request to a VM's control API; raises ControlError with the VM's message."""
    return call_on(connect_to(target, timeout), cmd, **{"v": API_VERSION, **args})
