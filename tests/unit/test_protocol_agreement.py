"""docs/protocol.md, the C header in the QEMU patch and the Python codec must agree.

The header is extracted from the patch (it adds one new file, so its text is the '+'
lines), a C program generated from the Python tables prints every constant, size, offset
and dq_body_size() value, and the output is compared with Python. The document's tables
are parsed and compared with Python too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster.router import protocol as p
from tests.support.proto_header import HEADER_PATH, PATCH, extract_header

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"

ALL_LAYOUTS = [p.HEADER_LAYOUT] + [c.LAYOUT for c in p.MESSAGES.values()]


@pytest.fixture(scope="module")
def header_text() -> str:
    return extract_header(PATCH.read_text())


@pytest.fixture(scope="module")
def c_output(header_text: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("proto_c")
    (d / "hw" / "dqemu").mkdir(parents=True)
    (d / "hw" / "dqemu" / "proto.h").write_text(header_text)
    src = ["#include <stdio.h>", '#include "hw/dqemu/proto.h"', "int main(void)", "{"]
    for name in p.constants():
        src.append(f'    printf("const {name} %llu\\n", (unsigned long long)(DQ_{name}));')
    for lay in ALL_LAYOUTS:
        src.append(f'    printf("sizeof {lay.cname} %zu\\n", sizeof({lay.cname}));')
        for f in lay.fields:
            src.append(
                f'    printf("offsetof {lay.cname}.{f.name} %zu\\n", '
                f"offsetof({lay.cname}, {f.name}));"
            )
            src.append(
                f'    printf("fieldsize {lay.cname}.{f.name} %zu\\n", '
                f"sizeof((({lay.cname} *)0)->{f.name}));"
            )
    src.append("    for (int t = 0; t < 256; t++) {")
    src.append('        printf("body %d %d\\n", t, dq_body_size((uint8_t)t));')
    src.append("    }")
    src += ["    return 0;", "}"]
    (d / "t.c").write_text("\n".join(src) + "\n")
    exe = d / "t"
    cc = subprocess.run(
        [gcc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", str(d),
         str(d / "t.c"), "-o", str(exe)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert cc.returncode == 0, f"C header does not compile against Python names:\n{cc.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    result: dict[str, int] = {}
    for line in out.splitlines():
        kind, key, val = line.split()
        result[f"{kind} {key}"] = int(val)
    return result


def test_header_constants_match_python(c_output: dict[str, int]) -> None:
    for name, val in p.constants().items():
        assert c_output[f"const {name}"] == val, name


def test_header_layouts_match_python(c_output: dict[str, int]) -> None:
    for lay in ALL_LAYOUTS:
        assert c_output[f"sizeof {lay.cname}"] == lay.size, lay.cname
        for f, off in zip(lay.fields, lay.offsets, strict=True):
            assert c_output[f"offsetof {lay.cname}.{f.name}"] == off, (lay.cname, f.name)
            assert c_output[f"fieldsize {lay.cname}.{f.name}"] == f.size, (lay.cname, f.name)


def test_header_body_sizes_match_python(c_output: dict[str, int]) -> None:
    for t in range(256):
        want = p.SIZE_LO[t] if p.KNOWN[t] else -1
        assert c_output[f"body {t}"] == want, hex(t)


def test_header_defines_nothing_python_lacks(header_text: str) -> None:
    defined = set(re.findall(r"^#define (DQ_\w+)", header_text, re.M))
    defined -= {"DQ_STATIC_ASSERT"}
    extra = {d[3:] for d in defined} - set(p.constants())
    assert not extra, f"header defines constants unknown to Python: {sorted(extra)}"
    structs = set(re.findall(r"^typedef struct (\w+) \{", header_text, re.M))
    assert structs == {lay.cname for lay in ALL_LAYOUTS}


def test_header_style(header_text: str) -> None:
    assert "SPDX-License-Identifier: GPL-2.0-or-later" in header_text
    assert "#ifndef HW_DQEMU_PROTO_H" in header_text
    assert "\t" not in header_text
    includes = re.findall(r"^#include (.+)$", header_text, re.M)
    assert set(includes) <= {"<stdint.h>", "<stddef.h>"}
    assert all(len(line) <= 80 for line in header_text.splitlines())


def test_patch_shape() -> None:
    text = PATCH.read_text()
    assert text.startswith("From: ")
    assert re.search(r"^Subject: \[PATCH 02\] ", text, re.M)
    assert f"diff --git a/{HEADER_PATH} b/{HEADER_PATH}" in text
    assert "new file mode 100644" in text


# --- the document -------------------------------------------------------------------------

DESIGNED = re.compile(
    r"^<!-- dsm-designed: begin -->$(.*?)^<!-- dsm-designed: end -->$", re.M | re.S
)


def checked_doc() -> str:
    """The document without its "designed, not built" section, which the codec and the
    header do not implement yet (its own consistency is checked below)."""
    return DESIGNED.sub("", DOC.read_text())


def designed_section() -> str:
    m = DESIGNED.search(DOC.read_text())
    assert m, "protocol.md lost its dsm-designed markers"
    return m.group(1)


def doc_constants(doc: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in re.finditer(r"^\| `DQ_(\w+)` \| (0x[0-9A-Fa-f]+|\d+) \|", doc, re.M):
        name, val = m.group(1), int(m.group(2), 0)
        assert out.get(name, val) == val, f"{name} given two values in the doc"
        out[name] = val
    return out


def doc_layouts(
    doc: str,
) -> dict[str, tuple[int | None, str | None, int, list[tuple[int, str, str]]]]:
    """cname -> (type byte or None for the header, NAME, size, [(offset, decl, field)])."""
    out: dict[str, tuple[int | None, str | None, int, list[tuple[int, str, str]]]] = {}
    cur: str | None = None
    head = re.compile(
        r"^### (?:(0x[0-9A-F]{2}) (\w+)|Header) — `(\w+)` \((\d+) bytes(?: \+ tail)?\)$"
    )
    for line in doc.splitlines():
        m = head.match(line)
        if m:
            cur = m.group(3)
            t = int(m.group(1), 16) if m.group(1) else None
            out[cur] = (t, m.group(2), int(m.group(4)), [])
            continue
        if line.startswith("#"):
            cur = None
            continue
        r = re.match(r"^\| (\d+) \| (\w+(?:\[\d+\])?) \| (\w+) \|", line)
        if r and cur:
            out[cur][3].append((int(r.group(1)), r.group(2), r.group(3)))
    return out


def test_doc_constants_match_python() -> None:
    doc = doc_constants(checked_doc())
    py = p.constants()
    assert doc == py, {
        "missing from doc": sorted(set(py) - set(doc)),
        "unknown to python": sorted(set(doc) - set(py)),
        "different": sorted(k for k in set(doc) & set(py) if doc[k] != py[k]),
    }


def test_doc_layouts_match_python() -> None:
    doc = doc_layouts(checked_doc())
    assert set(doc) == {lay.cname for lay in ALL_LAYOUTS}
    hdr = doc["DQHeader"]
    assert hdr[2] == p.HEADER_SIZE
    assert hdr[3] == [
        (o, f.decl, f.name)
        for f, o in zip(p.HEADER_LAYOUT.fields, p.HEADER_LAYOUT.offsets, strict=True)
    ]
    for t, cls in p.MESSAGES.items():
        lay = cls.LAYOUT
        dt, dname, dsize, rows = doc[lay.cname]
        assert (dt, dname, dsize) == (t, cls.NAME, lay.size), lay.cname
        want = [(o, f.decl, f.name) for f, o in zip(lay.fields, lay.offsets, strict=True)]
        assert rows == want, lay.cname


def test_doc_type_table_sizes() -> None:
    text = checked_doc()
    rows = re.findall(r"^\| `DQ_MSG_(\w+)` \| (0x[0-9A-F]{2}) \| (\d+)(?: \+ text)? \|", text, re.M)
    assert {name: int(size) for name, _, size in rows} == {
        c.NAME: c.LAYOUT.size for c in p.MESSAGES.values()
    }


# --- the designed section (docs/dsm.md): consistent, and no clash with what is built -------

_SCALAR = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_TYPE_ROW = re.compile(r"^\| `DQ_MSG_(\w+)` \| (0x[0-9A-F]{2}) \| (\d+) \|", re.M)


def _decl_size(decl: str) -> tuple[int, int]:
    """(bytes, alignment) of a table type such as u32 or u64[4]."""
    m = re.fullmatch(r"(u8|u16|u32|u64)(?:\[(\d+)\])?", decl)
    assert m, f"unknown field type {decl!r}"
    unit = _SCALAR[m.group(1)]
    return unit * int(m.group(2) or 1), unit


def test_designed_layouts_are_packed_and_aligned() -> None:
    layouts = doc_layouts(designed_section())
    assert layouts, "the designed section has no message bodies"
    for cname, (_, name, size, rows) in layouts.items():
        offset = 0
        for off, decl, field in rows:
            nbytes, align = _decl_size(decl)
            assert off == offset, f"{cname}.{field}: offset {off}, expected {offset}"
            assert off % align == 0, f"{cname}.{field}: offset {off} is not {align}-aligned"
            offset += nbytes
        assert offset == size, f"{name}: fields add up to {offset} bytes, heading says {size}"
        assert size % 8 == 0, f"{name}: {size} bytes is not a multiple of 8"


def test_designed_types_match_their_bodies_and_clash_with_nothing() -> None:
    section = designed_section()
    layouts = {name: (t, size) for t, name, size, _ in doc_layouts(section).values()}
    rows = {name: (int(v, 16), int(size)) for name, v, size in _TYPE_ROW.findall(section)}
    assert rows == layouts, "the designed type table and the designed bodies disagree"
    built_names = {c.NAME for c in p.MESSAGES.values()}
    for name, (value, size) in rows.items():
        assert 0x63 <= value <= 0x6F, f"{name} = {value:#x} is outside the DSM range"
        assert value not in p.MESSAGES, f"{name}: type {value:#x} is taken"
        assert name not in built_names, f"{name} exists already"
        assert size <= p.MAX_PAYLOAD, name


def test_designed_constants_are_new() -> None:
    designed = doc_constants(designed_section())
    built = p.constants()
    assert not set(designed) & set(built), sorted(set(designed) & set(built))
