"""The line a Ray driver in tests/support/ray_checks.py prints its result on. Ray may write
to the driver's stdout too ("raylet has lagging heartbeats ..." under load), so the result
is the one line that starts with ``RESULT_TAG``, not the last line."""

from __future__ import annotations

import json
from typing import Any

RESULT_TAG = "dq-ray-check: "


def format_result(result: dict[str, Any]) -> str:
    return RESULT_TAG + json.dumps(result)


def parse_result(stdout: str) -> dict[str, Any]:
    tagged = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if len(tagged) != 1:
        raise ValueError(f"{len(tagged)} result lines in the driver's output:\n{stdout[-3000:]}")
    got = json.loads(tagged[0].removeprefix(RESULT_TAG))
    assert isinstance(got, dict)
    return got
