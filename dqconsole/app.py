"""dqconsole: the Textual operator console of dQEMU VMs (``docs/console.md``).

``dqconsole`` lists the VMs running on this machine; ``dqconsole NAME`` opens one;
``dqconsole --spec FILE`` starts one (``dqemu loopback --spec FILE --detach``) and opens it.
Everything the console knows comes from the VMs' control API (``dqconsole/client.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from dqconsole.client import ClientError, VMClient, start_spec
from dqconsole.placement import Placement, PlacementError
from dqconsole.screens.placement import PlacementScreen
from dqconsole.screens.vm import COMMANDS, VMScreen
from dqconsole.screens.vm_list import VMListScreen

# Textual runs a thread worker on the event loop's default executor, which has
# min(32, CPUs + 4) threads: 6 on a 2-core machine. Every stream the console reads (info,
# stats, events, each serial console and its writer, the VM list) holds its thread for as
# long as it is shown, so with six of them a command's worker (suspend, a QMP line) would
# wait in the executor's queue until a stream ended: the console looked stuck. Threads
# are made as needed, so a large bound costs nothing until it is used.
WORKER_THREADS = 256


class DQConsole(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "dqconsole"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "show_help_panel", "Help"),
        Binding("ctrl+t", "toggle_dark", "Theme"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, name: str | None = None, spec: Path | None = None, hz: float = 1.0,
                 place: Path | None = None) -> None:  # fmt: skip
        super().__init__()
        self.vm_name = name
        self.spec = spec
        self.hz = hz
        self.place = place

    def on_load(self) -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="dqconsole")
        )

    def on_mount(self) -> None:
        self.push_screen(VMListScreen())
        if self.place is not None:
            self.open_placement(self.place)
        elif self.spec is not None:
            self.notify(f"starting {self.spec} …", timeout=30)
            self.start_from_spec(self.spec)
        elif self.vm_name is not None:
            self.open_vm(self.vm_name)

    @work(thread=True, exclusive=True, group="start")
    def start_from_spec(self, spec: Path) -> None:
        try:
            name = start_spec(spec)
        except (ClientError, OSError) as e:
            self.call_from_thread(self.notify, f"{spec}: {e}", severity="error", timeout=60)
            return
        self.call_from_thread(self.open_vm, name)

    def open_vm(self, name: str) -> None:
        self.push_screen(VMScreen(name, hz=self.hz))

    def open_placement(self, spec: Path, vm: VMClient | None = None) -> None:
        """The placement editor of ``spec`` (and of the VM that runs it, for Apply)."""
        try:
            placement = Placement.load(spec)
        except PlacementError as e:
            self.notify(str(e), severity="error", timeout=15)
            return
        self.push_screen(PlacementScreen(placement, vm))

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_show_help_panel(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            super().action_show_help_panel()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, VMScreen):
            for cmd, (label, help_text, _d) in COMMANDS.items():
                yield SystemCommand(f"{label} VM", help_text,
                                    lambda c=cmd: screen.action_vm(c))  # type: ignore[misc]  # fmt: skip
            yield SystemCommand("New console", "open another serial console of this VM",
                                screen.action_new_console)  # fmt: skip
            yield SystemCommand("Search console", "find text in the serial console",
                                screen.action_search)  # fmt: skip
            yield SystemCommand("Stats 1 Hz / 10 Hz", "switch the traffic refresh rate",
                                screen.action_toggle_hz)  # fmt: skip
            yield SystemCommand("Placement editor", "vCPUs and devices against shards (spec)",
                                screen.action_placement)  # fmt: skip
            yield SystemCommand("VM list", "back to every VM", screen.action_back)
        yield SystemCommand("Light/dark theme", "switch the theme", self.action_toggle_dark)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dqconsole", description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", help="open this VM (default: the list of VMs)")
    p.add_argument("--spec", type=Path, help="start this spec's VM detached, then open it")
    p.add_argument("--place", type=Path, metavar="SPEC",
                   help="open the placement editor on this spec file")  # fmt: skip
    p.add_argument("--hz", type=float, default=1.0, choices=[1.0, 10.0],
                   help="traffic refresh rate (1 or 10 per second)")  # fmt: skip
    p.add_argument("--serve", action="store_true",
                   help="serve the console over HTTP on localhost (textual-serve)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="the port of --serve (8000)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="also the VMs of this Ray cluster (default: $RAY_ADDRESS)")  # fmt: skip
    ns = p.parse_args(argv)
    if ns.ray:
        os.environ["RAY_ADDRESS"] = ns.ray  # read by the client, and by --serve's consoles
    if sum(x is not None for x in (ns.name, ns.spec, ns.place)) > 1:
        p.error("give one of a VM name, --spec or --place")
    for spec in (ns.spec, ns.place):
        if spec is not None and not spec.is_file():
            print(f"dqconsole: error: no spec file {spec}", file=sys.stderr)
            return 2
    if ns.serve:
        return serve(ns)
    app = DQConsole(ns.name, ns.spec, ns.hz, ns.place)
    app.run()
    return app.return_code or 0


def serve(ns: argparse.Namespace) -> int:
    """``--serve``: every browser that connects gets its own console process, run with
    the same arguments; a ``--spec`` VM is started once, here, and each one opens it."""
    from textual_serve.server import Server

    args: list[str] = []
    if ns.spec is not None:
        print(f"dqconsole: starting {ns.spec} …", file=sys.stderr)
        try:
            args = [start_spec(ns.spec)]
        except (ClientError, OSError) as e:
            print(f"dqconsole: error: {ns.spec}: {e}", file=sys.stderr)
            return 2
    elif ns.name is not None:
        args = [ns.name]
    elif ns.place is not None:
        args = ["--place", str(ns.place.resolve())]
    command = shlex.join([sys.executable, "-m", "dqconsole.app", *args, "--hz", f"{ns.hz:g}"])
    try:
        Server(command, host="localhost", port=ns.port, title="dqconsole").serve()
    except OSError as e:
        print(f"dqconsole: error: cannot serve on localhost:{ns.port}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
