"""The placement editor: vCPUs and devices against shards, checked by the spec loader.

A row per vCPU, device, the platform devices (``vm.io_shard``) and the VGA; a column per
shard. ←/→ or a digit moves the row's item; the spec loader's verdict shows at once.
Ctrl+S saves the spec (comments and layout kept); A applies it to the VM: stop, then start
again with the new placement. A running VM's vCPUs cannot move yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from dqconsole.client import ClientError, VMClient, start_spec
from dqconsole.placement import Placement, PlacementError
from dqconsole.screens.confirm import ConfirmScreen

LIVE_NOTE = (
    "Moving a vCPU while the VM runs is not available yet: Save writes the spec, "
    "Apply (a) stops the VM and starts it again with the new placement."
)
STOP_TIMEOUT_S = 60.0


class PlacementGrid(DataTable[Text]):
    """The grid; ←/→ move the selected item instead of the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "screen.shift(-1)", "To the left", show=False),
        Binding("right", "screen.shift(1)", "To the right", show=False),
    ]


class PlacementScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left,right", "noop", "Move", key_display="←/→"),
        *[Binding(str(d), f"place({d})", show=False) for d in range(10)],
        Binding("ctrl+s", "save", "Save"),
        Binding("a", "apply", "Apply (restart)"),
        Binding("escape", "close", "Back"),
    ]

    def __init__(self, placement: Placement, vm: VMClient | None = None) -> None:
        super().__init__()
        self.placement = placement
        self.vm = vm

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"{self.placement.path}", id="placement-file")
        yield PlacementGrid(id="placement-grid", cursor_type="row", zebra_stripes=True)
        yield Static(id="placement-message")
        yield Static(LIVE_NOTE, id="placement-note")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "dqconsole · placement"
        grid = self.query_one(PlacementGrid)
        grid.add_column("item", key="item")
        for s in range(self.placement.shard_count()):
            grid.add_column(f"shard {s}", key=f"shard-{s}")
        self.fill()
        self.show_verdict()
        grid.focus()

    def fill(self) -> None:
        grid = self.query_one(PlacementGrid)
        row = grid.cursor_row
        grid.clear()
        for item in self.placement.items():
            cells = [Text(item.label)]
            for s in range(self.placement.shard_count()):
                cells.append(Text("●", style="bold green") if s == item.shard else Text("·"))
            grid.add_row(*cells, key=item.key)
        grid.move_cursor(row=row)

    def show_verdict(self) -> None:
        msg = self.query_one("#placement-message", Static)
        err = self.placement.error
        dirty = " (not saved)" if self.placement.dirty else ""
        # (colours from the theme, app.tcss: ANSI "green" is unreadable in some terminals)
        msg.update(Text(err or f"valid: the spec loader accepts this placement{dirty}"))
        msg.set_class(err is not None, "-error")

    def selected(self) -> str | None:
        grid = self.query_one(PlacementGrid)
        if grid.row_count == 0:
            return None
        return grid.coordinate_to_cell_key(grid.cursor_coordinate).row_key.value

    def current_shard(self, key: str) -> int:
        return next((i.shard for i in self.placement.items() if i.key == key), 0)

    def action_noop(self) -> None:
        """(The footer's hint for ←/→; the grid's own bindings do the moving.)"""

    def action_shift(self, step: int) -> None:
        key = self.selected()
        if key is not None:
            n = self.placement.shard_count()
            self.action_place((self.current_shard(key) + step) % n)

    def action_place(self, shard: int) -> None:
        key = self.selected()
        if key is None:
            return
        try:
            self.placement.move(key, shard)
        except PlacementError as e:
            self.notify(str(e), severity="warning")
            return
        self.fill()
        self.show_verdict()

    def action_save(self) -> None:
        try:
            path = self.placement.save()
        except PlacementError as e:
            self.notify(str(e), severity="error", timeout=10)
            return
        self.show_verdict()
        self.notify(f"saved {path}")

    def action_apply(self) -> None:
        if self.vm is None:
            self.notify("no VM runs this spec here: start it with dqconsole --spec FILE",
                        severity="warning")  # fmt: skip
            return
        if self.placement.error is not None:
            self.notify(f"not applied: {self.placement.error}", severity="error", timeout=10)
            return
        name = self.vm.name

        def answered(yes: bool | None) -> None:
            if yes:
                self.action_save()
                if not self.placement.dirty:
                    self.restart(self.placement.path)

        self.app.push_screen(
            ConfirmScreen(f"Stop {name} and start it again with this placement?"), answered
        )

    @work(thread=True, exclusive=True, group="apply")
    def restart(self, spec: Path) -> None:
        assert self.vm is not None
        vm = self.vm
        note = self.app.call_from_thread
        try:
            vm.call("destroy", timeout=30.0)
        except ClientError as e:
            note(self.notify, f"apply: {e}", severity="error")
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while vm.alive():
            if time.monotonic() > deadline:
                note(self.notify, f"apply: {vm.name} did not stop", severity="error")
                return
            time.sleep(0.2)
        note(self.notify, f"{vm.name} stopped; starting {spec} …", timeout=30)
        try:
            name = start_spec(spec)
        except (ClientError, OSError) as e:
            note(self.notify, f"apply: {e}", severity="error", timeout=60)
            return
        note(self.reopen, name)

    def reopen(self, name: str) -> None:
        """Leave the editor and the stopped VM's screen for the new VM's."""
        self.app.pop_screen()
        if type(self.app.screen).__name__ == "VMScreen":
            self.app.pop_screen()
        self.app.open_vm(name)  # type: ignore[attr-defined]

    def action_close(self) -> None:
        if self.placement.dirty:
            self.notify("unsaved placement changes dropped", severity="warning")
        self.app.pop_screen()
