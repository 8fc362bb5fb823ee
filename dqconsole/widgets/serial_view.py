"""The guest's serial console: a pyte terminal, scrollback, search and input."""

from __future__ import annotations

import contextlib
import queue
from functools import partial
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual import events, work
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.worker import get_current_worker

from dqconsole.client import ClientError, ConnectionLost, Retry, Stream, VMClient, VMGone
from dqconsole.terminal import Terminal, key_bytes

CURSOR = Style(reverse=True)
MATCH = Style(bgcolor="yellow", color="black")


class SerialView(ScrollView, can_focus=True):
    """One serial stream of a VM. Keys go to the guest when this console writes."""

    status: reactive[str] = reactive("connecting…")

    def __init__(self, client: VMClient | None, write: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.client = client
        self.want_write = write
        self.writing = False
        self.term = Terminal()
        self._lines: list[str] = []
        self._outbox: queue.Queue[bytes] = queue.Queue()
        self._stream: Stream | None = None
        self.match_line: int | None = None
        self.match_text = ""

    def on_mount(self) -> None:
        if self.client is not None:
            self.read_serial()
            self.write_serial()

    @work(thread=True, exclusive=True, group="serial")
    def read_serial(self) -> None:
        worker = get_current_worker()
        report = partial(self.app.call_from_thread, setattr, self, "status")
        retry = Retry("console", lambda: worker.is_cancelled, report)
        while not retry.cancelled():
            try:
                opened = retry(self._open)
            except VMGone as e:
                report(str(e))
                return
            if opened is None:
                return
            stream, note = opened
            self.term = Terminal()  # the stream starts with the whole scrollback again
            report(note)
            self._stream = stream
            try:
                while not retry.cancelled():
                    data = stream.read()
                    if data is None:
                        break
                    if data:
                        self.term.feed(data)
                        lines = self.term.lines()
                        self.app.call_from_thread(self._show, lines)
            finally:
                self._stream = None
                stream.close()

    @work(thread=True, exclusive=True, group="serial-writer")
    def write_serial(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                data = self._outbox.get(timeout=0.2)
            except queue.Empty:
                continue
            stream = self._stream
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.write(data)

    def _open(self) -> tuple[Stream, str]:
        assert self.client is not None
        if self.want_write:
            try:
                s = self.client.open_stream({"cmd": "serial", "write": True})
                self.writing = True
                return s, "console: typing goes to the guest"
            except VMGone:
                raise
            except ClientError as e:
                if isinstance(e, ConnectionLost):
                    raise
                refusal = str(e)
                self.writing = False
                s = self.client.open_stream({"cmd": "serial", "write": False})
                return s, f"read-only: {refusal}"
        self.writing = False
        return self.client.open_stream({"cmd": "serial", "write": False}), "read-only console"

    def feed(self, data: bytes) -> None:
        """Show bytes directly (for tests and snapshots without a VM)."""
        self.term.feed(data)
        self._show(self.term.lines())

    def _show(self, lines: list[str]) -> None:
        at_end = self.scroll_offset.y >= self.max_scroll_y - 1
        self._lines = lines
        self.virtual_size = Size(self.term.screen.columns, len(lines))
        if at_end and self.match_line is None:
            self.scroll_end(animate=False, immediate=True)
        self.refresh()

    def text(self) -> str:
        return "\n".join(self._lines)

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.size.width
        if index >= len(self._lines):
            return Strip.blank(width)
        line = self._lines[index][self.scroll_offset.x :]
        segs: list[Segment] = []
        cx, cy = self.term.cursor()
        if index == self.match_line and self.match_text:
            at = line.lower().find(self.match_text.lower())
            if at >= 0:
                end = at + len(self.match_text)
                segs = [Segment(line[:at]), Segment(line[at:end], MATCH), Segment(line[end:])]
        if not segs and index == cy and self.has_focus and self.writing:
            padded = line.ljust(cx + 1)
            segs = [Segment(padded[:cx]), Segment(padded[cx], CURSOR), Segment(padded[cx + 1 :])]
        if not segs:
            segs = [Segment(line)]
        return Strip(segs).crop_extend(0, width, None)

    def search(self, text: str) -> bool:
        """Scroll to the previous line containing ``text`` (from the end, then backwards)."""
        before = self.match_line if self.match_text == text else None
        found = self.term.find(text, before)
        if found is None and before is not None:
            found = self.term.find(text)
        self.match_text = text
        self.match_line = found
        if found is not None:
            self.scroll_to(y=max(0, found - self.size.height // 2), animate=False)
        self.refresh()
        return found is not None

    def clear_search(self) -> None:
        self.match_line = None
        self.match_text = ""
        self.scroll_end(animate=False)
        self.refresh()

    def send(self, data: bytes) -> None:
        self._outbox.put(data)

    def on_key(self, event: events.Key) -> None:
        if not self.writing:
            return
        if event.key in ("tab", "shift+tab") or event.key.startswith("f"):
            return
        if event.key in ("ctrl+p", "ctrl+q"):
            return
        data = key_bytes(event.key, event.character)
        if data is None:
            return
        event.stop()
        event.prevent_default()
        self.match_line = None
        self.send(data)
