"""Input checks before a VM starts (issue 12 items 2, 6, 7, 8, 9) and leftovers of dead
launchers (item 5)."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.errors import DqemuError
from cluster.qemu_cmdline import BootFiles
from cluster.spec import parse_spec
from cluster.vm.plan import make_plan
from loopback import netns, stale
from loopback.host import create_ram_file
from loopback.owner import OWNER_FILE, identity, maker_alive, mark_own, process_start
from loopback.preflight import (
    check_memory,
    host_memory_mib,
    kernel_kind,
    silence_ends_run,
    silence_limit,
)
from loopback.stale import foreign_rundirs, reap_stale

REPO = Path(__file__).resolve().parents[2]


def test_ram_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        create_ram_file(tmp_path / "ram0", 1 << 20)
    finally:
        os.umask(old)
    st = (tmp_path / "ram0").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 1 << 20


def test_ram_file_never_reuses_an_existing_file_or_link(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    (tmp_path / "ram0").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        create_ram_file(tmp_path / "ram0", 1 << 20)
    assert (tmp_path / "target").read_text() == "x"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize("n", ["0", "-1"])
def test_shards_below_1_refused(n: str, tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 0x202 + b"HdrS")
    r = _cli("loopback", "--kernel", str(kernel), "--shards", n)
    assert r.returncode == 2
    assert f"--shards: {n} is not a number of shards" in r.stderr
    assert "Traceback" not in r.stderr


def test_guest_memory_beyond_host_ram_refused() -> None:
    host = host_memory_mib()
    with pytest.raises(DqemuError, match=r"guest memory .* GiB is more than this host's RAM"):
        check_memory(host + 1024)
    check_memory(256)


def test_guest_memory_beyond_host_ram_refused_by_the_cli(tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 0x202 + b"HdrS")
    r = _cli("loopback", "--kernel", str(kernel), "--memory", "1T")
    assert r.returncode == 2, r.stderr
    assert "is more than this host's RAM" in r.stderr


def test_kernel_formats(tmp_path: Path) -> None:
    bz = tmp_path / "bz"
    bz.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 100)
    assert kernel_kind(bz) == "linux"
    mb = tmp_path / "mb"
    magic, flags = 0x1BADB002, 0x3
    header = b"".join(
        x.to_bytes(4, "little") for x in (magic, flags, -(magic + flags) & 0xFFFFFFFF)
    )
    mb.write_bytes(b"\x90" * 4096 + header)
    assert kernel_kind(mb) == "multiboot"
    elf = tmp_path / "elf"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    assert kernel_kind(elf) == "elf"


def test_garbage_kernel_refused_at_once(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(1 << 16).replace(b"HdrS", b"xxxx").replace(b"\x7fELF", b"x"))
    with pytest.raises(DqemuError, match="is not a bootable kernel"):
        kernel_kind(junk)
    t0 = time.monotonic()
    r = _cli("loopback", "--kernel", str(junk), "--timeout", "300")
    assert r.returncode == 2
    assert f"kernel {junk} is not a bootable kernel" in r.stderr
    assert time.monotonic() - t0 < 60


def test_device_owner_names_the_owner_of_a_shadow_drive() -> None:
    spec = parse_spec(
        '[vm]\nvcpus = 2\nmemory = 256\n[boot]\nkernel = "guest:cloud"\n'
        "[[shard]]\nid = 0\nvcpus = [0]\n[[shard]]\nid = 1\nvcpus = [1]\n"
        '[[device]]\ndrive = "file=/nope.img,if=none,id=d1,format=raw"\nshard = 1\n'
    )
    # what shard 0 (the shadow copy) says when the file cannot be opened
    msg = ("qemu-system-x86_64: -drive file=/nope.img,if=none,id=d1,format=raw,read-only=on,"
           "file.locking=off: Could not open '/nope.img': No such file or directory")  # fmt: skip
    plan = make_plan(spec, qemu="qemu", boot=BootFiles(None, None, ""), vm_id="t")
    assert plan.device_owner(msg) == 1
    assert plan.device_owner("qemu-system-x86_64: something else") is None


def test_maker_alive_sees_pid_reuse(tmp_path: Path) -> None:
    f = tmp_path / "thing"
    f.write_text("")
    assert maker_alive(os.getpid(), f)  # we made it, we run
    # a process that started after the file was made is not its maker
    time.sleep(0.2)
    p = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start(p.pid)
        assert start is not None and start > f.stat().st_ctime
        assert not maker_alive(p.pid, f)
    finally:
        p.kill()
        p.wait()
    assert not maker_alive(p.pid, f)  # and a dead one is not either


def test_a_zombie_maker_is_not_alive(tmp_path: Path) -> None:
    """A SIGKILLed launcher that its parent has not reaped yet has ended: its leftovers are
    stale. (A detached launcher's parent is init; `dqemu cleanup` right after its SIGKILL
    found it a zombie and left its run directory and namespaces, test_control.)"""
    p = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.05)
        f = tmp_path / "thing"
        f.write_text("")
        time.sleep(0.05)
        assert maker_alive(p.pid, f)
        p.kill()  # not waited for: a zombie until p.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{p.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed process did not become a zombie"
            time.sleep(0.01)
        assert process_start(p.pid) is None
        assert not maker_alive(p.pid, f)
    finally:
        p.kill()
        p.wait()


def test_reap_stale_removes_only_dead_launchers_leftovers(tmp_path: Path) -> None:
    tmp, shm = tmp_path / "tmp", tmp_path / "shm"
    tmp.mkdir()
    shm.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = os.getpid()
    for d in (f"dqemu-{dead.pid}-abc123", f"dqemu-{mine}-def456"):
        (tmp / d).mkdir()
        mark_own(tmp / d)
    (tmp / f"dqemu-{dead.pid}-abc123" / "console.sock").write_text("")
    (tmp / "dqemu-guest-xyz").mkdir()  # not a run directory
    (shm / f"dqemu-{dead.pid}-0a1b-ram0").write_text("")
    (shm / f"dqemu-{mine}-0a1b-ram0").write_text("")
    removed = reap_stale(tmp=tmp, shm=shm)
    assert sorted(Path(r).name for r in removed if not r.startswith("dq-")) == [
        f"dqemu-{dead.pid}-0a1b-ram0", f"dqemu-{dead.pid}-abc123",
    ]  # fmt: skip
    assert {p.name for p in tmp.iterdir()} == {"dqemu-guest-xyz", f"dqemu-{mine}-def456"}
    assert [p.name for p in shm.iterdir()] == [f"dqemu-{mine}-0a1b-ram0"]


def test_a_killed_node_actors_or_controllers_dirs_are_reaped(tmp_path: Path) -> None:
    """A Ray node actor's boot files and a VM controller's directory (new_rundir, named
    after the VM) outlive a SIGKILL of their process; the next reap removes them, and
    leaves a live process's."""
    code = (
        "import sys, time; from loopback.stale import new_rundir; "
        "print(new_rundir('boot-my.vm-1-'), new_rundir('vm-'), flush=True); time.sleep(60)"
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        assert proc.stdout is not None
        made = [Path(d) for d in proc.stdout.readline().split()]
        assert len(made) == 2 and all(d.parent == tmp_path for d in made), made
        assert made[0].name.startswith(f"dqemu-{proc.pid}-boot-my.vm-1-")
        reap_stale(tmp=tmp_path, shm=tmp_path / "no-shm")
        assert all(d.exists() for d in made)  # its maker runs: left alone
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        removed = reap_stale(tmp=tmp_path, shm=tmp_path / "no-shm")
        assert sorted(r for r in removed if not r.startswith("dq-")) == sorted(map(str, made))
        assert not any(d.exists() for d in made)
    finally:
        proc.kill()
        proc.wait()


def test_reap_stale_judges_only_run_dirs_made_in_its_own_pid_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run directory made in another boot or pid namespace (the RDMA test host sees this
    machine's /tmp) names a pid that means nothing here: cleanup leaves it, and names it.
    So does one with no owner recorded."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    boot, pidns = identity().split(" ")
    foreign = {
        f"dqemu-{dead.pid}-otherns": f"{boot} pidns:1\n",  # same boot, other pid namespace
        f"dqemu-{dead.pid}-otherboot": f"00000000-0000-0000-0000-000000000000 {pidns}\n",
        f"dqemu-{dead.pid}-noowner": None,
    }
    for name, owner in foreign.items():
        (tmp_path / name).mkdir()
        if owner is not None:
            (tmp_path / name / OWNER_FILE).write_text(owner)
    ours = tmp_path / f"dqemu-{dead.pid}-ours"
    ours.mkdir()
    mark_own(ours)
    removed = reap_stale(tmp=tmp_path, shm=tmp_path / "no-shm")
    assert [r for r in removed if not r.startswith("dq-")] == [str(ours)]
    assert {p.name for p in tmp_path.iterdir()} == set(foreign)
    assert sorted(foreign_rundirs(tmp_path)) == sorted(str(tmp_path / n) for n in foreign)
    # `dqemu cleanup` names them (this directory as the temporary one, no RAM files)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(stale, "SHM_DIR", tmp_path / "no-shm")
    assert stale._run(argparse.Namespace()) == 0
    err = capsys.readouterr().err
    for n in foreign:
        assert f"dqemu: left {tmp_path / n}: not made in this boot and pid namespace" in err
    assert {p.name for p in tmp_path.iterdir()} == set(foreign)


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
def test_cleanup_keeps_a_live_creators_namespace() -> None:
    live = f"dq-{os.getpid()}-abc123-h0"
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = f"dq-{dead.pid}-abc123-h0"
    for ns in (live, gone):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        removed = netns.cleanup_stale()
        assert live not in removed and live in netns.list_namespaces()
        assert gone in removed and gone not in netns.list_namespaces()
    finally:
        for ns in (live, gone):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_a_silent_linux_guest_ends_the_run_a_silent_bare_metal_one_is_warned() -> None:
    assert silence_limit(300) == 120 and silence_limit(100) == 50 and silence_limit(20) == 30
    assert silence_ends_run("linux", "dq.run=cpus")
    assert not silence_ends_run("linux", "quiet dq.run=cpus")
    assert not silence_ends_run("linux", "loglevel=0")
    assert not silence_ends_run("multiboot", "")
    assert not silence_ends_run("elf", "")
