"""Throw-away Redis servers: the real ``redis-server`` binary on a free loopback port.

The ``redis`` backend's tests, ``plinius bench`` and the VM-loss experiments need a real server
(a primary, and a replica where replication is measured). This starts one in a private temporary
directory with an explicit configuration (persistence, password, ``replicaof``) passed on the
command line (the password on standard input, so no process list shows it), waits until it
answers ``PING``, and stops it (SIGTERM, or SIGKILL to simulate a crash). Nothing here relies on a
system service or on the machine's own ``redis.conf``. ``die_with_parent`` makes the kernel
SIGKILL the server when the process that started it dies (a killed trainer takes its server down
like a crash, and a restart starts a new one on the same directory).
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
from pathlib import Path
from types import TracebackType

from plinius.errors import ConfigError

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
        self._own_dir = directory is None
        #: the log lives in a private directory of ours, never in ``directory``: a caller's
        #: directory may be attacker-controlled storage, and redis opens its log following links
        self.log_dir = Path(tempfile.mkdtemp(prefix="plinius-redis-log-"))
        self.directory = Path(directory or tempfile.mkdtemp(prefix="plinius-redis-"))
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
            "--logfile", str(self.log_dir / "redis.log"),
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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(self._stdin_config())
            self.proc.stdin.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(
                    errors="replace"
                )
                log = self.log_tail()
                raise ConfigError(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}: "
                    f"{(err or log).strip()[-500:]}"
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
        return f"port={self.port},state=online".encode() in info

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
        with contextlib.suppress(OSError):
            return (self.log_dir / "redis.log").read_text(errors="replace")[-n:]
        return ""

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (what is not in the AOF is lost)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        """Stop the server, remove its log directory, and its data directory if this object
        created it."""
        self.kill()
        shutil.rmtree(self.log_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
