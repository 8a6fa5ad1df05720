"""The one file-I/O path shared by the ``ssd``, ``dax`` and ``tmpfs`` backends.

A blob is a file ``<dir>/<key>``. A new version is encrypted into reusable page-aligned staging
memory, written with ``write(2)`` to ``<key>.tmp-<pid>``, fsynced (unless the backend's durability
does not need it), renamed over ``<key>`` and the directory fsynced: at every instant ``<key>``
names one complete committed version, so a crash mid-save leaves the previous one loadable.
The three backends differ only in class attributes (fsync or not, what they expect underneath).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from plinius.backends.base import Backend, Blob, Durability, IoStats, RunsOn, WriteTxn, check_key
from plinius.backends.fsinfo import block_device_facts, mount_of
from plinius.errors import BackendError, ConfigError
from plinius.memory import PAGE, StagingBuffer, align_up

_TMP_MARK = ".tmp-"
_CHUNK = 1 << 30  # write(2) moves at most ~2 GiB per call


def _truthy(value: Any) -> bool:
    return str(value).lower() in {"1", "true", "yes", "on"}


class FileWriteTxn(WriteTxn):
    """A new file version staged in memory until commit."""

    def __init__(self, backend: FileBackend, key: str, size: int) -> None:
        super().__init__(key, size)
        self._backend = backend
        self._stage = backend._write_stage.view(align_up(size, PAGE) if backend.direct else size)

    def view(self, offset: int, length: int) -> memoryview:
        self._check_range(offset, length)
        return self._stage[offset : offset + length]

    def commit(self) -> IoStats:
        if self._done:
            raise BackendError(f"write transaction on {self.key!r} is already finished")
        self._done = True
        stats = self._backend._commit_file(self.key, self._stage, self.size)
        self._stage.release()
        return stats

    def abort(self) -> None:
        self._done = True
        self._stage.release()


class FileBackend(Backend):
    """Blobs as files in one directory, replaced by write + fsync + rename + directory fsync."""

    byte_addressable = False
    #: fsync file and directory at commit
    fsync: ClassVar[bool] = True
    #: the file system this backend is meant for ("dax", "tmpfs" or "" for any block device)
    expects: ClassVar[str] = ""

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        unknown = set(options) - {"direct"}
        if unknown:
            raise ConfigError(
                f"{self.name} backend does not take option(s) {', '.join(sorted(unknown))}; "
                "it knows: direct=1 (O_DIRECT writes)"
            )
        self.direct = _truthy(options.get("direct", "0"))
        self.dir = Path(location)
        self._prepare_dir()
        self._write_stage = StagingBuffer()
        self._read_stage = StagingBuffer()
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}

    # --- set-up --------------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        d = self.dir
        if d.exists() and not d.is_dir():
            raise BackendError(f"{self.name}: {d} exists and is not a directory")
        if not d.exists():
            if not d.parent.is_dir():
                raise BackendError(
                    f"{self.name}: parent directory {d.parent} does not exist; create it first"
                )
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise BackendError(f"{self.name}: cannot create {d}: {exc.strerror}") from None
        probe = d / f".probe{_TMP_MARK}{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise BackendError(
                f"{self.name}: directory {d} is not writable ({exc.strerror}); "
                "choose a directory you can write to"
            ) from None

    def _path(self, key: str) -> Path:
        return self.dir / check_key(key)

    def _clean_stale_tmp(self, key: str) -> None:
        """Remove temp files left by processes that died mid-save (never a committed file)."""
        for p in self.dir.glob(f"{key}{_TMP_MARK}*"):
            pid_text = p.name.rsplit(_TMP_MARK, 1)[-1]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            if pid != os.getpid() and _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # --- contract ------------------------------------------------------------------------------

    def begin_write(self, key: str, size: int) -> WriteTxn:
        check_key(key)
        if size < 0:
            raise BackendError(f"blob size must be >= 0, got {size}")
        return FileWriteTxn(self, key, size)

    def _commit_file(self, key: str, data: memoryview, size: int) -> IoStats:
        self._clean_stale_tmp(key)
        final = self._path(key)
        tmp = self.dir / f"{key}{_TMP_MARK}{os.getpid()}"
        stats = IoStats(bytes=size)
        t0 = time.perf_counter()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if self.direct:
            flags |= getattr(os, "O_DIRECT", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise BackendError(f"{self.name}: cannot create {tmp}: {exc.strerror}") from None
        try:
            _write_all(fd, data, tmp)
            if self.direct and data.nbytes != size:
                os.ftruncate(fd, size)
            t1 = time.perf_counter()
            stats.write_s = t1 - t0
            if self.fsync:
                os.fsync(fd)
            stats.fsync_s = time.perf_counter() - t1
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        t2 = time.perf_counter()
        os.rename(tmp, final)
        if self.fsync:
            _fsync_dir(self.dir)
            stats.fsync_s += time.perf_counter() - t2
        else:
            stats.write_s += time.perf_counter() - t2
        stats.total_s = time.perf_counter() - t0
        return stats

    def read(self, key: str) -> Blob | None:
        path = self._path(key)
        t0 = time.perf_counter()
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"{self.name}: cannot open {path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            view = self._read_stage.view(size)
            got = 0
            while got < size:
                n = os.readv(fd, [view[got : min(size, got + _CHUNK)]])
                if n == 0:
                    break
                got += n
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - t0
        return Blob(view[:got].toreadonly(), IoStats(bytes=got, read_s=elapsed, total_s=elapsed))

    def map(self, key: str) -> memoryview | None:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            cached = self._maps.get(key)
            if cached is not None and cached[0] == st.st_ino:
                return memoryview(cached[1]).toreadonly()
            if st.st_size == 0:
                return memoryview(b"")
            mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._maps[key] = (st.st_ino, mm)
        return memoryview(mm).toreadonly()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        if self.fsync:
            _fsync_dir(self.dir)

    def keys(self) -> list[str]:
        return sorted(
            p.name
            for p in self.dir.iterdir()
            if p.is_file() and _TMP_MARK not in p.name and not p.name.startswith(".")
        )

    def describe(self) -> RunsOn:
        m = mount_of(self.dir)
        dev = block_device_facts(m.device)
        durability: Durability
        if m.volatile:
            durability = "process-crash"
        else:
            durability = "power-fail" if self.fsync else "process-crash"
        notes: list[str] = []
        emulated = False
        if self.expects == "dax" and not m.dax:
            emulated = True
            notes.append(
                f"not a DAX mount ({m.fs_type} on {m.device}): runs the DAX file path on "
                "ordinary storage, figures are emulated"
            )
        if self.expects == "tmpfs" and not m.volatile:
            notes.append(f"expected tmpfs but {self.dir} is on {m.fs_type}")
        if self.expects == "" and dev.get("rotational") == "1":
            notes.append(
                f"{m.device} reports rotational=1 (a virtual or spinning disk, not a local SSD)"
            )
        if not self.fsync:
            notes.append("no fsync: survives process crashes, not power loss or reboot")
        if m.volatile and self.fsync:
            notes.append(f"{m.fs_type} is RAM-backed: fsync cannot make it survive a reboot")
        return RunsOn(
            backend=self.name,
            path=str(self.dir.resolve()),
            fs_type=m.fs_type,
            mount_options=m.options,
            device=m.device,
            dax=m.dax,
            byte_addressable=False,
            durability=durability,
            emulated=emulated,
            notes=notes,
            extra={
                "mount_point": m.mount_point,
                "fsync": self.fsync,
                "o_direct": self.direct,
                **{f"device_{k}": v for k, v in dev.items()},
            },
        )

    def close(self) -> None:
        for _, mm in self._maps.values():
            with contextlib.suppress(BufferError):
                mm.close()
        self._maps.clear()
        self._write_stage.close()
        self._read_stage.close()


def _write_all(fd: int, data: memoryview, path: Path) -> None:
    done = 0
    total = data.nbytes
    while done < total:
        try:
            n = os.write(fd, data[done : min(total, done + _CHUNK)])
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise BackendError(
                    f"no space left writing {path} ({total} B needed); the previous version "
                    "is untouched"
                ) from None
            raise BackendError(f"write to {path} failed: {exc.strerror}") from None
        done += n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
