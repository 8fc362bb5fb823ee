"""Link authentication: wrong secret, wrong VM id, wrong version, unknown shard."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from cluster.router import protocol as p
from cluster.router.auth import (
    ROLE_DIALER,
    ROLE_LISTENER,
    HandshakeRefused,
    SecretError,
    compute_mac,
    handshake,
    load_secret_fd,
    load_secret_file,
    verify_mac,
    write_secret_file,
)
from cluster.router.transport import LinkClosed, read_frame
from tests.unit._router_support import SECRET, InProcessMesh, wait_for


def test_mac_binds_roles_ids_and_nonces() -> None:
    a, b = b"a" * 32, b"b" * 32
    mac = compute_mac(SECRET, "vm1", ROLE_DIALER, 1, 2, a, b)
    assert verify_mac(SECRET, "vm1", ROLE_DIALER, 1, 2, a, b, mac)
    assert not verify_mac(SECRET, "vm1", ROLE_LISTENER, 1, 2, a, b, mac)  # reflected
    assert not verify_mac(SECRET, "vm1", ROLE_DIALER, 2, 1, a, b, mac)  # ids swapped
    assert not verify_mac(SECRET, "vm1", ROLE_DIALER, 1, 3, a, b, mac)  # another listener
    assert not verify_mac(SECRET, "vm1", ROLE_DIALER, 1, 2, b, a, mac)  # nonces swapped
    assert not verify_mac(SECRET, "vm1", ROLE_DIALER, 1, 2, a, a, mac)  # another nonce
    assert not verify_mac(SECRET, "vm2", ROLE_DIALER, 1, 2, a, b, mac)
    assert not verify_mac(b"x" * 32, "vm1", ROLE_DIALER, 1, 2, a, b, mac)


def test_secret_loading(tmp_path: Path) -> None:
    f = write_secret_file(tmp_path / "s", SECRET + b"\n")
    assert load_secret_file(f) == SECRET
    f.chmod(0o644)
    with pytest.raises(SecretError, match="mode 0644"):
        load_secret_file(f)
    with pytest.raises(SecretError, match="cannot open"):
        load_secret_file(tmp_path / "missing")
    short = write_secret_file(tmp_path / "short", b"abc")
    with pytest.raises(SecretError, match="need 16"):
        load_secret_file(short)
    import os

    r, w = os.pipe()
    os.write(w, SECRET)
    os.close(w)
    assert load_secret_fd(r) == SECRET
    with pytest.raises(SecretError, match="fd"):
        load_secret_fd(r)  # already closed


def _received_nothing(m: InProcessMesh, shard: int) -> None:
    c = m.clients[-1]
    assert c.shard_id == shard
    assert c.recv(0.3) is None
    sent = m.routers[shard].stats()["links"]["local"]["per_type"]
    assert set(sent) <= {"REGISTER_OK", "LINK_STATE"}, sent


@pytest.mark.parametrize(
    ("secrets", "vm_ids", "needle"),
    [
        ({2: b"another-secret-of-32-bytes......"}, None, "authentication failed"),
        (None, {2: "vm2"}, "vm id 'vm1' does not match this router's vm id 'vm2'"),
    ],
    ids=["wrong-secret", "wrong-vm-id"],
)
def test_router_refuses_peer(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    secrets: dict[int, bytes] | None,
    vm_ids: dict[int, str] | None,
    needle: str,
) -> None:
    caplog.set_level(logging.INFO, logger="dqemu.router")
    with InProcessMesh([1, 2], tmp_path, secrets=secrets, vm_ids=vm_ids) as m:
        c1 = m.client(1)
        m.client(2)
        # Either end may notice first; the accepting end (shard 2) logs the needle when the
        # dialer's HELLO reaches it, at the latest on the dialer's next retry.
        wait_for(lambda: needle in caplog.text, timeout=10.0, what=f"log line {needle!r}")
        assert "refused peer" in caplog.text
        assert m.routers[1].health()["peers"]["2"]["state"] != "up"
        c1.send(2, p.Gsi(1, 1))
        with pytest.raises(Exception, match="unreachable"):
            c1.request(2, p.PioReq(1, 1, 0, 0, 0), timeout=1.0)
        _received_nothing(m, 2)


def _fake_peer(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_until_close(s: socket.socket) -> list[p.Frame]:
    frames: list[p.Frame] = []
    try:
        while True:
            frames.append(read_frame(s))
    except (LinkClosed, OSError, p.ProtocolError):
        return frames


def test_wrong_version_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dqemu.router")
    with InProcessMesh([1, 2], tmp_path) as m:
        m.client(2)
        port = m.routers[2].listen_addr.port
        s = _fake_peer(port)
        hello = bytearray(
            p.encode_frame(p.Hello(1, p.ROLE_ROUTER, 0, b"n" * 32, "vm1"), src=1, dst=p.DST_ROUTER)
        )
        hello[4] = 2  # protocol version 2
        gsi = bytearray(p.encode_frame(p.Gsi(1, 1), src=1, dst=2))
        gsi[4] = 2
        s.sendall(bytes(hello) + bytes(gsi))
        frames = _read_until_close(s)
        s.close()
        errs = [f for f in frames if f.is_error]
        assert errs and errs[0].msg.code == p.ERR_VERSION  # type: ignore[attr-defined]
        wait_for(lambda: "unsupported protocol version 2" in caplog.text, what="log")
        assert "refused peer 127.0.0.1:" in caplog.text
        _received_nothing(m, 2)


def test_impostor_frames_never_delivered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A peer without the secret pipelines frames behind its handshake: all discarded."""
    caplog.set_level(logging.INFO, logger="dqemu.router")
    with InProcessMesh([1, 2], tmp_path) as m:
        m.client(2)
        s = _fake_peer(m.routers[2].listen_addr.port)
        junk = b"".join(
            p.encode_frame(msg, src=1, dst=2)
            for msg in (p.Gsi(1, 1), p.Irq(0, 0x30, 0, 1), p.Command(p.CMD_QUIT, 0, 0))
        )
        s.sendall(
            p.encode_frame(p.Hello(1, p.ROLE_ROUTER, 0, b"n" * 32, "vm1"), src=1, dst=p.DST_ROUTER)
            + junk
        )
        _read_until_close(s)
        s.close()
        wait_for(lambda: "refused peer" in caplog.text, what="refusal")
        assert "expected AUTH during handshake, got GSI" in caplog.text
        _received_nothing(m, 2)


def test_unknown_shard_duplicate_and_wrong_direction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dqemu.router")
    with InProcessMesh([1, 2, 3], tmp_path) as m:
        m.wait_links()
        c2 = m.client(2)
        r2 = m.routers[2]
        port = r2.listen_addr.port

        def dial_as(shard: int, features: int = 0) -> tuple[socket.socket, object]:
            s = _fake_peer(port)
            try:
                return s, handshake(
                    s, own_id=shard, vm_id="vm1", secret=SECRET, features=features,
                    is_peer=lambda _s: True, timeout=5.0, dialed=True,
                )  # fmt: skip
            except HandshakeRefused as e:
                s.close()
                return s, e

        # a shard id that is not in the VM
        _s, e = dial_as(0)
        assert isinstance(e, HandshakeRefused) and e.by_peer
        assert "shard 0 is not a peer of shard 2" in e.reason
        # shard 3 never dials shard 2 (the lower shard id dials): refused before any AUTH
        s = _fake_peer(port)
        s.sendall(
            p.encode_frame(p.Hello(3, p.ROLE_ROUTER, 0, b"n" * 32, "vm1"), src=3, dst=p.DST_ROUTER)
        )
        frames = _read_until_close(s)
        s.close()
        assert [f.type for f in frames] == [p.MSG_HELLO, p.MSG_ERROR], frames
        err = frames[1].msg
        assert isinstance(err, p.Error) and err.code == p.ERR_VM_MISMATCH
        assert "shard 3 dialed shard 2, but shard 2 is the one that dials" in err.message
        # with the secret, a second link for shard 1 is refused: the working one stays
        with r2._lock:
            working = r2.peers[1]
        _s, e = dial_as(1)
        assert isinstance(e, HandshakeRefused) and e.by_peer and e.code == p.ERR_DUPLICATE
        assert "shard 1 already has a working link" in e.reason
        # the router logs and counts the refusal after it has sent the ERROR
        wait_for(lambda: "a second link is refused, not swapped in" in caplog.text, what="log")
        wait_for(lambda: r2.stats()["handshakes"]["duplicate_links_refused"] == 1, what="count")
        with r2._lock:
            assert r2.peers[1] is working and not working.closed
        m.client(1).send(2, p.Gsi(5, 1))
        f = c2.recv(2.0)
        assert f is not None and f.msg == p.Gsi(5, 1)
        # once shard 1's router is gone, a dialer with the secret gets the link and delivers
        m.routers[1].close()
        wait_for(lambda: 1 not in r2.peers, what="router 1's link gone")
        s, ident = dial_as(1, p.FEATURES_KNOWN)
        assert not isinstance(ident, HandshakeRefused), ident
        assert ident.shard_id == 2 and ident.features == p.FEATURES_KNOWN  # type: ignore[attr-defined]
        s.sendall(p.encode_frame(p.Gsi(4, 1), src=1, dst=2))
        while (f := c2.recv(2.0)) is not None and not isinstance(f.msg, p.Gsi):
            pass
        assert f is not None and f.msg == p.Gsi(4, 1)
        s.close()
        time.sleep(0.05)
