"""Test stand-ins: a Python shard that speaks to a router as QEMU does."""
