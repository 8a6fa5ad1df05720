"""Interchangeable storage backends for encrypted mirrors (see ``base`` for the contract)."""

from plinius.backends.base import Backend, Blob, IoStats, RunsOn, WriteTxn
from plinius.backends.registry import (
    backend_class,
    open_backend,
    open_read_only,
    parse_spec,
    register_backend,
    registered,
)

__all__ = [
    "Backend",
    "Blob",
    "IoStats",
    "RunsOn",
    "WriteTxn",
    "backend_class",
    "open_backend",
    "open_read_only",
    "parse_spec",
    "register_backend",
    "registered",
]
