"""Request/reply matching, timeouts and message handlers for an endpoint (client side).

The router itself only tracks which requests are pending on which link (in its C data
path; see `transport.Link.take_pending`) so that a lost link fails them at once; request
ids, waiting and handler dispatch live here.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from cluster.router import protocol as p


class RequestError(Exception):
    """The request failed: an error reply (``code`` is a ``p.ERR_*``) or a local failure."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{p.ERROR_NAMES.get(code, f'error {code}')}: {message}")
        self.code = code
        self.message = message


class RequestTimeout(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(p.ERR_TIMEOUT, message)


class LinkLost(RequestError):
    """The link to the router (or beyond it) was lost while the request was pending."""

    def __init__(self, message: str) -> None:
        super().__init__(p.ERR_LINK_DOWN, message)


class PendingRequest:
    __slots__ = ("_event", "dst", "error", "reply", "type")

    def __init__(self, dst: int, mtype: int) -> None:
        self.dst = dst
        self.type = mtype
        self._event = threading.Event()
        self.reply: p.Frame | None = None
        self.error: RequestError | None = None

    def resolve(self, frame: p.Frame) -> None:
        self.reply = frame
        self._event.set()

    def fail(self, error: RequestError) -> None:
        self.error = error
        self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


def reply_result(frame: p.Frame) -> p.Message:
    """The reply's message, or raise RequestError for an error reply."""
    if frame.is_error:
        msg = frame.msg
        assert isinstance(msg, p.Error)
        if msg.code == p.ERR_LINK_DOWN:
            raise LinkLost(msg.message)
        raise RequestError(msg.code, msg.message)
    return frame.msg


class RequestTracker:
    """Allocates request ids and matches replies to pending requests. Thread-safe."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, PendingRequest] = {}
        self._failed: RequestError | None = None

    def new(self, dst: int, mtype: int) -> tuple[int, PendingRequest]:
        with self._lock:
            if self._failed is not None:
                raise self._failed
            rid = next(self._ids)
            req = PendingRequest(dst, mtype)
            self._pending[rid] = req
            return rid, req

    def resolve(self, frame: p.Frame) -> bool:
        """Hand a reply to its request. False if nobody waits for it (late or unknown)."""
        with self._lock:
            req = self._pending.pop(frame.request_id, None)
        if req is None:
            return False
        req.resolve(frame)
        return True

    def forget(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def fail_all(self, error: RequestError, *, permanent: bool = True) -> int:
        """Fail every pending request at once (the link is gone). Returns how many."""
        with self._lock:
            pend, self._pending = self._pending, {}
            if permanent:
                self._failed = error
        for req in pend.values():
            req.fail(error)
        return len(pend)

    def __len__(self) -> int:
        return len(self._pending)


# a handler gets the request frame; for WANT_REPLY frames it returns the reply message (or
# raises RequestError to send an error reply); for other frames its return value is ignored.
Handler = Callable[[p.Frame], p.Message | None]


class Handlers:
    """Message type -> handler registry."""

    def __init__(self) -> None:
        self._by_type: dict[int, Handler] = {}

    def on(self, mtype: int, handler: Handler) -> None:
        if not p.KNOWN[mtype]:
            raise ValueError(f"unknown message type 0x{mtype:02x}")
        self._by_type[mtype] = handler

    def get(self, mtype: int) -> Handler | None:
        return self._by_type.get(mtype)
