"""Throw-away Redis servers: the real ``redis-server`` binary on a free loopback port.

The ``redis`` backend's tests, ``plinius bench`` and the VM-loss experiments need a real server
(a primary, and a replica where replication is measured). This starts one in a private temporary
directory with an explicit configuration (persistence, password, ``replicaof``) passed on the
command line (the password on standard input, so no process list shows it), waits until it
answers ``PING``, and stops it (SIGTERM, or SIGKILL to simulate a crash). Nothing here relies on a
system service or on the machine's own ``redis.conf``. ``die_with_parent`` makes the kernel
SIGKILL the server when the process that started it dies (a killed trainer takes its server down
like a crash, and a restart starts a new one on the same directory).

Nothing is left behind: the server logs to an anonymous temporary file (no name in any
directory, so a killed owner leaves none), and a server whose owner never calls :meth:`close`
is stopped, and the directory it was given by this module removed, when the object is collected
or the owning process exits (not a forked child of it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from plinius.core.errors import ConfigError

SERVER_BINARY = "redis-server"
INSTALL_HINT = "install it with your distribution (Debian/Ubuntu: apt-get install -y redis-server)"


def find_server() -> str:
    """Path of ``redis-server``, or a one-line error saying how to install it."""
    path = os.environ.get("PLINIUS_REDIS_SERVER") or shutil.which(SERVER_BINARY)
    if not path:
        raise ConfigError(f"{SERVER_BINARY} not found on PATH: {INSTALL_HINT}")
    return path


def free_port() -> int:
    """A currently free TCP port on loopback (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with its own directory.

    ``appendfsync="always"`` with ``appendonly=True`` is the configuration under which a commit
    survives a power failure of the server; the default here is the same so that tests that kill
    the server mid-save see the strongest guarantee Redis offers.
    """

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str] | None = None,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "always",
        save: str = "",
        password: str | None = None,
        replica_of: RedisServer | None = None,
        maxmemory_policy: str | None = None,
        die_with_parent: bool = False,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self.binary = find_server()
        #: the log is an anonymous file of ours, never a file in ``directory``: a caller's
        #: directory may be attacker-controlled storage (redis opens its log following links),
        #: and a file without a name is never left behind, however the owner dies (closed by
        #: ``_reap``, not by a ``with`` block: it lives as long as the server)
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix="plinius-redis-log-")  # noqa: SIM115
        self._state = _Owned(os.getpid(), self._log)
        self._finalizer = weakref.finalize(self, _reap, self._state)
        if directory is None:
            self._state.own_dir = Path(tempfile.mkdtemp(prefix="plinius-redis-"))
        self.directory = Path(directory or self._state.own_dir or "")
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.save = save
        self.password = password
        self.replica_of = replica_of
        self.maxmemory_policy = maxmemory_policy
        self.die_with_parent = die_with_parent
        #: TLS only (no plain-text port) when a certificate and key are given
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls_cert else 'redis'}://{self.host}:{self.port}/0"

    def _args(self) -> list[str]:
        if self.tls_cert:
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls_cert),
                "--tls-key-file",
                str(self.tls_key),
                "--tls-ca-cert-file",
                str(self.tls_cert),
                "--tls-auth-clients",
                "no",
            ]
        else:
            ports = ["--port", str(self.port)]
        args = [
            self.binary,
            "-",  # the rest of the configuration (the password) comes on standard input
            *ports,
            "--bind", self.host,
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", self.save,
            "--daemonize", "no",
            "--logfile", "",  # standard output: the anonymous log file
            "--protected-mode", "yes",
            # replicas sync at once instead of waiting 5 s for more replicas to join
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.replica_of is not None:
            args += ["--replicaof", self.replica_of.host, str(self.replica_of.port)]
        if self.maxmemory_policy is not None:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (again, after ``kill``/``stop``: same port, same directory)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self._args(),
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        self._state.proc = self.proc
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(self._stdin_config())
            self.proc.stdin.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}: "
                    f"{' '.join(self.log_tail().split())[-500:]}"
                )
            if self._answers() and (self.replica_of is None or self._replica_in_sync()):
                return self
            time.sleep(0.02)
        self.kill()
        raise ConfigError(f"redis-server on port {self.port} did not answer within {timeout:.0f} s")

    def _stdin_config(self) -> bytes:
        if self.password is None:
            return b""
        quoted = '"' + self.password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"requirepass {quoted}\nmasterauth {quoted}\n".encode()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _answers(self) -> bool:
        try:
            with self._connect(0.2) as s:
                if self.password is not None:
                    # AUTH then PING in RESP; any "+OK"/"+PONG" means it is up
                    s.sendall(_resp("AUTH", self.password) + _resp("PING"))
                else:
                    s.sendall(_resp("PING"))
                s.settimeout(0.5)
                return b"PONG" in _recv_some(s)
        except OSError:
            return False

    def _replica_in_sync(self) -> bool:
        """A replica counts as started once its link to the primary is up (initial sync done)
        and the primary lists it as online with an acknowledged offset (WAIT can count it)."""
        if b"master_link_status:up" not in self._command("INFO", "replication"):
            return False
        primary = self.replica_of
        info = primary._command("INFO", "replication") if primary is not None else b""
        return f"port={self.port},state=online".encode() in info and self._acks_writes()

    def _acks_writes(self) -> bool:
        """Whether a write on the primary is acknowledged by a replica at once (``WAIT``): after
        a diskless sync the primary streams nothing until the replica's first ACK (up to a
        second later), and a ``WAIT`` before that would time out."""
        primary = self.replica_of
        if primary is None:
            return True
        try:
            with primary._connect(0.5) as s:
                auth = _resp("AUTH", primary.password) if primary.password is not None else b""
                # PUBLISH reaches the replicas' stream without touching any key
                s.sendall(
                    auth
                    + _resp("PUBLISH", "plinius-replica-probe", "1")
                    + _resp("WAIT", "1", "200")
                )
                s.settimeout(1.0)
                data = b""
                want = 3 if auth else 2
                while data.count(b"\r\n") < want:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
                return data.endswith(b":1\r\n")
        except OSError:
            return False

    def _command(self, *parts: str) -> bytes:
        """One raw RESP command (plus AUTH), the reply bytes; keeps this module free of redis-py."""
        try:
            with self._connect(0.5) as s:
                auth = _resp("AUTH", self.password) if self.password is not None else b""
                s.sendall(auth + _resp(*parts))
                s.settimeout(0.5)
                data = b""
                with contextlib.suppress(OSError):
                    while len(data) < 65536:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                        if _bulk_complete(data):
                            break
                return data
        except OSError:
            return b""

    def _connect(self, timeout: float) -> socket.socket:
        """A connection to the server (TLS without verification: this only probes our own)."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        if not self.tls_cert:
            return s
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            return ctx.wrap_socket(s)
        except BaseException:
            s.close()
            raise

    def log_tail(self, n: int = 2000) -> str:
        """The end of the server's log (the anonymous file its standard output goes to)."""
        with contextlib.suppress(OSError, ValueError):
            size = os.fstat(self._log.fileno()).st_size
            return os.pread(self._log.fileno(), n, max(0, size - n)).decode(errors="replace")
        return ""

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (what is not in the AOF is lost)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            _stop(self.proc, sig)
        self.proc = self._state.proc = None

    def close(self, *, graceful: bool = False) -> None:
        """Stop the server (SIGKILL, or SIGTERM when ``graceful``: a complete AOF), close its
        log, and remove its data directory if this object created it."""
        self._signal(signal.SIGTERM if graceful else signal.SIGKILL)
        self._finalizer()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class _Owned:
    """What a server owns, for :func:`_reap` (which must not hold the server object)."""

    pid: int
    log: IO[bytes]
    proc: subprocess.Popen[bytes] | None = None
    own_dir: Path | None = None


def _reap(owned: _Owned) -> None:
    """Stop a server its owner never closed and remove what it made: at ``close()``, when the
    object is collected, or when the owning process exits (never in a forked child)."""
    if os.getpid() != owned.pid:
        return
    if owned.proc is not None:
        _stop(owned.proc, signal.SIGTERM)
        owned.proc = None
    with contextlib.suppress(OSError):
        owned.log.close()
    if owned.own_dir is not None:
        shutil.rmtree(owned.own_dir, ignore_errors=True)
        owned.own_dir = None


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


# prctl resolved once, in the parent: the child between fork and exec must not dlopen/dlsym
# (their locks may be held by another thread of the parent at fork time)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the server dies when the process that started it does."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _bulk_complete(data: bytes) -> bool:
    """True when ``data`` (after an optional ``+OK`` line) holds one whole bulk-string reply."""
    start = data.find(b"$")
    if start < 0:
        return data.startswith(b"-")
    end = data.find(b"\r\n", start)
    if end < 0:
        return False
    length = int(data[start + 1 : end])
    return len(data) >= end + 2 + max(length, 0) + 2


def _recv_some(s: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while b"PONG" not in data and len(data) < 4096:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    return data
