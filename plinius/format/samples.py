"""A byte-addressable area of fixed-size samples (the encrypted training set) in any backend.

Written once with :func:`put_samples`; read one sample at a time by index through the backend's
byte-addressable ``map`` view, so a restarted trainer touches only the samples of its batch and
reloads nothing from disk. The samples are stored as given (the owner already sealed each one):
this layer adds a small header and fixed stride, never plaintext.

Layout: ``[magic 8][format u16][pad u16][sample_size u32][count u64][name_len u16][name][pad to
64]`` then ``count`` samples of ``sample_size`` bytes each.

The header is plaintext that storage can edit, so it is parsed strictly (reserved and padding
bytes must be zero, the name must match) and its sample size and count are worth nothing on their
own: :mod:`plinius.format.pmdata` checks them against the authenticated dataset header, and each
sample's AES-GCM associated data binds its index and the split's count.

On-disk names keep the older word "record" (magic ``PLNRECS``, blob key ``records.<name>``) so
areas stored before the rename still open.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from plinius.backends.base import Backend, IoStats
from plinius.core.errors import (
    FormatError,
    NotAMirrorError,
    NotFoundError,
    TruncatedError,
    UnsupportedVersionError,
)
from plinius.core.memory import CACHE_LINE, align_up

MAGIC = b"PLNRECS\x00"  # on-disk: keeps "record" so stored areas still open
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sHHIQH")


def area_key(name: str) -> str:
    """Blob name of a sample area; on-disk, so it keeps "records." for stored areas."""
    return f"records.{name}"


def _header(name: str, sample_size: int, count: int) -> bytes:
    raw = name.encode()
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, sample_size, count, len(raw)) + raw
    return head.ljust(align_up(len(head), CACHE_LINE), b"\0")


def area_bytes(name: str, sample_size: int, count: int) -> int:
    """How large the area ``name`` of ``count`` samples of ``sample_size`` bytes is."""
    return len(_header(name, sample_size, count)) + sample_size * count


def area_size(backend: Backend, name: str, sample_size: int, count: int) -> int | None:
    """The stored size of area ``name`` (None: absent, or a backend without ranged reads),
    read without reading or mapping the area."""
    if not backend.ranged_read:
        return None
    probe = backend.read(area_key(name), 0, 0)
    return None if probe is None else probe.size


def put_samples(
    backend: Backend,
    name: str,
    samples: Iterable[bytes | memoryview],
    sample_size: int,
    count: int,
) -> IoStats:
    """Store ``count`` samples of ``sample_size`` bytes atomically under ``name``."""
    head = _header(name, sample_size, count)
    total = len(head) + sample_size * count
    with backend.begin_write(area_key(name), total) as txn:
        txn.view(0, len(head))[:] = head
        written = 0
        for i, sample in enumerate(samples):
            if i >= count:
                raise ValueError(f"more than the announced {count} samples")
            mv = memoryview(sample).cast("B")
            if mv.nbytes != sample_size:
                raise ValueError(f"sample {i} is {mv.nbytes} B, expected {sample_size} B")
            txn.view(len(head) + i * sample_size, sample_size)[:] = mv
            written += 1
        if written != count:
            raise ValueError(f"got {written} samples, announced {count}")
        return txn.commit()


class SampleArea:
    """Random access to a stored sample area; ``area[i]`` is a read-only view of sample ``i``."""

    def __init__(self, backend: Backend, name: str, expect: tuple[int, int] | None = None) -> None:
        """``expect``: (sample size, count) as an authenticated header says: the area must then
        be exactly that large, checked before it is mapped (its size is the attacker's)."""
        self.name = name
        what = f"sample area {name!r} in {backend.spec}"
        if expect is not None:
            size, need = area_size(backend, name, *expect), area_bytes(name, *expect)
            if size is not None and size != need:
                raise FormatError(
                    f"{what} is {size} B, but the authenticated dataset header makes it "
                    f"{need} B: altered or replaced; load the dataset again"
                )
        view = backend.map(area_key(name))
        if view is None:
            raise NotFoundError(f"{what} does not exist; load the dataset first")
        if view.nbytes < _HEAD.size or bytes(view[:8]) != MAGIC:
            raise NotAMirrorError(f"{what} is not a plinius sample area")
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
            raise FormatError(f"{what} holds samples named {stored_name!r}")
        if any(view[_HEAD.size + name_len : self._start]):
            raise FormatError(f"{what} has a corrupt header (non-zero padding)")
        need = self._start + size * count
        if view.nbytes < need:
            raise TruncatedError(f"{what} is truncated: {view.nbytes} B of {need} B")
        self.sample_size = size
        self.count = count
        self._view = view

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> memoryview:
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} outside 0..{self.count - 1}")
        at = self._start + index * self.sample_size
        return self._view[at : at + self.sample_size]
