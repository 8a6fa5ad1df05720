"""Staged writes: stage a new version in reusable page-aligned memory, put the bytes at commit.

For backends the caller cannot encrypt into in place (files, a remote store). A write
transaction hands out views of one staging buffer (:class:`plinius.core.memory.StagingBuffer`, kept
across saves and keys, so a save allocates no fresh memory), zeroes what no view covered (the
buffer still holds earlier blobs' bytes), and at commit gives the bytes to :meth:`_put`, which
makes them durable and current in one atomic step. Reads go through :meth:`_get` into a second
staging buffer and are timed here.

A subclass implements :meth:`_put` and :meth:`_get` (and ``map``, ``delete``, ``keys``,
``describe``); how it makes a version durable and atomic (fsync + rename, a server's
transaction) is its own business.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

from plinius.backends.base import Backend, Blob, IoStats, WriteTxn, check_blob_name
from plinius.core.errors import BackendError
from plinius.core.memory import StagingBuffer

_ZEROS = memoryview(bytes(1 << 16))  # source for zeroing staging gaps without allocating


class StagedWriteTxn(WriteTxn):
    """A new version staged in memory until commit."""

    def __init__(self, backend: StagedBackend, blob: str, size: int) -> None:
        super().__init__(blob, size)
        self._backend = backend
        self._stage = backend._write_stage.view(backend._stage_bytes(size))
        self._spans: list[tuple[int, int]] = []

    def view(self, offset: int, length: int) -> memoryview:
        self._check_range(offset, length)
        self._spans.append((offset, offset + length))
        return self._stage[offset : offset + length]

    def _zero_gaps(self) -> None:
        """Zero the staged bytes no view covered (alignment padding, an O_DIRECT tail).

        The staging memory is reused across saves and keys, so without this the stored blob
        would carry stale bytes of earlier ones. Only the gaps are written: the views are about
        to be written in full by the caller, and touching them twice costs save time.
        """
        stage = self._stage
        pos = 0
        for start, end in sorted(self._spans):
            if start > pos:
                _zero(stage, pos, start)
            pos = max(pos, end)
        if pos < stage.nbytes:
            _zero(stage, pos, stage.nbytes)

    def commit(self) -> IoStats:
        if self._done:
            raise BackendError(f"write transaction on {self.blob!r} is already finished")
        self._done = True
        try:
            self._zero_gaps()
            return self._backend._put(self.blob, self._stage, self.size)
        finally:
            self._stage.release()

    def abort(self) -> None:
        self._done = True
        self._stage.release()


def _zero(buf: memoryview, start: int, end: int) -> None:
    while start < end:
        n = min(end - start, _ZEROS.nbytes)
        buf[start : start + n] = _ZEROS[:n]
        start += n


class StagedBackend(Backend):
    """Base of backends that stage writes and reads in reusable memory."""

    ranged_read = True

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        self._write_stage = StagingBuffer()
        self._read_stage = StagingBuffer()

    # --- what a subclass provides ---------------------------------------------------------------

    @abstractmethod
    def _put(self, blob: str, data: memoryview, size: int) -> IoStats:
        """Make ``data[:size]`` the committed version of ``blob``, atomically, to this backend's
        durability. ``data`` may be longer (see :meth:`_stage_bytes`); the rest is zeros. On
        any failure the previous version must stay current."""

    @abstractmethod
    def _get(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, int] | None:
        """Copy bytes [offset, offset+length) of the committed ``blob`` (length None: to its end)
        into ``stage.view(n)``; return (the bytes got, the blob's full size), or None if absent.
        Check the range with :func:`plinius.backends.base.check_range`."""

    def _stage_bytes(self, size: int) -> int:
        """How much staging memory a ``size``-byte version needs (more for aligned I/O)."""
        return size

    def _check_open(self) -> None:
        """Raise BackendError when the backend is closed."""

    # --- the contract ---------------------------------------------------------------------------

    def begin_write(self, blob: str, size: int) -> WriteTxn:
        check_blob_name(blob)
        if size < 0:
            raise BackendError(f"blob size must be >= 0, got {size}")
        self._check_open()
        return StagedWriteTxn(self, blob, size)

    def read(self, blob: str, offset: int = 0, length: int | None = None) -> Blob | None:
        self._check_open()
        t0 = time.perf_counter()
        got = self._get(blob, offset, length, self._read_stage)
        if got is None:
            return None
        data, size = got
        elapsed = time.perf_counter() - t0
        stats = IoStats(bytes=data.nbytes, read_s=elapsed, total_s=elapsed)
        return Blob(data.toreadonly(), stats, size)

    def close(self) -> None:
        self._write_stage.close()
        self._read_stage.close()
