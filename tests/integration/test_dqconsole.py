"""Issue 16 acceptance (part): dqconsole driven by Textual's Pilot against a real 2-shard VM.

One VM (the test guest's shell mode) serves the checks in turn: both shard panels up, the
vCPU table from info, a command typed into the serial console and the guest's answer, a
busy guest loop on vCPU 1 showing in that vCPU's CPU%, forwarding counters rising, suspend
from the command palette (every shard's own QMP says paused), resume by key, a lost
control connection shown and recovered, destroy by key declined at its question, then
destroy from the palette confirmed and the VM's end on screen. A second VM loses shard 1's
QEMU to SIGKILL: its panel turns red naming the cause, and the VM's end shows. A third
VM's launcher is SIGKILLed under the console: the VM shows as ended (gone), no QEMU is
left. A name that is not running is a state on screen, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual import events
from textual.command import CommandList, CommandPalette
from textual.dom import DOMNode
from textual.keys import _character_to_key
from textual.pilot import Pilot
from textual.widgets import DataTable

from dqconsole.app import DQConsole
from dqconsole.client import VMClient
from dqconsole.screens.confirm import ConfirmScreen
from dqconsole.screens.vm import VMScreen
from dqconsole.widgets.serial_view import SerialView
from dqconsole.widgets.shard_panel import ShardPanel
from tests.support.vm_ctl import Ctl, wait_dead

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--vcpus", "2", "--shards", "2",
         "--timeout", "900")  # fmt: skip
BOOT_TIMEOUT = 300.0
STEP_TIMEOUT = 60.0


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Ctl, str]]:
    run_dir = tmp_path / "run"
    monkeypatch.setenv("DQEMU_RUN_DIR", str(run_dir))  # the console runs in this process
    ctl = Ctl(run_dir)
    name = f"dqc-{os.getpid()}"
    r = ctl.run("loopback", *GUEST, "--append", "dq.run=shell", "--name", name, "--detach",
                timeout=BOOT_TIMEOUT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    launcher = psutil.Process(
        int(json.loads((run_dir / "vms" / name / "meta.json").read_text())["pid"])
    )
    try:
        yield ctl, name
    finally:
        for p in (run_dir / "vms").glob("*"):
            if p.is_dir() and not p.name.startswith("."):
                ctl.run("destroy", p.name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            p.is_dir() and not p.name.startswith(".") for p in (run_dir / "vms").glob("*")
        ):
            time.sleep(0.2)
        with contextlib.suppress(psutil.NoSuchProcess):
            launcher.wait(timeout=30)  # the entry goes a moment before its launcher ends


async def until(pilot: Pilot[Any], what: str, check: Callable[[], Any],
                timeout: float = STEP_TIMEOUT) -> Any:  # fmt: skip
    start = time.monotonic()
    while True:
        got = check()
        if isinstance(got, DOMNode) or got:  # (a widget without children is falsy)
            print(f"{time.strftime('%H:%M:%S')} {what}: {time.monotonic() - start:.1f} s")
            return got
        notes = [n.message for n in pilot.app._notifications]
        assert time.monotonic() < start + timeout, f"timed out waiting for {what}; {notes}"
        await asyncio.sleep(0.2)  # (Pilot.pause can wait forever on a live screen)


async def until_thread(pilot: Pilot[Any], what: str, fn: Callable[[], bool],
                       timeout: float = STEP_TIMEOUT) -> None:  # fmt: skip
    """Like ``until`` for a blocking check (a dqemu command), run off the UI loop."""
    start = time.monotonic()
    while not await asyncio.to_thread(fn):
        notes = [n.message for n in pilot.app._notifications]
        assert time.monotonic() < start + timeout, f"timed out waiting for {what}; {notes}"
        await asyncio.sleep(0.5)
    print(f"{time.strftime('%H:%M:%S')} {what}: {time.monotonic() - start:.1f} s")


def statuses(name: str) -> list[str]:
    """Each shard's own QMP query-status, through the control API (as ``dqemu qmp``)."""
    client = VMClient(name)
    return [client.qmp(k, "query-status")["status"] for k in (0, 1)]


async def press(pilot: Pilot[Any], *keys: str) -> None:
    """Keys as a terminal sends them, without Pilot.press's wait for an idle screen (which
    a console fed by live streams never is)."""
    for k in keys:
        if len(k) == 1:
            key, char = _character_to_key(k), k
        else:
            key, char = k, {"enter": "\r"}.get(k)
        pilot.app.post_message(events.Key(key, char))
        await asyncio.sleep(0.05)


def run_app(app: DQConsole, body: Callable[[Pilot[Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            await body(pilot)

    asyncio.run(main())


def test_no_such_vm_is_a_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path / "run"))

    async def body(pilot: Pilot[Any]) -> None:
        screen = await until(pilot, "the VM screen", lambda: isinstance(pilot.app.screen,
                             VMScreen) and pilot.app.screen)  # fmt: skip
        await until(pilot, "the error", lambda: screen.ended)
        assert "no VM named nope" in str(screen.ended)

    run_app(DQConsole("nope"), body)


def test_console_drives_a_real_vm(vm: tuple[Ctl, str]) -> None:
    ctl, name = vm
    info = ctl.json("info", name)

    async def body(pilot: Pilot[Any]) -> None:
        await drive(pilot, ctl, name, info)

    run_app(DQConsole(name), body)


async def drive(pilot: Pilot[Any], ctl: Ctl, name: str, info: dict[str, Any]) -> None:
    app = pilot.app
    if app:
        screen: VMScreen = await until(
            pilot, "the VM screen", lambda: isinstance(app.screen, VMScreen) and app.screen
        )

        # topology: both shards up, each with its vCPU; the vCPU table from query-cpus-fast
        def panels() -> list[tuple[int, str, list[int]]]:
            return [(p.shard_id, p.shard.get("state"), p.shard.get("vcpus"))
                    for p in screen.query(ShardPanel) if p.shard]  # fmt: skip

        await until(pilot, "both shards", lambda: panels() == [(0, "up", [0]), (1, "up", [1])])
        table = screen.query_one("#vcpus", DataTable)
        await until(pilot, "the vCPU table", lambda: table.row_count == 2)
        rows = [table.get_row_at(i) for i in range(2)]
        assert [(r[0], r[1]) for r in rows] == [("0", "0"), ("1", "1")]
        assert all(r[2].isdigit() for r in rows)  # each vCPU's host thread id
        assert all(float(r[3]) >= 0.0 for r in rows)  # and its CPU%

        # the serial console: the boot log from the scrollback, then a command and its answer
        screen.query_one("#tabs").active = "console"  # type: ignore[attr-defined]
        serial = screen.query_one(SerialView)
        serial.focus()
        await until(pilot, "the shell prompt", lambda: "/ #" in serial.text(), BOOT_TIMEOUT)
        assert "DQ KV shell=1" in serial.text()
        await press(pilot, *"echo hi-$((6*7))", "enter")
        await until(pilot, "the guest's answer", lambda: "\nhi-42" in serial.text())

        # a busy loop on vCPU 1 shows in that vCPU's CPU% (vCPU 1 runs on shard 1)
        await press(pilot, *"taskset -c 1 sh -c 'while :; do :; done' &", "enter")
        await until(pilot, "vCPU 1 busy", lambda: float(table.get_row("1")[3]) > 5.0, 120)

        # traffic: the forwarding totals rise from snapshot to snapshot
        first = await until(pilot, "a stats snapshot", lambda: screen.history.total_messages())
        await until(pilot, "counters rising",
                    lambda: screen.history.total_messages() > first, 180)  # fmt: skip
        assert set(screen.history.link_rows) == {"0->1", "1->0"}

        # commands: the keys are the screen's once the serial console lets go of the focus
        table.focus()
        await palette_command(pilot, "suspend", "Suspend VM")
        await until_thread(pilot, "every shard paused",
                           lambda: statuses(name) == ["paused", "paused"])  # fmt: skip
        await until(pilot, "the paused state", lambda: screen.state == "paused")
        await press(pilot, "u")
        await until_thread(pilot, "every shard running",
                           lambda: statuses(name) == ["running", "running"])  # fmt: skip
        await until(pilot, "the running state", lambda: screen.state == "running")

        # the control socket goes away: the status line says so and when it retries; the
        # console comes back by itself once the socket is there again
        sock = ctl.run_dir / "vms" / name / "control.sock"
        away = sock.with_name("control.sock.away")
        sock.rename(away)
        try:
            await until(pilot, "the lost connection", lambda: "lost" in screen.link)
            assert "retrying in" in screen.link
        finally:
            away.rename(sock)
        await until(pilot, "the reconnection", lambda: screen.link == "", 60)

        # destroy asks first: declined, the VM runs on; confirmed, it ends and says how
        await press(pilot, "D")
        await until(pilot, "the question", lambda: isinstance(app.screen, ConfirmScreen))
        await press(pilot, "n")
        await until(pilot, "the question gone", lambda: app.screen is screen)
        assert ctl.json("info", name)["state"] == "running"
        await palette_command(pilot, "destroy", "Destroy VM")
        await until(pilot, "the question", lambda: isinstance(app.screen, ConfirmScreen))
        await press(pilot, "y")
        await until(pilot, "the VM's end", lambda: screen.ended, 120)
        assert "exit" in str(screen.ended) and "destroy" in str(screen.ended), screen.ended


async def palette_command(pilot: Pilot[Any], search: str, label: str) -> None:
    """Run a command from Textual's command palette as an operator would: Ctrl+P, type,
    wait for the hit, Enter."""
    app = pilot.app
    await press(pilot, "ctrl+p")
    palette = await until(
        pilot, "the palette", lambda: isinstance(app.screen, CommandPalette) and app.screen
    )
    await press(pilot, *search)
    hits = palette.query_one(CommandList)

    def first_hit() -> str:
        return str(hits.get_option_at_index(0).prompt) if hits.option_count else ""

    await until(pilot, f"the {label!r} hit", lambda: label in first_hit())
    await press(pilot, "enter")
    await until(pilot, "the palette closed", lambda: not isinstance(app.screen, CommandPalette))


async def shard_one_up(pilot: Pilot[Any]) -> tuple[VMScreen, ShardPanel]:
    """The VM screen, once shard 1's panel shows it up."""
    app = pilot.app
    screen: VMScreen = await until(
        pilot, "the VM screen", lambda: isinstance(app.screen, VMScreen) and app.screen
    )

    def shard_one() -> ShardPanel | None:  # mounted when the first `info` comes, not at once
        return next(iter(screen.query("#shard-1").results(ShardPanel)), None)

    panel: ShardPanel = await until(pilot, "shard 1's panel", shard_one)
    await until(pilot, "shard 1 up", lambda: panel.shard.get("state") == "up")
    return screen, panel


def test_a_killed_shard_turns_its_panel_red(vm: tuple[Ctl, str]) -> None:
    ctl, name = vm
    info = ctl.json("info", name)

    async def body(pilot: Pilot[Any]) -> None:
        screen, panel = await shard_one_up(pilot)
        os.kill(info["shards"][1]["pid"], signal.SIGKILL)
        await until(pilot, "the red panel", lambda: panel.has_class("-down"))
        await until(pilot, "the cause", lambda: panel.cause)
        assert "shard ended" in str(panel.cause) or "router ended" in str(panel.cause)
        await until(pilot, "the VM's end", lambda: screen.ended, 120)
        assert "exit 4" in str(screen.ended), screen.ended  # a shard died (exit_policy)

    run_app(DQConsole(name), body)


def test_a_killed_launcher_is_a_state(vm: tuple[Ctl, str]) -> None:
    """The VM's launcher is SIGKILLed while the console watches: its QEMUs die with it, and
    the console shows the VM as ended (the registry reports it gone), with no traceback."""
    ctl, name = vm
    info = ctl.json("info", name)
    qemus = [s["pid"] for s in info["shards"]]

    async def body(pilot: Pilot[Any]) -> None:
        screen, _panel = await shard_one_up(pilot)
        os.kill(info["launcher_pid"], signal.SIGKILL)
        await until(pilot, "the VM's end", lambda: screen.ended, 120)
        assert screen.state == "ended", screen.state
        print(f"the console says: {screen.ended}")

    run_app(DQConsole(name), body)
    wait_dead(qemus, "QEMU outlived its killed launcher")
    # the console's own look at the registry may already have removed the stale entry
    assert [v["state"] for v in ctl.json("list", "--all")] in ([], ["gone"])
    assert ctl.json("list", "--all") == []
    ctl.run("cleanup")  # the namespaces of the killed launcher
