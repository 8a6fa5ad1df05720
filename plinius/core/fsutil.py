"""Safe file primitives: the one atomic durable write, and opening regular files only.

The threat model hands every storage path to an attacker, who may plant symlinks, FIFOs,
directories or devices where plinius expects a file, or predict a temporary name and race it.
Everything plinius creates goes through :func:`atomic_write` (``mkstemp`` in the target
directory, ``O_EXCL``, fsync, rename, directory fsync), :func:`create_exclusive` (every byte
written, or the error and no file) or :func:`link_new` (a whole file linked in where nothing has
the name, from a :func:`scratch_beside` directory for exports); everything it reads goes
through :func:`read_regular` / :func:`open_regular` (``O_NOFOLLOW`` where asked, ``O_NONBLOCK``
so a FIFO cannot hang us, then an ``fstat`` check that it is a regular file).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from plinius.core.errors import ConfigError, NotFoundError, PliniusError

StrPath = str | os.PathLike[str]


def check_path(path: StrPath, what: str) -> str:
    """``path`` as ``str``; a clear error for NUL bytes and components longer than 255 bytes."""
    p = os.fspath(path)
    if "\0" in p:
        raise ConfigError(f"{what} path {p!r} contains a NUL byte")
    for part in p.split(os.sep):
        if len(os.fsencode(part)) > 255:
            raise ConfigError(
                f"{what} path component {part[:40]!r}... is {len(os.fsencode(part))} bytes; "
                "file names are limited to 255 bytes"
            )
    return p


def open_regular(
    path: StrPath, what: str, *, nofollow: bool = False, flags: int = os.O_RDONLY
) -> int:
    """A file descriptor of ``path`` that is certainly a regular file (never blocks on a FIFO).

    Raises :class:`NotFoundError` when it does not exist and :class:`ConfigError` when it is a
    directory, FIFO, socket, device or (with ``nofollow``) a symlink.
    """
    p = check_path(path, what)
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(p, flags | extra)
    except FileNotFoundError:
        raise NotFoundError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a directory, not a file") from None
    except OSError as exc:
        if nofollow and os.path.islink(p):
            raise ConfigError(f"{what} {p} is a symbolic link; refusing to follow it") from None
        raise ConfigError(f"cannot open {what} {p}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            raise ConfigError(f"{what} {p} is a {kind}, not a regular file")
        # back to blocking I/O for ordinary reads and writes
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def read_regular(
    path: StrPath, what: str, *, nofollow: bool = False, max_bytes: int | None = None
) -> bytes:
    """The whole content of a regular file; ``max_bytes`` bounds what a hostile file can cost."""
    fd = open_regular(path, what, nofollow=nofollow)
    try:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise ConfigError(
                f"{what} {os.fspath(path)} is {size} B, more than the {max_bytes} B expected"
            )
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if max_bytes is not None and sum(map(len, chunks)) > max_bytes:
                raise ConfigError(f"{what} {os.fspath(path)} grew past {max_bytes} B")
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_dir(directory: StrPath) -> None:
    """Make a rename or create in ``directory`` durable."""
    dfd = os.open(os.fspath(directory), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: ``renameat2`` flag: swap the two names atomically (both must exist)
RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28) through ctypes, or None when libc lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(src: StrPath, dst: StrPath, *, dir_fd: int | None = None) -> None:
    """Swap the names ``src`` and ``dst`` in one atomic step (``renameat2`` with
    ``RENAME_EXCHANGE``): each name then holds the other's file, at every instant each name
    holds one of the two. Relative names resolve against ``dir_fd`` when given. Neither name's
    last component is followed (a symlink is swapped as a link).

    Raises ``OSError``: ``ENOENT`` when either name is missing, ``ENOSYS`` when libc or the
    kernel has no ``renameat2``, ``EINVAL`` (or ``EOPNOTSUPP``) when the file system does not
    support exchanging; the caller then falls back to a plain rename."""
    fn = _renameat2()
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    fd = _AT_FDCWD if dir_fd is None else dir_fd
    if fn(fd, os.fsencode(src), fd, os.fsencode(dst), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


def _refuse_special_target(p: Path) -> None:
    """Never rename over a directory, FIFO, socket or device (``/dev/full`` as root)."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot write {p}: {exc.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise ConfigError(f"output {p} is a {_kind(st.st_mode)}, not a regular file")


@contextlib.contextmanager
def atomic_writer(path: StrPath, *, mode: int = 0o600, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` atomically when the block exits without error.

    For outputs too large to build in memory (an encrypted data set): the same ``mkstemp`` in
    the target directory, fsync, rename, directory fsync as :func:`atomic_write`; an exception
    removes the temporary file and leaves ``path`` untouched.
    """
    p = Path(check_path(path, "output"))
    directory = p.parent
    _refuse_special_target(p)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:40]}.", suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise NotFoundError(f"directory {directory} does not exist (writing {p})") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {p}: {exc.strerror}") from None
    f = os.fdopen(fd, "wb")
    try:
        os.fchmod(fd, mode)
        yield f
        f.flush()
        if durable:
            os.fsync(fd)
        f.close()
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # closing flushes again: the same error again
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {p}: {exc.strerror}") from None
        raise
    if durable:
        fsync_dir(directory)


def atomic_write(path: StrPath, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` by ``data`` so a crash leaves the old or the new content, never a mix.

    The temporary file is made by ``mkstemp`` in the target directory (unpredictable name,
    ``O_EXCL``), so a planted symlink can neither receive the data nor be truncated. The final
    rename replaces a symlink at ``path`` itself rather than writing through it.
    """
    with atomic_writer(path, mode=mode, durable=durable) as f:
        f.write(data)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` at ``fd``'s position: ``os.write`` may write less than asked
    (a full disk, ``RLIMIT_FSIZE``, more than 2 GiB in one call); the error that stops it
    (``ENOSPC``, ``EFBIG``) is raised, never a short file reported written."""
    view = memoryview(data).cast("B")
    done = 0
    while done < view.nbytes:
        n = os.write(fd, view[done : done + _WRITE_CHUNK])
        if n <= 0:  # a regular file never writes nothing without an error: say so
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


#: the most one ``write`` is asked for (Linux writes at most 2 GiB - 4 KiB per call anyway)
_WRITE_CHUNK = 1 << 30


def create_exclusive(path: StrPath, data: bytes | memoryview, *, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data``; fails with ``FileExistsError`` if anything is there.

    Every byte is written and flushed, or the ``OSError`` that stopped it is raised and the
    partial file removed. Not atomic: a kill between the create and the write leaves a short
    file under ``path`` (:func:`link_new` of a complete file is, where hard links exist)."""
    p = check_path(path, "output")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        _remove_created(p, fd)
        raise
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(p)))


def _remove_created(path: str, fd: int) -> None:
    """Remove the file this process just created at ``path`` (open as ``fd``), if it is still
    that file (never another one put in its place)."""
    with contextlib.suppress(OSError):
        mine, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(path)


#: ``link`` errors of a file system without hard links (vfat, some FUSE and network mounts)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV})


def link_new(staged: StrPath, target: StrPath, *, mode: int = 0o600) -> None:
    """Give the complete, flushed file ``staged`` the name ``target`` too, only if nothing has
    that name (``FileExistsError``; a symlink there, even a dangling one, counts): a kill leaves
    no file or the whole one under ``target``. The caller removes ``staged``.

    A file system without hard links gets one exclusive create of the whole content instead
    (:func:`create_exclusive`, ``mode``): every byte written or an error, but a kill during it
    may leave a short file there. Any other ``OSError`` is raised as it is."""
    t = check_path(target, "output")
    try:
        os.link(staged, t, follow_symlinks=False)
    except OSError as exc:
        if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
            raise
        create_exclusive(t, read_regular(staged, "staged file", nofollow=True), mode=mode)
        return
    fsync_dir(os.path.dirname(os.path.abspath(t)))


def _scratch_prefix(target: Path) -> str:
    return f".{target.name[:40]}."


#: what ``mkdtemp`` appends to the prefix
_MKDTEMP_TAIL = re.compile(r"[a-z0-9_]{8}")


@contextlib.contextmanager
def scratch_beside(target: StrPath) -> Iterator[Path]:
    """A private (0700) scratch directory ``.NAME.XXXXXXXX`` beside ``target``, for writing it
    whole before :func:`link_new` gives it its name; removed with what it holds on exit.

    While in use it is held by an ``flock`` on its descriptor. A kill leaves it behind (with
    the plaintext it held): the next one made for the same name (the first 40 characters)
    removes such stale directories first, those of this user that no live process holds, and
    only their files (symlinks are removed, never followed; a subdirectory keeps it)."""
    t = Path(check_path(target, "output"))
    directory, prefix = t.parent, _scratch_prefix(t)
    _remove_stale_scratch(directory, prefix)
    for _ in range(100):
        try:
            scratch = tempfile.mkdtemp(prefix=prefix, dir=directory)
        except FileNotFoundError:
            raise NotFoundError(f"directory {directory} does not exist (writing {t})") from None
        except OSError as exc:
            raise ConfigError(f"cannot write {t}: {exc.strerror}") from None
        try:
            fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # removed as stale by another export before we held it: make another
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only for a cleaner that found it unheld
        if os.fstat(fd).st_nlink == 0:  # ... and removed it: make another
            os.close(fd)
            continue
        try:
            yield Path(scratch)
        finally:
            _empty_dir(fd)
            with contextlib.suppress(OSError):
                os.rmdir(scratch)
            os.close(fd)
        return
    raise ConfigError(f"cannot write {t}: no scratch directory beside it stayed ours")


def _remove_stale_scratch(directory: Path, prefix: str) -> None:
    """Remove the scratch directories ``prefix + XXXXXXXX`` in ``directory`` that a killed
    :func:`scratch_beside` left: this user's, 0700, held by no live process."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # mkdtemp says what is wrong with the directory
    try:
        for name in os.listdir(dfd):
            if not (name.startswith(prefix) and _MKDTEMP_TAIL.fullmatch(name[len(prefix) :])):
                continue
            try:
                fd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
                )
            except OSError:
                continue  # a symlink, a file, gone: not a scratch directory of ours
            try:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an export in progress
                _empty_dir(fd)
                with contextlib.suppress(OSError):
                    there = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
                        os.rmdir(name, dir_fd=dfd)
            finally:
                os.close(fd)
    finally:
        os.close(dfd)


def _empty_dir(fd: int) -> None:
    """Unlink every non-directory entry of the directory open as ``fd`` (never following)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(fd):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=fd)


def private_dir(path: StrPath, what: str, *, create: bool = True) -> Path:
    """A directory only this user can use (0700), created if asked; a symlink is refused."""
    p = Path(check_path(path, what))
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise ConfigError(f"{what} {p} exists and is not a directory") from None
        except OSError as exc:
            raise ConfigError(f"cannot create {what} {p}: {exc.strerror}") from None
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise NotFoundError(f"{what} {p} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{what} {p} is a symbolic link; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {p} is a {_kind(st.st_mode)}, not a directory")
    return p


@contextlib.contextmanager
def opened_regular(path: StrPath, what: str, *, nofollow: bool = False) -> Iterator[int]:
    """:func:`open_regular` as a context manager."""
    fd = open_regular(path, what, nofollow=nofollow)
    try:
        yield fd
    finally:
        os.close(fd)


class HeldLock:
    """An ``flock`` held on an open lock file; closing the descriptor releases it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent); the lock file stays for the next holder."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.release()


def try_lock(name: str, what: str, *, dir_fd: int | None = None) -> tuple[HeldLock | None, int]:
    """Take an exclusive ``flock`` on lock file ``name``: ``(lock, 0)`` or ``(None, holder pid)``.

    The lock file is opened with ``O_NOFOLLOW`` (a planted symlink is refused, never followed)
    and must be a regular file of ours with one link, so a planted hard link to another file
    (the owner key) is refused before anything is written into it. The holder writes its pid
    into it, which is how a second process can say who is in the way (0 when not yet written).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"lock file {what} is a symbolic link; refusing to follow it (remove it)"
            ) from None
        raise ConfigError(f"cannot open lock file {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"lock file {what} is a {_kind(st.st_mode)}, not a regular file")
        if st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise ConfigError(
                f"lock file {what} has {st.st_nlink} links and owner uid {st.st_uid}; "
                "refusing a planted file (remove it)"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 32, 0)
            os.close(fd)
            text = raw.decode("ascii", errors="replace").strip()
            return None, int(text) if text.isdigit() else 0
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return HeldLock(fd), 0


def create_whole(path: Path, data: bytes, what: str, *, max_bytes: int) -> bytes:
    """Give ``path`` the content ``data``, or keep the file another process made first: the
    content now under the name is returned.

    The file appears under its name only whole: written and flushed in a private scratch
    directory beside it (:func:`scratch_beside`), then linked in, never over a file
    (:func:`link_new`). A kill leaves no file or the whole one, never an empty or partial one;
    the scratch directory it may leave is removed by the next creation of that name."""
    try:
        with scratch_beside(path) as scratch:
            staged = scratch / path.name
            create_exclusive(staged, data)
            link_new(staged, path)
    except FileExistsError:  # another process created it first: use theirs
        return read_regular(path, what, nofollow=True, max_bytes=max_bytes)
    except PliniusError:
        raise  # (NotFoundError is an OSError too)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path}: {exc.strerror}") from None
    return data
