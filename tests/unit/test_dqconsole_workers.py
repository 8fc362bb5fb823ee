"""dqconsole's thread workers never wait for each other: every stream it reads holds a
worker thread while it is shown, and a command must still run beside them all."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from dqconsole.app import DQConsole
from dqconsole.screens.vm_list import VMListScreen


def test_a_command_runs_while_many_streams_hold_their_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path / "run"))
    release = threading.Event()
    ran = threading.Event()

    async def main() -> None:
        app = DQConsole()
        async with app.run_test(size=(80, 24)):
            # a VM screen with three consoles holds 3 + 2 * 3 stream workers, and more
            for _ in range(12):
                app.run_worker(release.wait, thread=True, group="streams")
            app.run_worker(ran.set, thread=True, group="command")
            deadline = time.monotonic() + 30  # (it runs at once, or never)
            while not ran.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            release.set()
            assert ran.is_set(), "the command's worker waited behind the streams"

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_the_vm_list_stops_polling_under_another_screen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path / "run"))

    async def main() -> None:
        app = DQConsole("nope")  # the list, then the VM screen over it
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(100):
                if not isinstance(app.screen, VMListScreen):
                    break
                await asyncio.sleep(0.05)
            listing = app.screen_stack[1]
            assert isinstance(listing, VMListScreen)
            for _ in range(100):
                if not [w for w in app.workers if w.node is listing and w.is_running]:
                    break
                await asyncio.sleep(0.05)
            assert not [w for w in app.workers if w.node is listing and w.is_running]
            app.pop_screen()
            await pilot.pause()
            assert [w for w in app.workers if w.node is listing and w.is_running]

    asyncio.run(main())
