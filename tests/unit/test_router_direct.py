"""Direct shard links (data_path = "direct"): the routers' side, with stand-in shards.

Each stand-in registers with FEAT_DIRECT and reads its router socket with recvmsg(), as
the QEMU shard does (hw/dqemu/direct.c), so it gets the stats page and the direct socket
with SCM_RIGHTS; frames then go shard to shard on that socket.
"""

from __future__ import annotations

import mmap
import socket
import struct
import time
from pathlib import Path

import pytest

from cluster.router import protocol as p
from cluster.router.auth import HandshakeRefused, compute_mac, handshake
from tests.unit._router_support import InProcessMesh, wait_for


class DirectShard:
    """A stand-in shard that takes direct links."""

    def __init__(self, path: Path, shard: int) -> None:
        self.id = shard
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(str(path))
        self.sock.sendall(
            p.encode_frame(
                p.Register(shard, 1, p.FEAT_DIRECT), src=shard, dst=p.DST_ROUTER,
                flags=p.FLAG_WANT_REPLY, request_id=1,
            )
        )  # fmt: skip
        self.dec = p.FrameDecoder()
        self.fds: list[int] = []
        self.frames: list[p.Frame] = []
        self.page: mmap.mmap | None = None
        self.direct: dict[int, socket.socket] = {}
        self.slots: dict[int, int] = {}

    def pump(self, timeout: float = 0.2) -> None:
        self.sock.settimeout(timeout)
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
        except TimeoutError:
            return
        self.fds += fds
        for f in self.dec.feed(data):
            if f.type == p.MSG_SHARD_FD:
                assert isinstance(f.msg, p.ShardFd)
                fd = self.fds.pop(0)
                if f.msg.kind == p.FD_STATS:
                    self.page = mmap.mmap(fd, f.msg.slot * p.STATS_SLOT_SIZE)
                    socket.close(fd)
                else:
                    self.direct[f.msg.peer_shard] = socket.socket(fileno=fd)
                    self.slots[f.msg.peer_shard] = f.msg.slot
            else:
                self.frames.append(f)

    def wait_direct(self, peer: int) -> socket.socket:
        deadline = time.monotonic() + 10
        while peer not in self.direct:
            assert time.monotonic() < deadline, f"shard {self.id}: no direct link to {peer}"
            self.pump()
        assert self.page is not None, "the stats page comes first"
        return self.direct[peer]

    def count_tx(self, peer: int, frame: bytes) -> None:
        """What the QEMU shard does for every frame it sends direct."""
        assert self.page is not None
        base = self.slots[peer] * p.STATS_SLOT_SIZE
        t = frame[5]
        for idx, add in ((512 + t, 1), (768 + t, len(frame))):
            (v,) = struct.unpack_from("<Q", self.page, base + 8 * idx)
            struct.pack_into("<Q", self.page, base + 8 * idx, v + add)

    def close(self) -> None:
        for s in self.direct.values():
            s.close()
        if self.page is not None:
            self.page.close()
        self.sock.close()


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    with InProcessMesh([0, 1], tmp_path, data_path="direct") as m:
        m.wait_links()
        yield m


def test_shards_get_authenticated_direct_links_and_the_router_counts_them(
    mesh: InProcessMesh,
) -> None:
    a = DirectShard(mesh.routers[0].cfg.shard_socket, 0)
    b = DirectShard(mesh.routers[1].cfg.shard_socket, 1)
    try:
        da, db = a.wait_direct(1), b.wait_direct(0)
        # a frame from shard 0 to shard 1 on the direct link, no router in between
        frame = p.encode_frame(
            p.PioReq(0x3F8, 1, 1, 0, 0x41), src=0, dst=1, flags=p.FLAG_WANT_REPLY, request_id=7
        )
        before = mesh.routers[0].stats()["links"]["shard:1"]["tx_msgs"]
        da.sendall(frame)
        a.count_tx(1, frame)
        db.settimeout(5.0)
        f = p.decode_frame(db.recv(len(frame), socket.MSG_WAITALL))
        assert (f.src, f.dst, f.request_id) == (0, 1, 7)
        assert isinstance(f.msg, p.PioReq) and f.msg.data == 0x41
        # the router never saw it, yet its stats of the link to shard 1 count it
        link = mesh.routers[0].stats()["links"]["shard:1"]
        assert link["per_type"]["PIO_REQ"]["tx_msgs"] == 1
        assert link["tx_msgs"] == before + 1
        assert mesh.routers[0].stats()["direct_links"] == [1]
    finally:
        a.close()
        b.close()


def test_a_shard_without_feat_direct_gets_no_direct_link(mesh: InProcessMesh) -> None:
    plain = mesh.client(0)  # REGISTER without FEAT_DIRECT below
    plain.close()
    a = DirectShard(mesh.routers[0].cfg.shard_socket, 0)
    b_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b_sock.connect(str(mesh.routers[1].cfg.shard_socket))
    b_sock.sendall(
        p.encode_frame(
            p.Register(1, 1, 0), src=1, dst=p.DST_ROUTER, flags=p.FLAG_WANT_REPLY, request_id=1
        )
    )
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            a.pump(0.1)
        assert a.direct == {}  # shard 1 cannot take one: router 1 refuses the data connection
        assert mesh.routers[1].stats()["direct_links"] == []
    finally:
        a.close()
        b_sock.close()


def test_data_handshake_needs_the_secret_and_its_own_label(mesh: InProcessMesh) -> None:
    args = ("vm1", 1, 0, 1, b"n" * 32, b"m" * 32)
    assert compute_mac(b"s" * 32, *args, p.ROLE_DATA) != compute_mac(b"s" * 32, *args)
    b = DirectShard(mesh.routers[1].cfg.shard_socket, 1)  # router 1 takes data links now
    try:
        wait_for(lambda: mesh.routers[1].local is not None, what="shard 1 registered")
        addr = mesh.routers[1].listen_addr
        with (
            socket.create_connection((addr.host, addr.port), timeout=5) as s,
            pytest.raises(HandshakeRefused) as e,
        ):
            handshake(
                s, own_id=0, vm_id="vm1", secret=b"x" * 32, features=p.FEATURES_KNOWN,
                is_peer=lambda sid: sid == 1, timeout=5.0, dialed=True, kind=p.ROLE_DATA,
            )  # fmt: skip
        assert e.value.code == p.ERR_AUTH_FAILED
        assert mesh.routers[1].stats()["direct_links"] == []
    finally:
        b.close()


def test_a_lost_direct_link_ends_in_link_state_down(mesh: InProcessMesh) -> None:
    a = DirectShard(mesh.routers[0].cfg.shard_socket, 0)
    try:
        a.pump()
        a.sock.sendall(
            p.encode_frame(p.LinkState(1, p.LINK_DOWN, p.ERR_LINK_DOWN), src=0, dst=p.DST_ROUTER)
        )

        def down() -> bool:
            a.pump(0.1)
            return any(
                f.type == p.MSG_LINK_STATE
                and isinstance(f.msg, p.LinkState)
                and (f.msg.shard_id, f.msg.state) == (1, p.LINK_DOWN)
                for f in a.frames
            )

        wait_for(down, 2.0, "LINK_STATE DOWN for shard 1")
        r0 = mesh.routers[0]
        assert r0.stats()["liveness"]["direct_links_lost"] == 1
        assert [d["shard"] for d in r0.health()["down"]] == [1]
    finally:
        a.close()
