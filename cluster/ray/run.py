"""``dqemu run``: run a VM on a Ray cluster, in the foreground, like ``dqemu loopback``.

The driver joins the cluster (``RAY_ADDRESS``, or ``--address``; under ``ray job submit``
Ray sets it), reserves the shards' places (:mod:`cluster.ray.placement`), has the node's
actor (:mod:`cluster.ray.node`) find the QEMU build and the boot files there, plans the VM
and runs the orchestrator (:mod:`cluster.vm.orchestrator`) over the node's
:class:`~cluster.ray.node.RemoteHost`. The serial console goes to stdout (``ray job
logs`` shows it), and the exit status is the VM's, as for ``dqemu loopback``. Ctrl-C and
SIGTERM (``ray job stop``) stop the VM on its node before the driver ends; a driver killed
outright loses its VM to the node actor's lease (``node.LEASE``).

Not yet: the detached, named VM controller actor (the VM outlives its driver and serves the
control API), shipping a user's own kernel file to the node (a path must exist there; the
``guest:`` flavours are built or found on the node), and VMs that span nodes (DSM).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import sys
from typing import BinaryIO

from cluster.errors import DqemuError
from cluster.ray import placement
from cluster.ray.node import BUILD_TIMEOUT, NAMESPACE, RemoteHost, _get, node_actor
from cluster.spec import VMSpec
from cluster.vm.orchestrator import Silence, VMOrchestrator, VMResult
from cluster.vm.plan import make_plan
from loopback.preflight import silence_ends_run, silence_limit

GCS_CHECK = 10.0  # seconds to reach the GCS before joining


def connect(address: str | None) -> None:
    """Join the Ray cluster as a driver; a clear error if there is none or auth fails."""
    import ray

    addr = address or os.environ.get("RAY_ADDRESS")
    if not addr:
        raise DqemuError("no Ray cluster given: set RAY_ADDRESS or pass --address")
    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit() and "/" not in addr:
        # Ray retries an unreachable GCS for minutes, printing C++ warnings: ask first
        try:
            socket.create_connection((host, int(port)), timeout=GCS_CHECK).close()
        except OSError as exc:
            raise DqemuError(
                f"cannot reach the Ray cluster's GCS at {addr}: {exc.strerror or exc}"
            ) from None
    try:
        ray.init(address=addr, namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False, configure_logging=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DqemuError(f"cannot join the Ray cluster at {addr}: {first}") from None


def run_on_ray(spec: VMSpec, console: BinaryIO, address: str | None = None) -> VMResult:
    connect(address)
    name = spec.name or f"vm-{secrets.token_hex(3)}"
    placed = placement.reserve([s.host for s in spec.shards])
    try:
        node = placed.nodes[0]  # one node per VM until DSM (placement makes sure)
        actor = node_actor(node.node_id)
        qemu, boot, kind = _get(actor.boot_files.remote(spec), BUILD_TIMEOUT, node.name)
        # every shard's plan host is the node, so that the node is prepared once
        where = node.labels.get(placement.HOST_LABEL) or node.ip
        spec = dataclasses.replace(
            spec, name=name, shards=tuple(dataclasses.replace(s, host=where) for s in spec.shards)
        )
        plan = make_plan(spec, qemu=qemu, boot=boot, vm_id=f"{name[:20]}-{secrets.token_hex(3)}")
        host = RemoteHost(actor, name, node.name)
        timeout = spec.boot.timeout
        silence = Silence(silence_limit(timeout), silence_ends_run(kind, spec.boot.append))
        print(f"dqemu: VM {name}: {len(spec.shards)} shard(s) on {node.name}",
              file=sys.stderr, flush=True)  # fmt: skip
        return VMOrchestrator(console=console).run_plan(plan, {where: host}, silence)
    finally:
        placed.release()
