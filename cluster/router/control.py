"""The router's local control API: JSON lines over a 0600 UNIX socket.

Request: one JSON object per line, ``{"cmd": NAME, ...args}``. Response: one line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one-line message"}``.
Commands: ``stats``, ``routes``, ``health``, ``set-route`` (kind, key, value). Not on the
hot path: served by the router's housekeeping loop (see router.py).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

CommandFn = Callable[[dict[str, Any]], Any]
MAX_LINE = 1 << 16


class ControlError(Exception):
    """A control command failed; the message is sent back to the caller."""


class ControlConnection:
    """Buffers one client's input and output (the socket is non-blocking)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()

    def feed(self, data: bytes, commands: dict[str, CommandFn]) -> bool:
        """Handle complete lines; False if the connection should be closed."""
        self.inbuf += data
        while True:
            nl = self.inbuf.find(b"\n")
            if nl < 0:
                return len(self.inbuf) <= MAX_LINE
            line = bytes(self.inbuf[:nl])
            del self.inbuf[: nl + 1]
            if line.strip():
                self.outbuf += handle_line(line, commands) + b"\n"


def handle_line(line: bytes, commands: dict[str, CommandFn]) -> bytes:
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            raise ControlError('request must be a JSON object with a "cmd" string')
        fn = commands.get(req["cmd"])
        if fn is None:
            raise ControlError(
                f"unknown command {req['cmd']!r} (known: {', '.join(sorted(commands))})"
            )
        resp: dict[str, Any] = {"ok": True, "result": fn(req)}
    except json.JSONDecodeError as e:
        resp = {"ok": False, "error": f"bad JSON: {e.msg}"}
    except (ControlError, ValueError, LookupError) as e:
        msg = e.args[0] if e.args else str(e)
        resp = {"ok": False, "error": str(msg)}
    return json.dumps(resp, sort_keys=True).encode()


def control_call(path: str | Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """Call one control command; returns its result or raises ControlError."""
    return call_on(connect_unix(path, timeout), cmd, **args)


def connect_unix(path: str | Path, timeout: float) -> socket.socket:
    """A connection to the UNIX socket ``path``, with ``timeout`` on its operations."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def call_on(sock: socket.socket, cmd: str, **args: Any) -> Any:
    """One command on a connected control socket, which is closed after the answer."""
    try:
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("control socket closed without an answer")
            buf += chunk
    finally:
        sock.close()
    resp = json.loads(buf[: buf.index(b"\n")])
    if not resp.get("ok"):
        raise ControlError(resp.get("error", "unknown error"))
    return resp.get("result")
