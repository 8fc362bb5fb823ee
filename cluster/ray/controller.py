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
import tempfile
import threading
from pathlib import Path
from typing import Any

from cluster.errors import DqemuError
from cluster.ray import placement
from cluster.ray.node import BUILD_TIMEOUT, NAMESPACE, RemoteHost, _get, node_actor
from cluster.ray.relay import RelayServer
from cluster.spec import VMSpec
from cluster.vm.exit_policy import EXIT_SHARD_FAILED
from cluster.vm.orchestrator import Silence, VMResult
from cluster.vm.plan import make_plan
from loopback.launcher import LoopbackVM
from loopback.preflight import silence_ends_run, silence_limit

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
        self.node = ""  # where it runs, once placed ("node1 (10.214.0.3)")

    def _run(self) -> VMResult:
        spec = self.spec
        name = self.name or "vm"
        placed = placement.reserve([s.host for s in spec.shards])
        try:
            node = placed.nodes[0]  # one node per VM until DSM (placement makes sure)
            self.node = node.name
            actor = node_actor(node.node_id)
            host = RemoteHost(actor, name, node.name)
            try:
                qemu, boot, kind = _get(actor.boot_files.remote(spec, name, self.shipped),
                                        BUILD_TIMEOUT, node.name)  # fmt: skip
                # every shard's plan host is the node, so that the node is prepared once
                where = node.labels.get(placement.HOST_LABEL) or node.ip
                self.spec = spec = dataclasses.replace(spec, shards=tuple(
                    dataclasses.replace(s, host=where) for s in spec.shards))  # fmt: skip
                plan = make_plan(spec, qemu=qemu, boot=boot,
                                 vm_id=f"{name[:20]}-{secrets.token_hex(3)}")  # fmt: skip
            except BaseException:
                host.teardown()  # the shipped boot files
                raise
            silence = Silence(silence_limit(spec.boot.timeout),
                              silence_ends_run(kind, spec.boot.append))  # fmt: skip
            self.events.emit("placed", node=node.name, shards=len(spec.shards))
            return self.run_plan(plan, {where: host}, silence)
        finally:
            placed.release()


class VMController:
    """The Ray actor of one VM (wrap with ``ray.remote``; see :func:`start_controller`)."""

    def __init__(self, spec: VMSpec, shipped: dict[str, Any]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dqemu-vm-"))
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
