"""A ``redis`` backend instance on a directory: a private ``redis-server`` that lives with it.

``redis:/dev/shm/x/redis`` starts a server (AOF ``always``, loopback, a free port) that keeps its
files in that directory and stops with the backend. It is what default instances are
(``plinius backends``, throw-away benchmark and experiment instances): the redis code path on
this machine without a server to set up. One process at a time per directory (``flock`` on
``.lock``, as the file backends); the server dies with the process that started it (SIGKILL from
the kernel), so a killed trainer is a server crash too, and the next opener starts a new server
from the same AOF, after killing any server a dead opener left (``server.pid``). A backend its
owner never closes still stops its server (SIGTERM) when the owning process exits, and the
server's log is an anonymous file: nothing is left in the temporary directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from pathlib import Path

from plinius.backends.owned_dir import open_owned_dir
from plinius.backends.redis_server import RedisServer
from plinius.core.errors import BackendError, ConfigError, NotFoundError
from plinius.core.fsutil import HeldLock, atomic_write, check_path, read_regular

PID_FILE = "server.pid"


class LocalServer:
    """The directory, its lock and its running server."""

    def __init__(self, name: str, location: str, *, create: bool, password: str | None) -> None:
        self.dir = Path(check_path(location, f"{name} server directory"))
        self._dfd = -1
        self._lock: HeldLock | None = None
        self.server: RedisServer | None = None
        try:
            self._open(name, create)
            _kill_leftover(self.dir / PID_FILE)
            _own_subdir(self._dfd, "data", self.dir)
            self.server = RedisServer(
                directory=self.dir / "data",
                appendonly=True,
                appendfsync="always",
                password=password,
                die_with_parent=True,
            )
            srv = self.server.start()
            atomic_write(self.dir / PID_FILE, f"{srv.pid}\n".encode())
        except BaseException:
            self.close()
            raise

    def _open(self, name: str, create: bool) -> None:
        self._dfd, self._lock = open_owned_dir(self.dir, name, f"{name}:{self.dir}", create=create)

    @property
    def port(self) -> int:
        if self.server is None:
            raise BackendError(f"the server of {self.dir} is not running")
        return self.server.port

    def close(self) -> None:
        """Stop the server cleanly (SIGTERM: the AOF is complete), close its log and release the
        directory."""
        if self.server is not None:
            started = self.server.pid is not None
            self.server.close(graceful=True)
            self.server = None
            if started:
                with contextlib.suppress(OSError):
                    (self.dir / PID_FILE).unlink()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._dfd >= 0:
            os.close(self._dfd)
            self._dfd = -1


def _own_subdir(dfd: int, name: str, parent: Path) -> None:
    """``parent/name`` as a real directory of ours, made through the directory fd: the directory
    is attacker-writable storage, and a planted symlink there would send the server's files
    anywhere."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=dfd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError as exc:
        raise BackendError(
            f"redis: {parent / name} is a symbolic link or not a directory ({exc.strerror}); "
            "refusing to start a server there"
        ) from None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise BackendError(f"redis: {parent / name} is not owned by this user; refusing it")
    finally:
        os.close(fd)


def _kill_leftover(pid_file: Path) -> None:
    """SIGKILL a ``redis-server`` a dead opener left running on this directory, and wait."""
    try:
        pid = int(read_regular(pid_file, "redis server pid file", max_bytes=32).strip() or 0)
    except (NotFoundError, ConfigError, ValueError):
        return
    if pid <= 0 or not _is_redis(pid, pid_file.parent / "data"):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _is_redis(pid, pid_file.parent / "data") and time.monotonic() < deadline:
        time.sleep(0.01)


def _is_redis(pid: int, data_dir: Path) -> bool:
    """A live (not zombie) ``redis-server`` that plinius started on ``data_dir``: the pid file
    is in attacker-writable storage, so a pid naming any other process (the user's own Redis,
    another job's server) is never killed."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    args = cmd.split(b"\0")
    ours = any(a == b"--dir" and b == os.fsencode(data_dir) for a, b in itertools.pairwise(args))
    return b"redis-server" in cmd and ours and state != "Z"
