"""``dqemu loopback --detach``: the VM runs on in the background, found by its name.

The foreground ``dqemu`` re-runs its own command line as a child in a new session (no
terminal, so no SIGHUP or Ctrl-C reaches it) with ``--detached-child``. The child runs
the VM as usual, but sends the console only to the control API's serial stream. Until
every shard runs, the child's output comes to the foreground process through a pipe, so a
VM that fails to start says why right there; once it runs, the child moves its output to
``vm.log`` in its registry entry, the pipe ends, and the foreground process prints the
VM's name and returns 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

from cluster.errors import DqemuError
from cluster.vm import registry
from cluster.vm.control import vm_call

if TYPE_CHECKING:
    from loopback.launcher import LoopbackVM


def detach(argv: list[str], name: str | None) -> int:
    name = name or registry.generate_name()
    args = [a for a in argv if a != "--detach"]
    cmd = [sys.executable, "-m", "cluster.cli", *args, "--name", name, "--detached-child"]
    child = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert child.stdout is not None
    for line in child.stdout:  # until the VM runs (the child moves to its log) or ends
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    child.stdout.close()
    try:
        code = child.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        code = None
    if code is not None:
        return code  # it ended before running; it said why above
    try:
        state = vm_call(registry.find(name).control, "info", timeout=10.0)["state"]
    except (DqemuError, OSError, ValueError) as e:
        raise DqemuError(f"{name}: started, but its control API does not answer: {e}", 4) from None
    print(name)
    print(f"dqemu: VM {name} is {state}; dqemu console {name} attaches to it", file=sys.stderr)
    return 0


def log_to_registry(vm: LoopbackVM) -> None:
    """The VM runs: from now on this process writes to ``vm.log`` in its entry."""
    assert vm.entry is not None
    fd = os.open(vm.entry.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
