"""The one file-I/O path shared by the ``ssd``, ``dax`` and ``tmpfs`` backends.

A blob is a file ``<dir>/<blob>``. A new version is encrypted into reusable page-aligned staging
memory (:mod:`plinius.backends.staging`) and, at commit, written with ``write(2)`` to a file that
is not ``<blob>``, fsynced (unless the backend's durability does not need it), given the name
``<blob>`` in one atomic step and the directory fsynced: at every instant ``<blob>`` names one
complete committed version, so a crash mid-save leaves the previous one loadable.

The file written is one of two:

* the *spare* ``.<blob>.spare`` (option ``spare=1``, the default): the previous version's file,
  kept after the last save. The new version overwrites it in place (cut to its exact size), then
  ``renameat2(RENAME_EXCHANGE)`` swaps it with ``<blob>``: the live name holds the new version,
  the spare the one before, ready for the next save. Rewriting the pages and blocks the file
  already has, and freeing no old file at the rename, makes a save over twice as fast on tmpfs
  and on ext4 with fsync as writing a new file (the price: the storage of the previous version
  stays taken between saves, where a new file needed it only during one). The spare is only ever
  written, never read; it is opened ``O_NOFOLLOW`` and used only when it is a regular file of
  ours with one link and no group or other permissions, else it is removed and made anew (or,
  when that fails, the save takes the path below). Where the file system or C library cannot
  exchange names, the first exchange tried finds out (its spare is renamed over ``<blob>``
  instead) and the instance saves through new files from then on.
* a fresh ``.<blob>.<random>.tmp`` created ``O_EXCL | O_NOFOLLOW`` (a planted symlink or file
  can neither receive nor lose data), renamed over ``<blob>`` (``spare=0``).

Every name is resolved relative to the directory opened once with ``O_NOFOLLOW``, and every file
is opened ``O_NOFOLLOW`` and checked to be a regular file. Reads (whole blobs or ranges)
``pread`` into reusable staging memory.

One process at a time: opening a backend takes an exclusive ``flock`` on ``<dir>/.lock`` (the
holder's pid written inside), so two trainers cannot interleave versions and a reader (verify,
infer, export) never pairs a blob with a freshness counter advanced under its feet. Readers take
the same exclusive lock: the directory holds one mirror and saves are short, so waiting for the
trainer to stop is the simple, safe rule.

The three backends differ only in class attributes (fsync or not, what they expect underneath).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import secrets
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Any, ClassVar

from plinius.backends.base import (
    Durability,
    EvictResult,
    IoStats,
    RunsOn,
    check_blob_name,
    check_range,
)
from plinius.backends.fsinfo import block_device_facts, mount_of
from plinius.backends.owned_dir import LOCK_NAME, open_owned_dir
from plinius.backends.staging import StagedBackend
from plinius.core.errors import BackendError, ConfigError, NotFoundError
from plinius.core.fsutil import HeldLock, check_path, exchange, write_all
from plinius.core.memory import PAGE, StagingBuffer, align_up

_TMP_SUFFIX = ".tmp"
_SPARE_SUFFIX = ".spare"
#: ``renameat2(RENAME_EXCHANGE)`` errors that mean "not here": no such call, a file system
#: without it; the save renames instead and the instance stops trying
_NO_EXCHANGE = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})
_OLD_TMP_MARK = ".tmp-"  # temp names of plinius <= 0.x: <blob>.tmp-<pid>
_CHUNK = 1 << 30  # write(2) moves at most ~2 GiB per call


def _truthy(value: Any) -> bool:
    return str(value).lower() in {"1", "true", "yes", "on"}


def _is_tmp_name(name: str) -> bool:
    """Our staging names (current and old style); never a committed blob name."""
    if name.startswith(".") and name.endswith(_TMP_SUFFIX) and name != LOCK_NAME:
        return True
    mark = name.rfind(_OLD_TMP_MARK)
    return mark > 0 and name[mark + len(_OLD_TMP_MARK) :].isdigit()


def _spare_name(blob: str) -> str:
    """The spare file of ``blob``: hidden (never a blob name, never listed), never read."""
    return f".{blob}{_SPARE_SUFFIX}"


def _spare_of(name: str) -> str | None:
    """The blob whose spare ``name`` is, or None."""
    if name.startswith(".") and name.endswith(_SPARE_SUFFIX) and len(name) > 1 + len(_SPARE_SUFFIX):
        return name[1 : -len(_SPARE_SUFFIX)]
    return None


def _flag(value: Any, what: str) -> bool:
    text = str(value).lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{what}={value!r}; use {what}=1 or {what}=0")


class FileBackend(StagedBackend):
    """Blobs as files in one directory, replaced by write + fsync + rename (or exchange with the
    spare) + directory fsync."""

    byte_addressable = False
    durability_levels: ClassVar[tuple[Durability, ...]] = ("power-fail", "process-crash")
    read_only_open = True  # create=never: an existing directory only, nothing created
    #: fsync file and directory at commit
    fsync: ClassVar[bool] = True
    #: the file system this backend is meant for ("dax", "tmpfs" or "" for any block device)
    expects: ClassVar[str] = ""

    #: whether saves rewrite the previous version's file (``spare=1``) unless the spec says.
    #: Chosen by measurement (interleaved rounds, 64 and 100 MiB, a 2-core VM): on tmpfs and on
    #: ext4 with fsync alike a save through the spare took less than half the time of one
    #: through a new file (no fresh pages to fault in, no blocks to allocate, no old file to
    #: free at the rename); a subclass for a file system where that does not hold sets False
    spare_default: ClassVar[bool] = True

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        unknown = set(options) - {"direct", "create", "spare"}
        if unknown:
            raise ConfigError(
                f"{self.name} backend does not take option(s) {', '.join(sorted(unknown))}; "
                "it knows: direct=1 (O_DIRECT writes), create=auto|never, "
                "spare=0|1 (rewrite the previous version's file and exchange the names)"
            )
        self.direct = _truthy(options.get("direct", "0"))
        #: saves write into the spare and exchange it with the blob (False once the directory
        #: is found not to support exchanging names)
        self.spare = _flag(options.get("spare", int(self.spare_default)), "spare")
        self.create = str(options.get("create", "auto"))
        if self.create not in ("auto", "never"):
            raise ConfigError(f"{self.name}: create={self.create!r}; use create=auto or never")
        self.dir = Path(check_path(location, f"{self.name} backend directory"))
        self._dfd = -1
        self._lock: HeldLock | None = None
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}
        #: every mapping ``map`` made that may still be alive: (device, inode, mapping); a
        #: spare is rewritten in place only once no view of it is left
        self._mapped: list[tuple[int, int, weakref.ref[mmap.mmap]]] = []
        self._maps_lock = threading.Lock()
        try:
            self._open_dir()
        except BaseException:
            self.close()
            raise

    # --- set-up --------------------------------------------------------------------------------

    def _open_dir(self) -> None:
        """Open (create) the directory without following a symlink, lock it, clear stale temps."""
        self._dfd, self._lock = open_owned_dir(
            self.dir, self.name, self.spec, create=self.create != "never"
        )
        # we hold the directory alone: every staging file left here is from a dead process;
        # a spare goes too when spares are off or its blob is gone (a first save cut short)
        names = os.listdir(self._dfd)
        present = set(names)
        for name in names:
            of = _spare_of(name)
            if _is_tmp_name(name) or (of is not None and (not self.spare or of not in present)):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._dfd)

    def _open_file(self, blob: str) -> int | None:
        """A read descriptor of committed blob ``blob`` (never through a symlink), or None."""
        check_blob_name(blob)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(blob, flags, dir_fd=self._dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BackendError(
                    f"{self.name}: {self.dir / blob} is a symbolic link; refusing to follow it"
                ) from None
            raise BackendError(
                f"{self.name}: cannot open {self.dir / blob}: {exc.strerror}"
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BackendError(f"{self.name}: {self.dir / blob} is not a regular file")
        os.set_blocking(fd, True)
        return fd

    # --- staged writes and reads ---------------------------------------------------------------

    def _stage_bytes(self, size: int) -> int:
        return align_up(size, PAGE) if self.direct else size

    def _check_open(self) -> None:
        if self._dfd < 0:
            raise BackendError(f"backend {self.spec} is closed")

    def _create_tmp(self, blob: str) -> tuple[str, int]:
        """A new staging file with an unpredictable name, created O_EXCL | O_NOFOLLOW."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        if self.direct:
            flags |= getattr(os, "O_DIRECT", 0)
        for _ in range(16):
            name = f".{blob}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
            try:
                return name, os.open(name, flags, 0o600, dir_fd=self._dfd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise BackendError(
                    f"{self.name}: cannot create a staging file in {self.dir}: {exc.strerror}"
                ) from None
        raise BackendError(f"{self.name}: cannot create a staging file in {self.dir}")

    def _put(self, blob: str, data: memoryview, size: int) -> IoStats:
        self._check_open()
        if self.spare:
            got = self._put_spare(blob, data, size)
            if got is not None:
                return got
        return self._put_new(blob, data, size)

    def _put_new(self, blob: str, data: memoryview, size: int) -> IoStats:
        """Write a new staging file and rename it over ``blob``."""
        stats = IoStats(bytes=size)
        t0 = time.perf_counter()
        tmp, fd = self._create_tmp(blob)
        try:
            self._fill(fd, blob, data, size, stats, t0)
            os.close(fd)
            fd = -1
            t2 = time.perf_counter()
            os.rename(tmp, blob, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
            stats.replace_s = time.perf_counter() - t2
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._dfd)
            if isinstance(exc, OSError):
                raise self._replace_error(blob, exc) from None
            raise
        return self._commit_dir(stats, t0)

    def _put_spare(self, blob: str, data: memoryview, size: int) -> IoStats | None:
        """Overwrite the spare in place, cut it to ``size``, exchange it with ``blob``; None
        (nothing written) when no usable spare can be had."""
        stats = IoStats(bytes=size)
        t0 = time.perf_counter()
        spare = _spare_name(blob)
        fd = self._open_spare(spare)
        if fd is None:
            return None
        try:
            self._fill(fd, blob, data, size, stats, t0)
            written = os.fstat(fd)
            os.close(fd)
            fd = -1
            t2 = time.perf_counter()
            self._swap_in(spare, blob)
            stats.replace_s = time.perf_counter() - t2
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):  # a half-written spare is of no use
                os.unlink(spare, dir_fd=self._dfd)
            if isinstance(exc, OSError):
                raise self._replace_error(blob, exc) from None
            raise
        self._check_swapped(blob, written)
        return self._commit_dir(stats, t0)

    def _fill(
        self, fd: int, blob: str, data: memoryview, size: int, stats: IoStats, t0: float
    ) -> None:
        """Write the whole staged blob into ``fd``, cut it to exactly ``size`` (a longer spare,
        an ``O_DIRECT`` tail), fsync it where the durability needs it; both timed."""
        _write_all(fd, data, self.dir / blob)
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        t1 = time.perf_counter()
        stats.write_s = t1 - t0
        if self.fsync:
            os.fsync(fd)
            stats.fsync_s = time.perf_counter() - t1

    def _check_swapped(self, blob: str, written: os.stat_result) -> None:
        """The name ``blob`` now holds the very file just written: a spare swapped by someone
        else between our checks and the exchange would otherwise pass for the new version
        (the platform would commit it; its restore would then fail closed)."""
        try:
            now = os.stat(blob, dir_fd=self._dfd, follow_symlinks=False)
        except OSError as exc:
            raise self._replace_error(blob, exc) from None
        if (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
            raise BackendError(
                f"{self.name}: {self.dir / blob} is not the file this save wrote (the directory "
                "changed under the save): the save is not committed"
            )

    def _swap_in(self, spare: str, blob: str) -> None:
        """Give the complete spare the name ``blob`` atomically: exchange the two names (the
        spare then holds the previous version), or rename the spare over ``blob`` when there is
        no previous version or exchanging is not supported here (then never tried again)."""
        if self.spare:
            try:
                exchange(spare, blob, dir_fd=self._dfd)
                return
            except OSError as exc:
                if exc.errno in _NO_EXCHANGE:
                    self.spare = False
                elif exc.errno != errno.ENOENT:  # ENOENT: no previous version yet
                    raise
        os.rename(spare, blob, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)

    def _commit_dir(self, stats: IoStats, t0: float) -> IoStats:
        """fsync the directory (where the durability needs it), booked as fsync time."""
        if self.fsync:
            t = time.perf_counter()
            os.fsync(self._dfd)
            stats.fsync_s += time.perf_counter() - t
        stats.total_s = time.perf_counter() - t0
        return stats

    def _replace_error(self, blob: str, exc: OSError) -> BackendError:
        return BackendError(
            f"{self.name}: cannot replace {self.dir / blob}: {exc.strerror}; "
            "the previous version is untouched"
        )

    def _open_spare(self, spare: str) -> int | None:
        """A write descriptor of the spare file ``spare``, positioned at 0: the existing one
        when it is a regular file of ours with one link, no group or other permissions and no
        live view of ours, else a new one (whatever was there removed, never followed). None
        when none can be had (the save then writes a new file)."""
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        if self.direct:
            flags |= getattr(os, "O_DIRECT", 0)
        for _ in range(4):
            try:
                st: os.stat_result | None = os.stat(spare, dir_fd=self._dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except OSError:
                return None
            if st is not None and not _own_plain_file(st):
                if not self._remove_spare(spare):
                    return None
                continue
            try:
                if st is None:
                    fd = os.open(spare, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self._dfd)
                else:
                    fd = os.open(spare, flags, dir_fd=self._dfd)
            except FileExistsError:
                continue
            except OSError:  # replaced under us (a symlink: ELOOP, a FIFO: ENXIO), or gone
                if st is None or not self._remove_spare(spare):
                    return None
                continue
            fst = os.fstat(fd)
            same = st is None or (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino)
            if same and _own_plain_file(fst) and self._unmap(fst.st_dev, fst.st_ino):
                os.set_blocking(fd, True)
                return fd
            os.close(fd)
            # not what was checked, or still mapped by a view of ours: a new one instead
            if not self._remove_spare(spare):
                return None
        return None

    def _remove_spare(self, spare: str) -> bool:
        """Remove whatever is at name ``spare`` (a link itself, never its target; an empty
        directory); False when it cannot be removed."""
        try:
            os.unlink(spare, dir_fd=self._dfd)
        except FileNotFoundError:
            return True
        except IsADirectoryError:
            try:
                os.rmdir(spare, dir_fd=self._dfd)
            except OSError:
                return False
        except OSError:
            return False
        return True

    def _unmap(self, dev: int, ino: int) -> bool:
        """Close this backend's mappings of file (dev, ino) so it can be rewritten in place:
        False when one still has views (rewriting would change, or cut under, what a caller
        holds; that file is then left alone)."""
        free = True
        with self._maps_lock:
            kept: list[tuple[int, int, weakref.ref[mmap.mmap]]] = []
            for d, i, ref in self._mapped:
                mm = ref()
                if mm is None or mm.closed:
                    continue
                if (d, i) == (dev, ino):
                    for name, (_, cached) in list(self._maps.items()):
                        if cached is mm:
                            del self._maps[name]
                    try:
                        mm.close()
                        continue
                    except BufferError:
                        free = False
                kept.append((d, i, ref))
            self._mapped = kept
        return free

    def _get(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, int] | None:
        fd = self._open_file(blob)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            n = check_range(f"{self.dir / blob}", offset, length, size)
            view = stage.view(n)
            got = 0
            while got < n:
                k = os.preadv(fd, [view[got : min(n, got + _CHUNK)]], offset + got)
                if k == 0:
                    break
                got += k
        finally:
            os.close(fd)
        return view[:got], size

    def read_into(self, blob: str, offset: int, out: memoryview) -> int:
        """``pread`` straight into the caller's (reusable, page-aligned) memory: no staging copy,
        and the GIL is released while the kernel copies, so a restore decrypts meanwhile."""
        self._check_open()
        fd = self._open_file(blob)
        if fd is None:
            raise NotFoundError(f"{self.name}: {self.dir / blob} does not exist")
        try:
            n = check_range(f"{self.dir / blob}", offset, out.nbytes, os.fstat(fd).st_size)
            got = 0
            while got < n:
                k = os.preadv(fd, [out[got : min(n, got + _CHUNK)]], offset + got)
                if k == 0:
                    raise BackendError(f"{self.name}: {self.dir / blob} shrank while it was read")
                got += k
        finally:
            os.close(fd)
        return got

    def evict(self, blob: str) -> EvictResult:
        """fsync, then ``posix_fadvise(DONTNEED)``; residency checked with ``mincore`` before
        and after. A RAM file system (tmpfs) cannot evict: its cached pages are the file."""
        self._check_open()
        with self._maps_lock:
            cached = self._maps.pop(blob, None)
        if cached is not None:  # our own mapping would keep its pages resident
            with contextlib.suppress(BufferError):
                cached[1].close()
        fd = self._open_file(blob)
        if fd is None:
            raise NotFoundError(f"{self.name}: {self.dir / blob} does not exist")
        try:
            size = os.fstat(fd).st_size
            before = resident_pages(fd, size)
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            after = resident_pages(fd, size)
        finally:
            os.close(fd)
        total = -(-size // PAGE)
        mount = mount_of(self.dir)
        if mount.volatile:
            reason = (
                f"{self.dir} is on {mount.fs_type}, which keeps files in RAM: its pages are the "
                "file itself, nothing can be evicted (every read is a warm one)"
            )
            return EvictResult(False, total, before, after, reason)
        if after:
            reason = f"{after} of {total} pages still resident (mapped or locked elsewhere?)"
            return EvictResult(False, total, before, after, reason)
        return EvictResult(True, total, before, after)

    # --- contract ------------------------------------------------------------------------------

    def map(self, blob: str) -> memoryview | None:
        self._check_open()
        fd = self._open_file(blob)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            with self._maps_lock:
                cached = self._maps.get(blob)
                if (
                    cached is not None
                    and cached[0] == st.st_ino
                    and not cached[1].closed
                    and len(cached[1]) == st.st_size
                ):
                    return memoryview(cached[1]).toreadonly()
            if st.st_size == 0:
                return memoryview(b"")
            mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        with self._maps_lock:
            self._maps[blob] = (st.st_ino, mm)
            self._mapped = [m for m in self._mapped if m[2]() is not None]
            self._mapped.append((st.st_dev, st.st_ino, weakref.ref(mm)))
        return memoryview(mm).toreadonly()

    def delete(self, blob: str) -> None:
        """Remove ``blob`` and its spare (the spare first, and only as far as it goes: it is
        not a blob, whatever was planted there cannot keep the blob from going)."""
        check_blob_name(blob)
        self._check_open()
        spare = _spare_name(blob)
        removed = False
        with contextlib.suppress(OSError):
            os.stat(spare, dir_fd=self._dfd, follow_symlinks=False)
            removed = self._remove_spare(spare)
        try:
            os.unlink(blob, dir_fd=self._dfd)
            removed = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackendError(
                f"{self.name}: cannot delete {self.dir / blob}: {exc.strerror}"
            ) from None
        if removed and self.fsync:
            os.fsync(self._dfd)

    def blobs(self) -> list[str]:
        self._check_open()
        out: list[str] = []
        with os.scandir(self._dfd) as it:
            for e in it:
                if e.name.startswith(".") or _is_tmp_name(e.name):
                    continue
                if e.is_file(follow_symlinks=False):
                    out.append(e.name)
        return sorted(out)

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
        return RunsOn.from_mount(
            self.name,
            str(self.dir.resolve()),
            m,
            byte_addressable=False,
            durability=durability,
            emulated=emulated,
            notes=notes,
            extra={
                "fsync": self.fsync,
                "o_direct": self.direct,
                "spare": self.spare,
                **{f"device_{k}": v for k, v in dev.items()},
            },
        )

    def close(self) -> None:
        with self._maps_lock:
            for _, mm in self._maps.values():
                with contextlib.suppress(BufferError):
                    mm.close()
            self._maps.clear()
        super().close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._dfd >= 0:
            os.close(self._dfd)
            self._dfd = -1

    def __del__(self) -> None:
        # an instance dropped without close() must not keep the directory locked
        with contextlib.suppress(Exception):
            self.close()


def _own_plain_file(st: os.stat_result) -> bool:
    """A regular file of this user with one link and no group or other permission bits: what
    plinius itself creates, and so safe to rewrite (a planted hard link to another file, a
    symlink, FIFO, directory or someone else's file is not)."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and st.st_nlink == 1
        and st.st_mode & 0o077 == 0
    )


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_pages(fd: int, size: int) -> int:
    """How many pages of the first ``size`` bytes of file ``fd`` are in the page cache:
    ``mincore`` on a fresh read-only mapping (which faults nothing in), through ctypes."""
    if size == 0:
        return 0
    libc = _libc()
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise BackendError(f"cannot map a file to check its residency: {os.strerror(err)}")
    try:
        vec = (ctypes.c_ubyte * (-(-size // PAGE)))()
        if libc.mincore(addr, size, vec) != 0:
            err = ctypes.get_errno()
            raise BackendError(f"mincore failed: {os.strerror(err)}")
        return sum(b & 1 for b in vec)
    finally:
        libc.munmap(addr, size)


def _write_all(fd: int, data: memoryview, path: Path) -> None:
    """:func:`plinius.core.fsutil.write_all`, its error said as the backend's one line."""
    try:
        write_all(fd, data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BackendError(
                f"no space left writing {path} ({data.nbytes} B needed); the previous version "
                "is untouched"
            ) from None
        raise BackendError(f"write to {path} failed: {exc.strerror}") from None
