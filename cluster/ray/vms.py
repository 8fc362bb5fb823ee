"""The VMs of a Ray cluster as the ``dqemu`` commands and dqconsole see them: one
:class:`RayVM` (a ``cluster.vm.client.VMHandle``) per VM controller actor
(:mod:`cluster.ray.controller`), found by name in the namespace ``dqemu``."""

from __future__ import annotations

import socket
from typing import Any

from cluster.errors import DqemuError
from cluster.ray.controller import PREFIX, controller_name
from cluster.ray.node import NAMESPACE
from cluster.ray.relay import relay_connect

CALL = 10.0  # seconds for a controller to answer a short call


class RayVM:
    """A VM on the Ray cluster: its controller actor."""

    def __init__(self, name: str, actor: Any) -> None:
        self.name = name
        self.actor = actor
        self._meta: dict[str, Any] | None = None

    def connect(self, timeout: float) -> socket.socket:
        return relay_connect(self.actor, timeout)

    def alive(self) -> bool:
        import ray

        try:
            return bool(ray.get(self.actor.alive.remote(), timeout=CALL))
        except Exception:  # the actor is gone (or unreachable): the VM is over
            return False

    def meta(self) -> dict[str, Any]:
        import ray

        if self._meta is None:
            try:
                self._meta = dict(ray.get(self.actor.meta.remote(), timeout=CALL))
            except Exception:
                return {}
        return self._meta


def join(address: str) -> None:
    """Join the cluster as a driver, once per process."""
    import ray

    from cluster.ray.run import connect

    if not ray.is_initialized():
        connect(address)


def _controllers(address: str) -> list[str]:
    """The VM names that have a controller on the cluster."""
    import ray

    join(address)
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception as e:
        raise DqemuError(f"cannot list the VMs of the Ray cluster at {address}: {e}", 1) from None
    return sorted(a["name"][len(PREFIX) :] for a in named
                  if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX))  # fmt: skip


def _handle(name: str) -> RayVM | None:
    import ray

    try:
        return RayVM(name, ray.get_actor(controller_name(name), namespace=NAMESPACE))
    except ValueError:  # it ended between the listing and now
        return None


def list_ray_vms(address: str) -> list[RayVM]:
    """Every running VM of the cluster."""
    out = []
    for name in _controllers(address):
        vm = _handle(name)
        if vm is not None and vm.alive():
            out.append(vm)
    return out


def find_ray_vm(name: str, address: str) -> tuple[RayVM | None, list[str]]:
    """The running VM ``name`` of the cluster (None if none), and the names that run."""
    names = _controllers(address)
    vm = _handle(name) if name in names else None
    if vm is not None and not vm.alive():
        vm = None
    return vm, names
