"""``dqemu build-qemu``: fetch the pinned QEMU tarball, apply the patch series, build, cache.

The cache key covers the tarball's hash, every patch in ``series`` (name and content), the
configure flags and the build script, so any change to the series rebuilds and a repeated run
is instant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import toml

from cluster.cache import content_key, file_sha256, locked
from cluster.errors import DqemuError
from cluster.paths import PATCH_DIR, cache_root

QEMU_BINARY = "bin/qemu-system-x86_64"


@dataclass(frozen=True)
class Upstream:
    version: str
    apt_source: str
    tarball: str
    size: int
    sha256: str
    topdir: str
    configure: tuple[str, ...]


def load_upstream(patch_dir: Path = PATCH_DIR) -> Upstream:
    data = toml.loads((patch_dir / "upstream.toml").read_text())
    return Upstream(
        version=data["version"],
        apt_source=data["apt_source"],
        tarball=data["tarball"],
        size=int(data["size"]),
        sha256=data["sha256"],
        topdir=data["topdir"],
        configure=tuple(data["configure"]),
    )


def series_patches(patch_dir: Path = PATCH_DIR) -> list[str]:
    names = []
    for line in (patch_dir / "series").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def build_key(up: Upstream, patch_dir: Path = PATCH_DIR) -> str:
    parts: list[tuple[str, bytes]] = [
        ("tarball-sha256", up.sha256.encode()),
        ("configure", "\0".join(up.configure).encode()),
        ("build.sh", (patch_dir / "build.sh").read_bytes()),
    ]
    for name in series_patches(patch_dir):
        path = patch_dir / name
        if not path.is_file():
            raise DqemuError(f"qemu-patches/series names {name}, which does not exist")
        parts.append((f"patch:{name}", path.read_bytes()))
    return content_key(parts)


def verify_tarball(path: Path, up: Upstream) -> None:
    """Check size and sha256; a mismatch names the file and both hashes."""
    size = path.stat().st_size
    if size != up.size:
        raise DqemuError(
            f"QEMU tarball {path} has the wrong size: {size} bytes, expected {up.size}"
        )
    digest = file_sha256(path)
    if digest != up.sha256:
        raise DqemuError(
            f"QEMU tarball {path} fails its checksum: sha256 {digest}, expected {up.sha256}"
        )


def tarball_uri(up: Upstream) -> str:
    """Ask apt where the orig tarball is (needs deb-src for bookworm-backports)."""
    try:
        proc = subprocess.run(
            ["apt-get", "source", "--print-uris", up.apt_source],
            capture_output=True,
            text=True,
            cwd="/tmp",
            check=False,
        )
    except FileNotFoundError as exc:
        raise DqemuError("apt-get not found: dQEMU builds on Debian 12") from exc
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == up.tarball:
            return fields[0].strip("'")
    why = (proc.stderr.strip().splitlines() or ["no URI printed"])[-1]
    raise DqemuError(
        f"cannot locate the QEMU source tarball {up.tarball} via apt ({why}); "
        "deb-src for bookworm-backports must be in the apt sources: run scripts/bootstrap"
    )


def fetch_tarball(up: Upstream, dest_dir: Path) -> Path:
    dest = dest_dir / up.tarball
    if dest.exists():
        verify_tarball(dest, up)
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    uri = tarball_uri(up)
    part = dest.with_suffix(".part")
    print(f"dqemu-build: downloading {uri}", file=sys.stderr)
    try:
        with urllib.request.urlopen(uri, timeout=120) as resp, part.open("wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise DqemuError(f"cannot download the QEMU tarball from {uri}: {exc}") from exc
    try:
        verify_tarball(part, up)
    except DqemuError:
        part.unlink(missing_ok=True)
        raise
    part.rename(dest)
    return dest


def qemu_cache_dir() -> Path:
    return cache_root() / "qemu"


def ensure_qemu(jobs: int | None = None, quiet: bool = False) -> Path:
    """Return the patched QEMU binary, building it first when its cache entry is missing.

    ``DQEMU_QEMU`` names a binary to use instead (a developer's own build of the series); it
    must sit in a ``bin/`` beside a ``share/qemu`` with the firmware, as the cache entries do.
    """
    override = os.environ.get("DQEMU_QEMU")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DqemuError(f"DQEMU_QEMU={override}: not an executable file")
        return path
    up = load_upstream()
    key = build_key(up)
    entry = qemu_cache_dir() / key
    binary = entry / QEMU_BINARY
    if binary.exists():
        return binary
    with locked(qemu_cache_dir() / ".lock"):
        if binary.exists():
            return binary
        tarball = fetch_tarball(up, cache_root() / "dl")
        python = shutil.which("python3", path=os.path.dirname(sys.executable)) or sys.executable
        cmd = [
            "bash",
            str(PATCH_DIR / "build.sh"),
            str(tarball),
            up.topdir,
            str(entry),
            str(jobs or os.cpu_count() or 2),
            python,
            "--",
            *up.configure,
        ]
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.run(cmd, env=env, stdout=out, check=False)
        if proc.returncode != 0:
            raise DqemuError(
                f"the QEMU build failed (build.sh exit {proc.returncode}); see its messages above"
            )
    return binary


def _run(args: argparse.Namespace) -> int:
    binary = ensure_qemu(jobs=args.jobs, quiet=args.print_path)
    if args.print_path:
        print(binary)
    else:
        print(f"dqemu-build: {binary}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build-qemu",
        help="build (or find in the cache) the patched QEMU shard binary",
        description="Fetch the pinned QEMU 10.0.2 tarball, apply qemu-patches/series, "
        "build a TCG x86_64 QEMU and cache it outside the repository.",
    )
    p.add_argument("--print-path", action="store_true", help="print the binary's path only")
    p.add_argument("--jobs", type=int, default=None, help="parallel build jobs (default: cores)")
    p.set_defaults(func=_run)
