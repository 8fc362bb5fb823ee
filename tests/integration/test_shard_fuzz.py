"""Fuzz the shard's own frame parser and handlers in QEMU (issue 12, item 4).

A real patched QEMU runs shard 0 of a 2-shard machine (stopped with ``-S``, so no guest
code runs) against a stand-in router on its UNIX socket. After a correct REGISTER the
router sends frames that a lying or broken peer could send: every message type with a
body of the right size and random content, random flags, request ids and source shards,
and now and then a header or length that is wrong. The shard may act on a frame, refuse
it, or end with a clear message, but it must never die of a signal, hang (QMP keeps
answering), or exit without saying why.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu.qmp import QMPError

from cluster.guest_images import ensure_guest
from cluster.qemu_build import ensure_qemu
from cluster.qemu_cmdline import BootFiles, ShardPaths, shard_argv
from cluster.router import protocol as p
from cluster.spec import parse_spec
from loopback.qmp import Monitor
from tests.conftest import TEST_ENV

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

FRAMES_PER_RUN = 400
SEEDS = [1, 2, 3, 4]
# frames that end a shard on purpose (a COMMAND may be QUIT; a RUNSTATE may be a reset
# barrier that waits for peers) are sent, but rarely, so that a run gets deep
RARE = {p.MSG_COMMAND, p.MSG_RUNSTATE}

SPEC = """
[vm]
name = "fuzz"
vcpus = 2
memory = "64M"
[boot]
kernel = "{kernel}"
[[shard]]
id = 0
vcpus = "0"
[[shard]]
id = 1
vcpus = "1"
"""


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_frame(sock: socket.socket) -> p.Header | None:
    raw = _read_exact(sock, p.HEADER_SIZE)
    if raw is None:
        return None
    h = p.decode_header(raw)
    if h.length and _read_exact(sock, h.length) is None:
        return None
    return h


def _drain(sock: socket.socket) -> None:
    """Read what the shard sends, so that it never blocks on a full socket."""
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


# what a router delivers to a shard; any other type is fatal for the shard at once (as it
# should be), so it is sent only now and then
SHARD_TYPES = [
    p.MSG_LINK_STATE, p.MSG_IRQ, p.MSG_EOI, p.MSG_APIC_STATE, p.MSG_GSI, p.MSG_DEV_IRQ,
    p.MSG_PIO_REQ, p.MSG_PIO_REPLY, p.MSG_MMIO_REQ, p.MSG_MMIO_REPLY, p.MSG_TB_INVALIDATE,
    p.MSG_MEMMAP_SYNC, p.MSG_PCI_CFG_READ, p.MSG_PCI_CFG_READ_REPLY, p.MSG_COMMAND,
    p.MSG_RUNSTATE, p.MSG_CLOCK_REQ, p.MSG_CLOCK_REPLY,
]  # fmt: skip


def _fuzz_frame(rng: random.Random) -> bytes:
    types = SHARD_TYPES if rng.random() < 0.998 else sorted(p.MESSAGES)
    t = rng.choice(types)
    while t in RARE and rng.random() < 0.9:
        t = rng.choice(types)
    cls = p.MESSAGES[t]
    size = cls.LAYOUT.size
    if cls.LAYOUT.tail is not None:
        size += rng.randrange(0, 64)
    flags = rng.choice([0, 0, p.FLAG_WANT_REPLY, p.FLAG_REPLY, p.FLAG_REPLY | p.FLAG_ERROR])
    if flags & p.FLAG_ERROR:
        t = rng.choice(types)
        size = p.SIZE_LO[p.MSG_ERROR] + rng.randrange(0, 64)
    body = bytearray(rng.randbytes(size))
    rid = rng.choice([0, 1, 2, rng.getrandbits(64)]) if flags else 0
    src = rng.choice([1, 1, 1, 0, 2, 0xFFFE, 0xFFFF, rng.getrandbits(16)])
    dst = rng.choice([0, 0, 0, 1, p.DST_ROUTER])
    magic, version = p.MAGIC, p.VERSION
    roll = rng.random()
    if roll < 0.001:  # a wrong length: the shard must refuse it, not read past the body
        size = rng.choice([0, size + 1, max(0, size - 1), p.MAX_PAYLOAD + 1])
    elif roll < 0.0015:
        magic = rng.getrandbits(32)
    elif roll < 0.002:
        flags |= 0x8000
    header = p.HEADER.pack(magic, version, t, flags, src, dst, size, rid)
    return header + bytes(body)


@dataclass
class _Shard:
    """A shard QEMU registered with the stand-in router."""

    proc: subprocess.Popen[bytes]
    conn: socket.socket
    mon: Monitor | None
    err_path: Path

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def answers_qmp(self) -> bool:
        if self.proc.poll() is not None or self.mon is None:
            return False
        self.mon.settimeout(20)
        try:
            self.mon.cmd("query-status")
        except (OSError, EOFError, QMPError):
            return False
        return True


@contextlib.contextmanager
def _shard(
    tmp: Path, spec_text: str = SPEC, wrap: tuple[str, ...] = (), qmp: bool = True
) -> Iterator[_Shard]:
    """Start shard 0 of ``spec_text`` (``wrap`` goes in front of its argv) against a
    stand-in router on its UNIX socket, answer its REGISTER, and (``qmp``) connect to its
    QMP; the QEMU is killed on the way out if it still runs."""
    qemu = ensure_qemu(quiet=True)
    kernel = ensure_guest().kernel
    spec = parse_spec(spec_text.format(kernel=kernel), origin="fuzz.toml")
    router = tmp / "router.sock"
    paths = ShardPaths(
        qmp=tmp / "qmp.sock", serial=None, ram=(tmp / "ram0", tmp / "ram1"), router=router
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(router))
    router.chmod(0o777)
    listener.listen(1)
    listener.settimeout(60)
    argv = [*wrap, *shard_argv(qemu, spec, 0, paths, BootFiles(kernel, None, ""))]
    err_path = tmp / "stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=TEST_ENV
        )
    mon: Monitor | None = None
    try:
        conn, _ = listener.accept()
        conn.settimeout(60)
        h = _read_frame(conn)
        assert h is not None and h.type == p.MSG_REGISTER, "the shard did not REGISTER"
        conn.sendall(
            p.encode_frame(
                p.RegisterOk(shard_id=0, n_shards=2, features=0),
                src=p.DST_ROUTER, dst=0, flags=p.FLAG_REPLY, request_id=h.request_id,
            )
        )  # fmt: skip
        if qmp:
            mon = Monitor(str(paths.qmp))
            deadline = time.monotonic() + 60
            while True:
                try:
                    mon.connect()
                    break
                except (OSError, EOFError, QMPError):
                    mon.close()
                    mon = Monitor(str(paths.qmp))
                    assert proc.poll() is None, f"shard exited at start: {err_path.read_text()}"
                    assert time.monotonic() < deadline, "QMP never answered"
                    time.sleep(0.1)
        try:
            yield _Shard(proc, conn, mon, err_path)
        finally:
            if mon is not None:
                with contextlib.suppress(OSError, EOFError, QMPError):
                    mon.close()
            conn.close()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _run_one(tmp: Path, seed: int) -> tuple[int | None, int, str]:
    """Start a shard, fuzz it; return (exit status or None if alive, frames sent, stderr)."""
    sent = 0
    with _shard(tmp) as sh:
        threading.Thread(target=_drain, args=(sh.conn,), daemon=True).start()
        rng = random.Random(seed)
        for _ in range(FRAMES_PER_RUN):
            if sh.proc.poll() is not None:
                break
            try:
                sh.conn.sendall(_fuzz_frame(rng))
            except OSError:
                break
            sent += 1
            if sent % 50 == 0:
                # still serving: QMP answers (a deadlock on the BQL would hang here)
                sh.answers_qmp()
        sh.answers_qmp()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sh.proc.wait(timeout=2)
        return sh.proc.poll(), sent, sh.stderr()


@pytest.mark.parametrize("seed", SEEDS)
def test_shard_survives_fuzzed_frames(tmp_path: Path, seed: int) -> None:
    status, sent, err = _run_one(tmp_path, seed)
    print(f"seed {seed}: {sent} frames, status {status}, stderr tail: {err[-300:]}")
    assert sent > 0
    if status is None:
        return  # served every frame and still answers QMP
    assert status >= 0, f"shard died of signal {-status} after {sent} frames:\n{err[-2000:]}"
    if status != 0:
        said = [ln for ln in err.splitlines() if "dqemu" in ln and "info:" not in ln]
        assert said, f"shard exited {status} without saying why:\n{err[-2000:]}"


def test_fuzz_frames_are_well_formed_mostly() -> None:
    """Most generated frames pass the header check, so the handlers are reached."""
    rng = random.Random(0)
    ok = 0
    for _ in range(1000):
        raw = _fuzz_frame(rng)
        magic, ver, t, flags, _src, _dst, length, rid = p.HEADER.unpack_from(raw)
        if p.header_error(magic, ver, t, flags, length, rid) is None:
            ok += 1
    assert ok > 800, ok


DSM_SPEC = SPEC.replace('memory = "64M"', 'memory = "64M"\nmemory_mode = "dsm"')


def _replies(conn: socket.socket, want: int, seconds: float = 30) -> list[p.Header]:
    """Frames from the shard until ``want`` error replies came (PAGE_STATS notices and
    other traffic are skipped); what came by the deadline otherwise."""
    got: list[p.Header] = []
    deadline = time.monotonic() + seconds
    conn.settimeout(1)
    while len([h for h in got if h.flags & p.FLAG_ERROR]) < want and time.monotonic() < deadline:
        try:
            h = _read_frame(conn)
        except TimeoutError:
            continue
        except OSError:
            break  # the shard is gone: the caller's checks say so, with its stderr
        if h is None:
            break
        got.append(h)
    return [h for h in got if h.flags & p.FLAG_ERROR]


@pytest.mark.parametrize("spec_text", [SPEC, DSM_SPEC], ids=["shared", "dsm"])
def test_misaddressed_frames_are_refused(tmp_path: Path, spec_text: str) -> None:
    """PAGE_STATS (0x67) is for a router; sent to a shard it used to end the shard as a
    "malformed frame" (exit from its receive thread). Now such a frame, and a request of
    a known type with a wrong length, are refused with an error reply and a message that
    names them, and the shard goes on; so is a DSM page frame from a shard that is not a
    peer."""
    stats = bytes(p.SIZE_LO[p.MSG_PAGE_STATS])
    with _shard(tmp_path, spec_text) as sh:
        frames = [
            p.HEADER.pack(p.MAGIC, p.VERSION, p.MSG_PAGE_STATS, 0, 1, 0, len(stats), 0) + stats,
            p.HEADER.pack(
                p.MAGIC, p.VERSION, p.MSG_PAGE_STATS, p.FLAG_WANT_REPLY, 1, 0, len(stats), 7
            )
            + stats,
            # a PIO request one byte short
            p.HEADER.pack(p.MAGIC, p.VERSION, p.MSG_PIO_REQ, p.FLAG_WANT_REPLY, 1, 0,
                          p.SIZE_LO[p.MSG_PIO_REQ] - 1, 8)
            + bytes(p.SIZE_LO[p.MSG_PIO_REQ] - 1),
            # a page request from shard 9 of this 2-shard VM
            p.HEADER.pack(p.MAGIC, p.VERSION, p.MSG_PAGE_REQ, p.FLAG_WANT_REPLY, 9, 0,
                          p.SIZE_LO[p.MSG_PAGE_REQ], 9)
            + bytes(p.SIZE_LO[p.MSG_PAGE_REQ]),
        ]  # fmt: skip
        for frame in frames:
            sh.conn.sendall(frame)
        errors = _replies(sh.conn, want=2)
        assert sh.answers_qmp(), f"the shard stopped serving:\n{sh.stderr()[-2000:]}"
        err = sh.stderr()
    assert "refused frame type 0x67" in err and "not a message type that a shard receives" in err
    assert "wrong body length for its type" in err, err
    if spec_text is DSM_SPEC:
        assert "DSM frame 0x60 from shard 9 refused: not a peer shard" in err, err
    by_id = {h.request_id: h for h in errors}
    assert 7 in by_id and 8 in by_id, errors


def test_dsm_without_userfaultfd_says_what_to_do() -> None:
    """A ``dsm`` shard whose user may not use userfaultfd (not root, no CAP_SYS_PTRACE, no
    access to /dev/userfaultfd, and vm.unprivileged_userfaultfd = 0) stops at start with
    a message that names the sysctl and the capability."""
    if Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() != "0":
        pytest.skip("vm.unprivileged_userfaultfd is not 0: any user may use userfaultfd here")
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the shard as another user")
    tmp = Path(tempfile.mkdtemp(prefix="dq-uffd-"))  # a directory user nobody can use
    try:
        tmp.chmod(0o777)
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--")
        with _shard(tmp, DSM_SPEC, wrap=nobody, qmp=False) as sh:
            threading.Thread(target=_drain, args=(sh.conn,), daemon=True).start()
            status = sh.proc.wait(timeout=120)
            err = sh.stderr()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(err[-1000:])
    assert status == 1, (status, err[-2000:])
    assert "needs userfaultfd, which this process may not use" in err, err[-2000:]
    assert "vm.unprivileged_userfaultfd=1" in err and "CAP_SYS_PTRACE" in err, err[-2000:]
