"""The VM controller: a detached, named Ray actor per VM that runs it and serves its
control API.

:class:`VMController` (named ``dqemu-vm-<VM name>`` in namespace ``dqemu``, 0 CPU, on the
node of the driver that made it) runs :class:`ClusterVM` on a thread: the orchestrator
(:mod:`cluster.vm.orchestrator`) over the node actors' :class:`~cluster.ray.node.RemoteHost`
(placement, boot files on the node, plan, routers, shards, barrier, ``cont``, the wait,
the exit policy, teardown), with the control API of every VM (:mod:`loopback.vm_api`:
info, stats, events, serial, commands, qmp) served on a UNIX socket in a private
directory on the controller's node and relayed to clients over actor calls
(:mod:`cluster.ray.relay`). The VM outlives its driver: ``dqemu destroy`` ends it, and
the controller leaves ``KEEP_ENDED`` seconds after the VM's end (or at once when its
driver has taken the result), so that nothing is left on the cluster.

A user's own kernel and initrd come as Ray objects (``shipped``: the driver put them in
the object store); the node actor writes them into the VM's own directory on its node.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import sys
import threading
from typing import Any

from cluster.errors import DqemuError
from cluster.ray import placement
from cluster.ray.node import BUILD_TIMEOUT, NAMESPACE, RemoteHost, _get, node_actor
from cluster.ray.relay import RelayServer
from cluster.spec import VMSpec
from cluster.vm.exit_policy import EXIT_SHARD_FAILED
from cluster.vm.orchestrator import Silence, VMResult
from cluster.vm.plan import VMPlan, make_plan
from loopback.launcher import LoopbackVM
from loopback.preflight import silence_ends_run, silence_limit
from loopback.stale import new_rundir

PREFIX = "dqemu-vm-"
KEEP_ENDED = 60.0  # seconds an ended VM's controller waits for its driver to take the result

# what a controller's ``wait`` returns: ("running", None), ("ended", VMResult) or
# ("failed", (message, exit status)) when the VM could not run at all
Outcome = tuple[str, Any]


def controller_name(vm: str) -> str:
    return f"{PREFIX}{vm}"


class ClusterVM(LoopbackVM):
    """A VM on the Ray cluster: the orchestrator over the node actors of its placement,
    with the control API of every VM (``LoopbackVM.serve``)."""

    def __init__(self, spec: VMSpec, shipped: dict[str, Any]) -> None:
        super().__init__(spec, name=spec.name)
        self.shipped = shipped  # boot file part -> [object ref of its bytes]
        self.node = ""  # where it runs, once placed ("node1 (10.214.0.3), node2 (...)")
        self.where = ""  # the same by shard ("shard(s) on node1 (...)", "shard 0 on ...")

    def _run(self) -> VMResult:
        spec = self.spec
        name = self.name or "vm"
        placed = placement.reserve([s.host for s in spec.shards],
                                   spanning=spec.memory_mode == "dsm")  # fmt: skip
        try:
            # the placement's nodes, once each, in shard order; each is its shards' host
            nodes = list({n.node_id: n for n in placed.nodes}.values())
            self.node = ", ".join(n.name for n in nodes)
            self.where = (f"shard(s) on {self.node}" if len(nodes) == 1 else ", ".join(
                f"shard {k} on {n.name}" for k, n in enumerate(placed.nodes)))  # fmt: skip
            hosts = {n.node_id: RemoteHost(node_actor(n.node_id), name, n.name) for n in nodes}
            try:
                for host in hosts.values():
                    host.watch()  # a lost node ends the VM within 2 s, not Ray's 3+
                plan, kind = self._plan(nodes, hosts, placed.nodes)
            except BaseException:
                for host in hosts.values():
                    host.teardown()  # the shipped boot files
                raise
            spec = self.spec
            silence = Silence(silence_limit(spec.boot.timeout),
                              silence_ends_run(kind, spec.boot.append))  # fmt: skip
            self.events.emit("placed", node=self.node, shards=len(spec.shards),
                             nodes=[n.name for n in placed.nodes])  # fmt: skip
            by_name = {_host_name(n): hosts[n.node_id] for n in nodes}
            return self.run_plan(plan, by_name, silence)
        finally:
            placed.release()

    def _plan(
        self,
        nodes: list[placement.NodeView],
        hosts: dict[str, RemoteHost],
        of_shard: list[placement.NodeView],
    ) -> tuple[VMPlan, str]:
        """The VM's plan over its nodes, and its kernel's kind. Every node finds the QEMU
        build and the boot files itself (the ``guest:`` flavours in its cache, the shipped
        files written in a directory of its own), so each node's shards get the paths
        their node gave; every shard's host is its node's name, so that the plan's hosts
        are the placement's nodes (and ``clock_sync = "auto"`` sees them)."""
        spec, name = self.spec, self.name or "vm"
        asked = {n.node_id: hosts[n.node_id].actor.boot_files.remote(spec, name, self.shipped)
                 for n in nodes}  # fmt: skip
        found = {nid: _get(ref, BUILD_TIMEOUT, hosts[nid].where) for nid, ref in asked.items()}
        self.spec = spec = dataclasses.replace(spec, shards=tuple(
            dataclasses.replace(s, host=_host_name(of_shard[s.id]))
            for s in spec.shards))  # fmt: skip
        vm_id = f"{name[:20]}-{secrets.token_hex(3)}"
        plans = {nid: make_plan(spec, qemu=qemu, boot=boot, vm_id=vm_id)
                 for nid, (qemu, boot, _kind) in found.items()}  # fmt: skip
        first = plans[nodes[0].node_id]
        shards = tuple(plans[of_shard[s.id].node_id].shard(s.id) for s in first.shards)
        return dataclasses.replace(first, shards=shards), found[nodes[0].node_id][2]


def _host_name(node: placement.NodeView) -> str:
    """A node as a plan's host: its dqemu-host label, else its IP."""
    return node.labels.get(placement.HOST_LABEL) or node.ip


class VMController:
    """The Ray actor of one VM (wrap with ``ray.remote``; see :func:`start_controller`)."""

    def __init__(self, spec: VMSpec, shipped: dict[str, Any]) -> None:
        self.dir = new_rundir(f"vm-{(spec.name or '')[:20]}-")
        self.control = self.dir / "control.sock"
        self.vm = ClusterVM(spec, shipped)
        self.relay = RelayServer(self.control)
        self.outcome: Outcome = ("running", None)
        self.done = threading.Event()
        self.taken = threading.Event()
        threading.Thread(target=self._run, name="vm", daemon=True).start()

    def _run(self) -> None:
        try:
            self.outcome = ("ended", self.vm.serve(self.control))
        except DqemuError as e:
            self.outcome = ("failed", (str(e), e.exit_code))
        except Exception as e:  # reported to the driver, never lost in a log
            self.outcome = ("failed", (f"the VM controller failed: {e!r}", EXIT_SHARD_FAILED))
        finally:
            self.done.set()
            self.relay.close_all()
            shutil.rmtree(self.dir, ignore_errors=True)
        self.taken.wait(KEEP_ENDED)
        _exit_actor()

    # --- what the driver and the commands call ---------------------------------------------

    def wait(self, timeout: float) -> Outcome:
        """The VM's outcome once it has ended, waiting up to ``timeout`` seconds."""
        self.done.wait(timeout)
        return self.outcome

    def take(self) -> None:
        """The driver has the result: the controller may go."""
        self.taken.set()

    def alive(self) -> bool:
        return not self.done.is_set()

    def meta(self) -> dict[str, Any]:
        import ray

        return {"name": self.vm.name, "started": self.vm.started, "node": self.vm.node,
                "where": self.vm.where,
                "pid": os.getpid(), "controller_node": ray.util.get_node_ip_address()}  # fmt: skip

    def relay_open(self) -> int:
        return self.relay.open()

    def relay_send(self, cid: int, data: bytes) -> None:
        self.relay.send(cid, data)

    def relay_recv(self, cid: int, wait: float) -> bytes | None:
        return self.relay.recv(cid, wait)

    def relay_close(self, cid: int) -> None:
        self.relay.close(cid)


def _exit_actor() -> None:
    """End this controller's actor (and its name) from its own thread."""
    import ray

    try:
        ray.kill(ray.get_runtime_context().current_actor)
    except Exception as e:  # pragma: no cover - the worker is leaving anyway
        print(f"dqemu: the VM controller could not end itself: {e!r}", file=sys.stderr)
        os._exit(0)


def start_controller(spec: VMSpec, shipped: dict[str, Any]) -> Any:
    """Create the VM's controller on this driver's node (under ``ray job submit``, the
    head); a clear error if a VM of that name already runs on the cluster."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    assert spec.name is not None
    here = ray.get_runtime_context().get_node_id()
    cls = ray.remote(VMController)
    try:
        return cls.options(  # type: ignore[attr-defined]
            name=controller_name(spec.name),
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            max_restarts=0,
            max_concurrency=64,  # relayed streams wait in their calls
            # the driver's node: a worker node's loss must not take the controller with it
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(spec, shipped)
    except ValueError as e:
        if "already" not in str(e):
            raise
        raise DqemuError(f"a VM named {spec.name!r} is already running on the Ray cluster; "
                         "choose another name (the spec's vm.name)") from None  # fmt: skip
