"""This machine as the one host of a loopback VM: :class:`LoopbackHost`.

It carries out a plan (:mod:`cluster.vm.plan`) with local processes: every shard a QEMU,
with more than one shard each shard and its router in their own network namespace (a
stand-in "host"), joined by veth pairs on a bridge (:mod:`loopback.netns`), so router
traffic crosses a real network stack. It owns what it makes, the run directory (private,
0700), the guest RAM files in /dev/shm, the namespaces and the children, and removes all
of it in ``stop`` and ``teardown``; a SIGKILLed launcher's children die with it
(:mod:`loopback.procs`) and the next launcher reaps what is left (:mod:`loopback.stale`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from cluster.errors import DqemuError
from cluster.qemu_cmdline import with_rdma_device
from cluster.router.control import ControlError, control_call
from cluster.router.shardproc import HUNG_MARK
from cluster.vm.exit_policy import EXIT_SHARD_FAILED, last_words, log_tail
from cluster.vm.host import (
    LastWords,
    ProcessInfo,
    QMPEvent,
    QMPLink,
    SerialLink,
    ShardHost,
    Started,
)
from cluster.vm.plan import VMPlan
from loopback.netns import NetnsError, Topology
from loopback.procs import Child, Supervisor
from loopback.qmp import ShardQMP
from loopback.rxe import RxeDevices
from loopback.stale import new_rundir, reap_stale
from loopback.unix_socket import connect_when_ready

# the port every router listens on, in its own namespace
ROUTER_PORT = 7100
SHM_DIR = Path("/dev/shm")


class ProcessMeter:
    """CPU% and RSS of a process, CPU% over the time since the previous reading."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def read(self, pid: int | None) -> tuple[float, float]:
        if pid is None:
            return 0.0, 0.0
        try:
            p = self._procs.get(pid)
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
                p.cpu_percent(None)  # the first reading only starts the interval
            with p.oneshot():
                return p.cpu_percent(None), p.memory_info().rss / (1 << 20)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return 0.0, 0.0


class LocalSerial:
    """The I/O shard's console socket in the run directory."""

    def __init__(self, path: Path, alive: Callable[[], bool]) -> None:
        self.path = path
        self.alive = alive
        self._sock: socket.socket | None = None

    def connect(self, timeout: float) -> bool:
        self._sock = connect_when_ready(self.path, timeout, self.alive)
        return self._sock is not None

    def recv(self) -> bytes:
        sock = self._sock
        return sock.recv(65536) if sock is not None else b""

    def send(self, data: bytes) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(data)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


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


def _is_stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def _log_lines(child: Child) -> list[str]:
    if child.log is None or not child.log.exists():
        return []
    return child.log.read_text(errors="replace").strip().splitlines()


class LoopbackHost(ShardHost):
    """Every shard of a VM on this machine (see the module's doc).

    ``log_dir``: where the children's logs and ``pids.json`` go (default: the run
    directory, removed at the end); ``qmp_dir``: where the plan's operator QMP sockets
    are (removed at the end); ``rxe``: a sharded plan's routers get soft-RoCE devices of
    their own (:mod:`loopback.rxe`, for ``transport = "rdma"``)."""

    def __init__(
        self, *, log_dir: Path | None = None, qmp_dir: Path | None = None, rxe: bool = False
    ) -> None:
        self.keep_logs = log_dir
        self.use_rxe = rxe  # give each shard's router an rxe device of its own
        self.qmp_dir = qmp_dir
        self.sup = Supervisor()
        self.meter = ProcessMeter()
        self.plan: VMPlan | None = None
        self.shard_ids: tuple[int, ...] = ()
        self.rundir: Path | None = None
        self.log_dir = Path()
        self.topo: Topology | None = None
        self.rxe: RxeDevices | None = None  # transport "rdma" over soft-RoCE (loopback.rxe)
        self.rdma_device: dict[int, str] = {}  # shard -> its router's rxe device
        self.ram: list[Path] = []  # the RAM files made and not yet unlinked
        self.netns: dict[int, str] = {}  # shard -> its namespace
        self.ips: dict[int, str] = {}  # shard -> its router's IP
        self.qemu: dict[int, Child] = {}
        self.routers: dict[int, Child] = {}
        self.links: list[ShardQMP] = []

    # --- set-up ------------------------------------------------------------------------------

    def make_rundir(self) -> Path:
        """The run directory (private, 0700), made at once: a loopback plan names it
        (``make_plan(run_dir=...)``), because QEMU runs in the user's working directory.
        Leftovers of dead launchers are removed first."""
        if self.rundir is None:
            for name in reap_stale():
                print(f"dqemu: removed {name}, left by a launcher that no longer runs",
                      file=sys.stderr)  # fmt: skip
            self.rundir = new_rundir()
        return self.rundir

    def prepare(self, plan: VMPlan, shards: Sequence[int]) -> None:
        self.plan = plan
        self.shard_ids = tuple(shards)
        rundir = self.make_rundir()
        self.log_dir = self.keep_logs or rundir
        tag = f"dqemu-{os.getpid()}-{secrets.token_hex(4)}"
        for i, ram in enumerate(plan.ram):
            path = SHM_DIR / f"{tag}-ram{i}"
            create_ram_file(path, ram.mib << 20)
            self.ram.append(path)
            # the plan names it in the run directory
            (rundir / ram.name).symlink_to(path)
        if plan.sharded:
            try:
                self.topo = Topology(len(self.shard_ids)).create()
            except NetnsError as exc:
                raise DqemuError(f"loopback network: {exc}") from None
            for k, h in zip(self.shard_ids, self.topo.hosts, strict=True):
                self.netns[k] = h.netns
                self.ips[k] = h.ip
            if self.use_rxe:
                self._add_rxe()

    def _add_rxe(self) -> None:
        assert self.topo is not None
        self.rxe = RxeDevices(self.topo.bridge_ns)
        try:
            devices = self.rxe.add(len(self.shard_ids))
        except NetnsError as exc:
            raise DqemuError(f"loopback RDMA devices: {exc}") from None
        self.rdma_device = dict(zip(self.shard_ids, devices, strict=True))

    def _plan(self) -> VMPlan:
        assert self.plan is not None and self.rundir is not None, "prepare() comes first"
        return self.plan

    def start_router(self, shard: int, secret: bytes) -> Started:
        plan = self._plan()
        assert self.rundir is not None
        router = plan.shard(shard).router
        assert router is not None, "an unsharded VM has no router"
        (self.rundir / router.socket_dir).mkdir(mode=0o700)
        cfg_path = self.rundir / router.config_file
        config = router.config(str(self.rundir), self.ips[shard])
        if shard in self.rdma_device:
            config["rdma_device"] = self.rdma_device[shard]
        cfg_path.write_text(json.dumps(config, indent=1))
        rfd, wfd = os.pipe()
        try:
            child = self.sup.spawn(
                router.name,
                [sys.executable, "-m", "cluster.router", "--config", str(cfg_path),
                 "--secret-fd", str(rfd)],
                netns=self.netns[shard],
                log=self.log_dir / router.log,
                pass_fds=(rfd,),
            )  # fmt: skip
            os.write(wfd, secret)
        finally:
            os.close(rfd)
            os.close(wfd)
        self.routers[shard] = child
        return Started(router.name, child.pid, self.netns[shard])

    def router_ready(self, shard: int, timeout: float) -> str:
        plan = self._plan()
        assert self.rundir is not None
        router = plan.shard(shard).router
        child = self.routers[shard]
        assert router is not None
        sock = self.rundir / router.shard_socket
        deadline = time.monotonic() + timeout
        while True:
            if child.poll() is not None:
                raise DqemuError(
                    f"{child.name} failed to start: {child.log_tail(2) or 'no message'}",
                    EXIT_SHARD_FAILED,
                )
            if sock.exists():
                health = self.router_health(shard)
                if health is not None and "listen" in health:
                    return str(health["listen"])
            if time.monotonic() > deadline:
                raise DqemuError(f"{child.name} did not start within {timeout:g} s",
                                 EXIT_SHARD_FAILED)  # fmt: skip
            time.sleep(0.02)

    def set_peers(self, shard: int, peers: Mapping[int, str]) -> None:
        for peer, addr in sorted(peers.items()):
            try:
                self._router_call(shard, "set-route", kind="shard", key=peer, value=addr)
            except (OSError, ControlError, ValueError) as e:
                raise DqemuError(f"router {shard}: cannot set shard {peer}'s address: {e}",
                                 EXIT_SHARD_FAILED) from None  # fmt: skip

    def start_shard(self, shard: int) -> Started:
        plan = self._plan()
        s = plan.shard(shard)
        argv = list(s.argv)
        if shard in self.rdma_device:
            argv = with_rdma_device(argv, self.rdma_device[shard])
        child = self.sup.spawn(s.name, argv, netns=self.netns.get(shard), log=self.log_dir / s.log)
        self.qemu[shard] = child
        if set(self.qemu) == set(self.shard_ids):
            self._write_pids()
        return Started(s.name, child.pid, self.netns.get(shard))

    def _write_pids(self) -> None:
        """``pids.json`` in the log directory once every shard runs: every child's pid by
        name ("shard 0", "router 1"), for operators and the failure tests."""
        pids = {c.name: c.pid for c in self.sup.children}
        (self.log_dir / "pids.json").write_text(json.dumps(pids, indent=1) + "\n")

    def open_serial(self, shard: int) -> SerialLink:
        plan = self._plan()
        assert self.rundir is not None
        serial = plan.shard(shard).serial
        assert serial is not None, f"shard {shard} has no serial console"
        return LocalSerial(self.rundir / serial, self.qemu[shard].running)

    def open_qmp(self, shard: int, on_event: Callable[[QMPEvent], None], timeout: float) -> QMPLink:
        plan = self._plan()
        assert self.rundir is not None
        s = plan.shard(shard)
        link = ShardQMP(s.name, self.rundir / s.qmp)
        link.connect(timeout, alive=self.qemu[shard].running)
        link.on_event = on_event
        link.start()
        self.links.append(link)
        return link

    # --- running -------------------------------------------------------------------------------

    def _router_call(self, shard: int, cmd: str, timeout: float = 2.0, **args: Any) -> Any:
        router = self._plan().shard(shard).router
        assert router is not None and self.rundir is not None
        return control_call(self.rundir / router.control_socket, cmd, timeout=timeout, **args)

    def _router_query(self, shard: int, cmd: str, timeout: float) -> dict[str, Any] | None:
        child = self.routers.get(shard)
        if child is None or child.poll() is not None:
            return None
        try:
            out = self._router_call(shard, cmd, timeout)
        except (OSError, ControlError, ValueError):
            return None
        return out if isinstance(out, dict) else None

    def router_health(self, shard: int, timeout: float = 2.0) -> dict[str, Any] | None:
        return self._router_query(shard, "health", timeout)

    def router_stats(self, shard: int, timeout: float = 2.0) -> dict[str, Any] | None:
        return self._router_query(shard, "stats", timeout)

    def poll(self) -> dict[str, int | None]:
        return {c.name: c.poll() for c in self.sup.children}

    def processes(self) -> list[ProcessInfo]:
        out = []
        for c in self.sup.children:
            code = c.poll()
            cpu, rss = self.meter.read(c.pid if code is None else None)
            out.append(ProcessInfo(c.name, c.pid, code, cpu, rss))
        return out

    def last_words(self, name: str) -> LastWords:
        child = next(c for c in self.sup.children if c.name == name)
        code = child.poll()
        lines = _log_lines(child)
        said, said_at = last_words(name, code, lines) if code is not None else ("", None)
        return LastWords(code, log_tail(lines, 3), said, said_at)

    def hung_report(self, name: str) -> str:
        child = next((c for c in self.sup.children if c.name == name), None)
        if child is None:
            return ""
        hit = next((ln for ln in _log_lines(child) if HUNG_MARK in ln), "")
        return hit[hit.index("local shard") :][:600] if "local shard" in hit else ""

    def ram_mapped(self) -> None:
        for path in self.ram:
            path.unlink(missing_ok=True)
        self.ram.clear()

    # --- the end ---------------------------------------------------------------------------------

    def stop(self) -> None:
        for link in self.links:
            link.close()
        self._wake_stopped()
        self.sup.stop_all()

    def _wake_stopped(self) -> None:
        """A SIGSTOPped child would sit on its SIGTERM until the SIGKILL: terminate it and
        let it run (SIGCONT) so that teardown does not wait for the kill timeout."""
        for c in self.sup.children:
            if c.poll() is None and _is_stopped(c.pid):
                for sig in (signal.SIGTERM, signal.SIGCONT):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(c.pid, sig)

    def teardown(self) -> None:
        if self.rxe is not None:  # before the namespaces: its veth peers are in one
            self.rxe.remove()
            self.rxe = None
        if self.topo is not None:
            self.topo.teardown()
            self.topo = None
        self.ram_mapped()
        if self.qmp_dir is not None and self.plan is not None:
            for s in self.plan.shards:
                (self.qmp_dir / s.qmp).unlink(missing_ok=True)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
