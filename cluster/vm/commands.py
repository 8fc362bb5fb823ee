"""``dqemu list|info|suspend|resume|reset|shutdown|destroy|qmp``: drive running VMs by name.

Each command finds the VM in the registry (``cluster/vm/registry.py``), or on the Ray
cluster of ``--ray``/``$RAY_ADDRESS`` (``cluster/vm/client.py``'s ``find_vm``), and talks
to its control API (``docs/control.md``) the same way for both; the names follow virsh.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from cluster.errors import DqemuError
from cluster.router.control import ControlError
from cluster.vm import client, registry
from cluster.vm.client import StreamReader, VMHandle, info_or_starting, open_stream, uptime
from cluster.vm.control import vm_call
from loopback.terminal import interactive, raw_terminal

VM_COMMANDS = {
    "suspend": "pause every vCPU on every shard",
    "resume": "resume a suspended VM",
    "reset": "reset the machine (a hard reset, as the reset button)",
    "shutdown": "ask the guest to power off (ACPI power button)",
    "destroy": "stop the VM at once, as pulling the plug",
}


def _find(ns: argparse.Namespace) -> VMHandle:
    return client.find_vm(ns.name, client.ray_address(ns.ray))


def _call(entry: VMHandle, cmd: str, **args: Any) -> Any:
    try:
        return vm_call(entry, cmd, **args)
    except ControlError as e:
        raise DqemuError(f"{entry.name}: {e}", 1) from None
    except (OSError, ValueError) as e:
        if not entry.alive():
            raise DqemuError(f"{entry.name}: the VM has ended", 1) from None
        raise DqemuError(f"{entry.name}: control API did not answer: {e}", 1) from None


def _list(ns: argparse.Namespace) -> int:
    live, gone = registry.entries(reap=not ns.all)
    rows: list[dict[str, Any]] = []
    for e in [*live, *client.ray_vms(client.ray_address(ns.ray))]:
        rows.append(info_or_starting(e))
    for e in gone if ns.all else []:
        rows.append({"name": e.name, "state": "gone", "shards": [], "vcpus": None,
                     "started": e.meta().get("started")})  # fmt: skip
        e.remove()
    for rec in registry.ended_records() if ns.all else []:
        rows.append({"name": rec["name"], "state": f"ended ({rec['status']})", "shards": [],
                     "vcpus": None, "started": None, "ended": rec})  # fmt: skip
    if ns.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':<24} {'STATE':<14} {'SHARDS':>6} {'VCPUS':>5} {'UPTIME':>9}")
    now = time.time()
    for r in rows:
        started = r.get("started")
        up = uptime(now - started) if isinstance(started, int | float) else "-"
        vcpus = r.get("vcpus") if r.get("vcpus") is not None else "-"
        print(f"{r['name']:<24} {r['state']:<14} {len(r['shards']):>6} {vcpus:>5} {up:>9}")
    return 0


def _info(ns: argparse.Namespace) -> int:
    info = _call(_find(ns), "info")
    if ns.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"Name:     {info['name']}")
    print(f"State:    {info['state']}")
    if info.get("ended"):
        print(f"Ended:    exit {info['ended']['status']}: {info['ended']['reason']}")
    print(f"vCPUs:    {info['vcpus']}")
    print(f"Memory:   {info['memory_mib']} MiB")
    print(f"Uptime:   {uptime(time.time() - info['started'])}")
    print(f"Launcher: pid {info['launcher_pid']}")
    for s in info["shards"]:
        vcpus = ",".join(str(c) for c in s["vcpus"])
        print(
            f"Shard {s['id']}:  {s['state']:<10} host {s['host']:<12} pid {s['pid'] or '-':<8}"
            f" vCPUs {vcpus:<8} CPU {s['cpu_pct']:5.1f}%  RSS {s['rss_mib']:.0f} MiB"
        )
        for d in s["devices"]:
            print(f"          device {d}")
        for peer, state in sorted(s.get("links", {}).items()):
            print(f"          link to shard {peer}: {state}")
    return 0


def _vm_command(ns: argparse.Namespace) -> int:
    result = _call(_find(ns), ns.command)
    print(f"{ns.name}: {result}")
    return 0


def _qmp(ns: argparse.Namespace) -> int:
    try:
        req = json.loads(ns.json_cmd)
    except json.JSONDecodeError as e:
        raise DqemuError(f"qmp: the command is not JSON: {e.msg}") from None
    if isinstance(req, str):
        req = {"execute": req}
    if not isinstance(req, dict) or not isinstance(req.get("execute"), str):
        raise DqemuError('qmp: give a JSON object like \'{"execute": "query-status"}\'')
    args = req.get("arguments", {})
    if not isinstance(args, dict):
        raise DqemuError("qmp: 'arguments' must be a JSON object")
    out = _call(_find(ns), "qmp", shard=ns.shard, execute=req["execute"],
                arguments=args)  # fmt: skip
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


def _print_stats(snap: dict[str, Any]) -> None:
    mechs = "  ".join(
        f"{m}={int(v['total'])} ({v['msgs_per_s']:g}/s)"
        for m, v in snap["mechanisms"].items()
        if v["total"]
    )
    print(f"#{snap['seq']} over {snap['interval_s']:g} s: {mechs or 'no forwarding yet'}")
    for key, link in sorted(snap["links"].items()):
        print(
            f"  link {key}: {link['msgs_per_s']:g} msgs/s {link['bytes_per_s']:g} B/s, "
            f"{link['requests']} requests p50 {link['latency_p50_us']:g} us "
            f"p99 {link['latency_p99_us']:g} us"
        )
    for sid, page in (snap["mechanisms"].get("page", {}).get("shards") or {}).items():
        r, w = page["read_fault"], page["write_fault"]
        print(
            f"  page shard {sid}: {page['rates']['faults_per_s']:g} faults/s, "
            f"read p50 {r['p50_us']:g} p99 {r['p99_us']:g} us, "
            f"write p50 {w['p50_us']:g} p99 {w['p99_us']:g} us"
        )
    sys.stdout.flush()


def _stats(ns: argparse.Namespace) -> int:
    entry = _find(ns)
    if not ns.watch:
        snap = _call(entry, "stats")
        if ns.json:
            print(json.dumps(snap, indent=1))
        else:
            _print_stats(snap)
        return 0
    for snap in _stream_lines(entry, {"cmd": "stats", "watch": True, "hz": ns.hz}):
        if ns.json:
            print(json.dumps(snap, sort_keys=True), flush=True)
        else:
            _print_stats(snap)
    print(f"dqemu: {entry.name} has ended", file=sys.stderr)
    return 0


def _stream_lines(entry: VMHandle, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The JSON lines of a stream request, until the VM ends it."""
    try:
        reader = StreamReader(open_stream(entry, req))
    except ControlError as e:
        raise DqemuError(f"{entry.name}: {e}", 1) from None
    except (OSError, ValueError) as e:
        raise DqemuError(f"{entry.name}: {req['cmd']}: {e}", 1) from None
    try:
        yield from (obj for obj in reader.lines() if obj is not None)
    finally:
        reader.close()


def _events(ns: argparse.Namespace) -> int:
    entry = _find(ns)
    for ev in _stream_lines(entry, {"cmd": "events", "since": ns.since}):
        if ns.json:
            print(json.dumps(ev, sort_keys=True), flush=True)
            continue
        when = time.strftime("%H:%M:%S", time.localtime(ev.get("time", 0)))
        rest = " ".join(f"{k}={v}" for k, v in ev.items()
                        if k not in ("seq", "time", "type") and v is not None)  # fmt: skip
        print(f"#{ev['seq']} {when} {ev['type']}: {rest}", flush=True)
    return 0


DETACH_KEY = b"\x1d"  # Ctrl-], as in virsh console


def _open_serial(entry: VMHandle, write: bool) -> tuple[socket.socket | None, str | None]:
    """A serial stream of the VM; the error line instead, if the VM refused it."""
    try:
        sock = open_stream(entry, {"cmd": "serial", "write": write})
    except ControlError as e:
        return None, str(e)
    except (OSError, ValueError) as e:
        raise DqemuError(f"{entry.name}: cannot open the console: {e}", 1) from None
    sock.settimeout(None)
    return sock, None


def _console(ns: argparse.Namespace) -> int:
    entry = _find(ns)
    sock, err = _open_serial(entry, write=not ns.read_only)
    if err is not None and not ns.read_only:
        print(f"dqemu: {err}: attaching read-only", file=sys.stderr)
        sock, err = _open_serial(entry, write=False)
    if sock is None:
        raise DqemuError(f"{entry.name}: {err}", 1)
    tty = interactive(0)
    if tty:
        print(f"dqemu: connected to {entry.name}'s console; Ctrl-] detaches", file=sys.stderr)
    with sock, raw_terminal(0 if tty else None):
        how = _attach(sock)
    if how == "ended":
        print(f"\r\ndqemu: {entry.name}'s console ended (the VM has ended)", file=sys.stderr)
    elif tty:
        print("\r\ndqemu: detached", file=sys.stderr)
    return 0


def _attach(sock: socket.socket) -> str:
    """Copy the console to stdout and stdin to the console: "ended" when the VM's side
    closes, "detached" on Ctrl-]. After stdin's end the console is still shown."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    try:
        sel.register(0, selectors.EVENT_READ)
    except (PermissionError, ValueError, OSError):
        # stdin is a regular file (or /dev/null): epoll cannot wait on it; send it all
        with contextlib.suppress(OSError):
            while data := os.read(0, 65536):
                cut = data.find(DETACH_KEY)
                sock.sendall(data if cut < 0 else data[:cut])
                if cut >= 0:
                    return "detached"
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                data = sock.recv(65536)
                if not data:
                    return "ended"
                os.write(1, data)
                continue
            data = os.read(0, 4096)
            if not data:  # (no half-close: the VM would take it for the client's end)
                sel.unregister(0)
                continue
            cut = data.find(DETACH_KEY)
            with contextlib.suppress(OSError):
                sock.sendall(data if cut < 0 else data[:cut])
            if cut >= 0:
                return "detached"


def _add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                help: str) -> argparse.ArgumentParser:  # fmt: skip
    p = sub.add_parser(name, help=help)
    p.add_argument("--ray", metavar="ADDRESS",
                   help="also the VMs of this Ray cluster (default: $RAY_ADDRESS)")  # fmt: skip
    return p


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _add_parser(sub, "list", help="list the VMs running on this machine (and on Ray)")
    p.add_argument("--all", action="store_true", help="also VMs whose launcher died")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=_list)

    p = _add_parser(sub, "info", help="a VM's state, shards, processes and links")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=_info)

    for cmd, text in VM_COMMANDS.items():
        p = _add_parser(sub, cmd, help=text)
        p.add_argument("name")
        p.set_defaults(func=_vm_command)

    p = _add_parser(sub, "stats", help="forwarding counters, rates and latencies of a VM")
    p.add_argument("name")
    p.add_argument("--watch", action="store_true", help="a new snapshot every 1/HZ s")
    p.add_argument("--hz", type=float, default=1.0, help="snapshots per second, up to 10")
    p.add_argument("--json", action="store_true", help="JSON (lines, with --watch)")
    p.set_defaults(func=_stats)

    p = _add_parser(sub, "events", help="a VM's events, from the start, until it ends")
    p.add_argument("name")
    p.add_argument("--since", type=int, default=0, help="only events after this seq")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.set_defaults(func=_events)

    p = _add_parser(sub, "console", help="the VM's serial console (Ctrl-] detaches)")
    p.add_argument("name")
    p.add_argument("--read-only", action="store_true", help="watch only, never type")
    p.set_defaults(func=_console)

    p = _add_parser(sub, "qmp", help="run one QMP command on one shard of a VM")
    p.add_argument("name")
    p.add_argument("--shard", type=int, default=0, help="the shard (default 0)")
    p.add_argument("json_cmd", metavar="JSON", help='e.g. \'{"execute": "query-status"}\'')
    p.set_defaults(func=_qmp)
