"""A scriptable hostile Redis: a small RESP2 server on a free loopback port, for tests.

By default it plays a plausible Redis for everything :class:`plinius.backends.redis.RedisBackend`
sends (the connect handshake, ``CONFIG GET``, the marker, ``SCAN``, hashes and strings, the
backend's four Lua scripts emulated by their SHA-1, ``MULTI``/``EXEC``, ``WAIT``, ``INFO``,
``CLIENT LIST``), so a save and a restore work against it. A test then replaces the reply to
one command with crafted bytes, a slow drip, a partial reply and a hang-up, or silence::

    with HostileRedis() as h:
        h.script("HMGET", b"$999999999999\\r\\n")       # every HMGET from now on
        h.script("GETRANGE", Drip(b"$5\\r\\nhello\\r\\n", 0.5), times=1)

Command names are upper case (``"CLIENT LIST"``, ``"CONFIG GET"``, ``"SCRIPT COMMIT"`` for an
``EVALSHA``/``EVAL`` of the backend's commit script; ``"SET"`` inside ``MULTI`` replaces the
``+QUEUED``). Every blocking step of the server checks a stop flag, so :meth:`stop` ends it
within a second whatever it was doing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeAlias

from plinius.backends import redis as rb


@dataclass(frozen=True)
class Drip:
    """Send ``data`` one byte every ``interval`` seconds (a slow server or proxy)."""

    data: bytes
    interval: float = 0.5


@dataclass(frozen=True)
class Hangup:
    """Send ``data`` (maybe a partial reply), then close the connection."""

    data: bytes = b""


@dataclass(frozen=True)
class Silent:
    """Never answer (the connection stays open until the server stops)."""


@dataclass(frozen=True)
class Err:
    """An error reply (``-MSG``) in :func:`encode`."""

    msg: str


#: what a scripted reply can be: raw bytes, an action, or a function of the command's arguments
#: (which may return None: answer as a plausible Redis would)
Action: TypeAlias = "bytes | Drip | Hangup | Silent | Callable[[list[bytes]], Action | None]"
Value: TypeAlias = "bytes | str | int | Err | list[Value] | None"


def encode(value: Value) -> bytes:
    """RESP2 bytes of a value: None is a nil bulk, bytes a bulk, str a status, int an integer."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, Err):
        return b"-" + value.msg.encode() + b"\r\n"
    if isinstance(value, str):
        return b"+" + value.encode() + b"\r\n"
    if isinstance(value, bool):
        raise TypeError("no booleans in RESP2")
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)


_SCRIPTS = {
    hashlib.sha1(src.encode()).hexdigest(): name
    for name, src in (
        ("COMMIT", rb._COMMIT),
        ("REVERT", rb._REVERT),
        ("CLEAN", rb._CLEAN),
        ("DELETE", rb._DELETE),
    )
}
_SOURCES = {
    rb._COMMIT: "COMMIT",
    rb._REVERT: "REVERT",
    rb._CLEAN: "CLEAN",
    rb._DELETE: "DELETE",
}


def command_name(cmd: list[bytes]) -> str:
    """The name a script is keyed by: ``GET``, ``CLIENT LIST``, ``SCRIPT COMMIT``..."""
    head = cmd[0].decode(errors="replace").upper() if cmd else ""
    if head in ("CLIENT", "CONFIG") and len(cmd) > 1:
        return f"{head} {cmd[1].decode(errors='replace').upper()}"
    if head == "EVALSHA" and len(cmd) > 1:
        return f"SCRIPT {_SCRIPTS.get(cmd[1].decode(errors='replace'), '?')}"
    if head == "EVAL" and len(cmd) > 1:
        return f"SCRIPT {_SOURCES.get(cmd[1].decode(errors='replace'), '?')}"
    return head


@dataclass
class _Rule:
    action: Action
    times: int | None
    match: Callable[[list[bytes]], bool] | None


@dataclass
class _Client:
    sock: socket.socket
    name: bytes = b""
    queued: list[list[bytes]] | None = None
    id: int = 0


@dataclass
class HostileRedis:
    """The server; ``store`` is its keyspace (bytes values or hashes), shared by all clients."""

    config: dict[str, bytes] = field(
        default_factory=lambda: {
            "maxmemory-policy": b"noeviction",
            "appendonly": b"yes",
            "appendfsync": b"always",
            "save": b"",
            "maxmemory": b"0",
        }
    )
    replicas: int = 0
    store: dict[bytes, bytes | dict[bytes, bytes]] = field(default_factory=dict)
    #: every command received, by name, in order
    seen: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._rules: dict[str, list[_Rule]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[_Client] = []
        self._listener: socket.socket | None = None
        self._ids = 0

    # --- scripting -------------------------------------------------------------------------

    def script(
        self,
        command: str,
        action: Action,
        *,
        times: int | None = None,
        match: Callable[[list[bytes]], bool] | None = None,
    ) -> None:
        """Answer ``command`` (and ``match(args)``, if given) with ``action``, ``times`` times
        (None: always). Later rules for a command are tried first."""
        with self._lock:
            self._rules.setdefault(command.upper(), []).insert(0, _Rule(action, times, match))

    def clear(self) -> None:
        """Back to a plausible Redis."""
        with self._lock:
            self._rules.clear()

    def marked(self, prefix: str) -> HostileRedis:
        """Hold the plinius marker under ``prefix`` (an existing, plinius-owned prefix)."""
        with self._lock:
            self.store[f"{prefix}:plinius".encode()] = rb.MARKER
        return self

    def _rule(self, cmd: list[bytes]) -> Action | None:
        name = command_name(cmd)
        with self._lock:
            for rule in self._rules.get(name, []):
                if rule.match is not None and not rule.match(cmd[1:]):
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                return rule.action
        return None

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> HostileRedis:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", 0))
        lst.listen(16)
        lst.settimeout(0.1)
        self._listener = lst
        self.port = int(lst.getsockname()[1])
        t = threading.Thread(target=self._accept, name="hostile-redis-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once (Linux)
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
            c.sock.close()
        for t in self._threads:
            t.join(timeout=5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"hostile server threads did not stop: {alive}"

    def __enter__(self) -> HostileRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, prefix: str = "h", options: str = "") -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}{options}"

    # --- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle waits
            sock.settimeout(0.1)
            with self._lock:
                self._ids += 1
                client = _Client(sock, id=self._ids)
                self._clients.append(client)
            t = threading.Thread(
                target=self._serve, args=(client,), name=f"hostile-redis-{client.id}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _serve(self, client: _Client) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                cmd = _parse_command(buf)
                if cmd is None:
                    try:
                        data = client.sock.recv(1 << 20)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    buf += data
                    continue
                with self._lock:
                    self.seen.append(command_name(cmd))
                if not self._answer(client, cmd):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            client.sock.close()

    def _answer(self, client: _Client, cmd: list[bytes]) -> bool:
        """Send the reply to ``cmd``; False when the connection is to end."""
        action: Action | None = self._rule(cmd)
        while callable(action):
            action = action(cmd[1:])
        if action is None:
            action = self._default(client, cmd)
        return self._act(client.sock, action)

    def _act(self, sock: socket.socket, action: Action) -> bool:
        if isinstance(action, bytes):
            self._send(sock, action)
            return True
        if isinstance(action, Drip):
            for i in range(len(action.data)):
                if self._stop.wait(action.interval):
                    return False
                self._send(sock, action.data[i : i + 1])
            return True
        if isinstance(action, Hangup):
            self._send(sock, action.data)
            return False
        if isinstance(action, Silent):
            self._stop.wait()
            return False
        raise TypeError(f"not an action: {action!r}")

    def _send(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view.nbytes and not self._stop.is_set():
            try:
                n = sock.send(view)
            except TimeoutError:
                continue
            view = view[n:]

    # --- a plausible Redis -----------------------------------------------------------------

    def _default(self, client: _Client, cmd: list[bytes]) -> bytes:
        head = cmd[0].upper()
        if client.queued is not None and head not in (b"EXEC", b"DISCARD", b"MULTI"):
            client.queued.append(cmd)
            return encode("QUEUED")
        if head == b"MULTI":
            client.queued = []
            return encode("OK")
        if head == b"EXEC":
            queued, client.queued = client.queued or [], None
            return encode([self._execute(client, c) for c in queued])
        return encode(self._execute(client, cmd))

    def _execute(self, client: _Client, cmd: list[bytes]) -> Value:
        with self._lock:
            return self._execute_locked(client, cmd)

    def _execute_locked(self, client: _Client, cmd: list[bytes]) -> Value:
        head, args = cmd[0].upper().decode(errors="replace"), cmd[1:]
        store = self.store
        if head in ("AUTH", "SELECT", "PING"):
            return "PONG" if head == "PING" else "OK"
        if head == "CLIENT":
            sub = args[0].upper() if args else b""
            if sub == b"SETNAME":
                client.name = args[1]
                return "OK"
            if sub == b"LIST":
                with self._lock:
                    names = [c.name for c in self._clients]
                lines = [
                    b"id=%d addr=127.0.0.1:%d name=%s cmd=client|list" % (i, 40000 + i, n)
                    for i, n in enumerate(names, 1)
                ]
                return b"\n".join(lines) + b"\n"
            return Err(f"ERR unknown subcommand '{sub.decode(errors='replace')}'")
        if head == "CONFIG":
            name = args[1].decode(errors="replace") if len(args) > 1 else ""
            return [name.encode(), self.config[name]] if name in self.config else []
        if head == "INFO":
            return _info(self.replicas)
        if head == "GET":
            got = store.get(args[0])
            return got if isinstance(got, bytes) else None
        if head == "SET":
            if b"NX" in (a.upper() for a in args[2:]) and args[0] in store:
                return None
            store[args[0]] = args[1]
            return "OK"
        if head == "GETRANGE":
            got = store.get(args[0], b"")
            assert isinstance(got, bytes)
            lo, hi = int(args[1]), int(args[2])
            return got[lo : hi + 1]
        if head == "STRLEN":
            got = store.get(args[0], b"")
            return len(got) if isinstance(got, bytes) else 0
        if head in ("DEL", "UNLINK"):
            return sum(store.pop(k, None) is not None for k in args)
        if head == "SCAN":
            pattern = args[args.index(b"MATCH") + 1].decode() if b"MATCH" in args else "*"
            keys = [k for k in store if fnmatch.fnmatchcase(k.decode(errors="replace"), pattern)]
            return [b"0", list(keys)]
        if head == "HSET":
            h = self._hash(args[0])
            new = sum(f not in h for f in args[1::2])
            h.update(zip(args[1::2], args[2::2], strict=True))
            return new
        if head == "HMGET":
            h = self._hash(args[0])
            return [h.get(f) for f in args[1:]]
        if head == "HGETALL":
            return [x for kv in self._hash(args[0]).items() for x in kv]
        if head == "HDEL":
            h = self._hash(args[0])
            return sum(h.pop(f, None) is not None for f in args[1:])
        if head == "WAIT":
            return self.replicas
        if head in ("EVALSHA", "EVAL"):
            name = (_SCRIPTS if head == "EVALSHA" else _SOURCES).get(args[0].decode(), "")
            n = int(args[1])
            return self._script(name, args[2 : 2 + n], args[2 + n :])
        return Err(f"ERR unknown command '{head}'")

    def _hash(self, key: bytes) -> dict[bytes, bytes]:
        h = self.store.setdefault(key, {})
        assert isinstance(h, dict)
        return h

    def _script(self, name: str, keys: list[bytes], args: list[bytes]) -> Value:
        """The backend's Lua scripts, as Redis would run them."""
        if name == "COMMIT":
            cur, pend = self._hash(keys[0]), self._hash(keys[1])
            f = args[0] + b"/" + args[1]
            if f not in pend:
                return Err(f"PLINIUS_GONE version {args[1].decode()} was removed before commit")
            old: list[Value] = [cur.get(k) for k in (b"v", b"s", b"n", b"cs")]
            cur.update({b"v": args[1], b"s": args[2], b"n": args[3], b"cs": args[4]})
            del pend[f]
            if isinstance(old[0], bytes) and isinstance(old[2], bytes):
                pend[args[0] + b"/" + old[0]] = old[2] + b" "
            return old
        if name == "REVERT":
            cur, pend = self._hash(keys[0]), self._hash(keys[1])
            if cur.get(b"v") != args[1]:
                return 0
            if args[2] == b"":
                self.store.pop(keys[0], None)
            else:
                cur.update({b"v": args[2], b"s": args[3], b"n": args[4], b"cs": args[5]})
                pend.pop(args[0] + b"/" + args[2], None)
            pend[args[0] + b"/" + args[1]] = args[6] + b" "
            return 1
        if name == "CLEAN":
            pend = self._hash(keys[0])
            v = pend.pop(args[0], None)
            if v is None:
                return 0
            m = re.match(rb"(\d+)", v)
            for i in range(int(m[1]) if m else 0):
                self.store.pop(args[1] + str(i).encode(), None)
            return 1
        if name == "DELETE":
            cur = self.store.get(keys[0])
            if not isinstance(cur, dict) or b"v" not in cur:
                return None
            del self.store[keys[0]]
            self._hash(keys[1])[args[0] + b"/" + cur[b"v"]] = cur.get(b"n", b"0") + b" "
            return cur[b"v"]
        return Err("NOSCRIPT No matching script. Please use EVAL.")


def _info(replicas: int) -> bytes:
    lines = [
        "# Server",
        "redis_version:7.0.15",
        "redis_mode:standalone",
        "# Replication",
        "role:master",
        f"connected_slaves:{replicas}",
        "# Persistence",
        "aof_enabled:1",
    ]
    return "\r\n".join(lines).encode() + b"\r\n"


_COMMAND_LIMIT = 1 << 28  # the client is plinius itself: this only keeps a bug from hanging a test


def _parse_command(buf: bytearray) -> list[bytes] | None:
    """Take one RESP array of bulk strings off the front of ``buf``; None if incomplete."""
    if not buf:
        return None
    if buf[:1] != b"*":  # an inline command
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        line = bytes(buf[:end]).split()
        del buf[: end + 2]
        return line or [b""]
    pos = buf.find(b"\r\n")
    if pos < 0:
        return None
    count = int(buf[1:pos])
    pos += 2
    out: list[bytes] = []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        n = int(buf[pos + 1 : end])
        if n > _COMMAND_LIMIT:
            raise OSError("command too long")
        start = end + 2
        if len(buf) < start + n + 2:
            return None
        out.append(bytes(buf[start : start + n]))
        pos = start + n + 2
    del buf[:pos]
    return out


def sequence(*actions: Action | None) -> Callable[[list[bytes]], Action | None]:
    """The n-th matching command gets ``actions[n]`` (None: the plausible reply); the last one
    repeats."""
    calls = [0]

    def pick(args: list[bytes]) -> Action | None:
        i = min(calls[0], len(actions) - 1)
        calls[0] += 1
        return actions[i]

    return pick
