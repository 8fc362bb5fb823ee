"""Issue 12: a stranger without the secret who relays the handshake between two real
routers (each one's challenge passed on to the other) is refused by both, and the working
link between them stays; a flood of unauthenticated connections costs a bounded number of
threads and log lines, and the router stays responsive."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from cluster.router import protocol as p
from cluster.router.router import MAX_INBOUND_HANDSHAKES
from tests.support.shard_client import ShardClient
from tests.unit._router_support import RouterProcess, process_mesh, wait_for, wait_mesh_up
from tests.unit._stranger import relay


def _link_ups(proc: RouterProcess) -> list[dict[str, object]]:
    events = proc.control("health")["events"]
    return [e for e in events if e["event"] == "link_up"]


def test_relayed_handshake_is_refused(tmp_path: Path) -> None:
    with process_mesh([1, 2], tmp_path) as procs:
        wait_mesh_up(procs)
        clients = {i: ShardClient.connect(procs[i].shard_socket, i) for i in (1, 2)}
        try:
            clients[2].on(p.MSG_PIO_REQ, lambda f: p.PioReply(9, 0))
            before = {i: _link_ups(procs[i]) for i in (1, 2)}
            assert all(len(v) == 1 for v in before.values()), before
            ports = {i: int(procs[i].cfg["listen"].rpartition(":")[2]) for i in (1, 2)}
            out = relay(("127.0.0.1", ports[1]), ("127.0.0.1", ports[2]))
            # the stranger was refused by both and never saw AUTH_OK
            assert not out["authenticated"] and not out["injected_quit"], out
            assert out["both_closed"], out
            assert "AUTH_OK" not in out["from_a"] and "AUTH_OK" not in out["from_b"], out
            # router 1 never accepts shard 2 dialing it; router 2 hears the refusal
            assert any("shard 2 dialed shard 1" in e for e in out["errors_a"]), out
            wait_for(lambda: "refused peer 127.0.0.1:" in procs[1].log(), what="router 1 log")
            assert "shard 2 dialed shard 1, but shard 1 is the one that dials" in procs[1].log()
            wait_for(lambda: "refused us" in procs[2].log(), what="router 2 log")
            # the working link is the one from before, untouched, and still carries traffic
            for i in (1, 2):
                assert _link_ups(procs[i]) == before[i]
                h = procs[i].control("health")
                assert all(v["state"] == "up" for v in h["peers"].values()), h
                assert not [e for e in h["events"] if e["event"] == "link_lost"], h["events"]
            assert clients[1].request(2, p.PioReq(1, 1, 0, 0, 0)) == p.PioReply(9, 0)
            for c in clients.values():
                f = c.recv(0.3)
                assert f is None or not isinstance(f.msg, p.Command), f
                assert c.lost_reason is None
        finally:
            for c in clients.values():
                c.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _counted(proc: RouterProcess) -> int:
    """Inbound TCP connections the router has accepted so far (each one is either handed
    to a handshake thread or dropped at once, and counted as such)."""
    hs = proc.control("stats")["handshakes"]
    return int(hs["inbound_accepted"]) + int(hs["inbound_dropped_busy"])


def test_connection_flood_is_bounded(tmp_path: Path) -> None:
    """1000 connections that never finish a handshake: few threads, few log lines, and the
    router answers its control socket and forwards traffic meanwhile."""
    n = 1000
    with process_mesh([1, 2], tmp_path) as procs:
        wait_mesh_up(procs)
        r2 = procs[2]
        assert r2.proc is not None
        port = int(r2.cfg["listen"].rpartition(":")[2])
        clients = {i: ShardClient.connect(procs[i].shard_socket, i) for i in (1, 2)}
        clients[2].on(p.MSG_PIO_REQ, lambda f: p.PioReply(3, 0))
        base = _threads(r2.proc.pid)
        log_before = len(r2.log().splitlines())
        counted_before = _counted(r2)  # router 1's link
        conns: list[socket.socket] = []
        peak = base
        t0 = time.monotonic()
        try:
            for k in range(n):
                with contextlib.suppress(OSError):
                    s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
                    conns.append(s)
                    if k % 3 == 1:  # some send garbage, the rest say nothing at all
                        with contextlib.suppress(OSError):
                            s.sendall(b"\xff" * 40)
                if k % 50 == 0:
                    peak = max(peak, _threads(r2.proc.pid))
                    # responsive meanwhile: control API and forwarding
                    assert r2.control("health")["peers"]["1"]["state"] == "up"
            assert clients[1].request(2, p.PioReq(1, 1, 0, 0, 0), timeout=5.0) == p.PioReply(3, 0)
            assert len(conns) >= n - 10, len(conns)
            # connect() returns once the kernel has queued the connection on the listening
            # socket (backlog 64), not once the router has accepted it: the housekeeping
            # thread accepts one per select round and shares the GIL with the handshake
            # threads, so under load it may still have dozens to take here (seen: 982 of 1000
            # counted). The count is checked once the router has taken them all.
            wait_for(lambda: _counted(r2) - counted_before >= len(conns), timeout=15.0,
                     what="the router to accept every connection")  # fmt: skip
            peak = max(peak, _threads(r2.proc.pid))
            assert peak <= base + MAX_INBOUND_HANDSHAKES + 2, (base, peak)
            hs = r2.control("stats")["handshakes"]
            assert hs["inbound_in_progress"] <= MAX_INBOUND_HANDSHAKES, hs
        finally:
            for s in conns:
                s.close()
        # idle handshakes end by the handshake timeout (2 s), and the threads with them
        wait_for(lambda: r2.control("stats")["handshakes"]["inbound_in_progress"] == 0,
                 timeout=15.0, what="handshakes drained")  # fmt: skip
        # the lines held back by the rate limit are counted in one line per period (10 s)
        wait_for(lambda: "not logged in the last" in r2.log(), timeout=20.0, what="summary")
        for c in clients.values():
            c.close()
        # at most 5 refusal lines and one summary per 10 s period that the flood touched
        periods = int((time.monotonic() - t0) / 10.0) + 2
        lines = r2.log().splitlines()[log_before:]
        refusals = [ln for ln in lines if "refused peer" in ln or "dropped connection" in ln]
        assert len(refusals) <= 5 * periods, (len(refusals), periods)
        assert len(lines) <= 6 * periods + 20, lines[:80]
        assert "Traceback" not in r2.log()
        assert r2.proc.poll() is None
