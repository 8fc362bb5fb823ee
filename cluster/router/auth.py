"""Per-VM secret handling and the HMAC-SHA256 challenge-response between routers.

The secret never appears on a command line, in a config file, an environment variable or a
log: it comes from an inherited file descriptor or a 0600 file. See docs/protocol.md,
"Link set-up", for the exact MAC input.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.router import protocol as p
from cluster.router.transport import LinkClosed, read_frame

MIN_SECRET_BYTES = 16
_MAC_LABEL = b"DQMU-AUTH-2"
# a data connection (docs/protocol.md, "Direct shard links"): another label, so that a link
# handshake and a data handshake can never be relayed or replayed as each other
_DATA_LABEL = b"DQMU-DATA-2"


class SecretError(ValueError):
    """The secret could not be loaded; the message names the problem (never the secret)."""


def generate_secret() -> bytes:
    return secrets.token_hex(32).encode()


def _clean(data: bytes, where: str) -> bytes:
    data = data.rstrip(b"\r\n")
    if len(data) < MIN_SECRET_BYTES:
        raise SecretError(f"secret from {where} is {len(data)} bytes; need {MIN_SECRET_BYTES}+")
    return data


def load_secret_fd(fd: int) -> bytes:
    """Read the secret from an inherited fd until EOF, then close the fd."""
    try:
        with os.fdopen(fd, "rb", closefd=True) as f:
            data = f.read(4096)
    except OSError as e:
        raise SecretError(f"cannot read secret from fd {fd}: {e.strerror}") from None
    return _clean(data, f"fd {fd}")


def load_secret_file(path: str | Path) -> bytes:
    """Read the secret from a regular file that only its owner can read or write."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise SecretError(f"cannot open secret file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"secret file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecretError(
                f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                "it must not be accessible by group or others (chmod 600)"
            )
        if st.st_uid != os.geteuid():
            raise SecretError(f"secret file {path} is not owned by this user")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return _clean(data, str(path))


def write_secret_file(path: str | Path, secret: bytes) -> Path:
    """Create a 0600 secret file (for launchers and tests)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return path


def vm_id_bytes(vm_id: str) -> bytes:
    b = vm_id.encode()
    if not b or len(b) > p.VM_ID_SIZE:
        raise ValueError(f"vm id {vm_id!r} must be 1..{p.VM_ID_SIZE} bytes of UTF-8")
    return b.ljust(p.VM_ID_SIZE, b"\0")


ROLE_DIALER = 1  # the router that connected (the lower shard id)
ROLE_LISTENER = 2  # the router that accepted
_ROLE_NAMES = {ROLE_DIALER: "dialer", ROLE_LISTENER: "listener"}


def dialer_of(a: int, b: int) -> int:
    """Which of two peer shards' routers dials the other: the lower shard id."""
    return min(a, b)


def compute_mac(
    secret: bytes,
    vm_id: str,
    prover_role: int,
    dialer: int,
    listener: int,
    dialer_nonce: bytes,
    listener_nonce: bytes,
    kind: int = p.ROLE_ROUTER,
) -> bytes:
    """The AUTH MAC of the side with ``prover_role`` on the link ``dialer`` -> ``listener``.

    Both nonces, both shard ids (in their roles), the prover's role and the VM id are bound,
    so an AUTH is valid only on the one connection, in the one direction, it was made for:
    a reflected AUTH (wrong role) or one relayed from another connection (other nonces,
    or the two routers in the wrong roles) never verifies.
    """
    if prover_role not in _ROLE_NAMES:
        raise ValueError(f"prover role {prover_role} is neither dialer nor listener")
    msg = (
        (_DATA_LABEL if kind == p.ROLE_DATA else _MAC_LABEL)
        + vm_id_bytes(vm_id)
        + struct.pack("<BHH", prover_role, dialer, listener)
        + dialer_nonce
        + listener_nonce
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


def verify_mac(
    secret: bytes,
    vm_id: str,
    prover_role: int,
    dialer: int,
    listener: int,
    dialer_nonce: bytes,
    listener_nonce: bytes,
    mac: bytes,
    kind: int = p.ROLE_ROUTER,
) -> bool:
    want = compute_mac(
        secret, vm_id, prover_role, dialer, listener, dialer_nonce, listener_nonce, kind
    )
    return hmac.compare_digest(want, mac)


@dataclass(frozen=True)
class PeerIdentity:
    shard_id: int
    features: int  # features both ends use
    kind: int = p.ROLE_ROUTER  # ROLE_DATA for a data connection (the dialer's HELLO.role)


class HandshakeRefused(Exception):
    """The peer was refused (or refused us). ``reason`` is a one-line explanation."""

    def __init__(self, reason: str, code: int, peer_shard: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.peer_shard = peer_shard
        self.by_peer = False  # True when the peer refused us (we got its ERROR)


def _refuse(
    sock: socket.socket, own_id: int, code: int, reason: str, peer: int | None
) -> HandshakeRefused:
    """Tell the peer why (best effort) and build the exception to raise."""
    with contextlib.suppress(OSError):
        sock.sendall(p.encode_frame(p.Error(code, reason), src=own_id, dst=p.DST_ROUTER))
    return HandshakeRefused(reason, code, peer)


def _expect(
    sock: socket.socket, own_id: int, mtype: int, peer: int | None, deadline: float
) -> p.Frame:
    try:
        f = read_frame(sock, deadline)
    except p.ProtocolError as e:
        raise _refuse(sock, own_id, e.code, str(e), peer) from None
    except TimeoutError:
        raise HandshakeRefused(
            f"handshake timed out (waiting for {p.type_name(mtype)})", p.ERR_TIMEOUT, peer
        ) from None
    except LinkClosed:
        raise HandshakeRefused(
            "connection closed during handshake", p.ERR_LINK_DOWN, peer
        ) from None
    except OSError as e:
        raise HandshakeRefused(
            f"connection failed during handshake: {e.strerror or e}", p.ERR_LINK_DOWN, peer
        ) from None
    if f.is_error and isinstance(f.msg, p.Error):
        err = HandshakeRefused(f"peer refused us: {f.msg.message}", f.msg.code, peer)
        err.by_peer = True
        raise err
    if f.type != mtype or f.dst != p.DST_ROUTER or f.flags:
        raise _refuse(
            sock,
            own_id,
            p.ERR_PROTOCOL,
            f"expected {p.type_name(mtype)} during handshake, got {p.type_name(f.type)}",
            peer,
        )
    if peer is not None and f.src != peer:
        raise _refuse(sock, own_id, p.ERR_PROTOCOL, f"src {f.src} is not shard {peer}", peer)
    return f


def _send(sock: socket.socket, frame: bytes, what: str, peer: int | None) -> None:
    try:
        sock.sendall(frame)
    except OSError as e:
        raise HandshakeRefused(
            f"cannot send {what}: {e.strerror or e}", p.ERR_LINK_DOWN, peer
        ) from None


def handshake(
    sock: socket.socket,
    *,
    own_id: int,
    vm_id: str,
    secret: bytes,
    features: int,
    is_peer: Callable[[int], bool],
    timeout: float,
    dialed: bool,
    admit: Callable[[int], str | None] = lambda _peer: None,
    kind: int = p.ROLE_ROUTER,
    admit_data: Callable[[int], tuple[int, str] | None] | None = None,
) -> PeerIdentity:
    """Run the mutual HELLO/AUTH/AUTH_OK exchange on a fresh connection (either side).

    ``dialed`` says which end we are: True if we connected (the dialer), False if we
    accepted (the listener). A listener accepts only a peer that is supposed to dial it
    (`dialer_of`); a dialer only a peer it is supposed to dial. The whole exchange must end
    within ``timeout`` seconds, however slowly the peer sends. Once the peer has proved
    itself, ``admit(peer)`` may still refuse it (ERR_DUPLICATE) with a reason: a second
    link to a peer that has a working one.

    ``kind`` is what a dialer asks for: ROLE_ROUTER (the link) or ROLE_DATA (a data
    connection for its shard's direct link, bound into both MACs). A listener takes the
    kind from the dialer's HELLO; it accepts a data connection only with ``admit_data``,
    which may refuse it with (code, reason) after the peer has proved itself.

    Raises HandshakeRefused with a one-line reason. On success the socket is left
    blocking with no timeout and nothing beyond the handshake has been read.
    """
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    nonce = secrets.token_bytes(p.NONCE_SIZE)
    hello_out = p.encode_frame(
        p.Hello(own_id, kind if dialed else p.ROLE_ROUTER, features, nonce, vm_id),
        src=own_id,
        dst=p.DST_ROUTER,
    )
    _send(sock, hello_out, "HELLO", None)
    f = _expect(sock, own_id, p.MSG_HELLO, None, deadline)
    hello = f.msg
    assert isinstance(hello, p.Hello)
    peer = hello.shard_id
    if f.src != peer:
        raise _refuse(sock, own_id, p.ERR_PROTOCOL, f"HELLO src {f.src} != shard_id {peer}", peer)
    if hello.vm_id != vm_id:
        raise _refuse(
            sock,
            own_id,
            p.ERR_VM_MISMATCH,
            f"vm id {hello.vm_id!r} does not match this router's vm id {vm_id!r}",
            peer,
        )
    if peer == own_id:
        raise _refuse(sock, own_id, p.ERR_VM_MISMATCH, f"peer claims our own shard id {peer}", peer)
    if not is_peer(peer):
        raise _refuse(
            sock, own_id, p.ERR_VM_MISMATCH, f"shard {peer} is not a peer of shard {own_id}", peer
        )
    allowed = {p.ROLE_ROUTER} if dialed or admit_data is None else {p.ROLE_ROUTER, p.ROLE_DATA}
    if hello.role not in allowed:
        raise _refuse(
            sock, own_id, p.ERR_PROTOCOL, f"HELLO role {hello.role} is not a router", peer
        )
    if not dialed:
        kind = hello.role
    # the lower shard id dials: a connection in the other direction is never genuine
    if dialed and dialer_of(own_id, peer) != own_id:
        raise _refuse(
            sock, own_id, p.ERR_VM_MISMATCH,
            f"shard {peer} answered a dial from shard {own_id}, but shard {peer} is the "
            f"one that dials (the lower shard id dials)", peer,
        )  # fmt: skip
    if not dialed and dialer_of(own_id, peer) != peer:
        raise _refuse(
            sock, own_id, p.ERR_VM_MISMATCH,
            f"shard {peer} dialed shard {own_id}, but shard {own_id} is the one that dials "
            f"(the lower shard id dials)", peer,
        )  # fmt: skip
    if dialed:
        role, peer_role = ROLE_DIALER, ROLE_LISTENER
        link = (own_id, peer, nonce, hello.nonce)
    else:
        role, peer_role = ROLE_LISTENER, ROLE_DIALER
        link = (peer, own_id, hello.nonce, nonce)
    mac = compute_mac(secret, vm_id, role, *link, kind)
    _send(sock, p.encode_frame(p.Auth(mac), src=own_id, dst=p.DST_ROUTER), "AUTH", peer)
    f = _expect(sock, own_id, p.MSG_AUTH, peer, deadline)
    auth = f.msg
    assert isinstance(auth, p.Auth)
    if not verify_mac(secret, vm_id, peer_role, *link, auth.mac, kind):
        raise _refuse(
            sock, own_id, p.ERR_AUTH_FAILED,
            "authentication failed (wrong secret, or a relayed or reflected handshake)", peer,
        )  # fmt: skip
    if kind == p.ROLE_DATA and admit_data is not None:
        refusal = admit_data(peer)
        if refusal is not None:
            raise _refuse(sock, own_id, refusal[0], refusal[1], peer)
    elif kind != p.ROLE_DATA:
        why = admit(peer)
        if why is not None:
            raise _refuse(sock, own_id, p.ERR_DUPLICATE, why, peer)
    common = features & hello.features
    _send(sock, p.encode_frame(p.AuthOk(common), src=own_id, dst=p.DST_ROUTER), "AUTH_OK", peer)
    _expect(sock, own_id, p.MSG_AUTH_OK, peer, deadline)
    sock.settimeout(None)
    return PeerIdentity(peer, common, kind)
