"""``redis`` / ``rediss``: mirrors on a Redis server, so they outlive the training machine.

Spec ``redis://HOST:PORT/DB?prefix=P`` (``rediss://`` for TLS: ``?ca=PATH``, ``ca_path=DIR``,
``cert=PATH``, ``key=PATH``, ``verify=required|optional|none``, ``check_hostname=0``). The
password comes from ``$PLINIUS_REDIS_PASSWORD`` or ``?password_file=PATH``, never from the spec,
so it appears in no shell history, process list or report; ``?user=NAME`` names an ACL user.

Layout under the prefix ``P`` (everything plinius writes there, nothing else may be):

* ``P:plinius``: the marker that says the prefix holds plinius data (a prefix with keys but no
  marker is refused: it belongs to someone else);
* ``P:cur:KEY``: the current version of blob ``KEY`` (hash: version token, size, chunk count,
  chunk size); ``P:c:KEY:VER:I``: its chunks of ``chunk`` bytes (1 MiB by default);
* ``P:pend``: versions being written or waiting for removal (field ``KEY/VER``, value
  ``CHUNKS OWNER``; an empty owner marks garbage).

A save announces its new version in ``P:pend``, writes the chunks (pipelined, straight from the
staging memory), optionally waits for replicas (``WAIT``), then one Lua script switches
``P:cur:KEY`` to the new version and marks the old one as garbage; the old chunks are removed
last. A script runs atomically and reaches the AOF as one ``MULTI/EXEC``, so a killed client or a
SIGKILLed server leaves either the previous or the new version current, both complete. Versions
of clients that died mid-save (their connection is gone) are removed at the next save.

Bulk bytes bypass redis-py's reply parser: chunk replies are read from the connection's socket
straight into reusable staging memory, so a save or restore allocates no per-chunk objects.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import secrets
import socket
import threading
import time
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from plinius.backends.base import (
    DURABILITY_LEVELS,
    BenchInstance,
    Durability,
    IoStats,
    RunsOn,
    check_blob_name,
    check_range,
)
from plinius.backends.fsinfo import mount_of
from plinius.backends.redis_local import LocalServer
from plinius.backends.staging import StagedBackend
from plinius.errors import BackendError, ConfigError, NotFoundError
from plinius.fsutil import read_regular
from plinius.memory import StagingBuffer

PASSWORD_ENV = "PLINIUS_REDIS_PASSWORD"
MARKER = b"plinius-redis-backend format 1"
DEFAULT_CHUNK = 1 << 20
DEFAULT_PORT = 6379
DEFAULT_PREFIX = "plinius"
#: chunks in flight on a read: bounds what the server buffers for us
_READ_WINDOW = 8
#: bytes of chunks per MULTI/EXEC on a write (one AOF fsync each)
_WRITE_BATCH = 16 << 20
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_LOCATION_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?"
                          r"(?:/(?P<db>\d+))?/?$")  # fmt: skip
_OPTIONS = (
    "prefix", "password_file", "user", "replicas", "wait_ms", "allow_eviction", "chunk",
    "timeout", "create", "ca", "ca_path", "cert", "key", "verify", "check_hostname",
)  # fmt: skip
_SECRET_OPTIONS = ("password", "pass", "passwd", "requirepass", "auth")
_EVICTING = ("allkeys-lru", "allkeys-lfu", "allkeys-random")

# Switch KEYS[1] (P:cur:KEY) to version ARGV[2] if it is still announced in KEYS[2] (P:pend);
# the old version becomes garbage. Returns the old {v, s, n, cs} (all nil for a new blob).
_COMMIT = """
local f = ARGV[1] .. '/' .. ARGV[2]
if redis.call('HEXISTS', KEYS[2], f) == 0 then
  return redis.error_reply('PLINIUS_GONE version ' .. ARGV[2] .. ' was removed before commit')
end
local old = redis.call('HMGET', KEYS[1], 'v', 's', 'n', 'cs')
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3], 'n', ARGV[4], 'cs', ARGV[5])
redis.call('HDEL', KEYS[2], f)
if old[1] then redis.call('HSET', KEYS[2], ARGV[1] .. '/' .. old[1], old[3] .. ' ') end
return old
"""
# Compare-and-set back: if KEYS[1] still names version ARGV[2], restore ARGV[3..6] (or remove the
# blob when there was none) and make ARGV[2] (ARGV[7] chunks) garbage.
_REVERT = """
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('DEL', KEYS[1]) else
  redis.call('HSET', KEYS[1], 'v', ARGV[3], 's', ARGV[4], 'n', ARGV[5], 'cs', ARGV[6])
  redis.call('HDEL', KEYS[2], ARGV[1] .. '/' .. ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[1] .. '/' .. ARGV[2], ARGV[7] .. ' ')
return 1
"""
# Remove pending/garbage version ARGV[1] (field of KEYS[1]) and its chunks ARGV[2] .. i.
_CLEAN = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local n = tonumber(string.match(v, '^(%d+)')) or 0
for i = 0, n - 1 do redis.call('UNLINK', ARGV[2] .. i) end
return 1
"""
# Remove blob KEYS[1]: its version becomes garbage in KEYS[2]. Returns the old version or nil.
_DELETE = """
local old = redis.call('HMGET', KEYS[1], 'v', 'n')
if not old[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1] .. '/' .. old[1], old[2] .. ' ')
return old[1]
"""


def _truthy(value: Any) -> bool:
    return str(value).lower() in {"1", "true", "yes", "on"}


def _int_option(options: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = str(options.get(name, default)).strip()
    mult = {"k": 1 << 10, "m": 1 << 20}.get(raw[-1:].lower(), 1) if raw else 1
    digits = raw[:-1] if mult > 1 else raw
    if not digits.isdigit() or not lo <= int(digits) * mult <= hi:
        raise ConfigError(f"redis: ?{name}={raw!r}: expected an integer from {lo} to {hi}")
    return int(digits) * mult


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Gone(BackendError):
    """A chunk came back short: the version changed under the reader, or a chunk was lost."""


class RedisBackend(StagedBackend):
    """Blobs as chunked versions on a Redis server, switched atomically by a Lua script."""

    name = "redis"
    summary = "Redis server (off-machine): chunked versions, atomic switch, optional WAIT replicas"
    example_location = "127.0.0.1:6379/0?prefix=plinius"
    byte_addressable = False
    locality = "remote"
    durability_levels: ClassVar[tuple[Durability, ...]] = DURABILITY_LEVELS
    plot_marker = "P"
    #: default instances are private servers in a directory (``redis_local``), kept in RAM
    default_root = "shm"
    tls: ClassVar[bool] = False
    #: after the local backends; optional: without redis-server the plan says "not run" and why
    bench_order: ClassVar[int | None] = 70
    bench_instances = (
        BenchInstance("private redis-server on loopback, AOF appendfsync always", optional=True),
    )

    def slot_parts(self) -> tuple[str, str]:
        """One freshness slot per server, db and prefix, however the spec spells them: ``redis``
        and ``rediss`` share it, the default port and db count as given, a private server is
        its directory (absolute) plus the prefix."""
        if self.local:
            where = os.path.abspath(os.path.expanduser(self.location.partition("?")[0]))
        else:
            where = f"{self.host.lower()}:{self.port}/{self.db}"
        return "redis", f"{where}?prefix={self.prefix}"

    @classmethod
    def spec_example(cls) -> str:
        return f"{cls.name}://{cls.example_location}"

    def __init__(self, location: str, **options: Any) -> None:
        secret = [k for k in options if k.lower() in _SECRET_OPTIONS]
        if secret or "@" in location:
            raise ConfigError(
                f"{self.name}: do not put the password in the spec (specs end up in shell "
                f"history, process lists and reports): set ${PASSWORD_ENV} or "
                "?password_file=PATH"
            )
        super().__init__(location, **options)
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{self.name} backend does not take option(s) {', '.join(sorted(unknown))}; "
                f"it knows: {', '.join(_OPTIONS)}"
            )
        m = _LOCATION_RE.match(location)
        if not m and not location.startswith("/"):
            raise ConfigError(
                f"{self.name}: location {location!r} is not HOST:PORT/DB (or a directory for a "
                f"private local server), e.g. {self.spec_example()}"
            )
        #: a directory: a private server started for this instance (``redis_local``)
        self.local = m is None
        self.host = m["host"].strip("[]") if m else "127.0.0.1"
        self.port = int(m["port"] or DEFAULT_PORT) if m else 0
        self.db = int(m["db"] or 0) if m else 0
        self.prefix = str(options.get("prefix", DEFAULT_PREFIX))
        if not _PREFIX_RE.match(self.prefix):
            raise ConfigError(
                f"{self.name}: prefix {self.prefix!r}: use 1-128 characters from "
                "A-Z a-z 0-9 . _ : - starting with a letter or digit"
            )
        self.replicas = _int_option(options, "replicas", 0, 0, 1000)
        self.wait_ms = _int_option(options, "wait_ms", 1000, 1, 3_600_000)
        self.allow_eviction = _truthy(options.get("allow_eviction", "0"))
        self.chunk = _int_option(options, "chunk", DEFAULT_CHUNK, 4096, 64 << 20)
        self.timeout = _int_option(options, "timeout", 30, 1, 3600)
        self.create = str(options.get("create", "auto"))
        if self.create not in ("auto", "never"):
            raise ConfigError(f"{self.name}: create={self.create!r}; use create=auto or never")
        self.server = f"{self.name}://{m['host']}:{self.port}/{self.db}" if m else location
        self.owner = f"plinius-{secrets.token_hex(6)}"
        self._lock = threading.RLock()
        self._maps: dict[str, tuple[str, StagingBuffer]] = {}
        self._buf = bytearray(1 << 16)
        self._bview = memoryview(self._buf)
        self._start = self._end = 0
        self._client: redis.Redis | None = None
        self._conn: AbstractConnection | None = None
        self._local: LocalServer | None = None
        try:
            password = self._password(options)
            if not m:
                self._local = LocalServer(
                    self.name, location, create=self.create == "auto", password=password
                )
                self.port = self._local.port
                self.server = (
                    f"{self.name}:{location} (private redis-server on 127.0.0.1:{self.port})"
                )
            self._connect(password)
            self._check_server()
            self._check_prefix()
        except BaseException:
            self.close()
            raise

    # --- set-up --------------------------------------------------------------------------------

    def _password(self, options: dict[str, Any]) -> str | None:
        path = options.get("password_file")
        if path:
            raw = read_regular(str(path), "redis password file", max_bytes=4096)
            return raw.decode(errors="strict").rstrip("\r\n")
        return os.environ.get(PASSWORD_ENV) or None

    def _tls_kwargs(self) -> dict[str, Any]:
        if not self.tls or self.local:  # a private server is reached on loopback only
            return {}
        o = self.options
        verify = str(o.get("verify", "required"))
        if verify not in ("required", "optional", "none"):
            raise ConfigError(f"{self.name}: verify={verify!r}; use required, optional or none")
        return {
            "ssl": True,
            "ssl_ca_certs": o.get("ca"),
            "ssl_ca_path": o.get("ca_path"),
            "ssl_certfile": o.get("cert"),
            "ssl_keyfile": o.get("key"),
            "ssl_cert_reqs": verify,
            "ssl_check_hostname": _truthy(o.get("check_hostname", "1")) and verify != "none",
        }

    def _connect(self, password: str | None) -> None:
        self._client = redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.options.get("user") or None,
            password=password,
            socket_timeout=self.timeout,
            socket_connect_timeout=min(self.timeout, 5),
            retry=Retry(NoBackoff(), 0),
            client_name=self.owner,
            protocol=2,
            **self._tls_kwargs(),
        )
        pool = self._client.connection_pool
        # the data connection: writes, WAIT (which counts this connection's writes), bulk reads
        self._conn = pool.connection_class(**pool.connection_kwargs)
        self._run(lambda: self._data().connect(), "connect")

    def _check_server(self) -> None:
        policy = self._config("maxmemory-policy")
        if policy in _EVICTING and not self.allow_eviction:
            raise BackendError(
                f"{self.server}: maxmemory-policy is {policy}, so the server may evict mirror "
                "chunks when memory runs short: set maxmemory-policy noeviction (or volatile-*) "
                "on the server, or accept the risk with ?allow_eviction=1"
            )

    def _check_prefix(self) -> None:
        marker = self._run(lambda: self._cli().get(self._k("plinius")), "read the marker")
        if marker is not None:
            if bytes(marker) != MARKER:
                raise BackendError(
                    f"{self.server}: prefix {self.prefix!r} holds a plinius marker of another "
                    f"format ({bytes(marker)[:40]!r}): upgrade plinius or use another ?prefix="
                )
            return
        pattern = self.prefix + ":*"
        foreign = self._run(
            lambda: next(iter(self._cli().scan_iter(match=pattern, count=1000)), None),
            "scan the prefix",
        )
        if foreign is not None:
            raise BackendError(
                f"{self.server}: prefix {self.prefix!r} holds keys plinius did not write "
                f"(e.g. {bytes(foreign)[:60].decode(errors='replace')!r}): refusing to mix "
                "mirrors with foreign data; choose another ?prefix="
            )
        if self.create == "never":
            raise NotFoundError(
                f"{self.server}: no plinius data under prefix {self.prefix!r}: nothing to read"
            )
        self._run(lambda: self._cli().set(self._k("plinius"), MARKER, nx=True), "write the marker")

    # --- plumbing --------------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        where = f"{self.name}:{self.location}" if self.local else self.server
        return f"{where}?prefix={self.prefix}"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _chunk_key(self, blob: str, ver: str) -> str:
        return self._k("c", blob, ver, "")

    def _cli(self) -> redis.Redis:
        if self._client is None:
            raise BackendError(f"backend {self.spec} is closed")
        return self._client

    def _data(self) -> AbstractConnection:
        if self._conn is None:
            raise BackendError(f"backend {self.spec} is closed")
        return self._conn

    def _check_open(self) -> None:
        self._data()

    def _run(self, fn: Any, doing: str) -> Any:
        """``fn()`` with redis-py's and the socket's errors turned into one-line plinius errors.

        Any failure but a short chunk (whose reply was read in full) may leave replies unread on
        the data connection, so it is dropped and the next call reconnects.
        """
        try:
            return fn()
        except _Gone:
            raise
        except BaseException as exc:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.disconnect()
            self._start = self._end = 0
            if isinstance(exc, (redis.RedisError, OSError)):
                raise self._error(exc, doing) from None
            if isinstance(exc, (ValueError, TypeError, ArithmeticError, RecursionError)):
                # the server is untrusted: a malformed reply or pointer is its fault, said in
                # one line (UnicodeError is a ValueError)
                raise BackendError(
                    f"{self.server}: cannot {doing}: malformed data on the server ({exc!r}); "
                    "the prefix holds something plinius did not write"
                ) from None
            raise

    def _error(self, exc: BaseException, doing: str) -> BackendError:
        msg = _one_line(exc)
        where = f"{self.server}: cannot {doing}"
        low = msg.lower()
        if isinstance(exc, redis.AuthenticationError) or any(
            w in msg for w in ("WRONGPASS", "NOAUTH", "invalid password", "Authentication")
        ):
            return BackendError(
                f"{where}: the server refused the credentials ({msg}): set ${PASSWORD_ENV} or "
                "?password_file=PATH to the server's password (and ?user= for an ACL user)"
            )
        tls_silent = self.tls and doing == "connect" and isinstance(exc, redis.TimeoutError)
        if tls_silent or any(w in low for w in ("ssl", "tls", "certificate", "wrong version")):
            return BackendError(
                f"{where}: TLS failed ({msg}): check that the server has TLS on this port "
                "(no answer to the handshake: a plain-text port) and give its CA with ?ca=PATH "
                "(or use redis:// for a plain-text server)"
            )
        if msg.startswith("OOM"):
            return BackendError(
                f"{where}: the server is out of memory (maxmemory reached): raise its maxmemory "
                "or free space; the previous version is untouched"
            )
        if msg.startswith("READONLY"):
            return BackendError(
                f"{where}: the server is a read-only replica: point the spec at its primary"
            )
        if msg.startswith("MISCONF"):
            return BackendError(
                f"{where}: the server cannot persist ({msg}): fix its disk or its save settings"
            )
        if isinstance(exc, redis.ResponseError):
            return BackendError(f"{where}: the server answered: {msg}")
        if not self.tls and doing == "connect" and ("reset" in low or "closed" in low):
            return BackendError(
                f"{where}: the server dropped the connection at once ({msg}): if it speaks "
                "TLS on this port, use rediss:// with ?ca=PATH"
            )
        return BackendError(
            f"{where}: {msg}: check that a Redis server runs there and is reachable (e.g. "
            f"redis-server --port {self.port} --appendonly yes --appendfsync always)"
        )

    def _cmd(self, *args: Any) -> Any:
        """One command on the data connection (the one whose writes WAIT counts)."""
        conn = self._data()
        conn.send_command(*args)
        return conn.read_response()

    def _script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        sha = _SHAS.setdefault(source, _sha1(source))
        try:
            return self._cmd("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return self._cmd("EVAL", source, len(keys), *keys, *args)

    def _config(self, name: str) -> str | None:
        """``CONFIG GET name``, or None where CONFIG is not allowed (managed servers)."""
        try:
            got = self._cli().config_get(name)
        except redis.ResponseError:
            return None
        except (redis.RedisError, OSError) as exc:
            raise self._error(exc, "read its configuration") from None
        values: dict[Any, Any] = dict(got)
        value = values.get(name.encode(), values.get(name))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    # --- raw bulk I/O on the data connection ------------------------------------------------

    def _sock(self) -> socket.socket:
        conn = self._data()
        conn.connect()
        sock = getattr(conn, "_sock", None)
        if sock is None:
            raise BackendError(f"{self.server}: redis-py exposes no socket; upgrade plinius")
        return sock

    def _line(self, sock: socket.socket) -> bytes:
        while True:
            i = self._buf.find(b"\r\n", self._start, self._end)
            if i >= 0:
                line = bytes(self._bview[self._start : i])
                self._start = i + 2
                return line
            if self._start:
                n = self._end - self._start
                self._bview[:n] = self._bview[self._start : self._end]
                self._start, self._end = 0, n
            if self._end == len(self._buf):
                raise BackendError(f"{self.server}: reply line too long")
            self._fill(sock)

    def _fill(self, sock: socket.socket) -> None:
        n = sock.recv_into(self._bview[self._end :])
        if n == 0:
            raise ConnectionError("connection closed by the server")
        self._end += n

    def _reply_ok(self, sock: socket.socket) -> None:
        """One status reply, or an array of them (EXEC); an error reply raises."""
        line = self._line(sock)
        if line.startswith(b"-"):
            raise redis.ResponseError(line[1:].decode(errors="replace"))
        if line.startswith(b"*"):
            for _ in range(int(line[1:])):
                self._reply_ok(sock)

    def _bulk_into(self, sock: socket.socket, dest: memoryview) -> int:
        """Read one bulk reply into ``dest``; its length (-1: nil). Longer than dest: error."""
        line = self._line(sock)
        if line.startswith(b"-"):
            raise redis.ResponseError(line[1:].decode(errors="replace"))
        if not line.startswith(b"$"):
            raise BackendError(f"{self.server}: unexpected reply {line[:40]!r}")
        n = int(line[1:])
        if n < 0:
            return -1
        if n > dest.nbytes:
            raise BackendError(f"{self.server}: a chunk is longer than its version says")
        got = min(n, self._end - self._start)
        dest[:got] = self._bview[self._start : self._start + got]
        self._start += got
        while got < n:
            k = sock.recv_into(dest[got:n])
            if k == 0:
                raise ConnectionError("connection closed by the server")
            got += k
        while self._end - self._start < 2:
            if self._start == self._end:
                self._start = self._end = 0
            self._fill(sock)
        self._start += 2
        return n

    def _send_chunks(self, blob: str, ver: str, data: memoryview, size: int) -> None:
        """SET every chunk straight from ``data``, in MULTI/EXEC batches of ~16 MiB: a server
        with appendfsync always then fsyncs once per batch, not once per chunk."""
        sock = self._sock()
        prefix = self._chunk_key(blob, ver)
        n = math.ceil(size / self.chunk)
        per_batch = max(1, _WRITE_BATCH // self.chunk)
        batches = 0
        for first in range(0, n, per_batch):
            tail = _pack("MULTI")
            for i in range(first, min(n, first + per_batch)):
                part = data[i * self.chunk : min(size, (i + 1) * self.chunk)]
                name = f"{prefix}{i}".encode()
                head = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(name), name, part.nbytes)
                sock.sendall(tail + head)
                sock.sendall(part)
                tail = b"\r\n"
            sock.sendall(tail + _pack("EXEC"))
            batches += 1
        for _ in range(n + 2 * batches):  # +OK (MULTI), +QUEUED per SET, EXEC's array
            self._reply_ok(sock)

    def _fetch(self, blob: str, ver: str, cs: int, offset: int, dest: memoryview) -> None:
        """Bytes [offset, offset+len(dest)) of version ``ver`` into ``dest``, pipelined."""
        if dest.nbytes == 0:
            return
        sock = self._sock()
        prefix = self._chunk_key(blob, ver)
        end = offset + dest.nbytes
        parts = []
        for i in range(offset // cs, (end - 1) // cs + 1):
            lo, hi = max(offset, i * cs), min(end, (i + 1) * cs)
            parts.append((f"{prefix}{i}", lo - i * cs, hi - i * cs, lo - offset))
        sent = 0

        def send_next() -> None:
            nonlocal sent
            name, lo, hi, _ = parts[sent]
            sock.sendall(_pack("GETRANGE", name, str(lo), str(hi - 1)))
            sent += 1

        while sent < min(_READ_WINDOW, len(parts)):
            send_next()
        short = False
        for _, lo, hi, at in parts:
            got = self._bulk_into(sock, dest[at : at + hi - lo])
            short = short or got != hi - lo
            if sent < len(parts):
                send_next()
        if short:
            raise _Gone(f"{self.server}: a chunk of {blob!r} version {ver} is missing")

    # --- staged writes and reads ------------------------------------------------------------

    def _put(self, blob: str, data: memoryview, size: int) -> IoStats:
        with self._lock:
            return self._run(lambda: self._put_locked(blob, data, size), f"save {blob!r}")

    def _put_locked(self, blob: str, data: memoryview, size: int) -> IoStats:
        stats = IoStats(bytes=size)
        t0 = time.perf_counter()
        self._sweep()
        ver = secrets.token_hex(8)
        n = math.ceil(size / self.chunk)
        cur, pend = self._k("cur", blob), self._k("pend")
        self._cmd("HSET", pend, f"{blob}/{ver}", f"{n} {self.owner}")
        self._send_chunks(blob, ver, data, size)
        t1 = time.perf_counter()
        stats.write_s = t1 - t0
        if self.replicas:
            acked = int(self._cmd("WAIT", self.replicas, self.wait_ms))
            if acked < self.replicas:
                self._clean(blob, ver)
                raise BackendError(self._wait_failed(acked, "its chunks"))
        old = self._script(_COMMIT, [cur, pend], [blob, ver, size, n, self.chunk])
        if self.replicas:
            acked = int(self._cmd("WAIT", self.replicas, self.wait_ms))
            if acked < self.replicas:
                prev = [b"" if x is None else bytes(x) for x in old]
                self._script(_REVERT, [cur, pend], [blob, ver, *prev, n])
                self._clean(blob, ver)
                raise BackendError(self._wait_failed(acked, "the switch to the new version"))
        stats.fsync_s = time.perf_counter() - t1
        if old[0] is not None:
            self._clean(blob, bytes(old[0]).decode())
        stats.total_s = time.perf_counter() - t0
        return stats

    def _wait_failed(self, acked: int, what: str) -> str:
        return (
            f"{self.server}: only {acked} of {self.replicas} replica(s) acknowledged {what} "
            f"within {self.wait_ms} ms (WAIT): the previous version stays current; check the "
            "replicas (INFO replication) or lower ?replicas= / raise ?wait_ms="
        )

    def _clean(self, blob: str, ver: str) -> None:
        self._script(_CLEAN, [self._k("pend")], [f"{blob}/{ver}", self._chunk_key(blob, ver)])

    def _sweep(self) -> None:
        """Remove versions of clients that died mid-save, and garbage a killed client left."""
        pending = self._cmd("HGETALL", self._k("pend"))
        if not pending:
            return
        entries = {
            bytes(pending[i]).decode(): bytes(pending[i + 1]).decode().partition(" ")[2]
            for i in range(0, len(pending), 2)
        }
        live: set[str] | None = None
        for field, owner in entries.items():
            if owner and owner != self.owner:
                if live is None:
                    live = self._live_clients()
                if owner in live or "*" in live:
                    continue  # another live client is writing it (or we cannot tell)
            blob, _, ver = field.rpartition("/")
            self._clean(blob, ver)

    def _live_clients(self) -> set[str]:
        try:
            listing = self._cmd("CLIENT", "LIST", "TYPE", "normal")
        except redis.ResponseError:  # CLIENT LIST not allowed: treat every owner as alive
            return {"*"}
        text = bytes(listing).decode(errors="replace")
        return set(re.findall(r"(?:^| )name=(\S+)", text, re.M))

    def _pointer(self, blob: str) -> tuple[str, int, int, int] | None:
        v, s, n, cs = self._cmd("HMGET", self._k("cur", blob), "v", "s", "n", "cs")
        if v is None:
            return None
        ver, size, count, chunk = bytes(v).decode(), int(s), int(n), int(cs)
        if chunk <= 0 or size < 0 or count != -(-size // chunk):
            raise ValueError(f"inconsistent pointer of {blob!r}: size {size}, {count} x {chunk} B")
        if size > _physical_memory():
            # the server holds the pointer: a hostile one must not make a restore allocate
            # whatever it claims (staging is lazy, but address space is not unlimited)
            raise ValueError(
                f"pointer of {blob!r} claims {size} B, more than this machine's memory "
                f"({_physical_memory()} B): corrupt or hostile server, refusing to read it"
            )
        return ver, size, count, chunk

    def _get(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, int] | None:
        check_blob_name(blob)
        with self._lock:
            return self._run(
                lambda: self._get_locked(blob, offset, length, stage), f"read {blob!r}"
            )

    def _get_locked(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, int] | None:
        for _ in range(3):
            ptr = self._pointer(blob)
            if ptr is None:
                return None
            ver, size, _, cs = ptr
            n = check_range(f"{blob!r} on {self.spec}", offset, length, size)
            view = stage.view(n)[:n]
            try:
                self._fetch(blob, ver, cs, offset, view)
            except _Gone:
                if self._pointer(blob) == ptr:
                    raise BackendError(
                        f"{self.server}: chunks of {blob!r} (version {ver}) are missing: evicted "
                        "by maxmemory-policy or deleted by another client; this copy is lost"
                    ) from None
                continue  # a writer switched versions under us: read the new one
            return view, size
        raise BackendError(f"{self.server}: {blob!r} keeps changing while being read")

    # --- contract ---------------------------------------------------------------------------------

    def map(self, blob: str) -> memoryview | None:
        """Not byte-addressable: the whole blob read into memory of its own (kept per blob and
        version, so a later ``read`` of another blob does not overwrite a mapped sample area)."""
        check_blob_name(blob)
        with self._lock:
            ptr = self._run(lambda: self._pointer(blob), f"read {blob!r}")
            if ptr is None:
                return None
            cached = self._maps.get(blob)
            if cached is not None and cached[0] == ptr[0]:
                return cached[1].view(ptr[1])[: ptr[1]].toreadonly()
            if cached is not None:
                cached[1].close()  # a caller's old view keeps its memory alive
            buf = StagingBuffer()
            got = self._get(blob, 0, None, buf)
            if got is None:
                return None
            self._maps[blob] = (ptr[0], buf)
            return got[0].toreadonly()

    def delete(self, blob: str) -> None:
        check_blob_name(blob)
        with self._lock:

            def go() -> None:
                old = self._script(_DELETE, [self._k("cur", blob), self._k("pend")], [blob])
                if old is not None:
                    self._clean(blob, bytes(old).decode())

            self._run(go, f"delete {blob!r}")

    def blobs(self) -> list[str]:
        start = len(self._k("cur", ""))
        found = self._run(
            lambda: list(self._cli().scan_iter(match=self._k("cur", "*"), count=1000)),
            "list the blobs",
        )
        return sorted(bytes(k).decode()[start:] for k in found)

    def describe(self) -> RunsOn:
        facts = self._run(self._server_facts, "describe the server")
        durability, notes = durability_of(facts, self.server)
        if facts["maxmemory_policy"] in _EVICTING:
            notes.append(
                f"WARNING: maxmemory-policy {facts['maxmemory_policy']} (allowed by "
                "?allow_eviction=1): the server may evict mirror chunks and lose the mirror"
            )
        if self.replicas:
            notes.append(f"commits wait for {self.replicas} replica(s): WAIT {self.replicas} "
                         f"{self.wait_ms}")  # fmt: skip
            if facts["connected_replicas"] < self.replicas:
                notes.append(
                    f"WARNING: {facts['connected_replicas']} replica(s) connected, "
                    f"{self.replicas} required: commits will fail"
                )
        if self._local is not None:
            notes.append(
                f"private redis-server started by plinius in {self.location}: it stops with "
                "this backend; point the spec at a real server to keep mirrors off the machine"
                + (" (no TLS: loopback only)" if self.tls else "")
            )
            mount = mount_of(self._local.dir)
            if mount.volatile and durability == "power-fail":
                durability = "process-crash"
                notes.append(f"its AOF is on {mount.fs_type} (RAM): lost on reboot")
        elif facts["loopback"]:
            notes.append("loopback server: the mirror does not outlive this machine")
        options = (
            f"appendonly={facts['appendonly']},appendfsync={facts['appendfsync']},"
            f"save={facts['save']!r}"
        )
        return RunsOn(
            backend=self.name,
            path=self.spec,
            fs_type="redis",
            mount_options=options,
            device=(
                f"redis {facts['version']} at {self.host}:{self.port} "
                f"({'loopback' if facts['loopback'] else 'network'}, {facts['role']})"
            ),
            dax=False,
            byte_addressable=False,
            durability=durability,
            emulated=False,
            notes=notes,
            extra={
                **facts,
                "host": self.host,
                "port": self.port,
                "db": self.db,
                "prefix": self.prefix,
                "tls": self.tls and not self.local,
                "chunk_bytes": self.chunk,
                "replicas_required": self.replicas,
                "wait_ms": self.wait_ms,
            },
        )

    def _server_facts(self) -> dict[str, Any]:
        cli = self._cli()
        info = cli.info("server")
        repl = cli.info("replication")
        pers = cli.info("persistence")
        aof = self._config("appendonly")
        if aof is None:
            aof = "yes" if pers.get("aof_enabled") else "no"
        return {
            "version": str(info.get("redis_version", "?")),
            "role": str(repl.get("role", "?")),
            "connected_replicas": int(repl.get("connected_slaves", 0)),
            "appendonly": aof,
            "appendfsync": self._config("appendfsync") or "unknown",
            "save": self._config("save"),
            "maxmemory": int(self._config("maxmemory") or 0),
            "maxmemory_policy": self._config("maxmemory-policy") or "unknown",
            "loopback": is_loopback(self.host),
        }

    def close(self) -> None:
        for _, buf in self._maps.values():
            buf.close()
        self._maps.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
            self._conn = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self._local is not None:
            self._local.close()
            self._local = None
        super().close()


class RedisTlsBackend(RedisBackend):
    """``rediss://``: the same backend over TLS."""

    name = "rediss"
    summary = "Redis server over TLS (?ca=PATH): as redis"
    example_location = "redis.example.org:6380/0?prefix=plinius&ca=/etc/ssl/redis-ca.pem"
    tls = True
    #: benchmarked as ``redis`` (a private default instance runs without TLS)
    bench_order = None
    bench_extra = False


def durability_of(facts: dict[str, Any], server: str) -> tuple[Durability, list[str]]:
    """What a commit survives on a server with these settings, and the notes that say why.

    A commit survives a crash of the *trainer* on any server; the level says what it survives of
    the *server*: ``power-fail`` only when every write is fsynced into the AOF before the reply
    (appendfsync always); ``process-crash`` with the AOF written on every command but fsynced
    later; ``none`` without an AOF: a restart loses everything, or (RDB snapshots only) rolls
    back to an older mirror that plinius's freshness check then refuses.
    """
    aof, fsync, save = facts["appendonly"], facts["appendfsync"], facts["save"]
    if aof == "yes" and fsync == "always":
        return "power-fail", []
    if aof == "yes":
        return "process-crash", [
            f"appendfsync {fsync} on {server}: a power failure of the server loses the last "
            "commits; set appendfsync always for power-fail durability"
        ]
    if save:
        return "none", [
            f"WARNING: {server} persists by RDB snapshots only (save {save!r}): a server crash "
            "rolls back to the last snapshot, which the freshness check refuses as stale; "
            "set appendonly yes, appendfsync always"
        ]
    if save is None:
        return "none", [f"WARNING: cannot read the persistence settings of {server} (CONFIG)"]
    return "none", [
        f"WARNING: persistence is off on {server} (appendonly no, no save schedule): a server "
        "restart loses every mirror; set appendonly yes, appendfsync always"
    ]


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is on this machine's loopback."""
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addrs
    )


def _pack(*parts: str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _sha1(source: str) -> str:
    import hashlib

    return hashlib.sha1(source.encode()).hexdigest()


_SHAS: dict[str, str] = {}


def _physical_memory() -> int:
    """Bytes of RAM here: no blob this machine can restore is larger."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
