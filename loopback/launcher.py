"""Run a whole VM on this machine: every shard a local QEMU process.

With more than one shard, each shard and its router run in their own network namespace
(a stand-in "host"), joined by veth pairs on a bridge, so router traffic crosses a real
network stack. The launcher owns everything it starts — QEMU shards, routers, network
namespaces, the shared RAM files, the run directory — and removes all of it on every exit
path: guest poweroff, a shard's exit, timeout, panic, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cluster.errors import DqemuError
from cluster.forwarding_stats import forwarded
from cluster.guest_images import ensure_guest
from cluster.qemu_build import ensure_qemu
from cluster.qemu_cmdline import BootFiles, ShardPaths, numa_nodes, shard_argv
from cluster.router.control import ControlError, control_call
from cluster.spec import GUEST_PREFIX, VMSpec
from loopback.console import ConsoleReader
from loopback.netns import NetnsError, Topology
from loopback.procs import Child, Supervisor, Terminated, terminate_on_signals
from loopback.qmp import ShardMonitor

EXIT_PANIC = 3
EXIT_SHARD_FAILED = 4
EXIT_TIMEOUT = 124
# A shard QEMU exits with this status when it stopped the VM because another shard, or its
# router, was lost (hw/dqemu/liveness.c); its log names the lost shard and the cause.
SHARD_EXIT_PEER_LOST = 4
ROUTER_PORT = 7100
START_TIMEOUT = 30.0
# After one shard ends the VM normally (guest poweroff, quit), the others follow on their
# own (the shard broadcasts the shutdown): how long to wait for them before reporting.
FOLLOW_TIMEOUT = 5.0


@dataclass
class VMResult:
    exit_code: int
    reason: str
    console: list[str]
    router_stats: list[dict[str, Any]] = field(default_factory=list)

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
    monitor: ShardMonitor | None = None


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
    ) -> None:
        self.spec = spec
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

    # --- the whole life of the VM ----------------------------------------------------------

    def run(self) -> VMResult:
        boot = resolve_boot(self.spec)
        qemu = self.qemu or ensure_qemu()
        if self.sharded:
            check_dqemu_build(qemu)
        rundir = self.rundir = Path(tempfile.mkdtemp(prefix="dqemu-"))
        os.chmod(rundir, 0o700)
        self.log_dir = self.keep_logs or rundir
        tag = f"dqemu-{os.getpid()}-{secrets.token_hex(4)}"
        ram = tuple(Path("/dev/shm") / f"{tag}-ram{i}" for i in range(len(numa_nodes(self.spec))))
        try:
            with terminate_on_signals():
                for path, mib in zip(ram, numa_nodes(self.spec), strict=True):
                    with path.open("wb") as f:
                        f.truncate(mib << 20)
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
                self.console.start()
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
                    assert s.monitor is not None
                    s.monitor.cmd("cont")
                for s in self.shards:  # the launcher needs QMP no further
                    assert s.monitor is not None
                    s.monitor.close()
                result = self._wait()
                result.router_stats = self._collect_stats()
                return result
        except KeyboardInterrupt:
            return VMResult(130, "interrupted", self._lines())
        except Terminated as t:
            return VMResult(128 + t.signum, f"terminated by {t}", self._lines())
        finally:
            for s in self.shards:
                if s.monitor is not None:
                    s.monitor.close()
            self._wake_stopped()
            self.sup.stop_all()
            if self.console is not None and self.console.ident is not None:
                self.console.join(timeout=2)
            if self.topo is not None:
                self.topo.teardown()
            for path in ram:
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
        vm_id = f"{self.spec.name[:20]}-{os.getpid()}"
        for s, host in zip(self.shards, hosts, strict=True):
            s.netns = host.netns
            s.router_dir = rundir / f"router{s.id}"
            s.router_dir.mkdir(mode=0o700)
            config = {
                "vm_id": vm_id,
                "shard_id": s.id,
                "listen": f"{host.ip}:{ROUTER_PORT}",
                "socket_dir": str(s.router_dir),
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

    def _connect_monitors(self) -> None:
        for s in self.shards:
            assert s.qemu is not None
            qemu = s.qemu
            s.monitor = ShardMonitor(f"shard {s.id}", self.rundir / f"shard{s.id}.qmp")
            try:
                s.monitor.connect(START_TIMEOUT, alive=lambda q=qemu: q.poll() is None)
            except DqemuError:
                raise self._start_failure() from None

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
        """The child that died during start-up, with the last words of its log. A shard
        that lost a peer exits EXIT_SHARD_FAILED itself, so a child that exited otherwise
        is the one that failed first and is named."""
        dead = [c for c in self.sup.children if c.poll() is not None]
        dead.sort(key=lambda c: c.poll() == EXIT_SHARD_FAILED)
        for c in dead:
            tail = c.log_tail(3) or "no message"
            return DqemuError(f"{c.name} failed to start (exit {c.poll()}): {tail}",
                              EXIT_SHARD_FAILED)  # fmt: skip
        return DqemuError("the VM did not start: no shard opened its console or QMP socket",
                          EXIT_SHARD_FAILED)  # fmt: skip

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
        deadline = time.monotonic() + self.spec.boot.timeout
        while True:
            dead = self.sup.first_exited()
            if dead is not None:
                return self._ended_by(dead)
            if console.panic_seen.is_set():
                time.sleep(0.5)  # let the rest of the panic message arrive
                return VMResult(EXIT_PANIC, f"guest panic: {console.panic}", self._lines())
            if time.monotonic() > deadline:
                return VMResult(EXIT_TIMEOUT, f"guest did not finish within "
                                f"{self.spec.boot.timeout:g} s", self._lines())  # fmt: skip
            time.sleep(0.05)

    def _ended_by(self, dead: Child) -> VMResult:
        assert self.console is not None
        code = dead.poll()
        assert code is not None
        if dead.name.startswith("shard") and code == SHARD_EXIT_PEER_LOST and self.sharded:
            # This shard stopped the VM because it lost another one. If that one was
            # killed, it is the cause; if it is a shard that ended normally with a status
            # (the guest ended the VM through a device such as isa-debug-exit, which exits
            # that QEMU at once), its status is the VM's. Else the shard's own message
            # names the cause.
            time.sleep(0.2)
            gone = [c for c in self.sup.children if c is not dead and c.poll() not in (None, 0)]
            killed = [c for c in gone if (c.poll() or 0) < 0]
            ended = [c for c in gone if c.name.startswith("shard")
                     and c.poll() != SHARD_EXIT_PEER_LOST]  # fmt: skip
            if killed:
                return self._failed(killed[0])
            if ended:
                return self._ended_by(ended[0])
            if gone:
                return self._failed(gone[0])
            why = _dqemu_message(dead) or f"{dead.name} exited with status {code}"
            return VMResult(EXIT_SHARD_FAILED, f"{dead.name} stopped the VM: {why}",
                            self._lines())  # fmt: skip
        if dead.name.startswith("shard") and code == 0 and self.sharded:
            return self._poweroff(dead)
        if dead.name.startswith("shard") and code >= 0:
            # A shard QEMU ended normally: the guest ended the VM (poweroff, or a device such
            # as isa-debug-exit on that shard). Its status is the VM's.
            self.console.join(timeout=2)
            if self.console.panic:
                return VMResult(EXIT_PANIC, f"guest panic: {self.console.panic}", self._lines())
            if code == 0:
                return VMResult(0, "guest powered off", self._lines())
            tail = dead.log_tail(2)
            why = f"{dead.name} (QEMU) exited with status {code}" + (f": {tail}" if tail else "")
            return VMResult(code, why, self._lines())
        return self._failed(dead)

    def _poweroff(self, first: Child) -> VMResult:
        """One shard ended the VM with status 0 (guest poweroff, quit): every other shard
        must follow by itself, with status 0, within FOLLOW_TIMEOUT."""
        assert self.console is not None
        shards = [c for c in self.sup.children if c.name.startswith("shard")]
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        while time.monotonic() < deadline and any(c.poll() is None for c in shards):
            time.sleep(0.05)
        self.console.join(timeout=2)
        if self.console.panic:
            return VMResult(EXIT_PANIC, f"guest panic: {self.console.panic}", self._lines())
        bad = [f"{c.name} {_how(c.poll())}" for c in shards
               if c.poll() not in (None, 0)]  # fmt: skip
        # A router stays up until the teardown stops it: one already gone failed.
        bad += [f"{c.name} {_how(c.poll())}" for c in self.sup.children
                if c.name.startswith("router") and c.poll() is not None]  # fmt: skip
        if bad:
            return VMResult(EXIT_SHARD_FAILED, f"{first.name} ended the VM, but "
                            + "; ".join(bad), self._lines())  # fmt: skip
        stuck = [c.name for c in shards if c.poll() is None]
        if stuck:
            # A QEMU without the run-state patch (0019) does not follow: stopped here.
            why = f"{', '.join(stuck)} did not exit by itself within {FOLLOW_TIMEOUT:g} s"
            return VMResult(0, f"guest powered off; {why} (stopped)", self._lines())
        return VMResult(0, "guest powered off (every shard exited 0)", self._lines())

    def _failed(self, dead: Child) -> VMResult:
        """A shard or router died or failed: it is the VM's end, exit 4."""
        code = dead.poll()
        assert code is not None
        how = _how(code)
        tail = dead.log_tail(2) if code >= 0 else ""  # a killed process said nothing about it
        others = ", ".join(c.name for c in self.sup.children if c is not dead)
        msg = f"{dead.name} {how}" + (f" ({tail})" if tail else "")
        if others:
            msg += f"; stopping {others}"
        return VMResult(EXIT_SHARD_FAILED, msg, self._lines())


def _how(code: int | None) -> str:
    """How a child ended, from its ``poll()``."""
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exited with status {code}"


def _is_stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def _dqemu_message(child: Child) -> str:
    """The shard's ``dqemu: shard N lost (...)`` line (else its last ``dqemu:`` line),
    without QEMU's prefixes."""
    if child.log is None or not child.log.exists():
        return ""
    lines = [ln for ln in child.log.read_text(errors="replace").splitlines() if "dqemu:" in ln]
    lost = [ln for ln in lines if " lost (" in ln]
    pick = (lost or lines or [""])[0 if lost else -1]
    return pick[pick.index("dqemu:") :].strip() if pick else ""


def run_loopback(
    spec: VMSpec,
    console: BinaryIO | None = None,
    qmp_dir: Path | None = None,
    log_dir: Path | None = None,
) -> VMResult:
    sink = console if console is not None else sys.stdout.buffer
    return LoopbackVM(spec, console=sink, qmp_dir=qmp_dir, log_dir=log_dir).run()
