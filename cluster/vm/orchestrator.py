"""Run a VM from its plan through its hosts: written once, for every kind of host.

:class:`VMOrchestrator` drives the ``ShardHost`` of each host of a plan
(:mod:`cluster.vm.host`): it prepares them, starts the routers and gives each one its
peers' addresses, starts the shards, connects the serial console and one QMP link per shard
(kept for the VM's whole life), waits for the router mesh (the barrier: no vCPU runs before
every link is up), drops the RAM files' names, and sends ``cont`` with the BSP's shard last.
Then it waits for the end (a child's exit, a guest panic on the console, the timeout, a
silent console, an operator's destroy), decides the exit status
(:func:`cluster.vm.exit_policy.decide`) and stops and tears down every host, on every path.
It reports what happens as events (:mod:`cluster.vm.events`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cluster.errors import DqemuError
from cluster.forwarding_stats import forwarded
from cluster.vm.console import ConsoleReader
from cluster.vm.events import VMEvents
from cluster.vm.exit_policy import (
    EXIT_DESTROYED,
    EXIT_INTERRUPTED,
    EXIT_PANIC,
    EXIT_SHARD_FAILED,
    EXIT_TIMEOUT,
    Ending,
    decide,
)
from cluster.vm.host import QMPEvent, QMPLink, ShardHost, Started
from cluster.vm.plan import VMPlan
from cluster.vm.serial_hub import SerialHub
from cluster.vm.signals import SignalGuard, Terminated, terminate_on_signals

START_TIMEOUT = 30.0
# DQEMU_START_TIMEOUT (seconds) replaces it where everything is slow: in the RDMA test host
# (TCG inside TCG) a router's Python start alone took over 30 s
START_TIMEOUT_ENV = "DQEMU_START_TIMEOUT"


def start_timeout() -> float:
    """How long each start-up stage (routers, console, QMP, the mesh) may take."""
    raw = os.environ.get(START_TIMEOUT_ENV, "")
    if not raw:
        return START_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:
        raise DqemuError(f"{START_TIMEOUT_ENV}={raw!r}: not a number of seconds in (0, 86400)")
    return value


# Once a shard has ended, the others follow on their own (a guest poweroff or quit is
# broadcast; a lost shard is noticed within 2 s): how long to wait for them before the
# orchestrator decides how the VM ended and stops what is left.
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


@dataclass(frozen=True)
class Silence:
    """What a guest that prints nothing on its console means: after ``limit`` seconds, a
    warning, or the end of the VM (EXIT_TIMEOUT) when ``ends_run``."""

    limit: float
    ends_run: bool


@contextlib.contextmanager
def _signals_guard() -> Iterator[SignalGuard]:
    """SIGTERM/SIGHUP as :class:`Terminated`, where signals can be handled (the main
    thread); elsewhere a guard whose ``defer()`` does nothing."""
    if threading.current_thread() is threading.main_thread():
        with terminate_on_signals() as guard:
            yield guard
    else:
        yield SignalGuard(inert=True)


class VMOrchestrator:
    """One VM's life (see the module's doc). Read by the control API from other threads:
    ``state``, ``ended``, ``plan``, ``hosts``, ``qmp_links``, ``children``, ``hub``, ``events``."""

    def __init__(
        self,
        *,
        console: BinaryIO | None = None,
        console_input: int | None = None,
        on_running: Callable[[Any], None] | None = None,
    ) -> None:
        self.state = "starting"
        self.ended: VMResult | None = None
        self.destroy_requested = threading.Event()
        self.on_running = on_running  # called once every shard runs
        self.hub = SerialHub()
        self.events = VMEvents()
        self.console_input = console_input  # a file descriptor copied to the guest's serial
        self.console_sink = console
        self.plan: VMPlan | None = None
        self.hosts: dict[str, ShardHost] = {}
        self.qmp_links: dict[int, QMPLink] = {}
        self.children: dict[str, Started] = {}  # every child started, by name
        self.console: ConsoleReader | None = None
        self.silence = Silence(float("inf"), False)

    def host_of(self, shard: int) -> ShardHost:
        assert self.plan is not None
        return self.hosts[self.plan.shard(shard).host]

    def each_host(self) -> list[ShardHost]:
        return list(dict.fromkeys(self.hosts.values()))  # one host may serve several names

    # --- the whole run ---------------------------------------------------------------------

    def run_plan(
        self, plan: VMPlan, hosts: Mapping[str, ShardHost], silence: Silence | None = None
    ) -> VMResult:
        """Run the plan's VM to its end on ``hosts`` (by the plan's host names); every host
        is stopped and torn down before this returns or raises."""
        self.plan = plan
        self.hosts = dict(hosts)
        if silence is not None:
            self.silence = silence
        missing = [h for h in plan.hosts if h not in self.hosts]
        if missing:
            raise DqemuError(f"no host for {', '.join(missing)}")
        with _signals_guard() as guard:
            try:
                self._start()
                self.state = "running"
                self.events.state_is("running")
                if self.on_running is not None:
                    self.on_running(self)
                result = self._wait()
                self.state = "shutting-down"
                result.router_stats = self._collect_stats()
                return result
            except KeyboardInterrupt:
                return VMResult(EXIT_INTERRUPTED, "interrupted", self.lines())
            except Terminated as t:
                return VMResult(EXIT_SHARD_FAILED, f"terminated by {t}", self.lines(),
                                signal=t.signum)  # fmt: skip
            finally:
                # a signal now (a second Ctrl-C, a SIGTERM) must not cut the teardown
                # short: the VM is ending anyway, and what is left half torn down stays
                guard.defer()
                self._teardown()

    def lines(self) -> list[str]:
        return self.console.lines() if self.console else []

    def _teardown(self) -> None:
        for link in self.qmp_links.values():
            link.close()
        errors: list[BaseException] = []
        for host in self.each_host():
            try:
                host.stop()
            except Exception as e:  # every host is stopped, whatever one of them says
                errors.append(e)
        if self.console is not None and self.console.ident is not None:
            self.console.join(timeout=2)
        for host in self.each_host():
            try:
                host.teardown()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    # --- start-up ----------------------------------------------------------------------------

    def _start(self) -> None:
        plan = self.plan
        assert plan is not None
        # one host may serve several of the plan's host names (loopback serves them all)
        shards_of: dict[ShardHost, list[int]] = {}
        for s in plan.shards:
            shards_of.setdefault(self.hosts[s.host], []).append(s.id)
        for host, ids in shards_of.items():
            host.prepare(plan, ids)
        if plan.sharded:
            self._start_routers()
        for s in plan.shards:
            st = self.children[s.name] = self.host_of(s.id).start_shard(s.id)
            self.events.emit("shard", shard=s.id, state="up", pid=st.pid, host=st.where)
        io = plan.io_shard
        self.console = ConsoleReader(self.host_of(io).open_serial(io), self.console_sink)
        if not self.console.connect(timeout=start_timeout()):
            raise self._start_failure()
        self.console.hub = self.hub
        self.hub.send = self.console.send
        self.console.start()
        if self.console_input is not None:
            self.console.forward_input(self.console_input)
        self._connect_monitors()
        if plan.sharded:
            self._wait_mesh()
        # Every shard has mapped the RAM files now: drop their names so that nothing is
        # left behind even if the launcher is killed.
        for host in self.each_host():
            host.ram_mapped()
        # Every shard has built its machine: start them, the BSP's shard last, so that the
        # other vCPUs already wait for their INIT/SIPI when it sends them.
        for k in plan.cont_order:
            self.qmp_links[k].cmd("cont")

    def _start_routers(self) -> None:
        plan = self.plan
        assert plan is not None
        secret = secrets.token_bytes(32)
        for s in plan.shards:
            assert s.router is not None
            self.children[s.router.name] = self.host_of(s.id).start_router(s.id, secret)
        deadline = time.monotonic() + start_timeout()
        addresses: dict[int, str] = {}
        for s in plan.shards:
            left = max(0.1, deadline - time.monotonic())
            addresses[s.id] = self.host_of(s.id).router_ready(s.id, left)
            assert s.router is not None
            st = self.children[s.router.name]
            self.events.emit("router", shard=s.id, state="up", pid=st.pid, host=st.where)
        for s in plan.shards:
            peers = {k: a for k, a in addresses.items() if k != s.id}
            self.host_of(s.id).set_peers(s.id, peers)

    def _connect_monitors(self) -> None:
        """One QMP link per shard, kept to the end: it sends ``cont``, serves the control
        API, and hears the SHUTDOWN event, which says whether the guest ended the VM."""
        assert self.plan is not None
        for s in self.plan.shards:
            try:
                on_event = functools.partial(self._qmp_event, s.id)
                self.qmp_links[s.id] = self.host_of(s.id).open_qmp(s.id, on_event, start_timeout())
            except DqemuError:
                raise self._start_failure() from None

    def _wait_mesh(self) -> None:
        """Wait until every router has its shard registered and every peer link up: a frame
        sent before its link is up would be dropped, so no vCPU may run before that."""
        assert self.plan is not None
        deadline = time.monotonic() + start_timeout()
        for s in self.plan.shards:
            assert s.router is not None
            host = self.host_of(s.id)
            while True:
                if host.poll().get(s.router.name) is not None:
                    raise self._start_failure()
                health = host.router_health(s.id) or {}
                if health.get("ok"):
                    break
                if time.monotonic() > deadline:
                    down = [k for k, v in health.get("peers", {}).items() if v.get("state") != "up"]
                    raise DqemuError(
                        f"router {s.id}: links to shard(s) {', '.join(down) or '?'} not up "
                        f"within {start_timeout():g} s", EXIT_SHARD_FAILED,
                    )  # fmt: skip
                time.sleep(0.02)

    def _codes(self) -> list[tuple[ShardHost, str, int | None]]:
        """Every child of every host, in start order per host, with its exit status."""
        return [(h, name, code) for h in self.each_host() for name, code in h.poll().items()]

    def _start_failure(self) -> DqemuError:
        """The child that failed start-up, with the last words of its log. Every shard
        builds the whole machine and opens a shadow copy of each drive, so a device or
        drive that cannot be set up usually fails on every shard: the owner's failure is
        the one to report, whichever shard failed first."""
        assert self.plan is not None
        time.sleep(0.2)  # let the others that fail with it finish saying why
        dead = [(h, name, code) for h, name, code in self._codes() if code is not None]
        # a lost peer's exit 4 comes after
        dead.sort(key=lambda d: d[2] == EXIT_SHARD_FAILED)
        for host, name, code in dead:
            tail = host.last_words(name).tail or "no message"
            owner = self.plan.device_owner(tail)
            if owner is not None and name != f"shard {owner}":
                mine = self._owner_failure(owner)
                if mine is not None:
                    name, code, tail = f"shard {owner}", mine.code, mine.tail
                else:
                    tail = f"its shadow of shard {owner}'s device cannot be set up: {tail}"
            return DqemuError(f"{name} failed to start (exit {code}): {tail}", EXIT_SHARD_FAILED)
        return DqemuError("the VM did not start: no shard opened its console or QMP socket",
                          EXIT_SHARD_FAILED)  # fmt: skip

    def _owner_failure(self, owner: int, wait: float = 10.0) -> Any:
        """The owner shard's last words, once it has failed on its own device too (it may
        be slower to get there); None if it does not fail within ``wait`` seconds."""
        assert self.plan is not None
        host, name = self.host_of(owner), f"shard {owner}"
        deadline = time.monotonic() + wait
        while host.poll().get(name) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        words = host.last_words(name)
        if words.code is None or self.plan.device_owner(words.tail) != owner:
            return None
        return words

    def _collect_stats(self) -> list[dict[str, Any]]:
        """Each live router's statistics, read before the routers are stopped."""
        assert self.plan is not None
        out = []
        for s in self.plan.shards:
            if s.router is not None and (st := self.host_of(s.id).router_stats(s.id)) is not None:
                out.append(st)
        return out

    # --- running -------------------------------------------------------------------------------

    def _wait(self) -> VMResult:
        assert self.console is not None and self.plan is not None
        console = self.console
        started = time.monotonic()
        deadline = started + self.plan.timeout
        seen: dict[str, float] = {}
        silence = self.silence.limit
        warned = False
        while True:
            self._note_exits(seen)
            if seen:
                return self._ended(seen)
            if self.destroy_requested.is_set():
                return VMResult(EXIT_DESTROYED, "destroyed by an operator (dqemu destroy)",
                                self.lines())  # fmt: skip
            if console.panic_seen.is_set():
                self.events.emit("guest", event="panic", message=console.panic)
                time.sleep(0.5)  # let the rest of the panic message arrive
                return VMResult(EXIT_PANIC, f"guest panic: {console.panic}", self.lines())
            now = time.monotonic()
            if now > deadline:
                return VMResult(EXIT_TIMEOUT, f"guest did not finish within "
                                f"{self.plan.timeout:g} s", self.lines())  # fmt: skip
            if not warned and now - started > silence and console.silent():
                warned = True
                said = f"the guest has printed nothing on its serial console in {silence:g} s"
                if self.silence.ends_run:
                    why = "the kernel did not boot (a Linux kernel prints there from the start)"
                    return VMResult(EXIT_TIMEOUT, f"{said}: {why}", self.lines())
                print(f"dqemu: warning: {said}", file=sys.stderr)
            time.sleep(0.05)

    def _note_exits(self, seen: dict[str, float]) -> None:
        for _host, name, code in self._codes():
            if name not in seen and code is not None:
                seen[name] = time.time()
                kind, _, sid = name.partition(" ")
                self.events.emit(kind, shard=int(sid), state="down", status=code)

    def _qmp_event(self, shard: int, msg: QMPEvent) -> None:
        """A shard's QMP event, on its link's thread: the ones operators care about."""
        assert self.plan is not None
        name = msg.get("event")
        data = msg.get("data", {})
        if name == "STOP":
            self.events.state_is("paused")
        elif name == "RESUME":
            self.events.state_is("running")
        elif name in ("RESET", "SHUTDOWN", "GUEST_PANICKED") and shard == self.plan.io_shard:
            # every shard reports the VM-wide ones: the I/O shard's report stands for all
            self.events.emit("guest", event=name.lower(), shard=shard,
                             reason=data.get("reason"), by_guest=data.get("guest"))  # fmt: skip

    def watch_links(self) -> None:
        """Link up/down events, from every router's health, once a second, until the VM
        has ended (run it on its own thread)."""
        known: dict[tuple[int, int], str] = {}
        while self.state != "ended":
            plan = self.plan
            for s in plan.shards if plan is not None and self.hosts else ():
                health = self.host_of(s.id).router_health(s.id, 1.0) if s.router else None
                for peer, info in (health or {}).get("peers", {}).items():
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
        assert self.console is not None and self.plan is not None
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        while time.monotonic() < deadline and any(
            code is None for _h, name, code in self._codes() if name.startswith("shard")
        ):
            time.sleep(0.05)
            self._note_exits(seen)
        codes = self._codes()
        ended = {name for _h, name, code in codes if code is not None}
        for s in self.plan.shards:  # the SHUTDOWN event came before the exit
            link = self.qmp_links.get(s.id)
            if link is not None and s.name in ended:
                link.wait_closed(timeout=2)
        self.console.join(timeout=2)
        codes = self._codes()
        reasons = {s.name: link.reason for s in self.plan.shards
                   if (link := self.qmp_links.get(s.id)) is not None}  # fmt: skip
        endings = []
        for host, name, code in codes:
            words = host.last_words(name) if code is not None else None
            endings.append(Ending(
                name, code, seen.get(name, float("inf")), reasons.get(name),
                words.said if words else "", words.said_at if words else None,
            ))  # fmt: skip
        verdict = decide(endings, self.console.panic)
        reports = [(name, r) for host, name, _c in codes
                   if name.startswith("router") and (r := host.hung_report(name))]  # fmt: skip
        reason = verdict.reason + "".join(f"; {name} said: {r}" for name, r in reports)
        return VMResult(verdict.status, reason, self.lines(), by_guest=verdict.by_guest)
