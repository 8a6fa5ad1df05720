"""Safe file primitives: the one atomic durable write, and opening regular files only.

The threat model hands every storage path to an attacker, who may plant symlinks, FIFOs,
directories or devices where plinius expects a file, or predict a temporary name and race it.
Everything plinius creates goes through :func:`atomic_write` (``mkstemp`` in the target
directory, ``O_EXCL``, fsync, rename, directory fsync) or :func:`create_exclusive`; everything it
reads goes through :func:`read_regular` / :func:`open_regular` (``O_NOFOLLOW`` where asked,
``O_NONBLOCK`` so a FIFO cannot hang us, then an ``fstat`` check that it is a regular file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from plinius.core.errors import ConfigError, NotFoundError

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


def create_exclusive(path: StrPath, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data``; fails with ``FileExistsError`` if anything is there."""
    p = check_path(path, "output")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(p)))


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
