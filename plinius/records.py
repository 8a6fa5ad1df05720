"""A byte-addressable area of fixed-size records (the encrypted training set) in any backend.

Written once with :func:`put_records`; read one record at a time by index through the backend's
byte-addressable ``map`` view, so a restarted trainer touches only the records of its batch and
reloads nothing from disk. The records are stored as given (the owner already sealed each one):
this layer adds a small header and fixed stride, never plaintext.

Layout: ``[magic 8][format u16][pad u16][record_size u32][count u64][name_len u16][name][pad to
64]`` then ``count`` records of ``record_size`` bytes each.

The header is plaintext that storage can edit, so it is parsed strictly (reserved and padding
bytes must be zero, the name must match) and its record size and count are worth nothing on their
own: :mod:`plinius.pmdata` checks them against the authenticated dataset header, and each record's
AES-GCM associated data binds its index and the split's count.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from plinius.backends.base import Backend, IoStats
from plinius.errors import (
    FormatError,
    NotAMirrorError,
    NotFoundError,
    TruncatedError,
    UnsupportedVersionError,
)
from plinius.memory import CACHE_LINE, align_up

MAGIC = b"PLNRECS\x00"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sHHIQH")


def area_key(name: str) -> str:
    return f"records.{name}"


def _header(name: str, record_size: int, count: int) -> bytes:
    raw = name.encode()
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, record_size, count, len(raw)) + raw
    return head.ljust(align_up(len(head), CACHE_LINE), b"\0")


def put_records(
    backend: Backend,
    name: str,
    records: Iterable[bytes | memoryview],
    record_size: int,
    count: int,
) -> IoStats:
    """Store ``count`` records of ``record_size`` bytes atomically under ``name``."""
    head = _header(name, record_size, count)
    total = len(head) + record_size * count
    with backend.begin_write(area_key(name), total) as txn:
        txn.view(0, len(head))[:] = head
        written = 0
        for i, rec in enumerate(records):
            if i >= count:
                raise ValueError(f"more than the announced {count} records")
            mv = memoryview(rec).cast("B")
            if mv.nbytes != record_size:
                raise ValueError(f"record {i} is {mv.nbytes} B, expected {record_size} B")
            txn.view(len(head) + i * record_size, record_size)[:] = mv
            written += 1
        if written != count:
            raise ValueError(f"got {written} records, announced {count}")
        return txn.commit()


class RecordArea:
    """Random access to a stored record area; ``area[i]`` is a read-only view of record ``i``."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.name = name
        what = f"record area {name!r} in {backend.spec}"
        view = backend.map(area_key(name))
        if view is None:
            raise NotFoundError(f"{what} does not exist; load the dataset first")
        if view.nbytes < _HEAD.size or bytes(view[:8]) != MAGIC:
            raise NotAMirrorError(f"{what} is not a plinius record area")
        _, fmt, pad, size, count, name_len = _HEAD.unpack(bytes(view[: _HEAD.size]))
        if fmt > FORMAT_VERSION:
            raise UnsupportedVersionError(f"{what} uses format {fmt}; upgrade plinius")
        if fmt != FORMAT_VERSION or pad != 0:
            raise FormatError(f"{what} has a corrupt header (format {fmt}, reserved {pad})")
        self._start = align_up(_HEAD.size + name_len, CACHE_LINE)
        if view.nbytes < self._start:
            raise TruncatedError(f"{what} is truncated inside its header")
        try:
            stored_name = bytes(view[_HEAD.size : _HEAD.size + name_len]).decode()
        except UnicodeDecodeError:
            raise FormatError(f"{what} has a corrupt header (name is not UTF-8)") from None
        if stored_name != name:
            raise FormatError(f"{what} holds records named {stored_name!r}")
        if any(view[_HEAD.size + name_len : self._start]):
            raise FormatError(f"{what} has a corrupt header (non-zero padding)")
        need = self._start + size * count
        if view.nbytes < need:
            raise TruncatedError(f"{what} is truncated: {view.nbytes} B of {need} B")
        self.record_size = size
        self.count = count
        self._view = view

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> memoryview:
        if not 0 <= index < self.count:
            raise IndexError(f"record {index} outside 0..{self.count - 1}")
        at = self._start + index * self.record_size
        return self._view[at : at + self.record_size]
