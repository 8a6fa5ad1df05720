"""The one way a backend takes a directory for itself: created 0700 if asked, opened without
following a symlink, and locked (``flock`` on ``.lock``) so that one process at a time uses it.

The file backends keep their blobs there; a private ``redis-server`` keeps its AOF there.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from plinius.core.errors import BackendError, BackendLockedError, ConfigError, NotFoundError
from plinius.core.fsutil import HeldLock, try_lock

LOCK_NAME = ".lock"


def open_owned_dir(d: Path, who: str, spec: str, *, create: bool) -> tuple[int, HeldLock]:
    """``(directory fd, held lock)`` of ``d``; ``who`` names the backend in errors, ``spec`` the
    instance another process may hold. Read-only callers pass ``create=False``."""
    if not d.exists() and not d.is_symlink():
        if not create:  # read-only commands never create anything
            raise NotFoundError(f"{who}: no backend at {d}: nothing to read there")
        if not d.parent.is_dir():
            raise BackendError(
                f"{who}: parent directory {d.parent} does not exist; create it first"
            )
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise BackendError(f"{who}: cannot create {d}: {exc.strerror}") from None
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if d.is_symlink():
            raise BackendError(
                f"{who}: {d} is a symbolic link; refusing to follow it (give the real directory)"
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise BackendError(f"{who}: {d} exists and is not a directory") from None
        raise BackendError(f"{who}: cannot open {d}: {exc.strerror}") from None
    try:
        lock, holder = try_lock(LOCK_NAME, f"{d / LOCK_NAME}", dir_fd=dfd)
    except ConfigError as exc:
        os.close(dfd)
        if "cannot open" in str(exc):
            raise BackendError(
                f"{who}: directory {d} is not writable ({exc}); choose a directory you can write to"
            ) from None
        raise
    except BaseException:
        os.close(dfd)
        raise
    if lock is None:
        os.close(dfd)
        who_holds = f"pid {holder}" if holder else "another process"
        raise BackendLockedError(
            f"backend {spec} is in use by {who_holds}; wait for it to finish or stop it"
        )
    if not os.access(d, os.W_OK):
        lock.release()
        with contextlib.suppress(OSError):
            os.close(dfd)
        raise BackendError(
            f"{who}: directory {d} is not writable; choose a directory you can write to"
        )
    return dfd, lock
