"""One VM: topology, traffic, serial consoles, events, QMP; commands by key and palette."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    RichLog,
    Select,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import get_current_worker

from dqconsole.client import ClientError, Retry, VMClient, VMGone, sleep_unless
from dqconsole.qmp_line import QMPLineError, parse_qmp_line
from dqconsole.screens.confirm import ConfirmScreen
from dqconsole.traffic import TrafficHistory
from dqconsole.widgets.qmp_input import QMPInput
from dqconsole.widgets.serial_view import SerialView
from dqconsole.widgets.shard_panel import ShardPanel
from dqconsole.widgets.traffic_view import TrafficView

INFO_S = 1.0
COMMANDS = {
    "suspend": ("Suspend", "pause every vCPU on every shard", False),
    "resume": ("Resume", "resume a suspended VM", False),
    "reset": ("Reset", "hard-reset the machine, as the reset button", True),
    "shutdown": ("Shut down", "press the ACPI power button; the guest decides", True),
    "destroy": ("Destroy", "stop every shard at once, as pulling the plug", True),
}


def format_event(ev: dict[str, Any]) -> Text:
    when = time.strftime("%H:%M:%S", time.localtime(float(ev.get("time", 0))))
    kind = str(ev.get("type"))
    rest = " ".join(f"{k}={v}" for k, v in ev.items()
                    if k not in ("seq", "time", "type", "name") and v is not None)  # fmt: skip
    bad = ev.get("state") == "down" or kind in ("ended", "missed") or ev.get("event") in (
        "guest_panicked", "panic")  # fmt: skip
    t = Text(f"#{ev.get('seq', '-')} {when} ")
    t.append(kind, style="bold red" if bad else "bold")
    t.append(f" {rest}")
    return t


def vcpu_rows(info: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(vCPU, shard, thread, CPU%) per vCPU, in vCPU order, from ``info``'s shards."""
    rows = []
    for s in info.get("shards") or []:
        for t in s.get("vcpu_threads") or []:
            rows.append((int(t["vcpu"]), str(s["id"]), str(t.get("thread", "-")),
                         f"{float(t.get('cpu_pct') or 0):5.1f}"))  # fmt: skip
    return [(str(v), *rest) for v, *rest in sorted(rows)]


class VMScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "vm('suspend')", "Suspend"),
        Binding("u", "vm('resume')", "Resume"),
        Binding("x", "vm('reset')", "Reset"),
        Binding("o", "vm('shutdown')", "Shutdown"),
        Binding("D", "vm('destroy')", "Destroy"),
        Binding("n", "new_console", "New console"),
        Binding("slash", "search", "Search console"),
        Binding("h", "toggle_hz", "1/10 Hz"),
        Binding("p", "placement", "Placement"),
        Binding("escape", "back", "VM list", show=False),
    ]

    state: reactive[str] = reactive("connecting")
    link: reactive[str] = reactive("")
    ended: reactive[str | None] = reactive(None)

    def __init__(self, name: str, hz: float = 1.0, client: VMClient | None = None) -> None:
        super().__init__(name=name)
        self.vm_name = name
        self.client = client if client is not None else VMClient(name)
        self.hz = hz
        self.history = TrafficHistory()
        self.shard_ids: list[int] = []
        self.dead: dict[int, str] = {}
        self.last_seq = 0
        self.consoles = 0
        self.qmp_names: set[str] = set()

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="vm-status")
        with TabbedContent(id="tabs", initial="topology"):
            with TabPane("Topology", id="topology"):
                yield Horizontal(id="shards")
                yield DataTable(id="vcpus", cursor_type="row", zebra_stripes=True)
            with TabPane("Traffic", id="traffic"):
                yield TrafficView(id="traffic-view")
            with TabPane("Console", id="console"):
                yield Input(placeholder="search the console (Enter: previous match, Esc: "
                            "back to the end)", id="search")  # fmt: skip
                yield Horizontal(id="consoles")
            with TabPane("Events", id="events"):
                yield RichLog(id="event-log", wrap=True, markup=False, max_lines=5000)
            with TabPane("QMP", id="qmp"):
                with Horizontal(id="qmp-bar"):
                    yield Select([(f"shard {i}", i) for i in range(1)], value=0,
                                 allow_blank=False, id="qmp-shard")  # fmt: skip
                    yield QMPInput(id="qmp-input")
                yield RichLog(id="qmp-log", wrap=True, markup=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"dqconsole · {self.vm_name}"
        self._refresh_status()
        table = self.query_one("#vcpus", DataTable)
        self.vcpu_columns = table.add_columns("vCPU", "shard", "thread", "CPU%")[1:]
        self.add_console()
        if self.client is not None and not isinstance(self.client, OfflineClient):
            self.poll_info()
            self.watch_stats()
            self.watch_events()
            self.load_qmp_commands()

    # ---- status line
    def _status_text(self) -> Text:
        t = Text(f"{self.vm_name}  ")
        if self.ended:
            t.append(f"ended: {self.ended}", style="bold red")
            return t
        t.append(self.state, style="bold green" if self.state == "running" else "bold yellow")
        t.append(f"  · stats {self.hz:g} Hz")
        if self.link:
            t.append(f"  · {self.link}", style="bold red")
        return t

    def _refresh_status(self) -> None:
        for status in self.query("#vm-status").results(Static):
            status.update(self._status_text())
        self.set_class(self.ended is not None, "-ended")

    watch_state = watch_link = watch_ended = lambda self, _v: self._refresh_status()

    # ---- topology
    def show_info(self, info: dict[str, Any]) -> None:
        self.state = str(info.get("state", "?"))
        if info.get("ended"):
            e = info["ended"]
            self.ended = f"exit {e.get('status')}: {e.get('reason')}"
        box = self.query_one("#shards", Horizontal)
        shards = info.get("shards") or []
        ids = [int(s["id"]) for s in shards]
        if ids != self.shard_ids:
            box.remove_children()
            box.mount_all([ShardPanel(i) for i in ids])
            self.shard_ids = ids
            select = self.query_one("#qmp-shard", Select)
            select.set_options([(f"shard {i}", i) for i in ids])
            self.call_after_refresh(self._fill_panels, shards)
        else:
            self._fill_panels(shards)

    def _fill_panels(self, shards: list[dict[str, Any]]) -> None:
        self.show_vcpus({"shards": shards})
        for s in shards:
            for panel in self.query(f"#shard-{int(s['id'])}").results(ShardPanel):
                panel.shard = s
                panel.cause = self.dead.get(int(s["id"]))

    def show_vcpus(self, info: dict[str, Any]) -> None:
        """The vCPU table from ``info``: each shard's own vCPUs, thread and CPU%."""
        table = self.query_one("#vcpus", DataTable)
        rows = vcpu_rows(info)
        keys = [str(r[0]) for r in rows]
        if keys != [k.value for k in table.rows]:
            table.clear()
            for row in rows:
                table.add_row(*row, key=row[0])
            return
        for row in rows:
            for col, cell in zip(self.vcpu_columns, row[1:], strict=True):
                table.update_cell(row[0], col, cell)

    def _retry(self, what: str) -> Retry:
        """A worker's reconnection, shown on the status line while it lasts."""
        worker = get_current_worker()
        report = partial(self.app.call_from_thread, setattr, self, "link")
        return Retry(what, lambda: worker.is_cancelled, report)

    @work(thread=True, exclusive=True, group="info")
    def poll_info(self) -> None:
        retry = self._retry("control connection")
        try:
            while (info := retry(self.client.info)) is not None:
                self.app.call_from_thread(self.show_info, info)
                if info.get("state") == "ended":
                    return
                sleep_unless(retry.cancelled, INFO_S)
        except VMGone as e:
            self.app.call_from_thread(self._gone, str(e))

    def _gone(self, message: str) -> None:
        if self.ended is None:
            self.ended = message
        self.state = "ended"

    # ---- traffic
    @work(thread=True, exclusive=True, group="stats")
    def watch_stats(self) -> None:
        retry = self._retry("stats")
        retry.report = lambda _line: None  # (the info poll reports a lost connection)
        while not retry.cancelled():
            hz = self.hz
            req = {"cmd": "stats", "watch": True, "hz": hz}
            try:
                stream = retry(lambda req=req: self.client.open_stream(req))
            except VMGone:
                return
            if stream is None:
                return
            try:
                for snap in stream.lines(lambda hz=hz: retry.cancelled() or self.hz != hz):
                    if snap is not None:
                        self.history.add(snap)
                        self.app.call_from_thread(self._show_traffic)
            finally:
                stream.close()
            if self.hz == hz and not self.client.alive():
                return

    def _show_traffic(self) -> None:
        width = 12 if self.size.width < 120 else 30
        self.query_one(TrafficView).show(self.history, width)

    def action_toggle_hz(self) -> None:
        self.hz = 10.0 if self.hz < 10 else 1.0
        self._refresh_status()
        self.notify(f"stats at {self.hz:g} Hz")

    # ---- events
    @work(thread=True, exclusive=True, group="events")
    def watch_events(self) -> None:
        retry = self._retry("events")
        while not retry.cancelled():
            try:
                req = {"cmd": "events", "since": self.last_seq}
                stream = retry(lambda req=req: self.client.open_stream(req))
            except VMGone as e:
                self.app.call_from_thread(self._gone, str(e))
                return
            if stream is None:
                return
            try:
                for ev in stream.lines(retry.cancelled):
                    if ev is not None:
                        self.app.call_from_thread(self.on_vm_event, ev)
                        if ev.get("type") == "ended":
                            return
            finally:
                stream.close()

    def on_vm_event(self, ev: dict[str, Any]) -> None:
        self.last_seq = max(self.last_seq, int(ev.get("seq", 0)))
        self.query_one("#event-log", RichLog).write(format_event(ev))
        kind = ev.get("type")
        if kind == "state":
            self.state = str(ev.get("state"))
        elif kind in ("shard", "router") and ev.get("state") == "down":
            cause = f"{kind} ended"
            if ev.get("status") is not None:
                cause += f" (status {ev['status']})"
            self.dead[int(ev["shard"])] = cause
            for panel in self.query(f"#shard-{int(ev['shard'])}").results(ShardPanel):
                panel.cause = cause
        elif kind == "ended":
            self.ended = f"exit {ev.get('status')}: {ev.get('reason')}"
            self.state = "ended"

    # ---- commands
    def action_vm(self, cmd: str) -> None:
        label, _help, destructive = COMMANDS[cmd]
        if self.ended is not None:
            self.notify(f"{self.vm_name} has ended", severity="warning")
            return
        if destructive:

            def answered(yes: bool | None) -> None:
                if yes:
                    self.run_command(cmd)

            self.app.push_screen(ConfirmScreen(f"{label} {self.vm_name}?"), answered)
            return
        self.run_command(cmd)

    @work(thread=True, group="command")
    def run_command(self, cmd: str) -> None:
        try:
            result = self.client.call(cmd, timeout=30.0)
        except ClientError as e:
            self.app.call_from_thread(self.notify, f"{cmd}: {e}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"{cmd}: {result}")

    def action_placement(self) -> None:
        try:
            spec = str(self.client.entry().meta().get("spec") or "")
        except ClientError as e:
            self.notify(str(e), severity="warning")
            return
        if not spec:
            self.notify(f"{self.vm_name} was started from flags, not a spec file: "
                        "its placement cannot be edited here", severity="warning")  # fmt: skip
            return
        self.app.open_placement(Path(spec), self.client)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_focus:
            for view in self.query(SerialView):
                view.clear_search()
            self.query(SerialView).first().focus()
            return
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    # ---- consoles
    def add_console(self) -> None:
        self.consoles += 1
        view = SerialView(None if isinstance(self.client, OfflineClient) else self.client,
                          id=f"serial-{self.consoles}", classes="serial")  # fmt: skip
        view.border_title = f"console {self.consoles}"
        self.query_one("#consoles", Horizontal).mount(view)

    def action_new_console(self) -> None:
        self.add_console()
        self.query_one("#tabs", TabbedContent).active = "console"

    def action_search(self) -> None:
        self.query_one("#tabs", TabbedContent).active = "console"
        self.query_one("#search", Input).focus()

    @on(Input.Submitted, "#search")
    def do_search(self, event: Input.Submitted) -> None:
        if not event.value:
            return
        for view in self.query(SerialView):
            if not view.search(event.value):
                self.notify(f"{event.value!r} is not in {view.border_title}", severity="warning")

    # ---- QMP
    @work(thread=True, group="qmp")
    def load_qmp_commands(self) -> None:
        try:
            cmds = self.client.qmp(0, "query-commands")
        except ClientError:
            return
        names = [c["name"] for c in cmds or [] if isinstance(c, dict) and "name" in c]
        self.app.call_from_thread(self._set_qmp_commands, names)

    def _set_qmp_commands(self, names: list[str]) -> None:
        self.qmp_names = set(names)
        self.query_one(QMPInput).set_commands(names)

    @on(Input.Submitted, "#qmp-input")
    def qmp_submitted(self, event: Input.Submitted) -> None:
        box = self.query_one(QMPInput)
        log = self.query_one("#qmp-log", RichLog)
        shard = self.query_one("#qmp-shard", Select).value
        try:
            execute, args = parse_qmp_line(event.value)
        except QMPLineError as e:
            log.write(Text(f"error: {e}", style="red"))
            return
        box.remember(event.value)
        box.value = ""
        log.write(Text(f"shard {shard}> {event.value}", style="bold"))
        self.run_qmp(int(shard) if isinstance(shard, int) else 0, execute, args)

    @work(thread=True, group="qmp")
    def run_qmp(self, shard: int, execute: str, args: dict[str, Any]) -> None:
        try:
            out: Any = json.dumps(self.client.qmp(shard, execute, args), indent=1)
            style = ""
        except ClientError as e:
            out, style = f"error: {e}", "red"
        log = self.query_one("#qmp-log", RichLog)
        self.app.call_from_thread(log.write, Text(str(out), style=style))


class OfflineClient(VMClient):
    """No connection at all: the screen shows only what it is fed (snapshot tests)."""
