"""The QMP prompt's input line: history on up/down, completion of command names."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.suggester import SuggestFromList
from textual.widgets import Input


class QMPInput(Input):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history(-1)", show=False),
        Binding("down", "history(1)", show=False),
    ]

    def __init__(self, **kw: object) -> None:
        super().__init__(placeholder="QMP command, e.g. query-status or "
                         'qom-get {"path": "/machine", "property": "type"}', **kw)  # type: ignore[arg-type]  # fmt: skip
        self.history: list[str] = []
        self._at = 0

    def set_commands(self, names: list[str]) -> None:
        self.suggester = SuggestFromList(sorted(names), case_sensitive=True)

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._at = len(self.history)

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self._at = max(0, min(len(self.history), self._at + step))
        self.value = self.history[self._at] if self._at < len(self.history) else ""
        self.cursor_position = len(self.value)
