#!/usr/bin/env python3
"""Router latency and throughput benchmark (not a test).

Two hosts, A and B, are network namespaces joined by veth (loopback/netns.py). Router A
(shard 1) runs in A, router B (shard 2) in B. Measured:

(a) router round trip: a client on A's UNIX socket sends PIO_REQ to shard 2 -> router A ->
    TCP -> router B -> an echo client on B's UNIX socket, which answers PIO_REPLY back the
    same way. Reported for a lean synchronous client (headline) and for ShardClient.request.
(a') the same round trip between two C shard ends (bench/shard_pingpong.c, compiled now
    against the QEMU series' own header): what talks to a router is C (QEMU), so this is
    the routers' and their link's figure, without a Python client's and echo's cost.
(b) raw one-hop ping-pong of the same frame size from A's namespace to B's over the veth,
    in Python (blocking sockets, TCP_NODELAY; run in blocks interleaved with (a) so both
    see the same machine load) and in C (bench/pingpong.c, compiled now).
(c) one-way throughput over one router link: small frames from A's client to a sink on B.

``--transport rdma`` links the two routers by RDMA (the raw figures stay TCP's).
``--data-path direct`` gives the routers direct shard links: the C ends of (a') take them
(with ``--transport rdma``, the queue pair the series' hw/dqemu/rdma.c sets up over them,
busy-polled), so their round trip is one hop each way, through no router.

Last line: ``router_rtt_us=<p50> raw_rtt_us=<p50> ratio=<router/raw> msgs_per_s=<n>``
(raw = the Python one-hop p50); the line before it, ``router_c_rtt_us=<p50>
raw_c_rtt_us=<p50> ratio_c=<router/raw>``, is (a') against the C one-hop. Needs root for
namespaces; ``--no-netns`` runs everything on 127.0.0.1 instead. Every process and
namespace is cleaned up on every exit path.

CPUs: by default every process of the bench runs on CPU 0 (``--cpus``). On a VM whose
idle vCPUs halt, a wake-up that crosses CPUs costs tens of microseconds (the halted vCPU
must be woken), and the scheduler's placement decides how many of a round trip's hand-offs
cross CPUs: unpinned, the same raw one-hop ping-pong measured 6 us in one run and 60 us in
the next, and the ratio swung between 0.3 and 9.6. On one CPU every hand-off is a plain
context switch, on both paths alike, so the figures compare the software paths.
``--cpus all`` measures unpinned.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.router import protocol as p  # noqa: E402
from cluster.router.auth import generate_secret, write_secret_file  # noqa: E402
from cluster.router.control import ControlError, control_call  # noqa: E402
from loopback.netns import Topology, available  # noqa: E402
from tests.support.proto_header import write_include_dir, write_rdma_sources  # noqa: E402
from tests.support.shard_client import ShardClient  # noqa: E402

HDR = p.HEADER
REQ_TYPE, REP_TYPE = p.MSG_PIO_REQ, p.MSG_PIO_REPLY
FRAME_SIZE = p.HEADER_SIZE + 16  # PIO_REQ / PIO_REPLY
# a bound for a hang, not a timing: in the RDMA test host (TCG) a role's exit took over 5 s
EXIT_WAIT = 120
TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")  # listening sockets: state 0A


def parse_cpus(text: str) -> set[int]:
    """``0``, ``0,1`` or ``0-1`` -> a CPU set; a clear error for anything else."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(
            f"router_latency: --cpus {text!r}: expected e.g. 0, 0,1, 0-1 or all"
        ) from None
    online = os.sched_getaffinity(0)
    if not cpus or not cpus <= online:
        raise SystemExit(f"router_latency: --cpus {text!r}: this process may use CPUs "
                         f"{sorted(online)}")  # fmt: skip
    return cpus


def parse_kv(text: str) -> dict[str, float]:
    """``p50_us=X p99_us=Y`` (the C programs' output) -> a dict."""
    return {k: float(v) for k, v in (kv.split("=") for kv in text.split())}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


# --- roles run as child processes ----------------------------------------------------------------


def register(path: str, shard: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(
        p.encode_frame(
            p.Register(shard, os.getpid(), 0), src=shard, dst=p.DST_ROUTER,
            flags=p.FLAG_WANT_REPLY, request_id=1,
        )
    )  # fmt: skip
    dec = p.FrameDecoder()
    while True:
        for f in dec.feed(s.recv(65536)):
            if f.is_reply and f.request_id == 1:
                if f.is_error:
                    raise SystemExit(f"register failed: {f.msg}")
                return s


def role_echo(path: str, shard: int) -> None:
    """Answer every request by rewriting its header in place (PIO_REQ -> PIO_REPLY); drop
    every other frame, as a real shard does. Sent back, the router's LINK_STATE UP (to this
    shard, dst = its own id) would come straight back (a frame from a shard to its own id
    is delivered to that shard) and bounce between the router and the echo for ever,
    loading both under every round trip (bench/shard_pingpong.c's echo did the same)."""
    s = register(path, shard)
    print("ready", flush=True)
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    start = end = 0
    pack_into, unpack_from = HDR.pack_into, HDR.unpack_from
    while True:
        n = s.recv_into(mv[end:])
        if not n:
            return
        end += n
        spans: list[tuple[int, int]] = []  # the requests' bytes, adjacent ones merged
        while end - start >= 24:
            magic, ver, _t, flags, src, dst, length, rid = unpack_from(buf, start)
            if end - start < 24 + length:
                break
            if flags & p.FLAG_WANT_REPLY:
                pack_into(buf, start, magic, ver, REP_TYPE, p.FLAG_REPLY, dst, src, length, rid)
                if spans and spans[-1][1] == start:
                    spans[-1] = (spans[-1][0], start + 24 + length)
                else:
                    spans.append((start, start + 24 + length))
            start += 24 + length
        for a, b in spans:
            s.sendall(mv[a:b])
        if start == end:
            start = end = 0
        elif start > len(buf) // 2:
            buf[: end - start] = buf[start:end]
            end -= start
            start = 0


def role_sink(path: str, shard: int, count: int) -> None:
    s = register(path, shard)
    print("ready", flush=True)
    buf = bytearray(1 << 20)
    got = 0
    t_first = 0.0
    partial = 0
    while got < count:
        n = s.recv_into(buf)
        if not n:
            break
        if not t_first:
            t_first = time.monotonic()
        # frames are all the same size here: count them by bytes
        partial += n
        got += partial // FRAME_SIZE
        partial %= FRAME_SIZE
    print(json.dumps({"count": got, "t_first": t_first, "t_last": time.monotonic()}), flush=True)


def role_raw_server(host: str, port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    print("ready", flush=True)
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(FRAME_SIZE)
    mv = memoryview(buf)
    while True:
        got = 0
        while got < FRAME_SIZE:
            n = c.recv_into(mv[got:])
            if not n:
                return
            got += n
        c.sendall(buf)


def role_raw_client(host: str, port: int) -> None:
    """Reads a count per stdin line, does that many round trips, prints the latencies."""
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = p.encode_frame(p.PioReq(0x3F8, 1, 0, 0, 0), src=1, dst=2)
    buf = bytearray(FRAME_SIZE)
    mv = memoryview(buf)
    print("ready", flush=True)
    for line in sys.stdin:
        lat: list[float] = []
        for _ in range(int(line)):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            got = 0
            while got < FRAME_SIZE:
                got += s.recv_into(mv[got:])
            lat.append((time.perf_counter_ns() - t0) / 1000)
        print(json.dumps(lat), flush=True)


# --- orchestration -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="dq-bench-"))
        self.procs: list[subprocess.Popen[Any]] = []
        self.topo: Topology | None = None
        self.ip = ["127.0.0.1", "127.0.0.1"]

    def spawn(self, host: int | None, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        if host is not None and self.topo is not None:
            proc = self.topo.popen(host, argv, **kw)
        else:
            proc = subprocess.Popen(argv, **kw)
            self.procs.append(proc)
        return proc

    def run_in(self, host: int, argv: list[str]) -> str:
        full = self.topo.exec_args(host, argv) if self.topo is not None else argv
        return subprocess.run(full, capture_output=True, text=True, check=True, timeout=300).stdout

    def role(self, host: int | None, *role_args: str, **kw: Any) -> subprocess.Popen[Any]:
        proc = self.spawn(
            host,
            [sys.executable, str(Path(__file__).resolve()), *role_args],
            stdout=subprocess.PIPE,
            text=True,
            **kw,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"bench role {role_args[0]} failed to start: {line!r}")
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.topo is not None:
            self.topo.teardown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_routers(self) -> list[Path]:
        secret = write_secret_file(self.tmp / "secret", generate_secret())
        ports = [7101, 7102]
        socks: list[dict[str, Any]] = []
        for i in (0, 1):
            shard = i + 1
            other = 1 - i
            cfg = {
                "vm_id": "bench",
                "shard_id": shard,
                "listen": f"{self.ip[i]}:{ports[i] if self.topo else 0}",
                "socket_dir": str(self.tmp / f"r{shard}"),
                "peers": {str(other + 1): f"{self.ip[other]}:{ports[other]}"},
            }
            if self.args.busy_poll_us is not None:
                cfg["busy_poll_us"] = self.args.busy_poll_us
            if self.args.busy_poll_cpu is not None:
                cfg["busy_poll_cpu"] = self.args.busy_poll_cpu
            if self.args.transport == "rdma":
                cfg.update(transport="rdma", rdma_device=self.args.rdma_device)
            if self.args.data_path == "direct":
                cfg["data_path"] = "direct"
            if not self.topo:  # on 127.0.0.1 pick free ports
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    ports[i] = s.getsockname()[1]
                cfg["listen"] = f"127.0.0.1:{ports[i]}"
            socks.append(cfg)
        if not self.topo:
            for i in (0, 1):
                socks[i]["peers"] = {str(2 - i): f"127.0.0.1:{ports[1 - i]}"}
        paths = []
        for i, cfg in enumerate(socks):
            path = self.tmp / f"router{i + 1}.json"
            path.write_text(json.dumps(cfg))
            log = open(self.tmp / f"router{i + 1}.log", "wb")  # noqa: SIM115
            pin = ["taskset", "-c", self.args.pin_routers[i]] if self.args.pin_routers else []
            self.spawn(
                i,
                [*pin, sys.executable, "-m", "cluster.router", "--config", str(path),
                 "--secret-file", str(secret), "--log-level", "warning"],
                cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
            paths.append(self.tmp / f"r{i + 1}")
        # a bound for a hang, not a timing: in the RDMA test host (TCG) the routers' start
        # alone takes tens of seconds over either transport (15 s failed bench/rdma.py's tcp)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                h = control_call(paths[0] / "control.sock", "health", timeout=1)
                if h["peers"]["2"]["state"] == "up":
                    return paths
            except (OSError, ControlError):
                pass
            time.sleep(0.05)
        logs = (self.tmp / "router1.log").read_text() + (self.tmp / "router2.log").read_text()
        raise SystemExit(f"routers did not link up:\n{logs}")

    def latency(self, dirs: list[Path]) -> tuple[list[float], list[float], list[float]]:
        """Router RTT (lean client), raw Python RTT, router RTT (ShardClient): interleaved in
        blocks so that both see the same machine load."""
        echo = self.role(None, "--echo", str(dirs[1] / "shard.sock"), "2")
        self.role(1, "--raw-server", self.ip[1], "7200")
        raw = self.role(0, "--raw-client", self.ip[1], "7200", stdin=subprocess.PIPE, bufsize=1)
        assert raw.stdin is not None and raw.stdout is not None
        s = register(str(dirs[0] / "shard.sock"), 1)
        buf = bytearray(65536)
        router_lat: list[float] = []
        raw_lat: list[float] = []
        blocks = 20
        per = max(50, self.args.iters // blocks)
        rid = 10
        for block in range(blocks + 1):
            lat: list[float] = []
            for _ in range(per):
                rid += 1
                frame = HDR.pack(p.MAGIC, 1, REQ_TYPE, p.FLAG_WANT_REPLY, 1, 2, 16, rid)
                frame += bytes(16)
                t0 = time.perf_counter_ns()
                s.sendall(frame)
                got = 0
                while got < FRAME_SIZE:
                    got += s.recv_into(memoryview(buf)[got:])
                lat.append((time.perf_counter_ns() - t0) / 1000)
            raw.stdin.write(f"{per}\n")
            rl = json.loads(raw.stdout.readline())
            if os.environ.get("DQ_BENCH_DEBUG"):
                print(f"block {block}: router p50 {pct(lat, 50):.1f} raw p50 {pct(rl, 50):.1f}")
            if block:  # block 0 is warm-up
                router_lat += lat
                raw_lat += rl
        s.close()
        raw.stdin.close()
        raw.wait(EXIT_WAIT)
        time.sleep(0.2)
        c = ShardClient.connect(dirs[0] / "shard.sock", 1, threaded=False)
        api_lat: list[float] = []
        req = p.PioReq(0x3F8, 1, 0, 0, 0)
        for i in range(-200, self.args.iters // 2):
            t0 = time.perf_counter_ns()
            c.request(2, req, timeout=5.0)
            if i >= 0:
                api_lat.append((time.perf_counter_ns() - t0) / 1000)
        c.close()
        echo.terminate()
        echo.wait(EXIT_WAIT)
        return router_lat, raw_lat, api_lat

    def compile_c(self, name: str, rdma: bool = False) -> Path | None:
        """bench/<name>.c built now (with the QEMU series' header), or None without gcc;
        ``rdma``: with the series' RDMA direct link (hw/dqemu/rdma.c, libibverbs, GLib)."""
        gcc = shutil.which("gcc")
        if gcc is None:
            return None
        exe = self.tmp / name
        inc = write_include_dir(self.tmp / "include")
        extra: list[str] = []
        if rdma:
            glib = subprocess.run(
                ["pkg-config", "--cflags", "--libs", "glib-2.0"],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            extra = ["-DDQ_BENCH_RDMA", str(write_rdma_sources(inc)), *glib, "-libverbs"]
        subprocess.run(
            [gcc, "-O2", f"-I{inc}", "-o", str(exe), str(ROOT / "bench" / f"{name}.c"), *extra],
            check=True,
        )  # fmt: skip
        return exe

    def raw_c(self) -> dict[str, float] | None:
        exe = self.compile_c("pingpong")
        if exe is None:
            return None
        self.role_c(exe)
        out = self.run_in(
            0, [str(exe), "client", self.ip[1], "7201", str(FRAME_SIZE), str(self.args.iters)]
        )
        return parse_kv(out)

    def router_c(self, dirs: list[Path]) -> dict[str, float] | None:
        """(a'): the router round trip between two C shard ends (bench/shard_pingpong.c), in
        blocks; with ``--verbs-device``, ibv_rc_pingpong's round trip (busy-polled and with
        -e) runs between the blocks, so that both see the same machine load. Run first, so
        that router A's request latencies (its view of shard 2) are the C ends' alone; router
        B's view of its shard is read while the C echo is its shard."""
        direct = self.args.data_path == "direct"
        exe = self.compile_c("shard_pingpong", rdma=direct and self.args.transport == "rdma")
        if exe is None:
            return None
        # direct: the C ends take the direct link that their routers hand them
        opt = [f"direct={self.args.rdma_device}"] if direct else []
        echo = self.spawn(
            None, [str(exe), "echo", str(dirs[1] / "shard.sock"), "2", *opt],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        client = self.spawn(
            None, [str(exe), "client", str(dirs[0] / "shard.sock"), "1", "2", *opt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        assert echo.stdout is not None and client.stdin is not None and client.stdout is not None
        if echo.stdout.readline().strip() != "ready" or client.stdout.readline() != "ready\n":
            raise SystemExit("C shard ends failed to start (see the routers' logs)")
        blocks = 10 if self.args.verbs_device else 1
        per = max(50, self.args.iters // blocks)
        lat: list[float] = []
        verbs: dict[str, list[float]] = {"busy": [], "events": []}
        for block in range(blocks + 1):
            client.stdin.write(f"{per if block else max(10, per // 5)}\n")
            line = client.stdout.readline()
            if not line:
                raise SystemExit("C shard client failed (its output ended)")
            if block:  # block 0 is warm-up
                lat += [float(v) for v in line.split()]
            if self.args.verbs_device:
                verbs["busy"].append(self.verbs_block(per, 18515 + 2 * block))
                verbs["events"].append(self.verbs_block(per, 18516 + 2 * block, "-e"))
        views = [
            control_call(d / "control.sock", "stats")["links"].get(key, {}).get("request_latency")
            or {}
            for d, key in ((dirs[0], "shard:2"), (dirs[1], "local"))
        ]
        client.stdin.close()
        client.wait(EXIT_WAIT)
        echo.terminate()
        echo.wait(EXIT_WAIT)
        out = {
            "p50_us": pct(lat, 50),
            "p99_us": pct(lat, 99),
            "a_view_p50_us": float(views[0].get("p50_us") or 0),
            "b_view_p50_us": float(views[1].get("p50_us") or 0),
        }
        if self.args.verbs_device:
            out["verbs_us"] = statistics.median(verbs["busy"][1:])
            out["verbs_events_us"] = statistics.median(verbs["events"][1:])
        return out

    def verbs_block(self, iters: int, port: int, *options: str) -> float:
        """ibv_rc_pingpong on ``--verbs-device`` with frame-sized messages: its usec/iter."""
        argv = ["ibv_rc_pingpong", "-d", self.args.verbs_device, "-g", "0",
                "-s", str(FRAME_SIZE), "-n", str(iters), "-p", str(port), *options]  # fmt: skip
        server = self.spawn(None, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # under TCG the server takes seconds to listen: a client that comes too early gives
        # up, and the server would then wait for ever
        deadline = time.monotonic() + EXIT_WAIT
        listening = re.compile(rf":{port:04X} 0+:0000 0A ")
        while not any(listening.search(Path(f).read_text()) for f in TCP_TABLES):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"ibv_rc_pingpong server on port {port} did not listen")
            time.sleep(0.1)
        r = subprocess.run([*argv, "127.0.0.1"], capture_output=True, text=True, timeout=600)
        server.wait(EXIT_WAIT)
        m = re.search(r"([0-9.]+) usec/iter", r.stdout + r.stderr)
        if m is None:
            raise SystemExit(f"ibv_rc_pingpong {' '.join(options)} failed: {r.stdout}{r.stderr}")
        return float(m.group(1))

    def role_c(self, exe: Path) -> None:
        proc = self.spawn(
            1, [str(exe), "server", self.ip[1], "7201", str(FRAME_SIZE)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("C ping-pong server failed to start")

    def throughput(self, dirs: list[Path]) -> float:
        n = self.args.messages
        sink = self.role(None, "--sink", str(dirs[1] / "shard.sock"), "2", str(n))
        s = register(str(dirs[0] / "shard.sock"), 1)
        one = p.encode_frame(p.ApicState(1, 1, 0, 0), src=1, dst=2)
        assert len(one) == FRAME_SIZE
        chunk = one * 512
        t0 = time.monotonic()
        sent = 0
        while sent < n:
            k = min(512, n - sent)
            s.sendall(chunk if k == 512 else one * k)
            sent += k
        assert sink.stdout is not None
        res = json.loads(sink.stdout.readline())
        s.close()
        sink.wait(EXIT_WAIT)
        if res["count"] < n:
            raise SystemExit(f"sink got {res['count']} of {n} frames")
        return float(n / (res["t_last"] - t0))

    def main(self) -> int:
        if not self.args.no_netns:
            why = available()
            if why:
                raise SystemExit(f"router_latency: {why} (use --no-netns)")
            self.topo = Topology(2).create()
            self.ip = [h.ip for h in self.topo.hosts]
            where = f"A={self.topo.hosts[0]} B={self.topo.hosts[1]}"
        else:
            where = "127.0.0.1 (no namespaces)"
        cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        print(f"hosts: {where}; frame {FRAME_SIZE} bytes; {self.args.iters} round trips; "
              f"CPUs {cpus}")  # fmt: skip
        dirs = self.start_routers()
        router_c = self.router_c(dirs)
        router_lat, raw_lat, api_lat = self.latency(dirs)
        lean = {"p50_us": pct(router_lat, 50), "p99_us": pct(router_lat, 99)}
        raw_py = {"p50_us": pct(raw_lat, 50), "p99_us": pct(raw_lat, 99)}
        api = {"p50_us": pct(api_lat, 50), "p99_us": pct(api_lat, 99)}
        raw_c = self.raw_c()
        rates = [self.throughput(dirs) for _ in range(self.args.rounds)]
        rate = statistics.median(rates)
        full = control_call(dirs[0] / "control.sock", "stats")
        stats = full["links"].get("shard:2", {})
        dl = full.get("data_loop", {})
        dl_b = control_call(dirs[1] / "control.sock", "stats").get("data_loop", {})
        print(f"(a) router RTT, lean client:       p50 {lean['p50_us']:.1f} us  "
              f"p99 {lean['p99_us']:.1f} us")  # fmt: skip
        if router_c:
            c50, a50, b50 = (router_c[k] for k in ("p50_us", "a_view_p50_us", "b_view_p50_us"))
            print(f"(a') router RTT, C shard ends:     p50 {c50:.1f} us  "
                  f"p99 {router_c['p99_us']:.1f} us")  # fmt: skip
            print(f"     its spans (p50s): router A's view (A->B->echo->B->A) {a50} us, B's "
                  f"view of its shard (B->echo->B) {b50} us")  # fmt: skip
        print(f"    router RTT, ShardClient.request: p50 {api['p50_us']:.1f} us  "
              f"p99 {api['p99_us']:.1f} us")  # fmt: skip
        lat = stats.get("request_latency", {})
        print(f"    router A's view of shard 2:     p50 {lat.get('p50_us')} us  "
              f"p99 {lat.get('p99_us')} us (A->B->echo->B->A)")  # fmt: skip
        print(f"(b) raw one-hop Python:            p50 {raw_py['p50_us']:.1f} us  "
              f"p99 {raw_py['p99_us']:.1f} us")  # fmt: skip
        for name, d in (("A", dl), ("B", dl_b)):
            if d:
                print(f"    router {name} busy-poll: window {d['window_us']} us of "
                      f"{d['busy_poll_us']} us, spun {d['spin_cpu_s']} s CPU, hits "
                      f"{d['spin_hits']} misses {d['spin_misses']} cap stops "
                      f"{d['spin_cap_stops']}")  # fmt: skip
        if raw_c:
            print(f"    raw one-hop C:                 p50 {raw_c['p50_us']:.1f} us  "
                  f"p99 {raw_c['p99_us']:.1f} us")  # fmt: skip
        print(f"(c) one-way throughput, one link:  {rate:,.0f} msgs/s "
              f"(rounds: {', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip
        if router_c and "verbs_us" in router_c:
            print(f"    ibv_rc_pingpong between them:  {router_c['verbs_us']:.1f} us busy-polled, "
                  f"{router_c['verbs_events_us']:.1f} us with -e (medians of the blocks' "
                  "means)")  # fmt: skip
        if router_c and raw_c:
            verbs = (
                f" verbs_rtt_us={router_c['verbs_us']:.1f} "
                f"verbs_events_rtt_us={router_c['verbs_events_us']:.1f}"
                if "verbs_us" in router_c
                else ""
            )
            print(
                f"router_c_rtt_us={router_c['p50_us']:.1f} raw_c_rtt_us={raw_c['p50_us']:.1f} "
                f"ratio_c={router_c['p50_us'] / raw_c['p50_us']:.2f}{verbs}"
            )
        ratio = lean["p50_us"] / raw_py["p50_us"]
        print(
            f"router_rtt_us={lean['p50_us']:.1f} raw_rtt_us={raw_py['p50_us']:.1f} "
            f"ratio={ratio:.2f} msgs_per_s={rate:.0f}"
        )
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iters", type=int, default=5000, help="round trips per latency test")
    ap.add_argument("--messages", type=int, default=300_000, help="frames per throughput round")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    ap.add_argument("--no-netns", action="store_true", help="run on 127.0.0.1 only")
    ap.add_argument(
        "--transport", choices=("tcp", "rdma"), default="tcp",
        help="the routers' link (rdma: an RDMA device is needed, e.g. in the RDMA test host "
        "that bench/rdma.py boots)",
    )  # fmt: skip
    ap.add_argument("--rdma-device", default="", help="with --transport rdma (default: first)")
    ap.add_argument(
        "--data-path", choices=("router", "direct"), default="router",
        help="the routers' data_path; direct: the C shard ends (a') take their direct link "
        "(with --transport rdma, the queue pair they set up over it) and the round trip "
        "crosses no router",
    )  # fmt: skip
    ap.add_argument(
        "--verbs-device", default="",
        help="run ibv_rc_pingpong on this RDMA device between the C shard ends' blocks "
        "(the raw verbs round trip, frame-sized messages, busy-polled and with -e)",
    )  # fmt: skip
    ap.add_argument("--busy-poll-us", type=float, help="routers' busy_poll_us (default: theirs)")
    ap.add_argument("--busy-poll-cpu", type=float, help="routers' busy_poll_cpu (default: theirs)")
    ap.add_argument(
        "--pin-routers", type=lambda v: v.split("/"), metavar="CPUS_A/CPUS_B",
        help="diagnostic: run router A and B under taskset -c (e.g. 0/1)",
    )  # fmt: skip
    ap.add_argument(
        "--cpus", default="0", metavar="LIST|all",
        help="CPUs every process of the bench runs on (default 0; see above), or all",
    )  # fmt: skip
    ap.add_argument("--echo", nargs=2, metavar=("SOCK", "SHARD"), help=argparse.SUPPRESS)
    ap.add_argument("--sink", nargs=3, metavar=("SOCK", "SHARD", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--raw-server", nargs=2, metavar=("IP", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--raw-client", nargs=2, metavar=("IP", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        role_echo(args.echo[0], int(args.echo[1]))
        return 0
    if args.sink:
        role_sink(args.sink[0], int(args.sink[1]), int(args.sink[2]))
        return 0
    if args.raw_server:
        role_raw_server(args.raw_server[0], int(args.raw_server[1]))
        return 0
    if args.raw_client:
        role_raw_client(args.raw_client[0], int(args.raw_client[1]))
        return 0

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if args.cpus != "all":
        os.sched_setaffinity(0, parse_cpus(args.cpus))  # the children inherit it
    bench = Bench(args)
    try:
        return bench.main()
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
