"""Run a whole VM on this machine: every shard a local QEMU process.

The launcher owns everything it starts — QEMU shards, routers, network namespaces, the
shared RAM file, the run directory — and removes all of it on every exit path: guest
poweroff, QEMU's own exit, timeout, panic, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cluster.errors import DqemuError
from cluster.guest_images import ensure_guest
from cluster.qemu_build import ensure_qemu
from cluster.qemu_cmdline import BootFiles, ShardPaths, shard_argv
from cluster.spec import GUEST_PREFIX, VMSpec
from loopback.console import ConsoleReader
from loopback.procs import Child, Supervisor, Terminated, terminate_on_signals

EXIT_PANIC = 3
EXIT_TIMEOUT = 124
EXIT_SHARD_FAILED = 4


@dataclass
class VMResult:
    exit_code: int
    reason: str
    console: list[str]


def resolve_boot(spec: VMSpec) -> BootFiles:
    """Turn ``guest:FLAVOUR`` references into the built guest's files."""

    def one(value: str, part: str) -> Path:
        if not value.startswith(GUEST_PREFIX):
            return Path(value)
        img = ensure_guest(value[len(GUEST_PREFIX) :])
        return img.kernel if part == "kernel" else img.initrd

    initrd = spec.boot.initrd
    return BootFiles(
        one(spec.boot.kernel, "kernel"),
        one(initrd, "initrd") if initrd is not None else None,
        spec.boot.append,
    )


class LoopbackVM:
    def __init__(
        self, spec: VMSpec, *, qemu: Path | None = None, console: BinaryIO | None = None
    ) -> None:
        if len(spec.shards) > 1:
            raise DqemuError(
                f"{len(spec.shards)} shards requested: this build runs one shard only "
                "(the shard patch series has not landed yet)"
            )
        self.spec = spec
        self.qemu = qemu
        self.console_sink = console
        self.sup = Supervisor()

    def run(self) -> VMResult:
        boot = resolve_boot(self.spec)
        qemu = self.qemu or ensure_qemu()
        rundir = Path(tempfile.mkdtemp(prefix="dqemu-"))
        os.chmod(rundir, 0o700)
        ram = Path("/dev/shm") / f"dqemu-{os.getpid()}-{secrets.token_hex(4)}-ram"
        console: ConsoleReader | None = None
        try:
            with terminate_on_signals():
                with ram.open("wb") as f:
                    f.truncate(self.spec.memory_mib << 20)
                shard = self._start_shard(qemu, 0, rundir, ram, boot)
                console = ConsoleReader(
                    rundir / "console.sock", self.console_sink, alive=lambda: shard.poll() is None
                )
                if not console.connect(timeout=30):
                    return self._failed_start(shard)
                console.start()
                # Every shard has mapped the RAM file now: drop its name so that nothing
                # is left in /dev/shm even if this process is killed.
                ram.unlink(missing_ok=True)
                return self._wait(shard, console)
        except KeyboardInterrupt:
            return VMResult(130, "interrupted", console.lines() if console else [])
        except Terminated as t:
            return VMResult(
                128 + t.signum, f"terminated by {t}", console.lines() if console else []
            )
        finally:
            self.sup.stop_all()
            if console is not None:
                console.join(timeout=2)
            ram.unlink(missing_ok=True)
            shutil.rmtree(rundir, ignore_errors=True)

    def _start_shard(self, qemu: Path, sid: int, rundir: Path, ram: Path, boot: BootFiles) -> Child:
        serial = rundir / "console.sock" if sid == self.spec.io_shard else None
        paths = ShardPaths(qmp=rundir / f"shard{sid}.qmp", serial=serial, ram=ram)
        argv = shard_argv(qemu, self.spec, sid, paths, boot)
        return self.sup.spawn(f"shard {sid}", argv, log=rundir / f"shard{sid}.log")

    def _failed_start(self, shard: Child) -> VMResult:
        if shard.poll() is None:  # alive but never opened its console: not a dQEMU shard
            shard.popen.kill()
        shard.popen.wait(timeout=5)
        tail = shard.log_tail(3) or "no message"
        raise DqemuError(f"{shard.name} (QEMU) failed to start: {tail}", EXIT_SHARD_FAILED)

    def _wait(self, shard: Child, console: ConsoleReader) -> VMResult:
        deadline = time.monotonic() + self.spec.boot.timeout
        while True:
            code = shard.poll()
            if code is not None:
                console.join(timeout=2)
                if console.panic:
                    return VMResult(EXIT_PANIC, f"guest panic: {console.panic}", console.lines())
                if code < 0:
                    return VMResult(
                        EXIT_SHARD_FAILED, f"{shard.name} killed by signal {-code}", console.lines()
                    )
                return VMResult(
                    code,
                    "guest powered off" if code == 0 else f"QEMU exited with status {code}",
                    console.lines(),
                )
            if console.panic_seen.is_set():
                time.sleep(0.5)  # let the rest of the panic message arrive
                return VMResult(EXIT_PANIC, f"guest panic: {console.panic}", console.lines())
            if time.monotonic() > deadline:
                return VMResult(
                    EXIT_TIMEOUT,
                    f"guest did not finish within {self.spec.boot.timeout:g} s",
                    console.lines(),
                )
            time.sleep(0.05)


def run_loopback(spec: VMSpec, console: BinaryIO | None = None) -> VMResult:
    return LoopbackVM(spec, console=console if console is not None else sys.stdout.buffer).run()
