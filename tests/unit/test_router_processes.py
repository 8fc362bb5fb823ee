"""Real router processes on 127.0.0.1: mesh traffic, kill -9, SIGTERM, CLI errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.router import protocol as p
from tests.support.requests import Handler, LinkLost
from tests.support.shard_client import ShardClient
from tests.unit._router_support import (
    ROOT,
    SECRET,
    free_port,
    process_mesh,
    router_config,
    wait_for,
    wait_mesh_up,
)


def test_mesh_of_four_processes(tmp_path: Path) -> None:
    ids = [1, 2, 3, 4]
    with process_mesh(ids, tmp_path) as procs:
        wait_mesh_up(procs)
        clients = {i: ShardClient.connect(procs[i].shard_socket, i) for i in ids}
        try:

            def handler_for(shard: int) -> Handler:
                def handle(f: p.Frame) -> p.Message:
                    assert isinstance(f.msg, p.MmioReq)
                    return p.MmioReply(f.msg.addr + shard, 0)

                return handle

            for i in ids:
                clients[i].on(p.MSG_MMIO_REQ, handler_for(i))
            for src in ids:
                for dst in ids:
                    if src != dst:
                        r = clients[src].request(dst, p.MmioReq(0x1000, 0, 4, 0, 0, 0))
                        assert r == p.MmioReply(0x1000 + dst, 0)
            clients[3].broadcast(p.ApicState(3, 3, 1 << 27, 0xFFFFFFFF))
            for i in (1, 2, 4):
                f = clients[i].recv(3.0)
                assert f is not None and f.src == 3 and isinstance(f.msg, p.ApicState)
            assert clients[3].recv(0.2) is None
            stats = procs[1].control("stats")
            assert stats["links"]["shard:2"]["per_type"]["MMIO_REQ"]["tx_msgs"] == 1
        finally:
            for c in clients.values():
                c.close()


def test_kill9_fails_pending_requests_promptly(tmp_path: Path) -> None:
    with process_mesh([1, 2, 3], tmp_path) as procs:
        wait_mesh_up(procs)
        c1 = ShardClient.connect(procs[1].shard_socket, 1)
        c2 = ShardClient.connect(procs[2].shard_socket, 2)  # never answers
        try:
            errors: list[BaseException] = []
            done_at: list[float] = []

            def ask() -> None:
                try:
                    c1.request(2, p.PioReq(0x60, 1, 0, 0, 0), timeout=30.0)
                except BaseException as e:
                    errors.append(e)
                done_at.append(time.monotonic())

            threads = [threading.Thread(target=ask) for _ in range(8)]
            for t in threads:
                t.start()
            wait_for(
                lambda: procs[1].control("stats")["links"]["shard:2"]["pending_requests"] == 8,
                what="8 requests pending at router 1",
            )
            t_kill = time.monotonic()
            assert procs[2].proc is not None
            procs[2].proc.kill()  # SIGKILL: no goodbye
            procs[2].proc.wait(5.0)
            for t in threads:
                t.join(10.0)
            assert len(errors) == 8 and all(isinstance(e, LinkLost) for e in errors), errors
            assert max(done_at) - t_kill < 2.0
            health = procs[1].control("health")
            assert not health["ok"] and health["peers"]["2"]["state"] != "up"
            assert any(e["event"] == "link_lost" and e["failed_requests"] == 8
                       for e in health["events"])  # fmt: skip
            assert "failed 8 pending request(s)" in procs[1].log()
            # the rest of the mesh keeps working
            c3 = ShardClient.connect(procs[3].shard_socket, 3)
            c3.on(p.MSG_PIO_REQ, lambda f: p.PioReply(1, 0))
            assert c1.request(3, p.PioReq(0x60, 1, 0, 0, 0)) == p.PioReply(1, 0)
            c3.close()
        finally:
            c1.close()
            c2.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_clean_exit(tmp_path: Path, sig: signal.Signals) -> None:
    with process_mesh([1, 2], tmp_path) as procs:
        wait_mesh_up(procs)
        c = ShardClient.connect(procs[1].shard_socket, 1)
        try:
            pr = procs[1]
            assert pr.shard_socket.exists() and pr.control_socket.exists()
            assert (pr.shard_socket.stat().st_mode & 0o777) == 0o600
            assert (pr.socket_dir.stat().st_mode & 0o777) == 0o700
            pr.signal(sig)
            assert pr.wait(10.0) == 0
            assert not pr.socket_dir.exists()
            assert "Traceback" not in pr.log()
            with pytest.raises(LinkLost):
                c.request(2, p.PioReq(1, 1, 0, 0, 0), timeout=5.0)
            wait_for(
                lambda: procs[2].control("health")["peers"]["1"]["state"] != "up",
                what="peer notices",
            )
        finally:
            c.close()


def _run_cli(
    args: list[str], *, module: str = "cluster.router"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert needle in lines[0], lines[0]


def test_cli_errors(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    good = router_config(1, [1, 2], tmp_path, {1: 0, 2: 7002})
    cases: list[tuple[dict[str, object] | str, str]] = [
        ("vm_id = [", "invalid TOML"),
        ({k: v for k, v in good.items() if k != "listen"}, "missing required key 'listen'"),
        ({**good, "colour": "red"}, "unknown key 'colour'"),
        ({**good, "shard_id": -1}, "shard_id -1 out of range"),
        ({**good, "listen": "nowhere"}, "listen: address 'nowhere' is not host:port"),
        ({**good, "peers": {"x": "h:1"}}, "peers: peer shard id 'x' is not an integer"),
        ({**good, "vm_id": "bad id!"}, "vm_id 'bad id!' must be"),
        ({**good, "routes": {"vcpus": {"0": 9}}}, "no such shard"),
    ]
    for i, (data, needle) in enumerate(cases):
        if isinstance(data, str):
            path = tmp_path / f"c{i}.toml"
            path.write_text(data)
        else:
            path = tmp_path / f"c{i}.json"
            path.write_text(json.dumps(data))
        res = _run_cli(["--config", str(path), "--secret-file", str(secret)])
        _assert_one_line_error(res, needle)
    cfg = tmp_path / "good.json"
    cfg.write_text(json.dumps(good))
    res = _run_cli(["--config", str(tmp_path / "none.toml"), "--secret-file", str(secret)])
    _assert_one_line_error(res, "cannot read")
    loose = tmp_path / "loose"
    loose.write_bytes(SECRET)
    loose.chmod(0o644)
    res = _run_cli(["--config", str(cfg), "--secret-file", str(loose)])
    _assert_one_line_error(res, "mode 0644")
    # port in use
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = {**good, "listen": f"127.0.0.1:{s.getsockname()[1]}"}
        cfg2 = tmp_path / "busy.json"
        cfg2.write_text(json.dumps(busy))
        res = _run_cli(["--config", str(cfg2), "--secret-file", str(secret)])
        _assert_one_line_error(res, "cannot listen on 127.0.0.1:")
    # argparse errors are one usage line + one error line, no traceback
    res = _run_cli(["--config", str(cfg)])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "one of the arguments --secret-fd --secret-file is required" in res.stderr
    # through the dqemu entry point
    res = _run_cli(["router", "--config", str(tmp_path / "c0.toml"), "--secret-file", str(secret)],
                   module="cluster.cli")  # fmt: skip
    _assert_one_line_error(res, "dqemu: error: config")


def test_secret_fd_and_dqemu_entry_point(tmp_path: Path) -> None:
    import os

    cfg = router_config(1, [1], tmp_path, {1: free_port()})
    path = tmp_path / "r.toml"
    path.write_text(
        "\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.items() if k != "peers") + "\n"
    )
    r, w = os.pipe()
    os.write(w, SECRET)
    os.close(w)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "router", "--config", str(path),
         "--secret-fd", str(r)],
        cwd=ROOT, pass_fds=(r,), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(r)
    try:
        sock = Path(cfg["socket_dir"]) / "shard.sock"
        wait_for(sock.exists, 10.0, "socket")
        c = ShardClient.connect(sock, 1)
        assert c.ping_router() < 1.0
        c.close()
        # the secret is not on the command line
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert SECRET not in cmdline
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert SECRET.decode() not in err
    assert not sock.exists()
