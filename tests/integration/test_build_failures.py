"""The build pipeline stops on a patch that does not apply, and names it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.paths import PATCH_DIR, cache_root
from cluster.qemu_build import fetch_tarball, load_upstream

pytestmark = pytest.mark.integration

BAD_PATCH = """\
Subject: [PATCH] a patch against text that is not there

--- a/system/vl.c
+++ b/system/vl.c
@@ -1,3 +1,3 @@
-this line does not exist in vl.c
+neither does this one
 nor this
"""


def test_patch_that_does_not_apply_is_named(tmp_path: Path) -> None:
    up = load_upstream()
    tarball = fetch_tarball(up, cache_root() / "dl")
    patches = tmp_path / "qemu-patches"
    shutil.copytree(PATCH_DIR, patches)
    (patches / "0099-bad.patch").write_text(BAD_PATCH)
    with (patches / "series").open("a") as f:
        f.write("0099-bad.patch\n")
    proc = subprocess.run(
        ["bash", str(patches / "build.sh"), str(tarball), up.topdir, str(tmp_path / "out"),
         "1", sys.executable, "--", *up.configure],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "dqemu-build: error: patch 0099-bad.patch does not apply" in proc.stderr
    assert not (tmp_path / "out").exists()
