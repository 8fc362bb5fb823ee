"""Ray drivers for tests/integration/test_cluster.py: each check runs on the cluster's head
node (``ip netns exec <head netns> python -m tests.support.ray_checks CHECK``), as a Ray
driver, and prints one JSON object with what it saw, on a line of its own
(tests/support/ray_result.py). The test asserts on it.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import ray

from cluster.errors import DqemuError
from cluster.qemu_cmdline import BootFiles
from cluster.ray import node as nodemod
from cluster.ray import placement
from cluster.ray.run import cluster_messages_to_stderr
from cluster.spec import parse_spec
from cluster.vm.plan import make_plan
from tests.support.ray_result import format_result

SPEC = """
[vm]
vcpus = 2
memory = "64M"
[[shard]]
id = 0
vcpus = "0"
[[shard]]
id = 1
vcpus = "1"
"""


def _plan(vm_id: str) -> Any:
    spec = parse_spec(SPEC)
    boot = BootFiles(Path("/nonexistent/vmlinuz"), None, "", linux=True)
    return make_plan(spec, qemu="/nonexistent/qemu", boot=boot, vm_id=vm_id)


def _wait(what: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    return None


def mesh() -> dict[str, Any]:
    """Two node actors on node1 and node2, a router each (shards 0 and 1 of one VM), peers
    exchanged after they listen on port 0; then node1's actor is killed."""
    nodes = {n.labels.get("dqemu-host"): n for n in placement.cluster_nodes()}
    a = nodemod.node_actor(nodes["node1"].node_id)
    b = nodemod.node_actor(nodes["node2"].node_id)
    info = [ray.get(a.info.remote()), ray.get(b.info.remote())]
    vm = f"mesh{secrets.token_hex(2)}"
    plan = _plan(vm)
    ha, hb = nodemod.RemoteHost(a, vm), nodemod.RemoteHost(b, vm)
    secret = secrets.token_bytes(32)
    ha.prepare(plan, [0])
    hb.prepare(plan, [1])
    started = [ha.start_router(0, secret), hb.start_router(1, secret)]
    addrs = [ha.router_ready(0, 60), hb.router_ready(1, 60)]
    ha.set_peers(0, {1: addrs[1]})
    hb.set_peers(1, {0: addrs[0]})

    def up(h: nodemod.RemoteHost, k: int, peer: int) -> bool:
        health = h.router_health(k) or {}
        return health.get("peers", {}).get(str(peer), {}).get("state") == "up"

    linked = bool(_wait(lambda: up(ha, 0, 1) and up(hb, 1, 0), 60))
    procs = ha.processes() + hb.processes()
    router0 = started[0].pid
    ray.kill(a, no_restart=True)
    gone = bool(_wait(lambda: not psutil.pid_exists(router0), 30))
    # the surviving router sees its peer down (liveness: 1 s)
    peer_down = bool(_wait(lambda: not up(hb, 1, 0), 30))
    hb.stop()
    hb.teardown()
    after = ray.get(b.processes.remote())
    ray.kill(b, no_restart=True)
    return {
        "info": info,
        "addrs": addrs,
        "started": [s.where for s in started],
        "linked": linked,
        "procs": [(p.name, p.code, p.rss_mib > 0) for p in procs],
        "killed_actor_router_gone": gone,
        "peer_down": peer_down,
        "left_on_b": len(after),
    }


def place() -> dict[str, Any]:
    """Placement on the live cluster: errors, the bounded wait, pinned hosts."""
    out: dict[str, Any] = {}
    for key, hosts in (("unknown", ["node9"]), ("spans", ["node1", "node2"])):
        t0 = time.monotonic()
        try:
            placement.reserve(hosts).release()
            out[key] = None
        except DqemuError as exc:
            out[key] = [str(exc), time.monotonic() - t0]
    spread = placement.reserve(["node3", "node1"], spanning=True)  # two hosts, dsm
    out["spread"] = [n.labels.get("dqemu-host") for n in spread.nodes]
    spread.release()
    p = placement.reserve(["node2", None])
    out["pinned"] = [n.labels.get("dqemu-host") for n in p.nodes]
    # node2 has 4 dqemu_shard, 2 are held now: 3 more on node2 cannot be placed by Ray
    t0 = time.monotonic()
    try:
        placement.reserve(["node2"] * 3, wait=5.0).release()
        out["held"] = None
    except DqemuError as exc:
        out["held"] = [str(exc), time.monotonic() - t0]
    p.release()
    free = placement.reserve([None] * 3)
    out["packed"] = sorted({n.node_id for n in free.nodes}).__len__()
    free.release()
    return out


def _dqemu(*argv: str) -> list[Any]:
    """``dqemu ARGV...`` in this driver (its Ray connection is the commands'): status,
    stdout, stderr."""
    from cluster.cli import main as dqemu_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = dqemu_main(list(argv))
    return [code, out.getvalue(), err.getvalue()]


def commands(name: str) -> dict[str, Any]:
    """The dqemu commands and dqconsole's client on the running Ray VM ``name`` (found
    through $RAY_ADDRESS), beside this machine's registry."""
    from dqconsole.client import VMClient, list_vms

    out: dict[str, Any] = {
        "list": _dqemu("list", "--json"),
        "info": _dqemu("info", name, "--json"),
        "suspend": _dqemu("suspend", name),
        "paused": _dqemu("qmp", name, "--shard", "1", '"query-status"'),
        "resume": _dqemu("resume", name),
        "stats": _dqemu("stats", name, "--json"),
        "missing": _dqemu("info", "no-such-vm"),
    }
    client = VMClient(name)
    out["console_info"] = client.info()["state"]
    stream = client.open_stream({"cmd": "serial"})
    got = b""
    deadline = time.monotonic() + 30
    while b"sleeping" not in got and time.monotonic() < deadline:
        got += stream.read() or b""
    stream.close()
    out["console_serial"] = b"sleeping" in got
    out["console_list"] = [r.name for r in list_vms()]
    return out


def span(name: str, received: str) -> dict[str, Any]:
    """The running VM ``name`` as ``dqemu list`` and ``dqemu info`` show it; then a line on
    its console lets the guest (dqtest's ``wait_input=1``, the Linux guest's ``dq.wait=1``)
    go on to its end: it says ``received``."""
    from cluster.vm.client import StreamReader, find_vm, open_stream, ray_address

    out: dict[str, Any] = {"list": _dqemu("list", "--json"), "info": _dqemu("info", name, "--json")}
    stream = open_stream(find_vm(name, ray_address(None)), {"cmd": "serial", "write": True})
    stream.sendall(b"\n")
    reader = StreamReader(stream)  # the connection stays until the guest has the byte
    got = b""
    deadline = time.monotonic() + 120
    while received.encode() not in got and time.monotonic() < deadline:
        data = reader.read()
        if data is None:
            break
        got += data
    reader.close()
    out["received"] = received.encode() in got
    return out


def main() -> int:
    ray.init(logging_level="ERROR", log_to_driver=False)
    cluster_messages_to_stderr()  # as dqemu's own connection does
    checks = {"mesh": mesh, "place": place, "commands": commands, "span": span}
    print(format_result(checks[sys.argv[1]](*sys.argv[2:])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
