"""Builds the router's C data path (cluster/router/_fastpath.c with _rdma.c, linked against
libibverbs); the rest is pyproject.toml.

The module records a hash of its source, so that the router refuses a stale build
(cluster/router/dataloop.py) instead of running old code: rebuild with `pip install -e .`.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SRC = "cluster/router/_fastpath.c"
# _rdma.c (the RDMA link) is #included by _fastpath.c: one translation unit
SOURCES = [SRC, "cluster/router/_rdma.c"]
HERE = Path(__file__).resolve().parent
digest = hashlib.sha256(b"".join((HERE / s).read_bytes() for s in SOURCES)).hexdigest()[:16]

setup(
    ext_modules=[
        Extension(
            "cluster.router._fastpath",
            [SRC],
            depends=SOURCES[1:],
            libraries=["ibverbs"],
            define_macros=[("DQ_SOURCE_HASH", f'"{digest}"')],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
