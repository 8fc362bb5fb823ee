#!/usr/bin/env python3
"""What authenticating every router-to-router frame would cost (issue 12; not a test).

(a) C, per frame (bench/frame_mac.c, compiled now against OpenSSL's libcrypto): HMAC-SHA256
    with a per-link key, AES-128-GCM and ChaCha20-Poly1305, for a PIO_REQ frame (40 B), a
    64 B frame and a PAGE_REPLY frame (4136 B). Each router-to-router hop costs one MAC at
    the sender and one check at the receiver, and a request's round trip crosses two such
    hops: so four operations per round trip, on the data path's thread.
(b) Python ``ssl`` (TLS 1.3) against plain TCP: a one-hop ping-pong of a 40-byte frame on
    127.0.0.1 between two processes (blocks interleaved, every process on CPU 0 as in
    bench/router_latency.py), p50 of the round trip.

Compare with ``router_rtt_us`` of bench/router_latency.py (today's round trip through two
routers). Last line: ``mac_rtt_add_us=<4 x AES-GCM 40 B> tls_hop_add_us=<TLS - plain p50>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (40, 64, 4136)
FRAME = 40


def c_costs(tmp: Path, iters: int) -> dict[int, dict[str, float]]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("frame_auth_cost: no C compiler (gcc)")
    exe = tmp / "frame_mac"
    res = subprocess.run(
        [cc, "-O2", "-o", str(exe), str(ROOT / "bench" / "frame_mac.c"), "-lcrypto"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        sys.exit(f"frame_auth_cost: cannot build frame_mac.c (libssl-dev?): {res.stderr[-500:]}")
    out: dict[int, dict[str, float]] = {}
    for size in SIZES:
        line = subprocess.run(
            [str(exe), str(size), str(iters)], capture_output=True, text=True, check=True
        ).stdout.split()
        out[size] = {k: float(v) for k, v in (kv.split("=") for kv in line[1:])}
    return out


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=dqemu-bench", "-days", "1", "-keyout", str(key),
         "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    return key, cert


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def serve(listener: socket.socket, ctx: ssl.SSLContext | None) -> None:
    """Child: echo FRAME-byte messages on each connection until it closes."""
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(conn, server_side=True) if ctx else conn
        try:
            while True:
                s.sendall(recv_exact(s, FRAME))
        except (ConnectionError, OSError):
            s.close()


def pingpong(port: int, ctx: ssl.SSLContext | None, iters: int) -> list[float]:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname="dqemu-bench") if ctx else raw
    msg = bytes(FRAME)
    out = []
    try:
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            recv_exact(s, FRAME)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
    finally:
        s.close()
    return out


def tls_vs_plain(tmp: Path, iters: int, blocks: int) -> tuple[float, float]:
    key, cert = make_cert(tmp)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)
    pids, ports = [], {}
    try:
        for name, ctx in (("plain", None), ("tls", sctx)):
            ls = socket.create_server(("127.0.0.1", 0))
            ports[name] = ls.getsockname()[1]
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    serve(ls, ctx)
                finally:
                    os._exit(0)
            ls.close()
            pids.append(pid)
        plain: list[float] = []
        tls: list[float] = []
        for _ in range(blocks):
            plain += pingpong(ports["plain"], None, iters)
            tls += pingpong(ports["tls"], cctx, iters)
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return statistics.median(plain), statistics.median(tls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mac-iters", type=int, default=100_000, help="C operations per size")
    ap.add_argument("--iters", type=int, default=1000, help="round trips per ping-pong block")
    ap.add_argument("--blocks", type=int, default=5, help="interleaved blocks per path")
    ap.add_argument("--cpus", default="0", help="CPU set for every process ('all': unpinned)")
    args = ap.parse_args()
    if args.cpus != "all":
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    with tempfile.TemporaryDirectory(prefix="dq-frameauth-") as d:
        tmp = Path(d)
        costs = c_costs(tmp, args.mac_iters)
        for size, c in costs.items():
            print(f"C per frame, {size:5d} B: " + "  ".join(f"{k}={v:.0f}" for k, v in c.items()))
        plain, tls = tls_vs_plain(tmp, args.iters, args.blocks)
    print(f"python one-hop ping-pong p50: plain_tcp_us={plain:.1f} tls13_us={tls:.1f}")
    gcm = costs[FRAME]["aes128_gcm_ns"] / 1000.0
    hm = costs[FRAME]["hmac_sha256_ns"] / 1000.0
    print(
        f"per router round trip (4 ops on 40 B frames): aes128_gcm_us={4 * gcm:.2f} "
        f"hmac_sha256_us={4 * hm:.2f}"
    )
    print(f"mac_rtt_add_us={4 * gcm:.2f} tls_hop_add_us={tls - plain:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
