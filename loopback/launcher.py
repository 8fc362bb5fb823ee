"""Run a whole VM on this machine: every shard a local QEMU process.

With more than one shard, each shard and its router run in their own network namespace
(a stand-in "host"), joined by veth pairs on a bridge, so router traffic crosses a real
network stack. The launcher owns everything it starts — QEMU shards, routers, network
namespaces, the shared RAM files, the run directory — and removes all of it on every exit
path: guest poweroff, a shard's exit, timeout, panic, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from cluster.errors import DqemuError
from cluster.forwarding_stats import forwarded
from cluster.guest_images import ensure_guest
from cluster.qemu_build import ensure_qemu
from cluster.qemu_cmdline import BootFiles, ShardPaths, is_linux_kernel, numa_nodes, shard_argv
from cluster.router.control import ControlError, control_call
from cluster.spec import GUEST_PREFIX, VMSpec
from cluster.vm import registry
from cluster.vm.control import ControlServer
from cluster.vm.events import VMEvents
from loopback.console import ConsoleReader
from loopback.exit_policy import (
    EXIT_DESTROYED,
    EXIT_GUEST_RESET,
    EXIT_INTERRUPTED,
    EXIT_PANIC,
    EXIT_SHARD_FAILED,
    EXIT_TIMEOUT,
    SHARD_EXIT_PEER_LOST,
    Ending,
    decide,
)
from loopback.netns import NetnsError, Topology
from loopback.preflight import check_memory, kernel_kind, silence_ends_run, silence_limit
from loopback.procs import Child, Supervisor, Terminated, terminate_on_signals
from loopback.qmp import ShardQMP
from loopback.serial_hub import SerialHub
from loopback.stale import RUNDIR_PREFIX, reap_stale

__all__ = [
    "EXIT_DESTROYED",
    "EXIT_GUEST_RESET",
    "EXIT_PANIC",
    "EXIT_SHARD_FAILED",
    "EXIT_TIMEOUT",
    "LoopbackVM",
    "VMResult",
]

ROUTER_PORT = 7100
START_TIMEOUT = 30.0
# Once a shard has ended, the others follow on their own (a guest poweroff or quit is
# broadcast; a lost shard is noticed within 2 s): how long to wait for them before the
# launcher decides how the VM ended and stops what is left.
FOLLOW_TIMEOUT = 5.0


@dataclass
class VMResult:
    exit_code: int
    reason: str
    console: list[str]
    router_stats: list[dict[str, Any]] = field(default_factory=list)
    by_guest: bool = False  # the status is the guest's own (poweroff, isa-debug-exit)
    signal: int | None = None  # the launcher was terminated by this signal

    @property
    def forwarded(self) -> dict[str, int]:
        return forwarded(self.router_stats)


@dataclass
class _Shard:
    id: int
    qemu: Child | None = None
    router: Child | None = None
    router_dir: Path | None = None
    netns: str | None = None
    watch: ShardQMP | None = None  # the launcher's QMP connection


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


class LoopbackVM:
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
        self.spec = spec
        # what the control API shows (docs/control.md); name: --name, else the spec's,
        # else generated when the name is claimed
        self.name = name or spec.name
        self.state = "starting"
        self.ended: VMResult | None = None
        self.started = time.time()
        self.launcher_pid = os.getpid()
        self.destroy_requested = threading.Event()
        self.on_running = on_running  # called once every shard runs
        self.hub = SerialHub()
        self.events = VMEvents()
        self.entry: registry.Entry | None = None  # the VM's registry entry, once claimed
        self.console_input = console_input  # a file descriptor copied to the guest's serial
        self.qmp_dir = qmp_dir
        self.keep_logs = log_dir
        self.qemu = qemu
        self.console_sink = console
        self.sup = Supervisor()
        self.sharded = len(spec.shards) > 1
        self.shards = [_Shard(s.id) for s in spec.shards]
        self.topo: Topology | None = None
        self.console: ConsoleReader | None = None
        self.rundir = Path()
        self.log_dir = Path()
        self.kernel_kind = "linux"

    # --- the whole life of the VM ----------------------------------------------------------

    def run(self) -> VMResult:
        """Claim the VM's name, serve its control API, and run it to its end."""
        from loopback.vm_api import LoopbackControl  # it reads this module's classes

        claim = registry.claim(self.name)
        self.name = claim.name
        self.entry = claim.entry
        self.spec = dataclasses.replace(self.spec, name=claim.name)
        claim.write_meta(pid=self.launcher_pid, started=self.started,
                         spec=str(self.spec.source or ""))  # fmt: skip
        self.events.state_is("starting", name=claim.name)
        api = LoopbackControl(self)
        control = ControlServer(claim.entry.control, api.commands(), api.streams()).start()
        result: VMResult | None = None
        links = threading.Thread(target=self._watch_links, name="links", daemon=True)
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
            control.close()
            if result is None:
                claim.release()
            else:
                claim.release(result.exit_code, result.reason)

    def _run(self) -> VMResult:
        boot = resolve_boot(self.spec)
        # the firmware boots a disk when there is no kernel
        self.kernel_kind = kernel_kind(boot.kernel) if boot.kernel is not None else "disk"
        check_memory(self.spec.memory_mib)
        qemu = self.qemu or ensure_qemu()
        if self.sharded:
            check_dqemu_build(qemu)
        for name in reap_stale():
            print(f"dqemu: removed {name}, left by a launcher that no longer runs",
                  file=sys.stderr)  # fmt: skip
        rundir = self.rundir = Path(tempfile.mkdtemp(prefix=RUNDIR_PREFIX.format(pid=os.getpid())))
        os.chmod(rundir, 0o700)
        self.log_dir = self.keep_logs or rundir
        tag = f"dqemu-{os.getpid()}-{secrets.token_hex(4)}"
        ram = tuple(Path("/dev/shm") / f"{tag}-ram{i}" for i in range(len(numa_nodes(self.spec))))
        made: list[Path] = []
        try:
            with terminate_on_signals():
                for path, mib in zip(ram, numa_nodes(self.spec), strict=True):
                    create_ram_file(path, mib << 20)
                    made.append(path)
                if self.sharded:
                    self._start_routers(rundir)
                for s in self.shards:
                    self._start_shard(qemu, s, rundir, ram, boot)
                self._write_pids()
                io = self.shards[self.spec.io_shard]
                assert io.qemu is not None
                io_qemu = io.qemu
                self.console = ConsoleReader(
                    rundir / "console.sock", self.console_sink, alive=lambda: io_qemu.poll() is None
                )
                if not self.console.connect(timeout=START_TIMEOUT):
                    raise self._start_failure()
                self.console.hub = self.hub
                self.hub.send = self.console.send
                self.console.start()
                if self.console_input is not None:
                    self.console.forward_input(self.console_input)
                self._connect_monitors()
                if self.sharded:
                    self._wait_mesh()
                # Every shard has mapped the RAM files now: drop their names so that nothing
                # is left in /dev/shm even if this process is killed.
                for path in ram:
                    path.unlink(missing_ok=True)
                # Every shard has built its machine: start them, the BSP's shard last, so
                # that the other vCPUs already wait for their INIT/SIPI when it sends them.
                bsp = self.spec.shard_of_vcpu(0)
                for s in sorted(self.shards, key=lambda s: s.id == bsp):
                    assert s.watch is not None
                    s.watch.cmd("cont")
                self.state = "running"
                self.events.state_is("running")
                if self.on_running is not None:
                    self.on_running(self)
                result = self._wait()
                self.state = "shutting-down"
                result.router_stats = self._collect_stats()
                return result
        except KeyboardInterrupt:
            return VMResult(EXIT_INTERRUPTED, "interrupted", self._lines())
        except Terminated as t:
            return VMResult(EXIT_SHARD_FAILED, f"terminated by {t}", self._lines(),
                            signal=t.signum)  # fmt: skip
        finally:
            for s in self.shards:
                if s.watch is not None:
                    s.watch.close()
            self._wake_stopped()
            self.sup.stop_all()
            if self.console is not None and self.console.ident is not None:
                self.console.join(timeout=2)
            if self.topo is not None:
                self.topo.teardown()
            for path in made:
                path.unlink(missing_ok=True)
            if self.qmp_dir is not None:
                for s in self.shards:
                    (self.qmp_dir / f"shard{s.id}.qmp").unlink(missing_ok=True)
            shutil.rmtree(rundir, ignore_errors=True)

    def _lines(self) -> list[str]:
        return self.console.lines() if self.console else []

    def _write_pids(self) -> None:
        """``pids.json`` in the log directory: every child's pid by name ("shard 0",
        "router 1"), for operators and the failure tests."""
        pids = {c.name: c.pid for c in self.sup.children}
        (self.log_dir / "pids.json").write_text(json.dumps(pids, indent=1) + "\n")

    def _wake_stopped(self) -> None:
        """A SIGSTOPped child would sit on its SIGTERM until the SIGKILL: terminate it and
        let it run (SIGCONT) so that teardown does not wait for the kill timeout."""
        for c in self.sup.children:
            if c.poll() is None and _is_stopped(c.pid):
                for sig in (signal.SIGTERM, signal.SIGCONT):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(c.pid, sig)

    # --- start-up ----------------------------------------------------------------------------

    def _start_routers(self, rundir: Path) -> None:
        try:
            self.topo = Topology(len(self.shards)).create()
        except NetnsError as exc:
            raise DqemuError(f"loopback network: {exc}") from None
        hosts = self.topo.hosts
        secret = secrets.token_bytes(32)
        vm_id = f"{(self.spec.name or 'vm')[:20]}-{os.getpid()}"
        for s, host in zip(self.shards, hosts, strict=True):
            s.netns = host.netns
            s.router_dir = rundir / f"router{s.id}"
            s.router_dir.mkdir(mode=0o700)
            config = {
                "vm_id": vm_id,
                "shard_id": s.id,
                "listen": f"{host.ip}:{ROUTER_PORT}",
                "socket_dir": str(s.router_dir),
                "data_path": self.spec.data_path,
                "peers": {
                    str(o.id): f"{h.ip}:{ROUTER_PORT}"
                    for o, h in zip(self.shards, hosts, strict=True)
                    if o.id != s.id
                },
                "routes": {
                    "vcpus": {str(c): self.spec.shard_of_vcpu(c) for c in range(self.spec.vcpus)},
                },
            }
            cfg_path = rundir / f"router{s.id}.json"
            cfg_path.write_text(json.dumps(config, indent=1))
            rfd, wfd = os.pipe()
            try:
                s.router = self.sup.spawn(
                    f"router {s.id}",
                    [sys.executable, "-m", "cluster.router", "--config", str(cfg_path),
                     "--secret-fd", str(rfd)],
                    netns=host.netns,
                    log=self.log_dir / f"router{s.id}.log",
                    pass_fds=(rfd,),
                )  # fmt: skip
                os.write(wfd, secret)
            finally:
                os.close(rfd)
                os.close(wfd)
        deadline = time.monotonic() + START_TIMEOUT
        for s in self.shards:
            assert s.router is not None and s.router_dir is not None
            sock = s.router_dir / "shard.sock"
            while not sock.exists():
                if s.router.poll() is not None:
                    raise DqemuError(
                        f"router {s.id} failed to start: {s.router.log_tail(2) or 'no message'}",
                        EXIT_SHARD_FAILED,
                    )
                if time.monotonic() > deadline:
                    raise DqemuError(f"router {s.id} did not start within {START_TIMEOUT:g} s",
                                     EXIT_SHARD_FAILED)  # fmt: skip
                time.sleep(0.02)
            self.events.emit("router", shard=s.id, state="up", pid=s.router.pid, host=s.netns)

    def _start_shard(
        self, qemu: Path, s: _Shard, rundir: Path, ram: tuple[Path, ...], boot: BootFiles
    ) -> None:
        serial = rundir / "console.sock" if s.id == self.spec.io_shard else None
        router = s.router_dir / "shard.sock" if s.router_dir is not None else None
        user_qmp = self.qmp_dir / f"shard{s.id}.qmp" if self.qmp_dir is not None else None
        paths = ShardPaths(
            qmp=rundir / f"shard{s.id}.qmp", serial=serial, ram=ram, router=router,
            user_qmp=user_qmp,
        )  # fmt: skip
        argv = shard_argv(qemu, self.spec, s.id, paths, boot)
        s.qemu = self.sup.spawn(
            f"shard {s.id}", argv, netns=s.netns, log=self.log_dir / f"shard{s.id}.log"
        )
        self.events.emit("shard", shard=s.id, state="up", pid=s.qemu.pid, host=s.netns)

    def _connect_monitors(self) -> None:
        """One QMP connection per shard, kept to the end: it sends ``cont``, then
        listens for the SHUTDOWN event, which says whether the guest ended the VM."""
        for s in self.shards:
            assert s.qemu is not None
            qemu = s.qemu
            s.watch = ShardQMP(f"shard {s.id}", self.rundir / f"shard{s.id}.qmp")
            try:
                s.watch.connect(START_TIMEOUT, alive=qemu.running)
            except DqemuError:
                raise self._start_failure() from None
            s.watch.on_event = lambda msg, k=s.id: self._qmp_event(k, msg)
            s.watch.start()

    def _wait_mesh(self) -> None:
        """Wait until every router has its shard registered and every peer link up: a frame
        sent before its link is up would be dropped, so no vCPU may run before that."""
        deadline = time.monotonic() + START_TIMEOUT
        for s in self.shards:
            assert s.router is not None and s.router_dir is not None
            while True:
                if s.router.poll() is not None:
                    raise self._start_failure()
                try:
                    health = control_call(s.router_dir / "control.sock", "health", timeout=2.0)
                except (OSError, ControlError, ValueError):
                    health = {}
                if health.get("ok"):
                    break
                if time.monotonic() > deadline:
                    down = [k for k, v in health.get("peers", {}).items() if v.get("state") != "up"]
                    raise DqemuError(
                        f"router {s.id}: links to shard(s) {', '.join(down) or '?'} not up "
                        f"within {START_TIMEOUT:g} s", EXIT_SHARD_FAILED,
                    )  # fmt: skip
                time.sleep(0.02)

    def _start_failure(self) -> DqemuError:
        """The child that failed start-up, with the last words of its log. Every shard
        builds the whole machine and opens a shadow copy of each drive, so a device or
        drive that cannot be set up usually fails on every shard: the owner's failure is
        the one to report, whichever shard failed first."""
        time.sleep(0.2)  # let the others that fail with it finish saying why
        dead = [c for c in self.sup.children if c.poll() is not None]
        dead.sort(key=lambda c: c.poll() == EXIT_SHARD_FAILED)  # a lost peer's exit 4 comes after
        for c in dead:
            tail = c.log_tail(3) or "no message"
            owner = device_owner(self.spec, tail)
            if owner is not None and c.name != f"shard {owner}":
                mine = self._owner_failure(owner)
                if mine is not None:
                    c, tail = mine, mine.log_tail(3)
                else:
                    tail = f"its shadow of shard {owner}'s device cannot be set up: {tail}"
            return DqemuError(f"{c.name} failed to start (exit {c.poll()}): {tail}",
                              EXIT_SHARD_FAILED)  # fmt: skip
        return DqemuError("the VM did not start: no shard opened its console or QMP socket",
                          EXIT_SHARD_FAILED)  # fmt: skip

    def _owner_failure(self, owner: int, wait: float = 10.0) -> Child | None:
        """The owner shard, once it has failed on its own device too (it may be slower to
        get there); None if it does not fail within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        child = next(c for c in self.sup.children if c.name == f"shard {owner}")
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if child.poll() is None or device_owner(self.spec, child.log_tail(3)) != owner:
            return None
        return child

    def _collect_stats(self) -> list[dict[str, Any]]:
        """Each live router's statistics, read before the routers are stopped."""
        out = []
        for s in self.shards:
            if s.router is None or s.router_dir is None or s.router.poll() is not None:
                continue
            try:
                out.append(control_call(s.router_dir / "control.sock", "stats", timeout=2.0))
            except (OSError, ControlError, ValueError):
                continue
        return out

    # --- running -------------------------------------------------------------------------------

    def _wait(self) -> VMResult:
        assert self.console is not None
        console = self.console
        started = time.monotonic()
        deadline = started + self.spec.boot.timeout
        seen: dict[str, float] = {}
        silence = silence_limit(self.spec.boot.timeout)
        warned = False
        while True:
            self._note_exits(seen)
            if seen:
                return self._ended(seen)
            if self.destroy_requested.is_set():
                return VMResult(EXIT_DESTROYED, "destroyed by an operator (dqemu destroy)",
                                self._lines())  # fmt: skip
            if console.panic_seen.is_set():
                self.events.emit("guest", event="panic", message=console.panic)
                time.sleep(0.5)  # let the rest of the panic message arrive
                return VMResult(EXIT_PANIC, f"guest panic: {console.panic}", self._lines())
            now = time.monotonic()
            if now > deadline:
                return VMResult(EXIT_TIMEOUT, f"guest did not finish within "
                                f"{self.spec.boot.timeout:g} s", self._lines())  # fmt: skip
            if not warned and now - started > silence and console.silent():
                warned = True
                said = f"the guest has printed nothing on its serial console in {silence:g} s"
                if silence_ends_run(self.kernel_kind, self.spec.boot.append):
                    why = "the kernel did not boot (a Linux kernel prints there from the start)"
                    return VMResult(EXIT_TIMEOUT, f"{said}: {why}", self._lines())
                print(f"dqemu: warning: {said}", file=sys.stderr)
            time.sleep(0.05)

    def _note_exits(self, seen: dict[str, float]) -> None:
        for c in self.sup.children:
            if c.name not in seen and c.poll() is not None:
                seen[c.name] = time.time()
                kind, _, sid = c.name.partition(" ")
                self.events.emit(kind, shard=int(sid), state="down", status=c.poll())

    def _qmp_event(self, shard: int, msg: dict[str, Any]) -> None:
        """A shard's QMP event, on its reader thread: the ones operators care about."""
        name = msg.get("event")
        data = msg.get("data", {})
        if name == "STOP":
            self.events.state_is("paused")
        elif name == "RESUME":
            self.events.state_is("running")
        elif name in ("RESET", "SHUTDOWN", "GUEST_PANICKED") and shard == self.spec.io_shard:
            # every shard reports the VM-wide ones: the I/O shard's report stands for all
            self.events.emit("guest", event=name.lower(), shard=shard,
                             reason=data.get("reason"), by_guest=data.get("guest"))  # fmt: skip

    def _watch_links(self) -> None:
        """Link up/down events, from every router's health, once a second."""
        known: dict[tuple[int, int], str] = {}
        while self.state != "ended":
            for s in self.shards:
                if s.router_dir is None or s.router is None or s.router.poll() is not None:
                    continue
                try:
                    health = control_call(s.router_dir / "control.sock", "health", timeout=1.0)
                except (OSError, ControlError, ValueError):
                    continue
                for peer, info in health.get("peers", {}).items():
                    key = (s.id, int(peer))
                    state = info.get("state", "down")
                    if known.get(key, "down") != state:
                        known[key] = state
                        self.events.emit("link", shard=s.id, peer=int(peer), state=state,
                                         cause=info.get("last_error"))  # fmt: skip
            for _ in range(10):
                if self.state == "ended":
                    return
                time.sleep(0.1)

    def _ended(self, seen: dict[str, float]) -> VMResult:
        """A child ended: wait for every shard to follow (FOLLOW_TIMEOUT), then decide."""
        assert self.console is not None
        shards = [c for c in self.sup.children if c.name.startswith("shard")]
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        while time.monotonic() < deadline and any(c.poll() is None for c in shards):
            time.sleep(0.05)
            self._note_exits(seen)
        for s in self.shards:  # the SHUTDOWN event came before the exit
            if s.watch is not None and s.qemu is not None and s.qemu.poll() is not None:
                s.watch.join(timeout=2)
        self.console.join(timeout=2)
        watch = {f"shard {s.id}": s.watch for s in self.shards}
        endings = []
        for c in self.sup.children:
            code = c.poll()
            w = watch.get(c.name)
            said, said_at = _last_words(c, code) if code is not None else ("", None)
            endings.append(Ending(
                c.name, code, seen.get(c.name, float("inf")),
                w.reason if w is not None else None, said, said_at,
            ))  # fmt: skip
        verdict = decide(endings, self.console.panic)
        return VMResult(verdict.status, verdict.reason, self._lines(), by_guest=verdict.by_guest)


def create_ram_file(path: Path, size: int) -> None:
    """The guest RAM backing file: readable by its owner only from the first instant
    (0600 whatever the umask, O_EXCL: never someone else's file or link)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def device_owner(spec: VMSpec, message: str) -> int | None:
    """The owner shard of the spec device that QEMU's error ``message`` is about: QEMU
    names the option (``-drive ARGS: ...``), with the shadow copy's additions."""
    for d in spec.devices:
        if f"-{d.kind} {d.args}" in message:
            return d.shard
    return None


def _is_stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def _last_words(child: Child, code: int) -> tuple[str, float | None]:
    """What the child said about its end, and when (shard logs are time-stamped): for a
    shard that stopped the VM (status 4), its ``dqemu: shard N lost (...)`` line, else its
    last ``dqemu:`` line; for any other end, the tail of its log."""
    if child.log is None or not child.log.exists():
        return "", None
    lines = child.log.read_text(errors="replace").strip().splitlines()
    pick = ""
    if child.name.startswith("shard") and code == SHARD_EXIT_PEER_LOST:
        ours = [ln for ln in lines if "dqemu:" in ln]
        lost = [ln for ln in ours if " lost (" in ln]
        pick = lost[0] if lost else ours[-1] if ours else ""
        said = pick[pick.index("dqemu:") :].strip() if pick else ""
    else:
        pick = lines[-1] if lines else ""
        said = child.log_tail(2) if code >= 0 else ""  # a killed child said nothing of it
    m = _STAMP.match(pick)
    when = datetime.fromisoformat(m.group(1) + "+00:00").timestamp() if m else None
    return said, when


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
