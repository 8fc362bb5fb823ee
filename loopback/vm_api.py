"""The control API commands a loopback VM serves (``docs/control.md``).

The launcher owns the VM; these functions read its state, ask its host for its processes
and routers (``cluster.vm.host.ShardHost``), and act through its QMP links, which it keeps
for the VM's whole life. Everything here runs on the control
server's threads, never on the launcher's main loop.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import TYPE_CHECKING, Any

from cluster.errors import DqemuError
from cluster.router.control import CommandFn, ControlError
from cluster.vm.control import StreamFn, StreamRunner
from cluster.vm.stats import StatsView
from cluster.vm.thread_cpu import ThreadMeter

if TYPE_CHECKING:
    from loopback.launcher import LoopbackVM

# how long a whole-VM command waits for every shard to report the state it asked for
SETTLE_TIMEOUT = 10.0
MAX_HZ = 10
STREAM_SEND_TIMEOUT = 5.0
QMP_TIMEOUT = 10.0
STATE_OF = {"suspend": "paused", "resume": "running"}
QMP_OF = {"suspend": "stop", "resume": "cont", "reset": "system_reset",
          "shutdown": "system_powerdown"}  # fmt: skip


def _shard_state(started: bool, code: int | None) -> str:
    if not started:
        return "starting"
    return "up" if code is None else f"exited {code}"


class LoopbackControl:
    def __init__(self, vm: LoopbackVM) -> None:
        self.vm = vm
        self.threads = ThreadMeter()
        self._vcpu_tids: dict[int, list[tuple[int, int]]] = {}  # by QEMU pid
        self.stats_view = StatsView()  # the one-shot stats command's intervals

    def streams(self) -> dict[str, StreamFn]:
        return {
            "serial": self.vm.hub.open_stream,
            "stats": self.open_stats,
            "events": self.vm.events.open_stream,
        }

    def commands(self) -> dict[str, CommandFn]:
        cmds: dict[str, CommandFn] = {"info": self.info, "qmp": self.qmp, "stats": self.stats}
        for name in QMP_OF:
            cmds[name] = lambda req, n=name: self.vm_command(n)
        cmds["destroy"] = lambda req: self.destroy()
        return cmds

    # --- info ------------------------------------------------------------------------------

    def state(self) -> str:
        vm = self.vm
        if vm.ended is not None:
            return "ended"
        if vm.state != "running":
            return vm.state
        try:
            status = self._qmp(vm.spec.shard_of_vcpu(0), "query-status")["status"]
        except (DqemuError, ControlError):
            return "running"
        return "paused" if status in ("paused", "suspended") else "running"

    def info(self, _req: dict[str, Any] | None = None) -> dict[str, Any]:
        vm = self.vm
        spec = vm.spec
        procs = {p.name: p for h in vm.each_host() for p in h.processes()}
        shards = []
        for s in spec.shards:
            qemu = procs.get(f"shard {s.id}")
            started = vm.children.get(f"shard {s.id}")
            entry: dict[str, Any] = {
                "id": s.id,
                "host": (started.where if started is not None else None) or "local",
                "pid": qemu.pid if qemu is not None else None,
                "state": _shard_state(qemu is not None, qemu.code if qemu else None),
                "vcpus": list(s.vcpus),
                "devices": [f"{d.kind} {d.args}" for d in spec.devices if d.shard == s.id],
                "cpu_pct": qemu.cpu_pct if qemu is not None else 0.0,
                "rss_mib": qemu.rss_mib if qemu is not None else 0.0,
                "vcpu_threads": (
                    self._vcpu_threads(s.id, qemu.pid)
                    if qemu is not None and qemu.code is None
                    else []
                ),
            }
            router = procs.get(f"router {s.id}")
            if router is not None:
                entry["router"] = {"pid": router.pid, "cpu_pct": router.cpu_pct,
                                   "rss_mib": router.rss_mib}  # fmt: skip
                entry["links"] = self._links(s.id)
            shards.append(entry)
        self.threads.forget({e["pid"] for e in shards if e["pid"] is not None})
        out: dict[str, Any] = {
            "name": vm.name,
            "state": self.state(),
            "started": vm.started,
            "launcher_pid": vm.launcher_pid,
            "vcpus": spec.vcpus,
            "memory_mib": spec.memory_mib,
            "shards": shards,
        }
        if vm.ended is not None:
            out["ended"] = {"status": vm.ended.exit_code, "reason": vm.ended.reason}
        return out

    def _vcpu_threads(self, shard: int, pid: int | None) -> list[dict[str, Any]]:
        """The shard's own vCPUs: host thread id and its CPU% since the previous info.
        The thread ids come from query-cpus-fast once per QEMU process (0024 names each
        vCPU's shard; the other shards' vCPUs are parked threads here)."""
        if pid is None:
            return []
        tids = self._vcpu_tids.get(pid)
        if tids is None:
            try:
                cpus = self._qmp(shard, "query-cpus-fast")
            except ControlError:
                return []
            tids = self._vcpu_tids[pid] = sorted(
                (int(c["cpu-index"]), int(c["thread-id"])) for c in cpus
                if c.get("dqemu-shard", shard) == shard and "thread-id" in c
            )  # fmt: skip
        out = []
        for vcpu, tid in tids:
            pct = self.threads.read(pid, tid)
            if pct is not None:
                out.append({"vcpu": vcpu, "thread": tid, "cpu_pct": pct})
        return out

    def _links(self, shard: int) -> dict[str, str]:
        health = self.vm.host_of(shard).router_health(shard) if self.vm.hosts else None
        return {k: v.get("state", "?") for k, v in (health or {}).get("peers", {}).items()}

    # --- stats -----------------------------------------------------------------------------

    def router_stats(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        plan = self.vm.plan
        for s in plan.shards if plan is not None and self.vm.hosts else ():
            if s.router is not None and (st := self.vm.host_of(s.id).router_stats(s.id)):
                out[s.id] = st
        return out

    def stats(self, _req: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.stats_view.snapshot(self.router_stats())

    def open_stats(self, req: dict[str, Any]) -> StreamRunner | None:
        """``stats`` with ``"watch": true``: a snapshot every 1/hz s (hz up to 10), as JSON
        lines, until the client goes or the VM ends. A client that does not take a
        snapshot within STREAM_SEND_TIMEOUT is dropped."""
        if not req.get("watch"):
            return None
        hz = req.get("hz", 1)
        if not isinstance(hz, int | float) or isinstance(hz, bool) or not 0 < hz <= MAX_HZ:
            raise ControlError(f"hz must be a number in (0, {MAX_HZ}]")
        view = StatsView()

        def run(conn: socket.socket) -> None:
            conn.settimeout(STREAM_SEND_TIMEOUT)
            with contextlib.suppress(OSError):
                while self.vm.ended is None and self.vm.state != "ended":
                    t0 = time.monotonic()
                    snap = view.snapshot(self.router_stats())
                    conn.sendall(json.dumps(snap, sort_keys=True).encode() + b"\n")
                    time.sleep(max(0.0, 1.0 / hz - (time.monotonic() - t0)))

        return run

    # --- commands --------------------------------------------------------------------------

    def _qmp(self, shard: int, execute: str, **args: Any) -> Any:
        vm = self.vm
        n = len(vm.spec.shards)
        if not 0 <= shard < n:
            raise ControlError(f"no shard {shard} (the VM has shards 0-{n - 1})")
        qmp = vm.qmp_links.get(shard)
        if qmp is None or vm.state == "starting":
            raise ControlError("the VM is still starting")
        try:
            return qmp.cmd(execute, timeout=QMP_TIMEOUT, **args)
        except DqemuError as e:
            raise ControlError(str(e)) from None

    def qmp(self, req: dict[str, Any]) -> Any:
        shard, execute, args = req.get("shard", 0), req.get("execute"), req.get("arguments", {})
        if not isinstance(shard, int) or not isinstance(execute, str) or not isinstance(args, dict):
            raise ControlError("qmp needs shard (int), execute (str), arguments (object)")
        return self._qmp(shard, execute, **args)

    def vm_command(self, name: str) -> str:
        vm = self.vm
        if vm.ended is not None:
            raise ControlError("the VM has ended")
        # a run-state command issued on one shard reaches every shard (0019)
        self._qmp(vm.spec.io_shard, QMP_OF[name])
        want = STATE_OF.get(name)
        if want is None:
            return "done"
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            got = {}
            for s in vm.spec.shards:
                with contextlib.suppress(ControlError):
                    got[s.id] = self._qmp(s.id, "query-status")["status"]
            behind = [s.id for s in vm.spec.shards if got.get(s.id) != want]
            if not behind:
                return f"every shard is {want}"
            if time.monotonic() > deadline:
                names = ", ".join(f"shard {sid} ({got.get(sid, 'no answer')})" for sid in behind)
                raise ControlError(f"{name}: not {want} within {SETTLE_TIMEOUT:g} s: {names}")
            time.sleep(0.05)

    def destroy(self) -> str:
        if self.vm.ended is not None:
            raise ControlError("the VM has ended")
        self.vm.destroy_requested.set()
        return "destroying"
