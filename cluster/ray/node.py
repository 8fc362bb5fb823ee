"""The node actor: one per Ray node, it runs the routers and shards of the VMs placed there.

:class:`NodeHost` is the :class:`~cluster.vm.host.ShardHost` of one VM on this node: a
:class:`~loopback.host.LoopbackHost` (run directory, RAM files, router and QEMU child
processes) whose network is the node's own. :class:`NodeActor` (a Ray actor,
named ``dqemu-node-<node id>`` in namespace ``dqemu``, placed on its node by node
affinity) keeps one NodeHost per VM and serves its calls; every call returns quickly, so
one actor serves many VMs. A VM whose controller is gone is stopped at once: its lifeline
connection (which came with the VM's ticket) closed; a VM whose orchestrator has not called
for ``LEASE`` seconds (its host or the network fell silent) is stopped too.
:class:`RemoteHost` is the ShardHost the orchestrator uses, wherever it runs: each method
is an actor call, QMP and the serial console are relayed through the actor (events and
console output polled in batches).

A lost node is known within 2 s, before Ray says so (about 3 s after a raylet's death):
the actor watches its raylet (its parent process) and, when it dies, kills its VMs'
children at once, says why on its lifeline (:mod:`cluster.ray.lifeline`) and leaves; a
``RemoteHost`` that watches the lifeline (:meth:`RemoteHost.watch`) fails every call, the
pending ones too, as soon as the lifeline ends or falls silent.

Children die with the actor: each is started with ``PR_SET_PDEATHSIG=SIGKILL``
(:mod:`loopback.procs`), from a thread that lives as long as the actor's process (the death
signal fires when the *thread* that forked the child exits, and a Ray actor may run its
methods on a pool thread), and in its own session, so the raylet's kill of the worker's
process group does not reach it before the actor's own teardown. The secret reaches a
router through a pipe, never a command line or a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from cluster.errors import DqemuError
from cluster.qemu_cmdline import BootFiles
from cluster.ray.lifeline import Lifeline, LifelineServer
from cluster.spec import VMSpec
from cluster.vm.exit_policy import EXIT_SHARD_FAILED
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
from loopback.host import LoopbackHost
from loopback.procs import Child, Supervisor
from loopback.stale import new_rundir

NAMESPACE = "dqemu"
ACTOR_PREFIX = "dqemu-node-"
CALL_TIMEOUT = 120.0  # one actor call: they are short, but the first one waits for the
# actor to start, on a machine that may be loaded; a lost node fails a call at once
BUILD_TIMEOUT = 3600.0  # boot_files: may build QEMU or the guest, or wait for a build
POLL = 0.1  # how often a RemoteHost polls QMP events and console output
SERIAL_KEEP = 1 << 20  # console bytes the actor keeps for a reader that polls late
LEASE = 30.0  # seconds without a call from its orchestrator before a VM is stopped
RAYLET_CHECK = 0.1  # seconds between two looks at the actor's raylet
LOST_CHECK = 0.05  # seconds between two looks at the lifeline while a call is pending


class _Spawner:
    """Runs every fork from one long-lived thread, so that PR_SET_PDEATHSIG fires only
    when the process ends (it fires when the forking thread exits)."""

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[Callable[[], Child], Future[Child]]] = queue.Queue()
        threading.Thread(target=self._run, name="dqemu-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, fut = self._q.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def __call__(self, fn: Callable[[], Child]) -> Child:
        if threading.current_thread() is threading.main_thread():
            return fn()  # the main thread outlives every child too
        fut: Future[Child] = Future()
        self._q.put((fn, fut))
        return fut.result()


class _Serial:
    """The I/O shard's console on the node, read by a thread into a buffer of the last
    SERIAL_KEEP bytes, addressed by their offset in the whole stream (the actor's callers
    poll it)."""

    def __init__(self, link: SerialLink) -> None:
        self.link = link
        self.buf = bytearray()
        self.start = 0  # the stream offset of buf[0]
        self.eof = False
        self.lock = threading.Lock()

    def connect(self, timeout: float) -> bool:
        if not self.link.connect(timeout):
            return False
        threading.Thread(target=self._read, name="serial", daemon=True).start()
        return True

    def _read(self) -> None:
        while True:
            try:
                data = self.link.recv()
            except OSError:
                data = b""
            with self.lock:
                if not data:
                    self.eof = True
                    return
                self.buf += data
                if len(self.buf) > SERIAL_KEEP:
                    cut = len(self.buf) - SERIAL_KEEP
                    del self.buf[:cut]
                    self.start += cut

    def read(self, offset: int) -> tuple[bytes, int, bool]:
        """Bytes from stream offset ``offset`` on (or from the oldest kept), the offset
        after them, and whether the console has ended."""
        with self.lock:
            at = max(offset, self.start)
            data = bytes(self.buf[at - self.start :])
            return data, at + len(data), self.eof and not data


class _NodeSupervisor(Supervisor):
    """Forks through the spawner thread, in the VM's run directory."""

    def __init__(self, spawner: Callable[[Callable[[], Child]], Child]) -> None:
        super().__init__()
        self.spawner = spawner
        self.cwd: Path | None = None

    def spawn(self, name: str, argv: Sequence[str], **kw: Any) -> Child:
        kw.setdefault("cwd", self.cwd)
        return self.spawner(lambda: Supervisor.spawn(self, name, argv, **kw))


class _NoNetns(dict[int, str]):
    """A node host's children run where the actor runs: in the node's own network."""

    def __missing__(self, key: int) -> Any:
        return None


class NodeHost(LoopbackHost):
    """One VM's shards and routers on this node: a LoopbackHost whose network is the
    node's own (the routers listen on the node's IP), whose children are forked by the
    actor's spawner thread and run in the run directory (the plan's paths are relative)."""

    def __init__(self, listen_ip: str, spawner: Callable[[Callable[[], Child]], Child]) -> None:
        super().__init__()
        self.listen_ip = listen_ip
        self.node_sup = self.sup = _NodeSupervisor(spawner)
        self.netns = _NoNetns()
        self.serial: _Serial | None = None
        self.qmp: dict[int, QMPLink] = {}

    def prepare(self, plan: VMPlan, shards: Sequence[int]) -> None:
        # LoopbackHost's run directory and RAM files without its namespaces (it makes
        # them for a sharded plan): this node is one host of the cluster's network
        super().prepare(dataclasses.replace(plan, shards=plan.shards[:1]), shards)
        self.plan = plan
        self.node_sup.cwd = self.rundir
        self.ips = {k: self.listen_ip for k in shards}

    def router_address(self, shard: int) -> str | None:
        """The router's listen address once it serves its shard; None until then.
        Raises DqemuError with its last words if it ended."""
        try:
            return self.router_ready(shard, 0.0)
        except DqemuError:
            if self.routers[shard].poll() is not None:
                raise
            return None

    def serial_connect(self, shard: int, timeout: float) -> bool:
        if self.serial is None:
            self.serial = _Serial(self.open_serial(shard))
        return self.serial.connect(timeout)

    def stop(self) -> None:
        if self.serial is not None:
            self.serial.link.close()
        super().stop()

    def kill_now(self) -> None:
        """SIGKILL every child at once (the node is lost: no time for a clean stop)."""
        for c in self.sup.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.pid, signal.SIGKILL)


class NodeActor:
    """The Ray actor of one node (wrap with ``ray.remote``; see :func:`node_actor`)."""

    def __init__(self) -> None:
        import ray

        self.ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.spawner = _Spawner()
        self.vms: dict[str, NodeHost] = {}
        self.events: dict[tuple[str, int], list[QMPEvent]] = {}
        self.seen: dict[str, float] = {}  # each VM's last call from its orchestrator
        self.boot_dirs: dict[str, Path] = {}  # each VM's shipped boot files
        self.tickets: dict[str, str] = {}  # each VM's lifeline ticket (its controller's)
        self.lock = threading.RLock()
        self.lifeline = LifelineServer(self.ip, on_gone=self._controller_gone)
        threading.Thread(target=self._watch_leases, name="leases", daemon=True).start()
        threading.Thread(target=self._watch_raylet, name="raylet", daemon=True).start()

    def lifeline_ticket(self, vm: str) -> tuple[str, str]:
        """Where VM ``vm``'s controller watches this actor's life, and the ticket it brings
        (:mod:`cluster.ray.lifeline`): when that connection ends, the VM is stopped here."""
        ticket = self.lifeline.ticket(vm)
        with self.lock:
            self.tickets[vm] = ticket
        return self.lifeline.address, ticket

    def _controller_gone(self, vm: str, ticket: str) -> None:
        """VM ``vm``'s lifeline closed: its controller is gone (or closed it after its
        teardown here); stop what is left of the VM at once, not after the lease."""
        with self.lock:
            if self.tickets.get(vm) != ticket:
                return  # an older VM of the name
            left = vm in self.vms or vm in self.boot_dirs
        if left:
            print(f"dqemu: VM {vm}: its controller's lifeline closed (the controller is gone); "
                  "stopping it", file=sys.stderr, flush=True)  # fmt: skip
        self.teardown(vm)

    def _watch_raylet(self) -> None:
        """The raylet started this worker: when it dies (the node is lost for Ray, and Ray
        takes seconds to say so), stop every VM's children at once and leave, saying why
        on the lifeline. A worker that a raylet did not start is not watched."""
        import psutil

        parent = os.getppid()
        with contextlib.suppress(psutil.Error):
            if "raylet" not in " ".join(psutil.Process(parent).cmdline()[:1]):
                return
        while os.getppid() == parent:
            time.sleep(RAYLET_CHECK)
        with self.lock:
            hosts, dirs = list(self.vms.values()), list(self.boot_dirs.values())
        for host in hosts:
            host.kill_now()
        self.lifeline.farewell(f"its raylet ended, and its dQEMU actor stopped the VM's "
                               f"processes there (pid {os.getpid()})")  # fmt: skip
        for host in hosts:
            with contextlib.suppress(Exception):
                host.stop()
                host.teardown()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        print("dqemu: the raylet of this node ended: its VMs' processes are stopped",
              file=sys.stderr, flush=True)  # fmt: skip
        os._exit(1)

    def _vm(self, vm: str) -> NodeHost:
        with self.lock:
            host = self.vms.get(vm)
            if host is None:
                raise DqemuError(f"VM {vm} has nothing on node {self.ip}")
            self.seen[vm] = time.monotonic()
            return host

    def _watch_leases(self) -> None:
        """A VM whose orchestrator has made no call for LEASE seconds is stopped and
        removed: nothing waits for a dead one. (A controller that dies is seen at once, on
        its lifeline; this is for one whose host or network fell silent.)"""
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self.lock:
                stale = [vm for vm, t in self.seen.items() if now - t > LEASE]
            for vm in stale:
                print(f"dqemu: VM {vm}: no call from its orchestrator in {LEASE:g} s; "
                      "stopping it", file=sys.stderr, flush=True)  # fmt: skip
                self.teardown(vm)

    def boot_files(
        self, spec: VMSpec, vm: str = "", shipped: Mapping[str, Sequence[Any]] | None = None
    ) -> tuple[str, BootFiles, str]:
        """The QEMU binary and the spec's boot files as this node sees them (``guest:``
        flavours built or found in the node's cache; a user's own file that the driver
        ``shipped`` through the object store, as ``{part: [object ref]}``, written into
        the VM's directory on this node, removed at its teardown), and the kernel's kind;
        the checks of ``dqemu loopback`` (memory, a dQEMU build) on this node."""
        from cluster.qemu_build import ensure_qemu
        from loopback.launcher import check_dqemu_build, resolve_boot
        from loopback.preflight import check_memory, kernel_kind

        if shipped:
            spec = self._receive(spec, vm, shipped)
        boot = resolve_boot(spec)
        kind = kernel_kind(boot.kernel) if boot.kernel is not None else "disk"
        check_memory(spec.memory_mib, memory_mode=spec.memory_mode, shards=len(spec.shards))
        qemu = ensure_qemu()
        if len(spec.shards) > 1:
            check_dqemu_build(qemu)
        if shipped:
            with self.lock:  # from now on, a lost controller's files go with the lease
                self.seen[vm] = time.monotonic()
        return str(qemu), boot, kind

    def _receive(self, spec: VMSpec, vm: str, shipped: Mapping[str, Sequence[Any]]) -> VMSpec:
        """The spec with its shipped boot files written on this node."""
        import ray

        where = new_rundir(f"boot-{vm[:20]}-")
        with self.lock:
            self.boot_dirs[vm] = where
        boot = spec.boot
        for part, (ref,) in shipped.items():
            path = where / f"{part}-{Path(str(getattr(boot, part))).name}"
            path.write_bytes(ray.get(ref, timeout=CALL_TIMEOUT))
            boot = dataclasses.replace(boot, **{part: str(path)})
        return dataclasses.replace(spec, boot=boot)

    def info(self) -> dict[str, Any]:
        """Where the actor runs: its node, pid, network namespace and VMs."""
        return {
            "ip": self.ip,
            "node_id": self.node_id,
            "pid": os.getpid(),
            "netns": os.stat("/proc/self/ns/net").st_ino,
            "main_thread": threading.current_thread() is threading.main_thread(),
            "vms": sorted(self.vms),
        }

    def prepare(self, vm: str, plan: VMPlan, shards: Sequence[int]) -> None:
        if vm in self.vms:
            raise DqemuError(f"VM {vm} already runs on node {self.ip}")
        host = NodeHost(self.ip, self.spawner)
        with self.lock:
            self.vms[vm] = host
            self.seen[vm] = time.monotonic()
        host.prepare(plan, shards)

    def start_router(self, vm: str, shard: int, secret: bytes) -> Started:
        return self._vm(vm).start_router(shard, secret)

    def router_address(self, vm: str, shard: int) -> str | None:
        return self._vm(vm).router_address(shard)

    def set_peers(self, vm: str, shard: int, peers: Mapping[int, str]) -> None:
        self._vm(vm).set_peers(shard, peers)

    def start_shard(self, vm: str, shard: int) -> Started:
        return self._vm(vm).start_shard(shard)

    def serial_connect(self, vm: str, shard: int, timeout: float) -> bool:
        return self._vm(vm).serial_connect(shard, min(timeout, 1.0))

    def serial_read(self, vm: str, offset: int) -> tuple[bytes, int, bool]:
        serial = self._vm(vm).serial
        return serial.read(offset) if serial is not None else (b"", offset, True)

    def serial_send(self, vm: str, data: bytes) -> None:
        serial = self._vm(vm).serial
        if serial is not None:
            serial.link.send(data)

    def qmp_open(self, vm: str, shard: int, timeout: float) -> None:
        events = self.events.setdefault((vm, shard), [])
        host = self._vm(vm)
        host.qmp[shard] = host.open_qmp(shard, events.append, timeout)

    def qmp_cmd(self, vm: str, shard: int, name: str, timeout: float, args: dict[str, Any]) -> Any:
        return self._vm(vm).qmp[shard].cmd(name, timeout=timeout, **args)

    def qmp_events(self, vm: str, shard: int, since: int) -> tuple[list[QMPEvent], bool]:
        """Events from index ``since`` on, and whether QEMU has closed the connection."""
        link = self._vm(vm).qmp.get(shard)
        events = self.events.get((vm, shard), [])
        return events[since:], link is None or link.wait_closed(0)

    def router_health(self, vm: str, shard: int, timeout: float) -> dict[str, Any] | None:
        return self._vm(vm).router_health(shard, timeout)

    def router_stats(self, vm: str, shard: int, timeout: float) -> dict[str, Any] | None:
        return self._vm(vm).router_stats(shard, timeout)

    def poll(self, vm: str) -> dict[str, int | None]:
        return self._vm(vm).poll()

    def processes(self, vm: str | None = None) -> list[ProcessInfo]:
        """A VM's children, or every VM's when ``vm`` is None."""
        hosts = [self._vm(vm)] if vm is not None else list(self.vms.values())
        return [p for h in hosts for p in h.processes()]

    def last_words(self, vm: str, name: str) -> LastWords:
        return self._vm(vm).last_words(name)

    def ram_mapped(self, vm: str) -> None:
        self._vm(vm).ram_mapped()

    def stop(self, vm: str) -> None:
        self._vm(vm).stop()

    def teardown(self, vm: str) -> None:
        with self.lock:
            host = self.vms.pop(vm, None)
            self.seen.pop(vm, None)
            self.tickets.pop(vm, None)
            for key in [k for k in self.events if k[0] == vm]:
                del self.events[key]
            boot_dir = self.boot_dirs.pop(vm, None)
        if boot_dir is not None:
            shutil.rmtree(boot_dir, ignore_errors=True)
        if host is not None:
            host.stop()
            host.teardown()


def actor_name(node_id: str) -> str:
    return f"{ACTOR_PREFIX}{node_id[:16]}"


def node_actor(node_id: str) -> Any:
    """The node's actor (made on first use): detached, named, pinned to the node, 0 CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cls = ray.remote(NodeActor)
    return cls.options(  # type: ignore[attr-defined]
        name=actor_name(node_id),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        # Ray starts its workers at nice 15, and the shards and routers this actor starts
        # would inherit it: beside any other work on the node, the guest's vCPUs then got a
        # few per cent of a CPU. A hypervisor's vCPUs run at the node's normal priority;
        # Ray's own job supervisor asks for its worker the same way.
        runtime_env={"env_vars": {"RAY_worker_niceness": "0"}},
    ).remote()


class NodeLost(DqemuError):
    """A node actor is gone or does not answer: every later call to it fails the same way."""


def _get(ref: Any, timeout: float = CALL_TIMEOUT, where: str = "?", lost: str = "") -> Any:
    """The result of an actor call on node ``where``; DqemuError if it failed, naming the
    node (and ``lost``: what is lost with it) when the actor is gone or does not answer."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, DqemuError):
            raise DqemuError(str(cause), cause.exit_code) from None
        raise DqemuError(f"node {where}: actor call failed: {_first_line(exc)}",
                         EXIT_SHARD_FAILED) from None  # fmt: skip
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
        raise NodeLost(f"node {where} lost: its dQEMU actor is gone or does not answer "
                       f"({_first_line(exc)}){lost}", EXIT_SHARD_FAILED) from None  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class RemoteQMP:
    """A QMPLink relayed through the node actor; events are polled every POLL seconds."""

    def __init__(self, host: RemoteHost, shard: int, on_event: Callable[[QMPEvent], None]):
        self.host, self.shard, self.on_event = host, shard, on_event
        self.shutdown: dict[str, Any] | None = None
        self.closed = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._poll, name=f"qmp-poll-{shard}", daemon=True).start()

    def _poll(self) -> None:
        seen = 0
        while not self._stop.is_set():
            try:
                events, closed = self.host.call(self.host.actor.qmp_events.remote(
                    self.host.vm, self.shard, seen))  # fmt: skip
            except DqemuError:
                break
            for ev in events:
                if ev.get("event") == "SHUTDOWN":
                    self.shutdown = ev.get("data", {})
                self.on_event(ev)
            seen += len(events)
            if closed:
                break
            self._stop.wait(POLL)
        self.closed.set()

    def cmd(self, name: str, timeout: float = 30.0, **args: Any) -> Any:
        ref = self.host.actor.qmp_cmd.remote(self.host.vm, self.shard, name, timeout, args)
        return self.host.call(ref, timeout + CALL_TIMEOUT)

    @property
    def reason(self) -> str | None:
        return str(self.shutdown.get("reason", "")) if self.shutdown is not None else None

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)

    def close(self) -> None:
        self._stop.set()


class RemoteSerial:
    """The I/O shard's console relayed through the node actor."""

    def __init__(self, host: RemoteHost, shard: int) -> None:
        self.host, self.shard = host, shard
        self.offset = 0
        self.ended = False

    def connect(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.host.call(self.host.actor.serial_connect.remote(self.host.vm, self.shard, 1.0)):
                return True
            if any(v is not None for v in self.host.poll().values()):
                return False
        return False

    def recv(self) -> bytes:
        while not self.ended:
            try:
                data, self.offset, eof = self.host.call(
                    self.host.actor.serial_read.remote(self.host.vm, self.offset)
                )
            except DqemuError:
                data, eof = b"", True
            if data:
                return data
            if eof:
                self.ended = True
                break
            time.sleep(POLL)
        return b""

    def send(self, data: bytes) -> None:
        with contextlib.suppress(DqemuError):
            self.host.call(self.host.actor.serial_send.remote(self.host.vm, data))

    def close(self) -> None:
        self.ended = True


class RemoteHost(ShardHost):
    """The ShardHost of one node for one VM, as the orchestrator sees it: actor calls."""

    def __init__(self, actor: Any, vm: str, where: str = "?") -> None:
        self.actor = actor
        self.vm = vm
        self.where = where  # the node, for messages
        self.shards: list[int] = []
        self.lost: NodeLost | None = None  # once the node is lost, calls fail at once
        self.lifeline: Lifeline | None = None

    def watch(self) -> None:
        """Watch the node actor's lifeline: from now on a lost node fails every call, the
        pending ones too, as soon as the lifeline says so (not seconds later, as Ray)."""
        addr, ticket = self.call(self.actor.lifeline_ticket.remote(self.vm))
        try:
            self.lifeline = Lifeline(str(addr), self._lifeline_lost, ticket=ticket)
        except OSError as e:
            raise NodeLost(f"node {self.where}: cannot reach its dQEMU actor's lifeline at "
                           f"{addr}: {e.strerror or e}", EXIT_SHARD_FAILED) from None  # fmt: skip

    def _lifeline_lost(self, why: str) -> None:
        if self.lost is None:
            self.lost = NodeLost(f"node {self.where} lost: {why}{self._ran_there()}",
                                 EXIT_SHARD_FAILED)  # fmt: skip

    def _ran_there(self) -> str:
        ids = ", ".join(str(k) for k in self.shards)
        return f"; shard(s) {ids} of VM {self.vm} ran there" if ids else ""

    def call(self, ref: Any, timeout: float = CALL_TIMEOUT) -> Any:
        if self.lost is None and self.lifeline is not None:
            self._wait_ready(ref, timeout)
        if self.lost is not None:
            raise NodeLost(str(self.lost), self.lost.exit_code)
        try:
            return _get(ref, timeout, self.where, self._ran_there())
        except NodeLost as e:
            # Ray and the lifeline race to tell of a dead actor: a call that was pending
            # can fail before the lifeline's thread has seen the closed connection. The
            # lifeline says more (closed, silent, or the actor's own farewell), and it
            # decides within its silence, so its verdict is waited for: one message for
            # one loss, whichever noticed first.
            if self.lifeline is not None:
                self.lifeline.ended.wait(self.lifeline.silence + LOST_CHECK)
            self.lost = self.lost or e
            raise NodeLost(str(self.lost), self.lost.exit_code) from None

    def _wait_ready(self, ref: Any, timeout: float) -> None:
        """Wait for the call's result (up to ``timeout`` s) while the lifeline holds."""
        import ray

        deadline = time.monotonic() + timeout
        while self.lost is None:
            left = deadline - time.monotonic()
            ready, _ = ray.wait([ref], timeout=max(0.0, min(LOST_CHECK, left)))
            if ready or left <= 0:
                return

    def prepare(self, plan: VMPlan, shards: Sequence[int]) -> None:
        self.shards = list(shards)
        self.call(self.actor.prepare.remote(self.vm, plan, list(shards)))

    def start_router(self, shard: int, secret: bytes) -> Started:
        st = self.call(self.actor.start_router.remote(self.vm, shard, secret))
        return dataclasses.replace(st, where=self.where)

    def router_ready(self, shard: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (addr := self.call(self.actor.router_address.remote(self.vm, shard))) is None:
            if time.monotonic() > deadline:
                raise DqemuError(f"router {shard} did not start within {timeout:g} s",
                                 EXIT_SHARD_FAILED)  # fmt: skip
            time.sleep(0.05)
        return str(addr)

    def set_peers(self, shard: int, peers: Mapping[int, str]) -> None:
        self.call(self.actor.set_peers.remote(self.vm, shard, dict(peers)))

    def start_shard(self, shard: int) -> Started:
        return dataclasses.replace(self.call(self.actor.start_shard.remote(self.vm, shard)),
                                   where=self.where)  # fmt: skip

    def open_serial(self, shard: int) -> SerialLink:
        return RemoteSerial(self, shard)

    def open_qmp(self, shard: int, on_event: Callable[[QMPEvent], None], timeout: float) -> QMPLink:
        self.call(self.actor.qmp_open.remote(self.vm, shard, timeout), timeout + CALL_TIMEOUT)
        return RemoteQMP(self, shard, on_event)

    def _query(self, method: Any, shard: int, timeout: float) -> dict[str, Any] | None:
        try:
            got = self.call(method.remote(self.vm, shard, timeout))
        except DqemuError:
            return None
        return got if isinstance(got, dict) else None

    def router_health(self, shard: int, timeout: float = 2.0) -> dict[str, Any] | None:
        return self._query(self.actor.router_health, shard, timeout)

    def router_stats(self, shard: int, timeout: float = 2.0) -> dict[str, Any] | None:
        return self._query(self.actor.router_stats, shard, timeout)

    def poll(self) -> dict[str, int | None]:
        return self.call(self.actor.poll.remote(self.vm))  # type: ignore[no-any-return]

    def processes(self) -> list[ProcessInfo]:
        return self.call(self.actor.processes.remote(self.vm))  # type: ignore[no-any-return]

    def last_words(self, name: str) -> LastWords:
        return self.call(self.actor.last_words.remote(self.vm, name))  # type: ignore[no-any-return]

    def ram_mapped(self) -> None:
        self.call(self.actor.ram_mapped.remote(self.vm))

    def stop(self) -> None:
        with contextlib.suppress(DqemuError):
            self.call(self.actor.stop.remote(self.vm))

    def teardown(self) -> None:
        with contextlib.suppress(DqemuError):
            self.call(self.actor.teardown.remote(self.vm))
        if self.lifeline is not None:
            self.lifeline.close()
