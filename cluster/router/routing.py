"""The routing table: which shards exist, where their routers listen, and who owns what.

Set at VM start from the router's config and changeable at run time through the control
API (`set-route`). Frames are routed by destination shard id only; the vCPU, APIC id and
device maps answer "which shard is that on" for the layers above (and for `client.py`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cluster.router.protocol import DST_BROADCAST, DST_ROUTER, MAX_SHARD_ID


class UnknownDestination(LookupError):
    """A destination that is not in the routing table. The message says what is known."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``host:port`` (``[v6]:port`` for IPv6). Raises ValueError."""
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"address {text!r} is not host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_s)
        except ValueError:
            raise ValueError(f"address {text!r}: port {port_s!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"address {text!r}: port {port} out of range")
        return cls(host, port)


def check_shard_id(value: object, what: str = "shard id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 0)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an integer") from None
    if not 0 <= value <= MAX_SHARD_ID:
        raise ValueError(f"{what} {value} out of range 0..{MAX_SHARD_ID}")
    return value


ROUTE_KINDS = ("shard", "vcpu", "apic", "device")


class RoutingTable:
    """Thread-safe: readers take a consistent snapshot, writers replace whole maps."""

    def __init__(self, self_id: int, shards: dict[int, Address | None]) -> None:
        self.self_id = check_shard_id(self_id)
        self._lock = threading.Lock()
        self._shards: dict[int, Address | None] = {check_shard_id(k): v for k, v in shards.items()}
        self._shards.setdefault(self.self_id, None)
        self._vcpus: dict[int, int] = {}
        self._apics: dict[int, int] = {}
        self._devices: dict[str, int] = {}
        self.version = 0  # bumped on every change

    # --- queries ---------------------------------------------------------------------------

    @property
    def shard_ids(self) -> list[int]:
        return sorted(self._shards)

    def peers(self) -> dict[int, Address | None]:
        with self._lock:
            return {k: v for k, v in self._shards.items() if k != self.self_id}

    def has_shard(self, shard: int) -> bool:
        return shard in self._shards

    def address(self, shard: int) -> Address | None:
        self.check_destination(shard)
        return self._shards[shard]

    def check_destination(self, dst: int) -> int:
        """Return dst if it is a valid destination, else raise UnknownDestination."""
        if dst in (DST_BROADCAST, DST_ROUTER) or dst in self._shards:
            return dst
        known = ", ".join(str(s) for s in self.shard_ids)
        raise UnknownDestination(f"no route to shard {dst}: this VM's shards are {known}")

    def broadcast_targets(self, src: int) -> list[int]:
        return [s for s in self.shard_ids if s != src]

    def shard_of_vcpu(self, cpu_index: int) -> int:
        try:
            return self._vcpus[cpu_index]
        except KeyError:
            raise UnknownDestination(
                f"no route for vCPU {cpu_index}: known vCPUs are {_keys(self._vcpus)}"
            ) from None

    def shard_of_apic(self, apic_id: int) -> int:
        try:
            return self._apics[apic_id]
        except KeyError:
            raise UnknownDestination(
                f"no route for APIC id {apic_id}: known APIC ids are {_keys(self._apics)}"
            ) from None

    def owner_of_device(self, device: str) -> int:
        try:
            return self._devices[device]
        except KeyError:
            raise UnknownDestination(
                f"no owner for device {device!r}: known devices are {_keys(self._devices)}"
            ) from None

    def resolve(self, dest: int | str) -> int:
        """A shard id from ``3``, ``"shard:3"``, ``"vcpu:5"``, ``"apic:2"``, ``"device:NAME"``,
        ``"broadcast"`` or ``"router"``."""
        if isinstance(dest, int):
            return self.check_destination(dest)
        kind, _, key = dest.partition(":")
        if dest == "broadcast":
            return DST_BROADCAST
        if dest == "router":
            return DST_ROUTER
        if kind == "shard":
            return self.check_destination(_int(key, dest))
        if kind == "vcpu":
            return self.shard_of_vcpu(_int(key, dest))
        if kind == "apic":
            return self.shard_of_apic(_int(key, dest))
        if kind == "device" and key:
            return self.owner_of_device(key)
        raise UnknownDestination(
            f"destination {dest!r} is not shard:N, vcpu:N, apic:N, device:NAME, broadcast or router"
        )

    # --- updates ---------------------------------------------------------------------------

    def set_route(self, kind: str, key: object, value: object) -> None:
        """Set one entry. ``value`` is a shard id, or ``host:port`` / None for kind shard.

        A value of None removes vcpu/apic/device entries. Raises ValueError with a message
        naming the problem.
        """
        if kind not in ROUTE_KINDS:
            raise ValueError(f"route kind {kind!r} is not one of {', '.join(ROUTE_KINDS)}")
        with self._lock:
            if kind == "shard":
                sid = check_shard_id(key)
                if value is None:
                    if sid == self.self_id:
                        raise ValueError("cannot remove this router's own shard")
                    self._shards.pop(sid, None)
                else:
                    addr = value if isinstance(value, Address) else Address.parse(str(value))
                    self._shards[sid] = None if sid == self.self_id else addr
            else:
                target: dict[Any, int]
                k: Any
                if kind == "vcpu":
                    target, k = self._vcpus, _nonneg(key, "vCPU index")
                elif kind == "apic":
                    target, k = self._apics, _nonneg(key, "APIC id")
                else:
                    if not isinstance(key, str) or not key:
                        raise ValueError(f"device name {key!r} must be a non-empty string")
                    target, k = self._devices, key
                if value is None:
                    target.pop(k, None)
                else:
                    shard = check_shard_id(value)
                    if shard not in self._shards:
                        raise ValueError(
                            f"{kind} {key!r} -> shard {shard}: no such shard "
                            f"(known: {', '.join(str(s) for s in sorted(self._shards))})"
                        )
                    target[k] = shard
            self.version += 1

    def load(self, routes: dict[str, dict[Any, Any]]) -> None:
        """Bulk load ``{"vcpus": {...}, "apic_ids": {...}, "devices": {...}}``."""
        names = {"vcpus": "vcpu", "apic_ids": "apic", "devices": "device"}
        for section, mapping in routes.items():
            if section not in names:
                raise ValueError(
                    f"routes: unknown section {section!r} (expected vcpus, apic_ids, devices)"
                )
            for k, v in mapping.items():
                key: object = k if section == "devices" else _int(str(k), f"{section}.{k}")
                self.set_route(names[section], key, v)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "self": self.self_id,
                "version": self.version,
                "shards": {
                    str(k): (str(v) if v else None) for k, v in sorted(self._shards.items())
                },
                "vcpus": {str(k): v for k, v in sorted(self._vcpus.items())},
                "apic_ids": {str(k): v for k, v in sorted(self._apics.items())},
                "devices": dict(sorted(self._devices.items())),
            }


def _keys(d: dict[Any, Any]) -> str:
    return ", ".join(str(k) for k in sorted(d)) or "(none)"


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UnknownDestination(f"{what!r}: {text!r} is not a number") from None


def _nonneg(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not an integer")
    try:
        v = int(value) if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an integer") from None
    if v < 0:
        raise ValueError(f"{what} {v} is negative")
    return v
