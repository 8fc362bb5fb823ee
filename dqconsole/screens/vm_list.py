"""Every running VM on this machine: name, state, shards, vCPUs, uptime."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from dqconsole.client import VMRow, list_vms, sleep_unless

REFRESH_S = 2.0


class VMListScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open VM"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self, poll: bool = True) -> None:
        super().__init__()
        self.polling = poll

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("looking for VMs…", id="list-status")
        yield DataTable(id="vms", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#vms", DataTable)
        table.add_columns("NAME", "STATE", "SHARDS", "VCPUS", "UPTIME")

    def on_screen_resume(self) -> None:
        if self.polling:
            self.poll()

    def on_screen_suspend(self) -> None:
        """Under a VM's screen the list is not seen: it asks no VM for its info."""
        self.workers.cancel_group(self, "list")

    @work(thread=True, exclusive=True, group="list")
    def poll(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            rows = list_vms()
            self.app.call_from_thread(self.show, rows)
            sleep_unless(lambda: worker.is_cancelled, REFRESH_S)

    def show(self, rows: list[VMRow]) -> None:
        table = self.query_one("#vms", DataTable)
        cursor = table.cursor_row
        table.clear()
        for r in rows:
            table.add_row(r.name, r.state, str(r.shards), str(r.vcpus or "-"), r.uptime(),
                          key=r.name)  # fmt: skip
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))
        self.query_one("#list-status", Static).update(
            f"{len(rows)} VM(s) running · Enter opens one" if rows else
            "no VM is running (start one: dqemu loopback ... --detach, or dqconsole --spec FILE)"
        )  # fmt: skip

    def action_refresh(self) -> None:
        self.poll()

    def action_open(self) -> None:
        table = self.query_one("#vms", DataTable)
        if table.row_count == 0:
            return
        name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if name:
            self.app.open_vm(name)  # type: ignore[attr-defined]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.app.open_vm(event.row_key.value)  # type: ignore[attr-defined]
