"""``plaindir``: one plain file per blob in a directory, replaced atomically at commit.

The smallest honest backend: writes are staged in reusable page-aligned memory and committed with
plinius' one atomic durable write (``mkstemp`` + fsync + rename + directory fsync), so a process
killed mid-save leaves the previous version. Unlike plinius' own file backends it takes no lock
and one option, ``create=auto|never``, declared by ``read_only_open = True`` (plinius' read-only
commands then open with ``create="never"``: they read an existing directory and never create
one): it exists to show what a plug-in needs, not to be fast.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.base import (
    Backend,
    Blob,
    IoStats,
    RunsOn,
    WriteTxn,
    check_blob_name,
    check_range,
)
from plinius.backends.fsinfo import mount_of
from plinius.errors import BackendError, ConfigError, NotFoundError
from plinius.fsutil import atomic_writer, fsync_dir, open_regular, private_dir
from plinius.memory import StagingBuffer


class PlainDirWriteTxn(WriteTxn):
    """A new version staged in the backend's reusable memory until commit."""

    def __init__(self, backend: PlainDirBackend, blob: str, size: int) -> None:
        super().__init__(blob, size)
        self._backend = backend
        self._stage = backend._write_stage.view(size)
        # the staging memory is reused: bytes no view covers must not carry older blobs
        np.frombuffer(self._stage, dtype=np.uint8).fill(0)

    def view(self, offset: int, length: int) -> memoryview:
        self._check_range(offset, length)
        return self._stage[offset : offset + length]

    def commit(self) -> IoStats:
        self._check_range(0, 0)  # refuses a finished transaction
        t0 = time.perf_counter()
        with atomic_writer(self._backend.path_of(self.blob)) as f:
            f.write(self._stage)
        self._done = True
        elapsed = time.perf_counter() - t0
        return IoStats(bytes=self.size, write_s=elapsed, total_s=elapsed)

    def abort(self) -> None:
        self._done = True


class PlainDirBackend(Backend):
    """Blobs as files ``<location>/<blob>``."""

    name = "plaindir"
    byte_addressable = False
    summary = "example plug-in: one file per blob, replaced atomically (fsync + rename)"
    example_location = "/var/tmp/plinius-plaindir"
    default_root = "disk"
    ranged_read = True
    #: it takes create=never (below): plinius' read-only commands pass it, and nothing is made
    read_only_open = True

    def __init__(self, location: str, create: str = "auto", **options: Any) -> None:
        if options:
            raise ConfigError(
                f"backend 'plaindir' takes only create=auto|never, got {', '.join(options)}"
            )
        if create not in ("auto", "never"):
            raise ConfigError(f"plaindir: create={create!r}; use create=auto or never")
        super().__init__(location)
        # create=never (verify, export, infer): a missing directory is a NotFoundError, and
        # nothing is created
        self.dir = private_dir(location, "plaindir directory", create=create == "auto")
        self._write_stage = StagingBuffer()
        self._read_stage = StagingBuffer()
        self._maps: dict[str, mmap.mmap] = {}

    def path_of(self, blob: str) -> Path:
        return self.dir / check_blob_name(blob)

    def begin_write(self, blob: str, size: int) -> WriteTxn:
        check_blob_name(blob)
        if size < 0:
            raise BackendError(f"blob {blob!r}: negative size {size}")
        return PlainDirWriteTxn(self, blob, size)

    def _open(self, blob: str) -> int | None:
        try:
            return open_regular(self.path_of(blob), "plaindir blob", nofollow=True)
        except NotFoundError:
            return None

    def read(self, blob: str, offset: int = 0, length: int | None = None) -> Blob | None:
        t0 = time.perf_counter()
        fd = self._open(blob)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            n = check_range(repr(blob), offset, length, size)
            buf = self._read_stage.view(n)
            done = 0
            while done < n:
                got = os.preadv(fd, [buf[done:]], offset + done)
                if got == 0:
                    raise BackendError(f"blob {blob!r} shrank while it was read")
                done += got
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - t0
        return Blob(buf.toreadonly(), IoStats(bytes=n, read_s=elapsed, total_s=elapsed), size)

    def map(self, blob: str) -> memoryview | None:
        fd = self._open(blob)
        if fd is None:
            return None
        try:
            if os.fstat(fd).st_size == 0:
                return memoryview(b"")
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        old = self._maps.pop(blob, None)
        if old is not None:
            with contextlib.suppress(BufferError):  # a caller still holds a view: GC closes it
                old.close()
        self._maps[blob] = mm
        return memoryview(mm)

    def delete(self, blob: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(blob))
            fsync_dir(self.dir)

    def blobs(self) -> list[str]:
        names = []
        with os.scandir(self.dir) as it:
            for e in it:
                # staging files of killed writers start with "." and never pass check_blob_name
                with contextlib.suppress(ConfigError):
                    if e.is_file(follow_symlinks=False) and check_blob_name(e.name):
                        names.append(e.name)
        return sorted(names)

    def describe(self) -> RunsOn:
        m = mount_of(self.dir)
        volatile = m.volatile
        notes = ["example plug-in (plinius-backend-example)"]
        if volatile:
            notes.append(f"{m.fs_type} is RAM-backed: fsync cannot make it survive a reboot")
        return RunsOn(
            backend=self.name,
            path=str(self.dir.resolve()),
            fs_type=m.fs_type,
            mount_options=m.options,
            device=m.device,
            dax=m.dax,
            byte_addressable=False,
            durability="process-crash" if volatile else "power-fail",
            emulated=False,
            notes=notes,
            extra={"mount_point": m.mount_point, "fsync": True},
        )

    def close(self) -> None:
        for mm in self._maps.values():
            with contextlib.suppress(BufferError):
                mm.close()
        self._maps.clear()
        self._write_stage.close()
        self._read_stage.close()
