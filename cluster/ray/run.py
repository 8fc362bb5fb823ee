"""``dqemu run``: run a VM on a Ray cluster, in the foreground, like ``dqemu loopback``.

The driver joins the cluster (``RAY_ADDRESS``, or ``--address``; under ``ray job submit``
Ray sets it), ships a user's own kernel and initrd through the object store (``guest:``
flavours are built or found on the node), and starts the VM's controller
(:mod:`cluster.ray.controller`), a detached actor that places, runs and serves the VM.
The driver then only follows it: it prints where the VM runs, copies its serial console
(the control API's ``serial`` stream, relayed) to stdout (``ray job logs`` shows it), and
exits with the VM's status, as for ``dqemu loopback``. Ctrl-C and SIGTERM (``ray job
stop``) destroy the VM before the driver ends. A driver killed outright leaves its VM
running, as ``dqemu loopback --detach`` would: ``dqemu destroy NAME`` ends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from cluster.errors import DqemuError
from cluster.ray.controller import PREFIX
from cluster.ray.node import CALL_TIMEOUT, LEASE, NAMESPACE, _first_line
from cluster.router.control import ControlError
from cluster.spec import GUEST_PREFIX, VMSpec
from cluster.vm.client import StreamReader, open_stream
from cluster.vm.control import vm_call
from cluster.vm.exit_policy import EXIT_INTERRUPTED, EXIT_SHARD_FAILED
from cluster.vm.orchestrator import VMResult
from cluster.vm.registry import check_name
from cluster.vm.signals import Terminated, terminate_on_signals

GCS_CHECK = 10.0  # seconds to reach the GCS before joining
DESTROY_WAIT = 60.0  # seconds for a destroyed VM's controller to report its end


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
    cluster_messages_to_stderr()


def cluster_messages_to_stderr() -> None:
    """Send to stderr what the cluster says to every driver. A Ray driver prints the GCS's
    messages ("raylet has lagging heartbeats ...", a resource request that cannot be
    scheduled) to stdout, even with ``log_to_driver=False``: into ``--json`` output, and
    into the console copy that ``dqemu run`` writes there. Ray has no setting for this, so
    its driver's printer (``ray._private.worker.print_to_stdstream``, looked up when each
    message comes) is wrapped to mark every message as an error line."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "dq_to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.dq_to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def ship_boot_files(spec: VMSpec) -> dict[str, list[Any]]:
    """The spec's own kernel and initrd files (not ``guest:`` flavours) put into the
    object store, as ``{part: [object ref]}``: the nodes need no shared filesystem."""
    import ray

    out: dict[str, list[Any]] = {}
    for part in ("kernel", "initrd"):
        value = getattr(spec.boot, part)
        if value is None or value.startswith(GUEST_PREFIX):
            continue
        try:
            data = Path(value).read_bytes()
        except OSError as e:
            raise DqemuError(f"boot.{part} {value}: cannot read it: {e.strerror or e}", 2) from None
        out[part] = [ray.put(data)]
    return out


def run_on_ray(spec: VMSpec, console: BinaryIO, address: str | None = None) -> VMResult:
    from cluster.ray.controller import start_controller
    from cluster.ray.vms import RayVM

    connect(address)
    name = check_name(spec.name or f"vm-{secrets.token_hex(3)}")
    spec = dataclasses.replace(spec, name=name)
    actor = start_controller(spec, ship_boot_files(spec))
    vm = RayVM(name, actor)
    try:
        with terminate_on_signals():
            _follow(vm, console)
            return _outcome(vm, None)
    except KeyboardInterrupt:
        _destroy(vm)
        return VMResult(EXIT_INTERRUPTED, "interrupted", [])
    except Terminated as t:
        _destroy(vm)
        return VMResult(EXIT_SHARD_FAILED, f"terminated by {t}", [], signal=t.signum)


def _ask(vm: Any, method: str, *args: Any) -> Any:
    """An answer of the VM's controller; DqemuError (exit 4) when it is gone."""
    import ray

    try:
        return ray.get(getattr(vm.actor, method).remote(*args), timeout=CALL_TIMEOUT)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
        raise DqemuError(
            f"VM {vm.name}: its controller (actor {NAMESPACE}/{PREFIX}{vm.name}) is gone or "
            f"does not answer ({_first_line(e)}); the node actors stop what it started "
            f"when its lifelines close, or after their {LEASE:g} s lease",
            EXIT_SHARD_FAILED,
        ) from None  # fmt: skip


def _follow(vm: Any, console: BinaryIO) -> None:
    """Say where the VM runs, then copy its console to ``console`` until it ends."""
    where = ""
    while not where:
        meta = _ask(vm, "meta")
        where = meta.get("where", "")
        if not where and _ended(vm):
            return
        time.sleep(0.2)
    print(f"dqemu: VM {vm.name}: {where}; its controller: pid {meta.get('pid')} "
          f"on {meta.get('controller_node')} (actor {NAMESPACE}/{PREFIX}{vm.name})",
          file=sys.stderr, flush=True)  # fmt: skip
    sock: socket.socket | None = None
    while sock is None:
        try:
            sock = open_stream(vm, {"cmd": "serial"})
        except (OSError, ControlError, ValueError):
            if _ended(vm):
                return  # it ended before its console was read: the result says why
            time.sleep(0.2)
    reader = StreamReader(sock)
    try:
        while (data := reader.read()) is not None:
            if data:
                with contextlib.suppress(OSError, ValueError):
                    console.write(data)
                    console.flush()
    finally:
        reader.close()


def _ended(vm: Any) -> bool:
    return bool(_ask(vm, "wait", 0.0)[0] != "running")


def _outcome(vm: Any, timeout: float | None) -> VMResult:
    """The VM's result from its controller (which may then go); DqemuError if it could
    not run at all. Waits for the end (up to ``timeout`` seconds, None for ever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state, got = _ask(vm, "wait", 5.0)
        if state != "running":
            break
        if deadline is not None and time.monotonic() > deadline:
            raise DqemuError(f"VM {vm.name} did not end within {timeout:g} s", EXIT_SHARD_FAILED)
    with contextlib.suppress(DqemuError):
        _ask(vm, "take")
    if state == "failed":
        message, code = got
        raise DqemuError(message, code)
    return got  # type: ignore[no-any-return]


def _destroy(vm: Any) -> None:
    """Destroy the VM for an interrupted driver; its controller is killed if it cannot
    be asked (the node actors' lease then stops what it started)."""
    import ray

    try:
        vm_call(vm, "destroy")
        _outcome(vm, DESTROY_WAIT)
    except (ControlError, OSError, ValueError, DqemuError) as e:
        print(f"dqemu: {vm.name}: {e}; stopping its controller", file=sys.stderr)
        with contextlib.suppress(Exception):
            ray.kill(vm.actor)
