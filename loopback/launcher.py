"""Run a whole VM on this machine: every shard a local QEMU process.

``LoopbackVM`` is the VM orchestrator (:mod:`cluster.vm.orchestrator`) over one
:class:`~loopback.host.LoopbackHost`: it resolves the boot files and the QEMU build,
checks the inputs, computes the plan (:mod:`cluster.vm.plan`), claims the VM's name in the
registry and serves its control API (:mod:`loopback.vm_api`) while the orchestrator runs
the plan. The host owns everything it starts (QEMU shards, routers, network namespaces,
the shared RAM files, the run directory) and the orchestrator has it removed on every exit
path: guest poweroff, a shard's exit, timeout, panic, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cluster.errors import DqemuError
from cluster.guest_images import ensure_guest
from cluster.qemu_build import ensure_qemu
from cluster.qemu_cmdline import BootFiles, is_linux_kernel
from cluster.spec import GUEST_PREFIX, VMSpec
from cluster.vm import registry
from cluster.vm.control import ControlServer
from cluster.vm.exit_policy import (
    EXIT_DESTROYED,
    EXIT_GUEST_RESET,
    EXIT_PANIC,
    EXIT_SHARD_FAILED,
    EXIT_TIMEOUT,
)
from cluster.vm.orchestrator import Silence, VMOrchestrator, VMResult
from cluster.vm.plan import make_plan
from loopback.host import ROUTER_PORT, LoopbackHost
from loopback.preflight import (
    check_memory,
    check_transport,
    kernel_kind,
    silence_ends_run,
    silence_limit,
)

__all__ = [
    "EXIT_DESTROYED",
    "EXIT_GUEST_RESET",
    "EXIT_PANIC",
    "EXIT_SHARD_FAILED",
    "EXIT_TIMEOUT",
    "ROUTER_PORT",
    "LoopbackVM",
    "VMResult",
]


def resolve_boot(spec: VMSpec) -> BootFiles:
    """Turn ``guest:FLAVOUR`` references into the built guest's files."""

    def one(value: str, part: str) -> Path:
        if not value.startswith(GUEST_PREFIX):
            return Path(value)
        img = ensure_guest(value[len(GUEST_PREFIX) :])
        return img.kernel if part == "kernel" else img.initrd

    if spec.boot.kernel is None:
        return BootFiles(None, None, "", linux=False)  # the firmware boots from a disk
    kernel = one(spec.boot.kernel, "kernel")
    initrd = spec.boot.initrd
    return BootFiles(
        kernel,
        one(initrd, "initrd") if initrd is not None else None,
        spec.boot.append,
        linux=is_linux_kernel(kernel),
    )


def check_dqemu_build(qemu: Path) -> None:
    """Shards need the patched QEMU: its --version carries the +dqemu marker."""
    try:
        out = subprocess.run(
            [str(qemu), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError as exc:
        raise DqemuError(f"cannot run QEMU at {qemu}: {exc.strerror}") from None
    if "+dqemu" not in out:
        raise DqemuError(f"{qemu} is not a dQEMU build (no +dqemu in its --version)")


class LoopbackVM(VMOrchestrator):
    def __init__(
        self,
        spec: VMSpec,
        *,
        qemu: Path | None = None,
        console: BinaryIO | None = None,
        qmp_dir: Path | None = None,
        log_dir: Path | None = None,
        console_input: int | None = None,
        name: str | None = None,
        on_running: Callable[[LoopbackVM], None] | None = None,
    ) -> None:
        super().__init__(console=console, console_input=console_input, on_running=on_running)
        self.spec = spec
        # what the control API shows (docs/control.md); name: --name, else the spec's,
        # else generated when the name is claimed
        self.name = name or spec.name
        self.started = time.time()
        self.launcher_pid = os.getpid()
        self.entry: registry.Entry | None = None  # the VM's registry entry, once claimed
        self.qmp_dir = qmp_dir
        self.keep_logs = log_dir
        self.qemu = qemu

    # --- the whole life of the VM ----------------------------------------------------------

    def run(self) -> VMResult:
        """Claim the VM's name, serve its control API, and run it to its end."""
        claim = registry.claim(self.name)
        self.name = claim.name
        self.entry = claim.entry
        claim.write_meta(pid=self.launcher_pid, started=self.started,
                         spec=str(self.spec.source or ""))  # fmt: skip
        result: VMResult | None = None
        try:
            result = self.serve(claim.entry.control)
            return result
        finally:
            if result is None:
                claim.release()
            else:
                claim.release(result.exit_code, result.reason)

    def serve(self, control: Path) -> VMResult:
        """Serve the VM's control API on the socket ``control`` while it runs (``_run``)
        to its end; the API's commands are :mod:`loopback.vm_api`'s, for every kind of VM."""
        from loopback.vm_api import LoopbackControl  # it reads this module's classes

        assert self.name is not None
        self.spec = dataclasses.replace(self.spec, name=self.name)
        self.events.state_is("starting", name=self.name)
        api = LoopbackControl(self)
        server = ControlServer(control, api.commands(), api.streams()).start()
        result: VMResult | None = None
        links = threading.Thread(target=self.watch_links, name="links", daemon=True)
        try:
            links.start()
            result = self._run()
            self.ended = result
            return result
        finally:
            self.state = "ended"
            if result is not None:
                self.events.emit("ended", status=result.exit_code, reason=result.reason)
            self.events.state_is("ended")
            self.events.close()
            links.join(timeout=3)
            server.close()

    def _run(self) -> VMResult:
        boot = resolve_boot(self.spec)
        # the firmware boots a disk when there is no kernel
        kind = kernel_kind(boot.kernel) if boot.kernel is not None else "disk"
        check_memory(
            self.spec.memory_mib,
            memory_mode=self.spec.memory_mode,
            shards=len(self.spec.shards),
        )
        rxe = check_transport(self.spec.transport, len(self.spec.shards))
        qemu = self.qemu or ensure_qemu()
        if len(self.spec.shards) > 1:
            check_dqemu_build(qemu)
        host = LoopbackHost(log_dir=self.keep_logs, qmp_dir=self.qmp_dir, rxe=rxe)
        try:
            plan = make_plan(
                self.spec,
                qemu=qemu,
                boot=boot,
                vm_id=f"{(self.spec.name or 'vm')[:20]}-{os.getpid()}",
                router_port=ROUTER_PORT,
                qmp_dir=self.qmp_dir,
                run_dir=host.make_rundir(),
            )
        except BaseException:
            host.teardown()
            raise
        timeout = self.spec.boot.timeout
        silence = Silence(silence_limit(timeout), silence_ends_run(kind, self.spec.boot.append))
        return self.run_plan(plan, dict.fromkeys(plan.hosts, host), silence)


def run_loopback(
    spec: VMSpec,
    console: BinaryIO | None = None,
    qmp_dir: Path | None = None,
    log_dir: Path | None = None,
    console_input: int | None = None,
    name: str | None = None,
    on_running: Callable[[LoopbackVM], None] | None = None,
) -> VMResult:
    sink = console if console is not None else sys.stdout.buffer
    return LoopbackVM(
        spec, console=sink, qmp_dir=qmp_dir, log_dir=log_dir, console_input=console_input,
        name=name, on_running=on_running,
    ).run()  # fmt: skip
