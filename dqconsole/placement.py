"""The placement editor's model: which shard runs each vCPU and owns each device, in a VM
spec edited in place. No Textual here.

The spec is held as a ``tomlkit`` document, so that a save keeps its comments, key order,
spacing and whatever else the editor does not touch. Every move is checked at once by the
spec loader itself (``cluster.spec.parse_spec`` on the edited text): the rules and the
messages are the loader's, with the key and line they name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table

from cluster.spec import DEVICE_KINDS, SpecError, VMSpec, parse_cpu_list, parse_spec


class PlacementError(Exception):
    """The spec cannot be edited (unreadable, not TOML, no placement to edit)."""


@dataclass(frozen=True)
class Item:
    """A row of the grid: something placed on one shard."""

    key: str  # "vcpu:3", "device:0", "io", "vga"
    label: str
    shard: int


def cpu_ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the spec's vCPU list form)."""
    out: list[str] = []
    cpus = sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


class Placement:
    """A spec file's placement, edited in a style-preserving TOML document."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        try:
            self.doc = tomlkit.parse(text)
        except TOMLKitError as e:
            raise PlacementError(f"{path}: not valid TOML: {e}") from None
        vm = self.doc.get("vm")
        if not isinstance(vm, Table) or not isinstance(vm.get("vcpus"), int):
            raise PlacementError(f"{path}: the spec has no [vm] table with vcpus")
        self.vcpus = int(vm["vcpus"])
        shards = self.doc.get("shard")
        if not isinstance(shards, AoT) or len(shards) == 0:
            raise PlacementError(
                f"{path}: the spec has no [[shard]] tables: its one shard runs everything"
            )
        self.shards = shards
        # the form each shard's vcpus had: a range string ("0-1") or an array
        self._ranges = [isinstance(t.get("vcpus"), str) for t in shards]
        self.dirty = False
        self.error: str | None = None
        self.spec: VMSpec | None = None
        self.validate()

    @classmethod
    def load(cls, path: Path) -> Placement:
        try:
            text = path.read_text()
        except OSError as e:
            raise PlacementError(f"cannot read spec {path}: {e.strerror}") from None
        return cls(path, text)

    # ---- reading -------------------------------------------------------------------------

    def text(self) -> str:
        return tomlkit.dumps(self.doc)

    def shard_count(self) -> int:
        return len(self.shards)

    def _cpus_of(self, i: int) -> list[int]:
        raw = self.shards[i].get("vcpus", [])
        if isinstance(raw, str):
            try:
                return list(parse_cpu_list(raw))
            except ValueError:
                return []
        return [int(c) for c in raw if isinstance(c, int)]

    def items(self) -> list[Item]:
        """vCPUs, devices, then the platform devices' shard and the VGA's, if any."""
        out: list[Item] = []
        where = {c: i for i in range(len(self.shards)) for c in self._cpus_of(i)}
        for c in range(self.vcpus):
            out.append(Item(f"vcpu:{c}", f"vCPU {c}", where.get(c, -1)))
        for i, dev in enumerate(self._devices()):
            kind = next((k for k in DEVICE_KINDS if k in dev), "device")
            args = str(dev.get(kind, ""))
            shard = dev.get("shard")
            out.append(Item(f"device:{i}", f"{kind} {args}",
                            shard if isinstance(shard, int) else -1))  # fmt: skip
        vm = self.doc["vm"]
        io = vm.get("io_shard", 0)
        out.append(Item("io", "platform (serial, RTC, PIT, IOAPIC, HPET, PCI host)",
                        io if isinstance(io, int) else -1))  # fmt: skip
        if "vga" in vm:
            vga = vm.get("vga_shard", io)
            out.append(Item("vga", f"VGA {vm['vga']}", vga if isinstance(vga, int) else -1))
        return out

    def _devices(self) -> list[Any]:
        devs = self.doc.get("device")
        return list(devs) if isinstance(devs, AoT) else []

    # ---- editing -------------------------------------------------------------------------

    def move(self, key: str, shard: int) -> str | None:
        """Put ``key`` on ``shard``; the spec loader's message if the spec is now invalid."""
        if not 0 <= shard < len(self.shards):
            raise PlacementError(f"no shard {shard} (the spec has {len(self.shards)})")
        kind, _, index = key.partition(":")
        if kind == "vcpu":
            self._move_vcpu(int(index), shard)
        elif kind == "device":
            self._devices()[int(index)]["shard"] = shard
        elif kind == "io":
            self.doc["vm"]["io_shard"] = shard  # type: ignore[index]
        elif kind == "vga":
            self.doc["vm"]["vga_shard"] = shard  # type: ignore[index]
        else:
            raise PlacementError(f"nothing to move called {key!r}")
        self.dirty = True
        return self.validate()

    def _move_vcpu(self, cpu: int, shard: int) -> None:
        for i, table in enumerate(self.shards):
            cpus = self._cpus_of(i)
            if i == shard and cpu not in cpus:
                cpus.append(cpu)
            elif i != shard and cpu in cpus:
                cpus.remove(cpu)
            else:
                continue
            # keep the form the spec used; none left is [] (a "" would be a syntax error
            # to the loader rather than the missing vCPU it is)
            table["vcpus"] = cpu_ranges(cpus) if self._ranges[i] and cpus else sorted(cpus)

    def validate(self) -> str | None:
        """Load the edited text as ``dqemu`` would; the loader's message, or None."""
        try:
            self.spec = parse_spec(self.text(), origin=str(self.path), base=self.path.parent)
        except SpecError as e:
            self.spec = None
            self.error = str(e)
        else:
            self.error = None
        return self.error

    def save(self, path: Path | None = None) -> Path:
        """Write the spec (atomically); refused while the loader rejects it."""
        if self.error is not None:
            raise PlacementError(f"not saved: {self.error}")
        target = path or self.path
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.text())
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o777)
            os.replace(tmp, target)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise PlacementError(f"cannot write {target}: {e.strerror}") from None
        self.dirty = False
        return target
