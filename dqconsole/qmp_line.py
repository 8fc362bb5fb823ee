"""The QMP prompt's line syntax: ``command [JSON arguments]``. No Textual."""

from __future__ import annotations

import json
from typing import Any


class QMPLineError(ValueError):
    pass


def parse_qmp_line(line: str) -> tuple[str, dict[str, Any]]:
    """``query-status`` or ``qom-get {"path": ...}`` or a whole ``{"execute": ...}`` object."""
    line = line.strip()
    if not line:
        raise QMPLineError("type a QMP command name")
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise QMPLineError(f"not JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("execute"), str):
            raise QMPLineError('a JSON command needs "execute"')
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            raise QMPLineError('"arguments" must be a JSON object')
        return obj["execute"], args
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if not rest:
        return name, {}
    try:
        args = json.loads(rest)
    except ValueError as e:
        raise QMPLineError(f"the arguments are not JSON: {e}") from None
    if not isinstance(args, dict):
        raise QMPLineError("the arguments must be a JSON object")
    return name, args
