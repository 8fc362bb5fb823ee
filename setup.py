"""Builds the router's C data path (cluster/router/_fastpath.c); the rest is pyproject.toml.

The module records a hash of its source, so that the router refuses a stale build
(cluster/router/dataloop.py) instead of running old code: rebuild with `pip install -e .`.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SRC = "cluster/router/_fastpath.c"
digest = hashlib.sha256((Path(__file__).resolve().parent / SRC).read_bytes()).hexdigest()[:16]

setup(
    ext_modules=[
        Extension(
            "cluster.router._fastpath",
            [SRC],
            define_macros=[("DQ_SOURCE_HASH", f'"{digest}"')],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
