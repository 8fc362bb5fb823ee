"""Run dqtest in a loopback VM and check that every check passed."""

from __future__ import annotations

import io
from pathlib import Path

from cluster.spec import VMSpec
from loopback.dqtest import EXIT_PASS, DqtestResult, parse_dqtest_output
from loopback.launcher import LoopbackVM, VMResult


def run_passing_dqtest(spec: VMSpec, qemu: Path, tail: int = 3000) -> tuple[VMResult, DqtestResult]:
    """The VM's result and dqtest's parsed output, once the run passed every check (the
    assertion shows the reason and the console's last ``tail`` characters otherwise)."""
    console = io.BytesIO()
    vm = LoopbackVM(spec, qemu=qemu, console=console).run()
    text = console.getvalue().decode(errors="replace")
    result = parse_dqtest_output(text)
    assert vm.exit_code == EXIT_PASS and not result.failures, f"{vm.reason}\n{text[-tail:]}"
    return vm, result
