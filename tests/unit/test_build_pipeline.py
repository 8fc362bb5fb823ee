"""The QEMU build pipeline's cache keying and tarball checks (no build runs here)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cluster import qemu_build
from cluster.cache import content_key
from cluster.errors import DqemuError
from cluster.paths import PATCH_DIR


@pytest.fixture
def patch_dir(tmp_path: Path) -> Path:
    d = tmp_path / "qemu-patches"
    shutil.copytree(PATCH_DIR, d)
    return d


def test_key_is_stable(patch_dir: Path) -> None:
    up = qemu_build.load_upstream(patch_dir)
    assert qemu_build.build_key(up, patch_dir) == qemu_build.build_key(up, patch_dir)


def test_key_changes_with_patch_content(patch_dir: Path) -> None:
    up = qemu_build.load_upstream(patch_dir)
    before = qemu_build.build_key(up, patch_dir)
    first = qemu_build.series_patches(patch_dir)[0]
    with (patch_dir / first).open("a") as f:
        f.write("\n")
    assert qemu_build.build_key(up, patch_dir) != before


def test_key_changes_with_series_order_and_flags(patch_dir: Path) -> None:
    up = qemu_build.load_upstream(patch_dir)
    before = qemu_build.build_key(up, patch_dir)
    (patch_dir / "extra.patch").write_text("x")
    with (patch_dir / "series").open("a") as f:
        f.write("extra.patch\n")
    assert qemu_build.build_key(up, patch_dir) != before
    up2 = replace(up, configure=(*up.configure, "--enable-debug"))
    assert qemu_build.build_key(up2, patch_dir) != qemu_build.build_key(up, patch_dir)


def test_key_ignores_comments_in_series(patch_dir: Path) -> None:
    up = qemu_build.load_upstream(patch_dir)
    before = qemu_build.build_key(up, patch_dir)
    with (patch_dir / "series").open("a") as f:
        f.write("# a comment\n\n")
    assert qemu_build.build_key(up, patch_dir) == before


def test_missing_patch_named(patch_dir: Path) -> None:
    up = qemu_build.load_upstream(patch_dir)
    with (patch_dir / "series").open("a") as f:
        f.write("9999-missing.patch\n")
    with pytest.raises(DqemuError, match=r"9999-missing\.patch, which does not exist"):
        qemu_build.build_key(up, patch_dir)


def test_content_key_separates_names_and_data() -> None:
    assert content_key([("a", b"bc")]) != content_key([("ab", b"c")])
    assert content_key([("a", b"1"), ("b", b"2")]) != content_key([("b", b"2"), ("a", b"1")])


def test_checksum_mismatch_names_file_and_hashes(tmp_path: Path) -> None:
    up = qemu_build.load_upstream()
    bad = tmp_path / up.tarball
    data = b"\0" * up.size
    bad.write_bytes(data)
    with pytest.raises(DqemuError) as ei:
        qemu_build.verify_tarball(bad, up)
    msg = str(ei.value)
    assert "fails its checksum" in msg
    assert hashlib.sha256(data).hexdigest() in msg and up.sha256 in msg


def test_size_mismatch(tmp_path: Path) -> None:
    up = qemu_build.load_upstream()
    bad = tmp_path / up.tarball
    bad.write_bytes(b"short")
    with pytest.raises(DqemuError, match="wrong size: 5 bytes"):
        qemu_build.verify_tarball(bad, up)


def test_cached_bad_tarball_is_refused(tmp_path: Path) -> None:
    up = qemu_build.load_upstream()
    (tmp_path / up.tarball).write_bytes(b"tampered")
    with pytest.raises(DqemuError, match="wrong size"):
        qemu_build.fetch_tarball(up, tmp_path)


def test_pinned_hash_is_the_issue_s() -> None:
    up = qemu_build.load_upstream()
    assert up.sha256 == "0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1"
    assert up.size == 39449628
