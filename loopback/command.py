"""``dqemu loopback``: run a VM with every shard on this machine.

The VM comes from a TOML spec (``--spec``) or from flags for the common case. Exits with
the guest: 0 on a clean poweroff, QEMU's own status when the guest ends the VM through a
device such as isa-debug-exit, and non-zero with a one-line reason otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.errors import DqemuError, end_by_signal
from cluster.forwarding_stats import format_counts
from cluster.spec import (
    CODE_ANNOUNCE_MODES,
    DATA_PATHS,
    DEVICE_KINDS,
    MEMORY_MODES,
    POSTED_WRITES_MODES,
    TRANSPORTS,
    VM_FLAG_KEYS,
    WAKEUP_CUT_MODES,
    load_spec,
    spec_from_flags,
)
from cluster.vm.registry import check_name
from loopback.detach import detach, log_to_registry
from loopback.terminal import console_terminal, interactive

if TYPE_CHECKING:
    from cluster.vm.orchestrator import VMResult

_SPEC_EXCLUSIVE = (
    "kernel",
    "initrd",
    "vcpus",
    "memory",
    "shards",
    "placement",
    "machine",
    "io_shard",
    "cpu",
    "sockets",
    "cores",
    "threads",
    "no_reboot",
    "vga",
    "numa_nodes",
)


def _run(ns: argparse.Namespace) -> int:
    from loopback.launcher import run_loopback  # heavy imports only when running

    if ns.name is not None:
        check_name(ns.name)
    if ns.spec is not None:
        mixed = [
            f"--{k.replace('_', '-')}" for k in _SPEC_EXCLUSIVE if getattr(ns, k) not in (None, [])
        ]
        mixed += [f"--{k}" for k in DEVICE_KINDS if getattr(ns, k)]
        if mixed:
            raise DqemuError(f"--spec cannot be combined with {', '.join(mixed)}")
        overrides = {key: value for key in VM_FLAG_KEYS if (value := getattr(ns, key)) is not None}
        spec = load_spec(ns.spec, overrides)
    else:
        if ns.vcpus is None:
            ns.vcpus = 1
        if ns.memory is None:
            ns.memory = "512M"
        if ns.machine is None:
            ns.machine = "q35"
        spec = spec_from_flags(ns)
    for flag, d in (("--qmp-dir", ns.qmp_dir), ("--log-dir", ns.log_dir)):
        if d is not None and not d.is_dir():
            raise DqemuError(f"{flag}: {d} is not a directory")
    if ns.detach:
        return detach(ns.argv, ns.name or spec.name)
    if ns.detached_child and ns.timeout is None:
        # a detached VM runs until it ends or is stopped: boot.timeout is for a run in the
        # foreground (scripts, tests); --timeout still sets one
        spec = dataclasses.replace(spec, boot=dataclasses.replace(spec.boot, timeout=math.inf))
    if ns.detached_child:
        with open(os.devnull, "wb") as discard:  # the console goes to the control API only
            result = run_loopback(spec, console=discard, qmp_dir=ns.qmp_dir,
                                  log_dir=ns.log_dir, name=ns.name,
                                  on_running=log_to_registry)  # fmt: skip
    else:
        forward = ns.console_input if ns.console_input is not None else interactive(0)
        with console_terminal(0 if forward else None):
            result = run_loopback(
                spec, qmp_dir=ns.qmp_dir, log_dir=ns.log_dir,
                console_input=0 if forward else None, name=ns.name,
            )  # fmt: skip
    if result.router_stats:
        print(f"dqemu: forwarded: {format_counts(result.forwarded)}", file=sys.stderr)
    if ns.stats_file is not None:
        ns.stats_file.write_text(
            json.dumps(
                {
                    "exit_code": result.exit_code,
                    "reason": result.reason,
                    "forwarded": result.forwarded,
                    "routers": result.router_stats,
                },
                indent=1,
            )
        )
    return report_end(result)


def report_end(result: VMResult) -> int:
    """Say how the VM ended, on stderr, and return its exit status (a VM ended by a signal
    ends this process by the same signal)."""
    if result.exit_code == 0 or result.by_guest:
        print(f"dqemu: {result.reason}", file=sys.stderr)
    elif result.signal is not None:
        print(f"dqemu: error: {result.reason}", file=sys.stderr)
        end_by_signal(result.signal)
    else:
        print(f"dqemu: error: {result.reason} (exit {result.exit_code})", file=sys.stderr)
    return result.exit_code


# issue 14's cuts ([vm] reply_poll, serve_in_rx, reply_read, irq_in_rx, local_config,
# halt_poll): flag, what it does
WAKEUP_CUT_FLAGS = (
    ("--reply-poll", "a vCPU waiting for another shard's reply polls for it briefly before it "
     "sleeps"),
    ("--serve-in-rx", "the owner's receive thread serves another shard's UART, RTC, PIT and IOAPIC "
     "accesses itself"),
    ("--reply-read", "a vCPU polling for a PIO/MMIO reply reads it from the direct link itself"),
    ("--irq-in-rx", "the receive thread delivers another shard's interrupt itself instead of "
     "waking the main loop"),
    ("--local-config", "a shard other than the PCI host bridge's makes its vCPUs' config "
     "cycles itself, asking the bridge's shard only for what it must"),
    ("--halt-poll", "a halted vCPU polls for its wake-up briefly before it sleeps"),
)  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "loopback",
        help="run a VM with every shard on this machine",
        description="Run a VM with every shard on this machine, show its serial console "
        "and exit with the guest.",
        epilog="Exit status: 0 the guest powered off; odd: the guest's own isa-debug-exit "
        "status ((value << 1) | 1); dqemu's own are even: 2 bad input, 4 a shard or router "
        "failed, 6 guest panic, 8 guest reset with reboot off, 10 destroyed (dqemu destroy), "
        "124 timeout, 130 interrupted "
        "(SIGTERM/SIGHUP: dqemu ends by that signal). See docs/spec.md.",
    )
    p.add_argument("--spec", type=Path, help="VM spec (TOML); see docs/spec.md")
    p.add_argument("--name", help="the VM's name (default: the spec's vm.name, else generated)")
    p.add_argument(
        "--detach", action="store_true",
        help="return once the VM runs, printing its name; drive it with dqemu list/info/"
        "console/... (docs/control.md)",
    )  # fmt: skip
    p.add_argument("--detached-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--kernel", help="bzImage or multiboot kernel, or guest:FLAVOUR (none: boot a --drive)"
    )
    p.add_argument("--initrd", help="initrd file, or guest:FLAVOUR")
    p.add_argument(
        "--append", help="kernel command line (a Linux bzImage gets console=ttyS0 panic=-1 first)"
    )
    p.add_argument("--vcpus", type=int, help="number of vCPUs (default 1)")
    p.add_argument("--memory", help="guest RAM, e.g. 512M or 2G (default 512M)")
    p.add_argument(
        "--machine", metavar="TYPE[,OPTS]", help="q35 (default) or pc, with options: q35,hpet=off"
    )
    p.add_argument("--cpu", help="CPU model and features, e.g. qemu64,+x2apic")
    for key in ("sockets", "cores", "threads"):
        p.add_argument(f"--{key}", type=int, help=f"SMP topology: {key} (product = --vcpus)")
    p.add_argument("--numa-nodes", type=int, metavar="N", help="NUMA nodes per shard (default 1)")
    p.add_argument(
        "--no-reboot", action="store_true", default=None,
        help="a guest reset ends the VM (exit 8) instead of rebooting it",
    )  # fmt: skip
    p.add_argument("--vga", metavar="MODEL[@SHARD]", help="add a VGA: std, cirrus, vmware, isa")
    p.add_argument(
        "--console-input", action=argparse.BooleanOptionalAction, default=None,
        help="copy stdin to the guest's serial port (default: when run in the foreground "
        "of a terminal)",
    )  # fmt: skip
    p.add_argument("--shards", type=int, help="number of shards (vCPUs split evenly)")
    p.add_argument(
        "--data-path", choices=DATA_PATHS, default=None,
        help="frames between shards go through the routers, or on direct shard-to-shard "
        "links the routers set up (default: the spec's vm.data_path, else direct); "
        "may override a --spec",
    )  # fmt: skip
    p.add_argument(
        "--memory-mode", choices=MEMORY_MODES, default=None,
        help="guest RAM: one RAM file every shard maps (shared), or private RAM per shard "
        "kept coherent page by page (dsm; docs/dsm.md); default: the spec's "
        "vm.memory_mode, else shared; may override a --spec",
    )  # fmt: skip
    p.add_argument(
        "--posted-writes", choices=POSTED_WRITES_MODES, default=None,
        help="UART transmit writes to another shard go without waiting for a reply "
        "(auto, the default: with several shards in memory mode shared; "
        "docs/shard-design.md); may override a --spec",
    )  # fmt: skip
    p.add_argument(
        "--code-announce", choices=CODE_ANNOUNCE_MODES, default=None,
        help="code announcements between shards: fast (the default: handled by the receive "
        "thread and remembered until the page is written) or plain (each through the "
        "main loops; docs/shard-design.md section 6); may override a --spec",
    )  # fmt: skip
    for flag, what in WAKEUP_CUT_FLAGS:
        p.add_argument(
            flag, choices=WAKEUP_CUT_MODES, default=None,
            help=f"{what} (default: on; docs/shard-design.md section 15); may override a --spec",
        )  # fmt: skip
    p.add_argument(
        "--transport", choices=TRANSPORTS, default=None,
        help="what the routers' links run on: tcp, or rdma (RC queue pairs; fails before the "
        "VM starts if no RDMA device is usable; default: the spec's vm.transport, else tcp); "
        "may override a --spec",
    )  # fmt: skip
    p.add_argument("--placement", help="vCPUs per shard, e.g. '0-1;2-3'")
    p.add_argument(
        "--io-shard", type=int, help="owner of the platform devices: serial, RTC, ... (default 0)"
    )
    p.add_argument("--timeout", type=float, help="seconds before giving up on the guest")
    p.add_argument(
        "--stats-file", type=Path, help="write the routers' final statistics here (JSON)"
    )
    p.add_argument("--qmp-dir", type=Path, help="put each shard's QMP socket here, as shard<K>.qmp")
    p.add_argument(
        "--log-dir", type=Path, help="keep each shard's and router's log here (default: removed)"
    )
    for kind in DEVICE_KINDS:
        p.add_argument(
            f"--{kind}", action="append", metavar="ARGS[@SHARD]",
            help=f"QEMU -{kind} option, owned by SHARD (default 0)",
        )  # fmt: skip
    p.set_defaults(func=_run)
