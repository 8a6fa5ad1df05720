"""``redis`` / ``rediss``: mirrors on a Redis server, so they outlive the training machine.

Spec ``redis://HOST:PORT/DB?prefix=P`` (``rediss://`` for TLS: ``?ca=PATH``, ``ca_path=DIR``,
``cert=PATH``, ``key=PATH``, ``verify=required|optional|none``, ``check_hostname=0``). The
password comes from ``$PLINIUS_REDIS_PASSWORD`` or ``?password_file=PATH``, never from the spec,
so it appears in no shell history, process list or report; ``?user=NAME`` names an ACL user.
``?timeout=SECONDS`` (default 30) bounds each socket call; ``?deadline=SECONDS`` (default 300)
bounds each whole operation (opening the backend, a save, a read, a listing): it is checked
between socket calls and cuts every socket timeout to the time left, so a server that answers
one byte at a time cannot stall plinius; when it passes the operation fails with one line naming
the server, what it was doing and the option to raise.

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

The server is untrusted (it may be the attacker's). redis-py only opens the connection (address,
TCP, TLS); every reply is read here by a RESP2 reader that knows what each command can return:
a reply of the wrong type, longer, larger or more deeply nested than that is refused before
anything is allocated for it, and memory grows only with bytes that really arrived. A pointer's
chunk size must lie in the range ``?chunk=`` can write (4096 B to 64 MiB) and its size within
this machine's memory; chunks are requested in windows of 8 and a read stops at the first
short one; a whole-blob read stages memory for the claimed size only once the server has shown
the blob's last chunk, and a ranged read stages only its range. Chunk replies are read from the
socket straight into reusable staging memory, so a save or restore allocates no per-chunk
objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, TypeVar

import redis
from redis.connection import Connection, SSLConnection

from plinius.backends.base import (
    DURABILITY_LEVELS,
    Durability,
    IoStats,
    RunsOn,
    check_blob_name,
    check_range,
)
from plinius.backends.fsinfo import mount_of
from plinius.backends.redis_local import LocalServer
from plinius.backends.staging import StagedBackend
from plinius.core.errors import BackendError, ConfigError, NotFoundError, PliniusError
from plinius.core.fsutil import read_regular
from plinius.core.memory import StagingBuffer

PASSWORD_ENV = "PLINIUS_REDIS_PASSWORD"
MARKER = b"plinius-redis-backend format 1"
DEFAULT_CHUNK = 1 << 20
#: the chunk sizes ``?chunk=`` accepts, so the only ones a pointer may hold
MIN_CHUNK, MAX_CHUNK = 4096, 64 << 20
DEFAULT_PORT = 6379
DEFAULT_PREFIX = "plinius"
#: seconds one socket call may wait (``?timeout=``)
DEFAULT_TIMEOUT = 30
#: seconds one whole operation may take (``?deadline=``)
DEFAULT_DEADLINE = 300
#: chunks in flight on a read: bounds what the server buffers for us
_READ_WINDOW = 8
#: bytes of chunks per MULTI/EXEC on a write (one AOF fsync each)
_WRITE_BATCH = 16 << 20
#: the longest reply line (a header, a status, an error) the reader buffers
_LINE_MAX = 1 << 16
#: entries of P:pend a sweep accepts (one per killed save or leftover version)
_MAX_PENDING = 10_000
#: distinct blob names a listing accepts
_MAX_BLOBS = 100_000
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_LOCATION_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?"
                          r"(?:/(?P<db>\d+))?/?$")  # fmt: skip
_BLOB_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION_RE = re.compile(rb"[0-9a-f]{1,64}")
_PENDING_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[0-9a-f]{1,64}")
_DIGITS_RE = re.compile(rb"[0-9]{1,20}")
_INT_RE = re.compile(rb"-?[0-9]{1,19}")
_OPTIONS = (
    "prefix", "password_file", "user", "replicas", "wait_ms", "allow_eviction", "chunk",
    "timeout", "deadline", "create", "ca", "ca_path", "cert", "key", "verify", "check_hostname",
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

_T = TypeVar("_T")


# --- the reply reader ----------------------------------------------------------------------------


class _ServerError(Exception):
    """An error reply (``-ERR ...``); its text is printable and short."""


class _Malformed(Exception):
    """A reply no command plinius sent can get: wrong type, too long, too many items, not RESP."""


class _DeadlinePassed(Exception):
    """The operation's ``?deadline=`` passed."""


class _Gone(BackendError):
    """A chunk came back short: the version changed under the reader, or a chunk was lost."""


#: a parsed reply: None (nil), bytes (bulk), str (status), int, an error, or an array of them
Reply: TypeAlias = "bytes | str | int | _ServerError | list[Reply] | None"


@dataclass(frozen=True)
class _Shape:
    """The most a reply to one kind of command may hold; anything more is refused before it is
    read, so the server never sizes an allocation or a loop here."""

    #: bytes of one bulk string
    bulk: int = 256
    #: array elements, all levels together
    items: int = 8
    #: bytes of all bulk strings together
    total: int = 4096
    #: array nesting (0: no array at all)
    depth: int = 1


_SMALL = _Shape()
_POINTER = _Shape(bulk=64, items=4, total=256)
_CONFIG = _Shape(bulk=4096, items=64, total=64 << 10)
_TEXT = _Shape(bulk=16 << 20, items=0, total=16 << 20, depth=0)  # INFO, CLIENT LIST
_KEYS = _Shape(bulk=64 << 10, items=2 + _MAX_BLOBS, total=16 << 20, depth=2)  # one SCAN page
_PENDING = _Shape(bulk=256, items=2 * _MAX_PENDING, total=2 * _MAX_PENDING * 256)


def _text(raw: bytes | bytearray, limit: int = 300) -> str:
    """Server bytes made fit for one line of a message: decoded, non-printables replaced."""
    s = bytes(raw[: limit * 4]).decode(errors="replace")[:limit]
    return "".join(c if c.isprintable() else "?" for c in s)


def _int(raw: bytes) -> int:
    if not _INT_RE.fullmatch(raw):
        raise _Malformed(f"{_text(raw, 40)!r} where an integer was expected")
    return int(raw)


class _Wire:
    """One RESP2 connection whose every socket call ends before the operation's deadline."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        #: seconds the next socket call may wait (longer for WAIT), cut to the deadline
        self.patience = timeout
        #: time.monotonic() by which the current operation must end
        self.deadline = math.inf
        self._set: float | None = None
        self._buf = bytearray(_LINE_MAX)
        self._view = memoryview(self._buf)
        self._start = self._end = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- socket calls, each within the deadline --------------------------------------------

    def _arm(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed
        t = min(self.patience, left)
        if t != self._set:
            self.sock.settimeout(t)
            self._set = t
        return t

    def _timed_out(self, allowed: float) -> BaseException:
        """A socket timeout: the deadline's (the timeout was cut to it) or ``?timeout=``'s."""
        if allowed < self.patience or time.monotonic() >= self.deadline:
            return _DeadlinePassed()
        return TimeoutError(f"the connection stalled for {self.patience:g} s")

    def send(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            allowed = self._arm()
            try:
                n = self.sock.send(view)
            except TimeoutError:
                raise self._timed_out(allowed) from None
            view = view[n:]

    def _recv_into(self, view: memoryview) -> int:
        allowed = self._arm()
        try:
            n = self.sock.recv_into(view)
        except TimeoutError:
            raise self._timed_out(allowed) from None
        if n == 0:
            raise ConnectionError("connection closed by the server")
        return n

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            n = self._end - self._start
            self._view[:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        self._end += self._recv_into(self._view[self._end :])

    # --- replies ----------------------------------------------------------------------------

    def line(self) -> bytes:
        scan = self._start
        while True:
            i = self._buf.find(b"\r\n", scan, self._end)
            if i >= 0:
                line = bytes(self._view[self._start : i])
                self._start = i + 2
                return line
            if self._end - self._start >= len(self._buf):
                raise _Malformed(f"a reply line longer than {_LINE_MAX} B")
            scan = max(self._end - 1, self._start) - self._start
            self._fill()
            scan += self._start

    def _crlf(self) -> None:
        while self._end - self._start < 2:
            self._fill()
        if self._view[self._start : self._start + 2] != b"\r\n":
            raise _Malformed("a string not followed by CRLF")
        self._start += 2

    def reply(self, shape: _Shape) -> Reply:
        """One reply, refused as soon as it exceeds ``shape``."""
        return self._value(shape, [shape.items, shape.total], 0)

    def _value(self, shape: _Shape, budget: list[int], depth: int) -> Reply:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return _text(rest)
        if kind == b"-":
            return _ServerError(_text(rest))
        if kind == b":":
            return _int(rest)
        if kind == b"$":
            n = _int(rest)
            if n == -1:
                return None
            room = min(shape.bulk, budget[1])
            if not 0 <= n <= room:
                raise _Malformed(f"a string of {n} B where at most {room} B can come")
            budget[1] -= n
            return self._exact(n)
        if kind == b"*":
            n = _int(rest)
            if n == -1:
                return None
            if depth >= shape.depth:
                raise _Malformed("an array where no (deeper) array can come")
            if not 0 <= n <= budget[0]:
                raise _Malformed(f"an array of {n} items where at most {budget[0]} can come")
            budget[0] -= n
            return [self._value(shape, budget, depth + 1) for _ in range(n)]
        raise _Malformed(f"a reply starting {_text(line, 40)!r}")

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while True:
            take = min(n - len(out), self._end - self._start)
            out += self._view[self._start : self._start + take]
            self._start += take
            if len(out) == n:
                break
            self._fill()
        self._crlf()
        return bytes(out)

    def bulk_into(self, dest: memoryview) -> int:
        """One bulk reply straight into ``dest``; its length (-1: nil); a longer one is refused."""
        line = self.line()
        if line[:1] == b"-":
            raise _ServerError(_text(line[1:]))
        if line[:1] != b"$":
            raise _Malformed(f"a reply starting {_text(line, 40)!r} where a chunk was expected")
        n = _int(line[1:])
        if n == -1:
            return -1
        if not 0 <= n <= dest.nbytes:
            raise _Malformed(f"a chunk of {n} B where at most {dest.nbytes} B can come")
        got = min(n, self._end - self._start)
        dest[:got] = self._view[self._start : self._start + got]
        self._start += got
        while got < n:
            got += self._recv_into(dest[got:n])
        self._crlf()
        return n


def _bulk(r: Reply, what: str) -> bytes:
    if isinstance(r, _ServerError):
        raise r
    if not isinstance(r, bytes):
        raise _Malformed(f"{type(r).__name__} where {what} (a string) was expected")
    return r


def _bulk_or_nil(r: Reply, what: str) -> bytes | None:
    return None if r is None else _bulk(r, what)


def _array(r: Reply, what: str, n: int | None = None) -> list[Reply]:
    if isinstance(r, _ServerError):
        raise r
    if not isinstance(r, list) or (n is not None and len(r) != n):
        shown = f"{len(r)} items" if isinstance(r, list) else type(r).__name__
        raise _Malformed(f"{shown} where {what} ({n or 'an array of'} items) was expected")
    return r


def _integer(r: Reply, what: str) -> int:
    if isinstance(r, _ServerError):
        raise r
    if not isinstance(r, int):
        raise _Malformed(f"{type(r).__name__} where {what} (an integer) was expected")
    return r


def _status(r: Reply, expected: str, what: str) -> None:
    if isinstance(r, _ServerError):
        raise r
    if r != expected:
        raise _Malformed(f"{_text(repr(r).encode(), 40)} where {what} answers {expected}")


def _count(raw: bytes, what: str) -> int:
    if not _DIGITS_RE.fullmatch(raw):
        raise _Malformed(f"{what} is {_text(raw, 40)!r}, not a count")
    return int(raw)


def _version(raw: bytes, what: str) -> str:
    if not _VERSION_RE.fullmatch(raw):
        raise _Malformed(f"{what} names version {_text(raw, 70)!r}, not one plinius writes")
    return raw.decode()


def _truthy(value: Any) -> bool:
    return str(value).lower() in {"1", "true", "yes", "on"}


def _int_option(options: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = str(options.get(name, default)).strip()
    mult = {"k": 1 << 10, "m": 1 << 20}.get(raw[-1:].lower(), 1) if raw else 1
    digits = raw[:-1] if mult > 1 else raw
    if not digits.isdigit() or not lo <= int(digits) * mult <= hi:
        raise ConfigError(f"redis: ?{name}={raw!r}: expected an integer from {lo} to {hi}")
    return int(digits) * mult


def _seconds_option(
    options: dict[str, Any], name: str, default: float, lo: float, hi: float
) -> float:
    raw = str(options.get(name, default)).strip()
    if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,3})?", raw) or not lo <= float(raw) <= hi:
        raise ConfigError(f"redis: ?{name}={raw!r}: expected seconds from {lo:g} to {hi:g}")
    return float(raw)


def _one_line(exc: BaseException) -> str:
    return _text(" ".join(str(exc).split()).encode()) or type(exc).__name__


class RedisBackend(StagedBackend):
    """Blobs as chunked versions on a Redis server, switched atomically by a Lua script."""

    name = "redis"
    summary = "Redis server (off-machine): chunked versions, atomic switch, optional WAIT replicas"
    example_location = "127.0.0.1:6379/0?prefix=plinius"
    byte_addressable = False
    locality = "remote"
    durability_levels: ClassVar[tuple[Durability, ...]] = DURABILITY_LEVELS
    #: default instances are private servers in a directory (``redis_local``), kept in RAM
    default_root = "shm"
    tls: ClassVar[bool] = False
    #: create=never: existing plinius data only (no private server directory, no marker made)
    read_only_open = True

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
        self.chunk = _int_option(options, "chunk", DEFAULT_CHUNK, MIN_CHUNK, MAX_CHUNK)
        self.timeout = _int_option(options, "timeout", DEFAULT_TIMEOUT, 1, 3600)
        self.deadline = _seconds_option(options, "deadline", DEFAULT_DEADLINE, 0.1, 86400)
        if self.replicas and 2 * self.wait_ms / 1000 >= self.deadline:
            raise ConfigError(
                f"{self.name}: a save waits up to twice ?wait_ms={self.wait_ms} for replicas, "
                f"more than ?deadline={self.deadline:g} s allows: raise ?deadline= or lower "
                "?wait_ms="
            )
        self.create = str(options.get("create", "auto"))
        if self.create not in ("auto", "never"):
            raise ConfigError(f"{self.name}: create={self.create!r}; use create=auto or never")
        self.server = f"{self.name}://{m['host']}:{self.port}/{self.db}" if m else location
        self.owner = f"plinius-{secrets.token_hex(6)}"
        self._lock = threading.RLock()
        self._maps: dict[str, tuple[tuple[str, int, int, int], StagingBuffer]] = {}
        self._wire: _Wire | None = None
        self._closed = False
        self._depth = 0
        self._deadline_at = math.inf
        self._local: LocalServer | None = None
        self._secret: str | None = None
        try:
            self._secret = self._read_password(options)
            if not m:
                self._local = LocalServer(
                    self.name, location, create=self.create == "auto", password=self._secret
                )
                self.port = self._local.port
                self.server = (
                    f"{self.name}:{location} (private redis-server on 127.0.0.1:{self.port})"
                )
            self._run(self._open, "open the backend")
        except BaseException:
            self.close()
            raise

    # --- set-up --------------------------------------------------------------------------------

    def _read_password(self, options: dict[str, Any]) -> str | None:
        path = options.get("password_file")
        if path:
            raw = read_regular(str(path), "redis password file", max_bytes=4096)
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                raise ConfigError(
                    f"{self.name}: password file {path} is not UTF-8 text: write the password "
                    "as one line of text"
                ) from None
            return text.rstrip("\r\n") or None
        return os.environ.get(PASSWORD_ENV) or None

    def _tls_kwargs(self) -> dict[str, Any]:
        if not self.tls or self.local:  # a private server is reached on loopback only
            return {}
        o = self.options
        verify = str(o.get("verify", "required"))
        if verify not in ("required", "optional", "none"):
            raise ConfigError(f"{self.name}: verify={verify!r}; use required, optional or none")
        return {
            "ssl_ca_certs": o.get("ca"),
            "ssl_ca_path": o.get("ca_path"),
            "ssl_certfile": o.get("cert"),
            "ssl_keyfile": o.get("key"),
            "ssl_cert_reqs": verify,
            "ssl_check_hostname": _truthy(o.get("check_hostname", "1")) and verify != "none",
        }

    def _open(self) -> None:
        self._run(self._w, "connect")
        self._check_server()
        self._check_prefix()

    def _connect(self) -> _Wire:
        """A new connection, authenticated and named; redis-py opens the socket (address
        resolution, TCP options, TLS with the spec's options) and reads nothing from it."""
        left = self._deadline_at - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed
        tls = self._tls_kwargs()
        cls = SSLConnection if tls else Connection
        conn = cls(
            host=self.host,
            port=self.port,
            socket_timeout=min(self.timeout, left),
            socket_connect_timeout=min(self.timeout, 5, left),
            **tls,
        )
        try:
            sock: socket.socket = conn._connect()
        except TimeoutError:
            if time.monotonic() >= self._deadline_at:
                raise _DeadlinePassed(
                    "no answer to the TLS handshake: a plain-text port? (redis:// for those)"
                    if tls
                    else "no connection"
                ) from None
            raise
        wire = _Wire(sock, self.timeout)
        wire.deadline = self._deadline_at
        try:
            # (what a reply is called in a message: never the arguments, AUTH's is the password)
            cmds: list[tuple[str, tuple[str, ...]]] = []
            if self._secret is not None:
                user = self.options.get("user")
                auth = ("AUTH", str(user), self._secret) if user else ("AUTH", self._secret)
                cmds.append(("AUTH", auth))
            cmds.append(("CLIENT SETNAME", ("CLIENT", "SETNAME", self.owner)))
            if self.db:
                cmds.append(("SELECT", ("SELECT", str(self.db))))
            wire.send(b"".join(_pack(*c) for _, c in cmds))
            for what, _ in cmds:
                _status(wire.reply(_SMALL), "OK", what)
        except BaseException:
            wire.close()
            raise
        return wire

    def _check_server(self) -> None:
        policy = self._config("maxmemory-policy")
        if policy in _EVICTING and not self.allow_eviction:
            raise BackendError(
                f"{self.server}: maxmemory-policy is {policy}, so the server may evict mirror "
                "chunks when memory runs short: set maxmemory-policy noeviction (or volatile-*) "
                "on the server, or accept the risk with ?allow_eviction=1"
            )

    def _check_prefix(self) -> None:
        marker = self._run(
            lambda: _bulk_or_nil(self._call("GET", self._k("plinius")), "the marker"),
            "read the marker",
        )
        if marker is not None:
            if marker != MARKER:
                raise BackendError(
                    f"{self.server}: prefix {self.prefix!r} holds a plinius marker of another "
                    f"format ({_text(marker, 40)!r}): upgrade plinius or use another ?prefix="
                )
            return
        foreign = self._run(lambda: self._scan(self.prefix + ":*", first=True), "scan the prefix")
        if foreign:
            raise BackendError(
                f"{self.server}: prefix {self.prefix!r} holds keys plinius did not write "
                f"(e.g. {_text(next(iter(foreign)), 60)!r}): refusing to mix mirrors with "
                "foreign data; choose another ?prefix="
            )
        if self.create == "never":
            raise NotFoundError(
                f"{self.server}: no plinius data under prefix {self.prefix!r}: nothing to read"
            )

        def mark() -> None:
            got = self._call("SET", self._k("plinius"), MARKER, "NX")
            if got is not None:
                _status(got, "OK", "SET")

        self._run(mark, "write the marker")

    # --- plumbing --------------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        where = f"{self.name}:{self.location}" if self.local else self.server
        return f"{where}?prefix={self.prefix}"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _chunk_key(self, blob: str, ver: str) -> str:
        return self._k("c", blob, ver, "")

    def _w(self) -> _Wire:
        """The connection, (re)connected when a failure dropped it."""
        if self._closed:
            raise BackendError(f"backend {self.spec} is closed")
        if self._wire is None:
            self._wire = self._connect()
        self._wire.deadline = self._deadline_at
        return self._wire

    def _drop(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"backend {self.spec} is closed")

    def _run(self, fn: Callable[[], _T], doing: str) -> _T:
        """``fn()`` under the lock and within the deadline, its failures turned into one-line
        plinius errors. Calls nest: the outermost one sets the deadline for all of them.

        Any failure but a short chunk (whose replies were read in full) may leave replies unread
        on the connection, so it is dropped and the next call reconnects.
        """
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._deadline_at = time.monotonic() + self.deadline
            self._depth += 1
            try:
                return fn()
            except _Gone:
                raise
            except BaseException as exc:
                self._drop()
                if isinstance(exc, PliniusError):
                    raise
                err = self._translate(exc, doing)
                if err is None:
                    raise
                raise err from None
            finally:
                self._depth -= 1
                if outer:
                    self._deadline_at = math.inf

    def _translate(self, exc: BaseException, doing: str) -> BackendError | None:
        where = f"{self.server}: cannot {doing}"
        if isinstance(exc, _DeadlinePassed):
            why = f"{exc}; " if str(exc) else ""
            return BackendError(
                f"{where}: not done within the ?deadline={self.deadline:g} s ({why}the server "
                "answers too slowly or not at all); raise ?deadline=SECONDS if it is only slow"
            )
        if isinstance(exc, (_ServerError, redis.RedisError, OSError)):
            return self._error(exc, doing)  # before ValueError: a TLS verify error is both
        if isinstance(exc, (_Malformed, ValueError, TypeError, ArithmeticError, RecursionError)):
            # the server is untrusted: a malformed reply or pointer is its fault, said in one
            # line (UnicodeError is a ValueError)
            return BackendError(
                f"{where}: malformed data on the server ({_one_line(exc)}); the prefix holds "
                "something plinius did not write, or the server is not a Redis plinius can use"
            )
        return None

    def _error(self, exc: BaseException, doing: str) -> BackendError:
        msg = _one_line(exc)
        where = f"{self.server}: cannot {doing}"
        low = msg.lower()
        if any(w in msg for w in ("WRONGPASS", "NOAUTH", "invalid password", "Authentication")):
            return BackendError(
                f"{where}: the server refused the credentials ({msg}): set ${PASSWORD_ENV} or "
                "?password_file=PATH to the server's password (and ?user= for an ACL user)"
            )
        connecting = doing in ("connect", "open the backend")
        tls_silent = self.tls and connecting and isinstance(exc, TimeoutError)
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
        if isinstance(exc, _ServerError):
            return BackendError(f"{where}: the server answered: {msg}")
        if not self.tls and connecting and ("reset" in low or "closed" in low):
            return BackendError(
                f"{where}: the server dropped the connection at once ({msg}): if it speaks "
                "TLS on this port, use rediss:// with ?ca=PATH"
            )
        if isinstance(exc, TimeoutError):
            return BackendError(
                f"{where}: {msg} (?timeout={self.timeout}): check that a Redis server runs "
                "there and is reachable, or raise ?timeout=SECONDS"
            )
        return BackendError(
            f"{where}: {msg}: check that a Redis server runs there and is reachable (e.g. "
            f"redis-server --port {self.port} --appendonly yes --appendfsync always)"
        )

    def _call(self, *args: str | bytes | int, shape: _Shape = _SMALL, wait: float = 0.0) -> Reply:
        """One command and its reply (bounded by ``shape``); an error reply raises. ``wait``:
        seconds the server may legitimately take on top of ``?timeout=`` (WAIT)."""
        w = self._w()
        w.send(_pack(*args))
        return self._reply(w, shape, wait)

    def _reply(self, w: _Wire, shape: _Shape, wait: float = 0.0) -> Reply:
        w.patience = self.timeout + wait
        try:
            got = w.reply(shape)
        finally:
            w.patience = self.timeout
        if isinstance(got, _ServerError):
            raise got
        return got

    def _script(
        self, source: str, keys: list[str], args: list[str | bytes | int], shape: _Shape = _SMALL
    ) -> Reply:
        sha = _SHAS.setdefault(source, hashlib.sha1(source.encode()).hexdigest())
        try:
            return self._call("EVALSHA", sha, len(keys), *keys, *args, shape=shape)
        except _ServerError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return self._call("EVAL", source, len(keys), *keys, *args, shape=shape)

    def _config(self, name: str) -> str | None:
        """``CONFIG GET name``, or None where CONFIG is not allowed (managed servers)."""

        def get() -> str | None:
            try:
                got = _array(self._call("CONFIG", "GET", name, shape=_CONFIG), "CONFIG GET")
            except _ServerError:
                return None
            for k, v in zip(got[::2], got[1::2], strict=False):
                if _bulk(k, "a configuration name") == name.encode():
                    return _text(_bulk(v, "a configuration value"))
            return None

        return self._run(get, "read its configuration")

    def _scan(
        self, pattern: str, *, first: bool = False, keep: Callable[[bytes], bytes] | None = None
    ) -> set[bytes]:
        """The keys matching ``pattern`` (at most one when ``first``), page by page; ``keep``
        checks (and may shorten) each key before it is kept, so what piles up across pages is
        bounded by what a valid key can be, not by what a page may hold."""
        found: set[bytes] = set()
        cursor = b"0"
        while True:
            page = _array(
                self._call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000", shape=_KEYS),
                "a SCAN page",
                2,
            )
            cursor = _bulk(page[0], "the SCAN cursor")
            _count(cursor, "the SCAN cursor")
            for key in _array(page[1], "the SCAN keys"):
                raw = _bulk(key, "a key")
                found.add(raw if keep is None else keep(raw))
                if first:
                    return found
            if len(found) > _MAX_BLOBS:
                raise _Malformed(f"more than {_MAX_BLOBS} keys match {pattern}")
            if cursor == b"0":
                return found

    # --- raw bulk I/O ------------------------------------------------------------------------

    def _send_chunks(self, blob: str, ver: str, data: memoryview, size: int) -> None:
        """SET every chunk straight from ``data``, in MULTI/EXEC batches of ~16 MiB: a server
        with appendfsync always then fsyncs once per batch, not once per chunk."""
        w = self._w()
        prefix = self._chunk_key(blob, ver)
        n = math.ceil(size / self.chunk)
        per_batch = max(1, _WRITE_BATCH // self.chunk)
        for first in range(0, n, per_batch):
            tail = _pack("MULTI")
            for i in range(first, min(n, first + per_batch)):
                part = data[i * self.chunk : min(size, (i + 1) * self.chunk)]
                name = f"{prefix}{i}".encode()
                head = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(name), name, part.nbytes)
                w.send(tail + head)
                w.send(part)
                tail = b"\r\n"
            w.send(tail + _pack("EXEC"))
        for first in range(0, n, per_batch):
            k = min(n, first + per_batch) - first
            _status(self._reply(w, _SMALL), "OK", "MULTI")
            for _ in range(k):
                _status(self._reply(w, _SMALL), "QUEUED", "a SET in MULTI")
            done = _array(self._reply(w, _Shape(bulk=0, items=k, total=0)), "EXEC", k)
            for r in done:
                _status(r, "OK", "a SET in EXEC")

    def _fetch(self, blob: str, ver: str, cs: int, offset: int, dest: memoryview) -> None:
        """Bytes [offset, offset+len(dest)) of version ``ver`` into ``dest``: GETRANGEs made as
        they are sent, at most a window of them in flight, none sent after a short chunk."""
        if dest.nbytes == 0:
            return
        w = self._w()
        prefix = self._chunk_key(blob, ver)
        end = offset + dest.nbytes
        first, last = offset // cs, (end - 1) // cs

        def span(i: int) -> tuple[int, int]:
            return max(offset, i * cs), min(end, (i + 1) * cs)

        def request(i: int) -> bytes:
            lo, hi = span(i)
            return _pack("GETRANGE", f"{prefix}{i}", lo - i * cs, hi - i * cs - 1)

        sent = min(last + 1, first + _READ_WINDOW)
        w.send(b"".join(request(i) for i in range(first, sent)))
        short = False
        i = first
        while i < sent:
            lo, hi = span(i)
            got = w.bulk_into(dest[lo - offset : hi - offset])
            short = short or got != hi - lo
            if not short and sent <= last:
                w.send(request(sent))
                sent += 1
            i += 1
        if short:
            raise _Gone(f"{self.server}: a chunk of {blob!r} version {ver} is missing")

    # --- staged writes and reads ------------------------------------------------------------

    def _put(self, blob: str, data: memoryview, size: int) -> IoStats:
        return self._run(lambda: self._put_locked(blob, data, size), f"save {blob!r}")

    def _put_locked(self, blob: str, data: memoryview, size: int) -> IoStats:
        stats = IoStats(bytes=size)
        t0 = time.perf_counter()
        self._sweep()
        ver = secrets.token_hex(8)
        n = math.ceil(size / self.chunk)
        cur, pend = self._k("cur", blob), self._k("pend")
        _integer(self._call("HSET", pend, f"{blob}/{ver}", f"{n} {self.owner}"), "HSET")
        self._send_chunks(blob, ver, data, size)
        t1 = time.perf_counter()
        stats.write_s = t1 - t0
        if self.replicas:
            acked = self._wait()
            if acked < self.replicas:
                self._clean(blob, ver)
                raise BackendError(self._wait_failed(acked, "its chunks"))
        old = _old_pointer(self._script(_COMMIT, [cur, pend], [blob, ver, size, n, self.chunk],
                                        shape=_POINTER))  # fmt: skip
        if self.replicas:
            acked = self._wait()
            if acked < self.replicas:
                prev: list[str | bytes | int] = list(old or (b"", b"", b"", b""))
                _integer(self._script(_REVERT, [cur, pend], [blob, ver, *prev, n]), "a revert")
                self._clean(blob, ver)
                raise BackendError(self._wait_failed(acked, "the switch to the new version"))
        stats.fsync_s = time.perf_counter() - t1
        if old is not None:
            self._clean(blob, old[0].decode())
        stats.total_s = time.perf_counter() - t0
        return stats

    def _wait(self) -> int:
        """``WAIT``: how many replicas acknowledged this connection's writes."""
        got = self._call("WAIT", self.replicas, self.wait_ms, wait=self.wait_ms / 1000)
        return _integer(got, "WAIT")

    def _wait_failed(self, acked: int, what: str) -> str:
        return (
            f"{self.server}: only {acked} of {self.replicas} replica(s) acknowledged {what} "
            f"within {self.wait_ms} ms (WAIT): the previous version stays current; check the "
            "replicas (INFO replication) or lower ?replicas= / raise ?wait_ms="
        )

    def _clean(self, blob: str, ver: str) -> None:
        got = self._script(_CLEAN, [self._k("pend")], [f"{blob}/{ver}", self._chunk_key(blob, ver)])
        _integer(got, "a clean-up")

    def _sweep(self) -> None:
        """Remove versions of clients that died mid-save, and garbage a killed client left."""
        pending = _array(self._call("HGETALL", self._k("pend"), shape=_PENDING), "HGETALL")
        if len(pending) % 2:
            raise _Malformed("HGETALL answered an odd number of items")
        entries: list[tuple[str, str]] = []
        for f, v in zip(pending[::2], pending[1::2], strict=True):
            field = _bulk(f, "a pending version")
            if not _PENDING_RE.fullmatch(field):
                raise _Malformed(f"pending version {_text(field, 80)!r} is not one plinius writes")
            owner = _bulk(v, "a pending version's owner").decode("ascii").partition(" ")[2]
            entries.append((field.decode(), owner))
        live: set[str] | None = None
        for name, owner in entries:
            if owner and owner != self.owner:
                if live is None:
                    live = self._live_clients()
                if owner in live or "*" in live:
                    continue  # another live client is writing it (or we cannot tell)
            blob, _, ver = name.rpartition("/")
            self._clean(blob, ver)

    def _live_clients(self) -> set[str]:
        try:
            listing = _bulk(
                self._call("CLIENT", "LIST", "TYPE", "normal", shape=_TEXT), "CLIENT LIST"
            )
        except _ServerError:  # CLIENT LIST not allowed: treat every owner as alive
            return {"*"}
        text = listing.decode(errors="replace")
        return set(re.findall(r"(?:^| )name=(\S+)", text, re.M))

    def _pointer(self, blob: str) -> tuple[str, int, int, int] | None:
        """The current (version, size, chunk count, chunk size) of ``blob``, each checked
        against what a writer can produce before it sizes anything."""
        got = _array(
            self._call("HMGET", self._k("cur", blob), "v", "s", "n", "cs", shape=_POINTER),
            "the pointer",
            4,
        )
        if got[0] is None:
            return None
        what = f"pointer of {blob!r}"
        ver = _version(_bulk(got[0], what), what)
        size, count, chunk = (_count(_bulk(x, what), what) for x in got[1:])
        if not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise _Malformed(
                f"{what} has chunk size {chunk} B, outside the {MIN_CHUNK}..{MAX_CHUNK} B "
                "?chunk= writes"
            )
        if count != -(-size // chunk):
            raise _Malformed(f"inconsistent {what}: size {size}, {count} x {chunk} B")
        if size > _physical_memory():
            # the server holds the pointer: a hostile one must not make a restore allocate
            # whatever it claims (staging is lazy, but address space is not unlimited)
            raise _Malformed(
                f"{what} claims {size} B, more than this machine's memory "
                f"({_physical_memory()} B): corrupt or hostile server, refusing to read it"
            )
        return ver, size, count, chunk

    def _has_end(self, blob: str, ptr: tuple[str, int, int, int]) -> bool:
        """Whether the server holds the last chunk of ``ptr`` at its full length: checked before
        memory for a whole blob is staged, so a pointer claiming more than was written stages
        nothing."""
        ver, size, count, cs = ptr
        key = f"{self._chunk_key(blob, ver)}{count - 1}"
        return _integer(self._call("STRLEN", key), "STRLEN") == size - (count - 1) * cs

    def _get(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, int] | None:
        check_blob_name(blob)
        got = self._run(lambda: self._read(blob, offset, length, stage), f"read {blob!r}")
        return None if got is None else (got[0], got[1][1])

    def _read(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, tuple[str, int, int, int]] | None:
        """Bytes [offset, offset+length) of the current version into ``stage``, and its pointer."""
        for _ in range(3):
            ptr = self._pointer(blob)
            if ptr is None:
                return None
            ver, size, _, cs = ptr
            n = check_range(f"{blob!r} on {self.spec}", offset, length, size)
            try:
                if length is None and n > cs and not self._has_end(blob, ptr):
                    raise _Gone(f"{self.server}: the last chunk of {blob!r} is missing")
                view = self._stage(stage, n, blob, size)
                self._fetch(blob, ver, cs, offset, view)
            except _Gone:
                if self._pointer(blob) == ptr:
                    raise BackendError(
                        f"{self.server}: chunks of {blob!r} (version {ver}) are missing: evicted "
                        "by maxmemory-policy or deleted by another client, or the pointer claims "
                        f"more than was written ({size} B); this copy is lost"
                    ) from None
                continue  # a writer switched versions under us: read the new one
            return view, ptr
        raise BackendError(f"{self.server}: {blob!r} keeps changing while being read")

    def _stage(self, stage: StagingBuffer, n: int, blob: str, size: int) -> memoryview:
        try:
            return stage.view(n)[:n]
        except (OSError, MemoryError, OverflowError) as exc:
            raise BackendError(
                f"{self.server}: cannot read {blob!r}: no memory for {n} B of it (the server "
                f"says it is {size} B): {_one_line(exc)}"
            ) from None

    # --- contract ---------------------------------------------------------------------------------

    def map(self, blob: str) -> memoryview | None:
        """Not byte-addressable: the whole blob read into memory of its own (kept per blob and
        pointer, so a later ``read`` of another blob does not overwrite a mapped sample area)."""
        check_blob_name(blob)

        def go() -> memoryview | None:
            ptr = self._pointer(blob)
            if ptr is None:
                return None
            cached = self._maps.get(blob)
            if cached is not None and cached[0] == ptr:
                return cached[1].view(ptr[1])[: ptr[1]].toreadonly()
            if cached is not None:
                cached[1].close()  # a caller's old view keeps its memory alive
                del self._maps[blob]
            buf = StagingBuffer()
            try:
                got = self._read(blob, 0, None, buf)
            except BaseException:
                buf.close()
                raise
            if got is None:
                buf.close()
                return None
            self._maps[blob] = (got[1], buf)
            return got[0].toreadonly()

        return self._run(go, f"read {blob!r}")

    def delete(self, blob: str) -> None:
        check_blob_name(blob)

        def go() -> None:
            old = self._script(_DELETE, [self._k("cur", blob), self._k("pend")], [blob])
            raw = _bulk_or_nil(old, "the deleted version")
            if raw is not None:
                self._clean(blob, _version(raw, f"the pointer of {blob!r}"))

        self._run(go, f"delete {blob!r}")

    def blobs(self) -> list[str]:
        start = self._k("cur", "").encode()

        def name(key: bytes) -> bytes:
            if not key.startswith(start) or not _BLOB_RE.fullmatch(key[len(start) :]):
                raise _Malformed(f"key {_text(key, 80)!r} is not a blob plinius writes")
            return key[len(start) :]

        def go() -> list[str]:
            return sorted(k.decode() for k in self._scan(self._k("cur", "*"), keep=name))

        return self._run(go, "list the blobs")

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
                "timeout_s": self.timeout,
                "deadline_s": self.deadline,
            },
        )

    def _info(self, section: str) -> dict[str, str]:
        """``INFO section`` as field -> value (printable text)."""
        raw = _bulk(self._call("INFO", section, shape=_TEXT), "INFO")
        out: dict[str, str] = {}
        for line in raw.split(b"\n"):
            k, sep, v = line.strip().partition(b":")
            if sep and not k.startswith(b"#"):
                out[_text(k, 64)] = _text(v, 200)
        return out

    def _server_facts(self) -> dict[str, Any]:
        info = self._info("server")
        repl = self._info("replication")
        pers = self._info("persistence")
        aof = self._config("appendonly")
        if aof is None:
            aof = "yes" if pers.get("aof_enabled") == "1" else "no"
        maxmemory = self._config("maxmemory")
        return {
            "version": info.get("redis_version", "?"),
            "role": repl.get("role", "?"),
            "connected_replicas": _count(
                repl.get("connected_slaves", "0").encode(), "INFO connected_slaves"
            ),
            "appendonly": aof,
            "appendfsync": self._config("appendfsync") or "unknown",
            "save": self._config("save"),
            "maxmemory": _count(maxmemory.encode(), "maxmemory") if maxmemory else 0,
            "maxmemory_policy": self._config("maxmemory-policy") or "unknown",
            "loopback": is_loopback(self.host),
        }

    def close(self) -> None:
        self._closed = True
        wire = self._wire
        if not self._lock.acquire(blocking=False):
            # another thread is mid-operation: cut its connection so that it fails now rather
            # than at its deadline, then wait for it to let go
            if wire is not None:
                with contextlib.suppress(OSError):
                    wire.sock.shutdown(socket.SHUT_RDWR)
            self._lock.acquire()
        try:
            for _, buf in self._maps.values():
                buf.close()
            self._maps.clear()
            self._drop()
            if self._local is not None:
                self._local.close()
                self._local = None
            super().close()
        finally:
            self._lock.release()


def _old_pointer(r: Reply) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The pointer the commit script replaced (None: the blob is new), checked before any of
    it names a key to remove."""
    old = _array(r, "the commit's previous version", 4)
    if old[0] is None:
        return None
    v, s, n, cs = (_bulk(x, "the previous version") for x in old)
    _version(v, "the previous pointer")
    for x in (s, n, cs):
        _count(x, "the previous pointer")
    return v, s, n, cs


class RedisTlsBackend(RedisBackend):
    """``rediss://``: the same backend over TLS."""

    name = "rediss"
    summary = "Redis server over TLS (?ca=PATH): as redis"
    example_location = "redis.example.org:6380/0?prefix=plinius&ca=/etc/ssl/redis-ca.pem"
    tls = True


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


def _pack(*parts: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


_SHAS: dict[str, str] = {}


def _physical_memory() -> int:
    """Bytes of RAM here: no blob this machine can restore is larger."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
