"""A test host with RDMA: Debian's generic kernel, whose soft-RoCE (rdma_rxe) works under
TCG, booted by virtme-ng over this machine's own root file system (read-only, so the
repository, its venv and rdma-core are there unchanged), with rxe devices added; it runs one
command and returns its status and output.

This machine's kernel has no RDMA, so the RDMA link is tested for real in there. One boot
costs 30-90 s (TCG, shared CPUs): callers run everything they need in one command.

Inside: the modules load in dependency order (the kernel package's modules.dep may be
missing), a veth pair ``dqr0``/``dqr1`` comes up, and ``rdma link add`` puts an rxe device
on each end (``rxe0``, ``rxe1``), all in the guest's root network namespace: Linux 6.1's
rxe ignores namespaces (docs/ARCHITECTURE.md, "RDMA links"). No IP address is needed: each
device's GID 0 is its link-local IPv6 address (RoCE v2).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.paths import cache_root
from loopback.dqtest import DEBUG_EXIT_DEVICE, ISA_IRQ_DEVICE, VGA_DEVICE

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
KERNEL_PACKAGE = "linux-image-amd64"
# module paths under /lib/modules/<version>/kernel, in the order their depends= need
MODULES = (
    "crypto/crc32_generic",
    "drivers/infiniband/core/ib_core",
    "drivers/infiniband/core/ib_uverbs",
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "drivers/infiniband/sw/rxe/rdma_rxe",
    "drivers/net/veth",
)
RXE_DEVICES = ("rxe0", "rxe1")
DONE_FILE = "rdma-host.status"
CACHE = cache_root()
LOG_FILE = "rdma-host.log"
CONSOLE_FILE = "rdma-host.console"


class RdmaHostUnavailable(Exception):
    """The test host cannot boot here; the message says what is missing."""


@dataclass
class HostRun:
    returncode: int
    output: str  # the command's stdout and stderr, as the guest printed them


def generic_kernel() -> Path:
    """The newest /boot/vmlinuz-* of Debian's generic flavour (``-amd64``, not ``-cloud``)
    whose modules include rdma_rxe. Raises RdmaHostUnavailable."""
    found = []
    for k in Path("/boot").glob("vmlinuz-*-amd64"):
        version = k.name.removeprefix("vmlinuz-")
        mod = Path("/lib/modules", version, "kernel", MODULES[5] + ".ko")
        if mod.exists() or mod.with_suffix(".ko.xz").exists():
            found.append(k)
    if not found:
        raise RdmaHostUnavailable(
            f"no generic Debian kernel with rdma_rxe in /boot (apt-get install {KERNEL_PACKAGE}; "
            "scripts/bootstrap does it)"
        )
    return sorted(found)[-1]


def _setup_script(command: list[str], status_file: Path, log_file: Path) -> str:
    mods = " ".join(MODULES)
    cmd = " ".join(shlex.quote(c) for c in command)
    return f"""set -u
fail() {{ echo "rdma-host: $*" >&2; echo 99 > {status_file}; exit 99; }}
K=/lib/modules/$(uname -r)/kernel
for m in {mods}; do
  f=$K/$m.ko; [ -e "$f" ] || f=$f.xz
  insmod "$f" 2>/dev/null || grep -q "^$(basename $m) " /proc/modules || fail "cannot load $m"
done
ip link set lo up
if [ -d {shlex.quote(str(CACHE))} ]; then
  mkdir -p /run/dqcache/upper /run/dqcache/work
  mount -t overlay -o lowerdir={shlex.quote(str(CACHE))},upperdir=/run/dqcache/upper,\
workdir=/run/dqcache/work dqcache {shlex.quote(str(CACHE))} || fail "cannot overlay the cache"
fi
# no duplicate address detection: a tentative link-local address can't resolve a path
# (RTR fails with "Connection timed out")
sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
ip link add dqr0 type veth peer name dqr1 || fail "cannot add the veth pair"
ip link set dqr0 up && ip link set dqr1 up || fail "cannot bring the veth pair up"
rdma link add {RXE_DEVICES[0]} type rxe netdev dqr0 || fail "cannot add {RXE_DEVICES[0]}"
rdma link add {RXE_DEVICES[1]} type rxe netdev dqr1 || fail "cannot add {RXE_DEVICES[1]}"
# the link-local GIDs appear once IPv6 has configured the addresses (DAD off: at once)
for i in $(seq 50); do
  ip -6 addr show dev dqr1 | grep "fe80.*scope link" | grep -vq tentative && \\
    ip -6 addr show dev dqr0 | grep "fe80.*scope link" | grep -vq tentative && break
  sleep 0.1
done
cd {shlex.quote(str(ROOT))}
export PATH={shlex.quote(str(VENV_BIN))}:$PATH PYTHONPATH={shlex.quote(str(ROOT))}
export PYTHONUNBUFFERED=1 DQEMU_RDMA_HOST=1
{cmd} > {log_file} 2>&1
echo $? > {status_file}
"""


def _cache_dirs() -> list[str]:
    """The build cache (QEMU builds, dqtest, guest images), which the guest would otherwise
    not see (vng puts a tmpfs on /var/cache): shared read-only, and made writable in the
    guest by an overlay of its own (``_setup_script``), so that nothing in there changes
    the host's cache."""
    return [f"--rodir={CACHE}"] if CACHE.is_dir() else []


def run(command: list[str], timeout: float = 900, memory: str = "2G", cpus: int = 2) -> HostRun:
    """Boot the test host, run ``command`` (argv, in the repository, with the venv's bin
    first on PATH) and return its exit status and output. Raises RdmaHostUnavailable when
    the kernel or virtme-ng is missing, TimeoutError when the whole run takes longer than
    ``timeout`` seconds."""
    kernel = generic_kernel()
    vng = VENV_BIN / "vng"
    if not vng.exists():
        raise RdmaHostUnavailable(f"{vng} is missing (pip install virtme-ng; scripts/bootstrap)")
    if shutil.which("qemu-system-x86_64") is None:
        raise RdmaHostUnavailable("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dqemu-rdma-host-") as tmp:
        rw = Path(tmp)
        status = rw / DONE_FILE
        script = rw / "run.sh"
        log = rw / LOG_FILE  # the command's output, readable while it runs
        script.write_text(_setup_script(command, status, log))
        argv = [
            str(vng), "--force-9p", "--disable-kvm", "-r", str(kernel),
            "-m", memory, "--cpus", str(cpus), f"--rwdir={rw}",
            *_cache_dirs(), "--exec", f"sh {script}",
        ]  # fmt: skip
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        console = rw / CONSOLE_FILE  # vng's own output, readable while it boots
        with console.open("w") as con:
            proc = subprocess.Popen(
                argv, stdout=con, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, env=env, cwd=tmp, start_new_session=True,
            )  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise TimeoutError(
                f"the RDMA test host did not finish within {timeout:.0f} s; it printed:\n"
                + console.read_text(errors="replace")[-4000:]
            ) from None
        except BaseException:  # Ctrl-C: the guest is in a session of its own
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
        out = console.read_text(errors="replace")
        cmd_out = log.read_text(errors="replace") if log.exists() else ""
        if not status.exists():
            return HostRun(
                proc.returncode or 98,
                out + cmd_out + "\nrdma-host: the guest ended before the command did",
            )
        return HostRun(int(status.read_text().strip() or 97), cmd_out)


def main() -> int:
    """``python -m tests.support.rdma_host CMD...``: run a command in the test host."""
    try:
        r = run(sys.argv[1:] or ["dqemu", "rdma-check"])
    except (RdmaHostUnavailable, TimeoutError) as e:
        print(f"rdma-host: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(r.output)
    return r.returncode


def dqtest_toml(kernel: Path, append: str, timeout: float, data_path: str = "router") -> str:
    """dqtest's VM over 2 shards as a spec file: loopback/dqtest.py's devices (its
    ``dqtest_spec`` without the scratch disk), for ``dqemu loopback --spec``. Its routers
    wait 20 s (``link_timeout``) before calling a link dead: under TCG inside TCG both
    routers of a healthy link were seen silent for just over the default 1 s. ``data_path``
    "direct": the shards' own queue pairs carry the frames between them."""
    devices = [(DEBUG_EXIT_DEVICE, 0), ("edu", 0), (ISA_IRQ_DEVICE, 1), (VGA_DEVICE, 1)]
    return "\n".join(
        [
            '[vm]\nvcpus = 4\nmemory = 256\nmachine = "q35"\nlink_timeout = 20',
            f'data_path = "{data_path}"',
            f'[boot]\nkernel = "{kernel}"\nappend = "{append}"\ntimeout = {timeout:g}',
            '[[shard]]\nid = 0\nvcpus = "0-1"\n[[shard]]\nid = 1\nvcpus = "2-3"',
            *(f'[[device]]\ndevice = "{d}"\nshard = {k}' for d, k in devices),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
