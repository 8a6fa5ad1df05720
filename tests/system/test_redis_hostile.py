"""The ``redis`` backend against a hostile server: every reply it reads is crafted.

The attacker controls every storage server (README, "Threat model"). Nothing a server sends may
size an allocation, a loop or a list before it is bounded, and every failure is one line (a
``BackendError`` or ``ConfigError``): never an internal error, a hang or an OOM. The servers
here are :class:`hostile_resp.HostileRedis` (a scripted RESP2 server) and real ``redis-server``
processes whose keys a test made hostile.
"""

from __future__ import annotations

import copy
import json
import os
import random
import resource
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_runner import cli_argv, train_args
from cli_runner import run_cli as plinius
from hostile_resp import Drip, Hangup, HostileRedis, Silent, encode, sequence

from plinius.backends import open_backend
from plinius.backends.redis import PASSWORD_ENV
from plinius.backends.redis_server import RedisServer
from plinius.backends.testing import raw_get, raw_put
from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import BackendError, ConfigError, PliniusError

#: a deadline small enough for a test, large enough for any machine to finish honest work
SHORT = 2.0
#: the deadline of honest set-up work (opening, a first save) in tests about something else
SETUP_DEADLINE = 60
GiB = 1 << 30


@pytest.fixture(autouse=True)
def _no_password_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture
def hostile() -> Iterator[HostileRedis]:
    """A fresh scripted server; stopped (threads joined) after the test."""
    with HostileRedis() as h:
        yield h


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=False, save="") as srv:
        yield srv


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    assert all(c.isprintable() for c in msg), msg
    return msg


def refused(
    fn: Callable[[], Any], *needles: str, within: float = 10 * SHORT, kind: type = BackendError
) -> str:
    """``fn()`` fails with one line of ``kind`` naming ``needles``, within ``within`` s."""
    t0 = time.monotonic()
    with pytest.raises(PliniusError) as info:
        fn()
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, kind), repr(info.value)
    msg = one_line(info.value)
    for n in needles:
        assert n.lower() in msg.lower(), (n, msg)
    assert elapsed < within, (elapsed, msg)
    return msg


def run_limited(
    code: str, limit: int = GiB, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose address space is capped at ``limit`` bytes."""
    return subprocess.run(
        [sys.executable, "-c", _LIMIT.format(limit=limit) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


_LIMIT = "import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"


# --- break 1: a pointer's chunk size sizes nothing --------------------------------------------


@pytest.mark.parametrize(
    ("size", "count", "chunk"),
    [(1 << 31, 1 << 31, 1), (1 << 29, 1 << 29, 1), (1 << 31, 1, 1 << 31), (1 << 20, 1 << 9, 2048)],
)
def test_pointer_chunk_size_outside_the_writers_range_is_refused(
    server: RedisServer, size: int, count: int, chunk: int
) -> None:
    """``cs`` must lie in the ``chunk`` option's range (4096..64 MiB): a chunk size of 1 made a
    read build one tuple per byte (GBs of RSS) before any I/O; run under a 2 GiB cap."""
    prefix = f"cs-{uuid.uuid4().hex[:8]}"
    spec = f"{server.url}?prefix={prefix}"
    with open_backend(spec) as b:
        raw_put(b, "mirror", b"m" * 87700)
    with redis.Redis(port=server.port) as r:
        r.hset(f"{prefix}:cur:mirror", mapping={"s": size, "n": count, "cs": chunk})
    res = run_limited(
        f"""
        from plinius.backends import open_backend
        from plinius.core.errors import PliniusError
        with open_backend({spec!r}) as b:
            for args in (("mirror",), ("mirror", 0, 4096)):
                try:
                    b.read(*args)
                    print("read")
                except PliniusError as e:
                    print(type(e).__name__, e)
        """,
        limit=2 * GiB,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout
    for line in lines:
        assert line.startswith("BackendError") and "chunk size" in line, line


def test_ranged_read_requests_chunks_in_bounded_windows(server: RedisServer) -> None:
    """A read of many missing chunks stops at the first short one: no list of all chunks, no
    request for every one of them."""
    prefix = f"win-{uuid.uuid4().hex[:8]}"
    spec = f"{server.url}?prefix={prefix}&chunk=4K"
    with open_backend(spec) as b:
        raw_put(b, "blob", b"b" * 5000)
    size = 256 << 20
    with redis.Redis(port=server.port) as r:
        r.hset(f"{prefix}:cur:blob", mapping={"s": size, "n": size // 4096, "cs": 4096})
        with open_backend(spec) as b:
            r.config_resetstat()
            refused(lambda: b.read("blob", 0, size), "missing")
            calls = r.info("commandstats")["cmdstat_getrange"]["calls"]
    assert calls <= 16, calls


# --- break 5: a pointer claiming more than was written ----------------------------------------


def test_oversized_pointer_is_never_staged(server: RedisServer) -> None:
    """8 GiB claimed over an 87 KB mirror (n and cs consistent): a whole read fails (missing
    chunks) without staging 8 GiB, a ranged read stages only its range."""
    prefix = f"big-{uuid.uuid4().hex[:8]}"
    spec = f"{server.url}?prefix={prefix}"
    data = os.urandom(87700)
    with open_backend(spec) as b:
        raw_put(b, "mirror", data)
    size = 8 * GiB
    with redis.Redis(port=server.port) as r:
        r.hset(f"{prefix}:cur:mirror", mapping={"s": size, "n": size >> 20, "cs": 1 << 20})
    with open_backend(spec) as b:
        refused(lambda: b.read("mirror"), "missing")
        refused(lambda: b.map("mirror"), "missing")
        assert b._read_stage.capacity < 16 << 20
        got = b.read("mirror", 4096, 4096)
        assert got is not None and got.size == size and bytes(got.data) == data[4096:8192]
        assert b._read_stage.capacity < 16 << 20
        refused(lambda: b.read("mirror", 0, 4 << 20), "missing")


# --- break 2: a slow drip meets the deadline --------------------------------------------------


def test_slow_drip_on_a_read_hits_the_deadline(hostile: HostileRedis) -> None:
    spec = hostile.marked("p").url("p", f"&deadline={SETUP_DEADLINE}")
    with open_backend(spec) as b:
        raw_put(b, "blob", b"x" * 5000)
        b.deadline = SHORT  # what ?deadline=2 sets: only the read under test has to meet it
        hostile.script("HMGET", Drip(encode([b"0123456789abcdef", b"5000", b"1", b"1048576"])))
        msg = refused(lambda: b.read("blob"), "deadline", f"127.0.0.1:{hostile.port}")
        assert "?deadline=" in msg and "read 'blob'" in msg


def test_slow_drip_on_a_write_hits_the_deadline(hostile: HostileRedis) -> None:
    with open_backend(hostile.url("p", f"&deadline={SETUP_DEADLINE}")) as b:
        b.deadline = SHORT
        hostile.script("EXEC", Drip(encode(["OK"] * 8), interval=0.5))
        refused(lambda: raw_put(b, "blob", b"x" * 5000), "deadline", "save 'blob'")
        b.deadline = SETUP_DEADLINE
        hostile.clear()
        raw_put(b, "blob", b"y" * 5000)  # a new connection, the previous version intact
        assert raw_get(b, "blob") == b"y" * 5000


def test_silent_server_on_open_hits_the_deadline(hostile: HostileRedis) -> None:
    hostile.script("GET", Silent())
    refused(lambda: open_backend(hostile.url("p", f"&deadline={SHORT}")), "deadline", "marker")


def test_slow_drip_verify_exits_2_within_the_deadline(
    hostile: HostileRedis, tmp_path: Path
) -> None:
    """``plinius verify`` against a proxy that sends one byte every 0.5 s: one line, exit 2."""
    key = tmp_path / "k"
    write_key_file(key, generate_key())
    hostile.marked("p")
    hostile.script("HMGET", Drip(encode([b"0123456789abcdef", b"87700", b"1", b"1048576"])))
    t0 = time.monotonic()
    res = plinius(
        "verify", "--backend", hostile.url("p", f"&deadline={SHORT}"), "--key-file", str(key),
        timeout=120,
    )  # fmt: skip
    assert time.monotonic() - t0 < 60
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot read 'mirror'" in res.stderr and "?deadline=" in res.stderr, res.stderr


def test_deadline_option_is_documented_and_defaults_sensibly() -> None:
    from plinius.backends import redis as rb

    assert "deadline" in rb._OPTIONS and "?deadline=" in (rb.__doc__ or "")
    assert rb.DEFAULT_DEADLINE == 300
    with HostileRedis() as h:
        with open_backend(h.url("p")) as b:
            assert b.deadline == 300 and b.timeout == 30
        with open_backend(h.url("p", "&deadline=2.5")) as b:
            assert b.deadline == 2.5 and b.describe().extra["deadline_s"] == 2.5
    with pytest.raises(ConfigError, match="deadline"):
        open_backend("redis://127.0.0.1:1/0?deadline=0")


# --- break 3: a password file that is not text -------------------------------------------------


def test_non_utf8_password_file_is_one_config_error(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xff\xfe")
    msg = refused(
        lambda: open_backend(f"redis://127.0.0.1:1/0?password_file={pw}"), str(pw), kind=ConfigError
    )
    assert "UTF-8" in msg
    key = tmp_path / "k"
    write_key_file(key, generate_key())
    res = plinius(
        "verify", "--backend", f"redis://127.0.0.1:1/0?password_file={pw}", "--key-file", str(key)
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(pw) in res.stderr, res.stderr


# --- the CLI under a 1 GiB address-space cap, against hostile pointers ------------------------


def _cap_address_space() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (GiB, GiB))


@pytest.fixture(scope="module")
def trained(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real mirror on ``server`` (``plinius train --model tiny``), its key and environment."""
    root = tmp_path_factory.mktemp("trained")
    key = root / "owner.key"
    write_key_file(key, generate_key())
    env = {
        **os.environ,
        "PLINIUS_STATE_DIR": str(root / "state"),
        "PLINIUS_PLATFORM_DIR": str(root / "platform"),
    }
    data = root / "data.pld"
    res = plinius("owner", "encrypt-data", "--key-file", str(key), "--out", str(data), env=env)
    assert res.returncode == 0, res.stderr
    spec = f"{server.url}?prefix=mem-{uuid.uuid4().hex[:8]}"
    res = plinius(*train_args(spec, key, data, 2), env=env)
    assert res.returncode == 0, res.stderr
    return {"spec": spec, "key": str(key), "env": env}


@pytest.mark.parametrize(
    ("size", "count", "chunk", "needle"),
    [
        (1 << 31, 1 << 31, 1, "chunk size"),
        (1 << 31, 1, 1 << 31, "chunk size"),
        (8 * GiB, 8 * 1024, 1 << 20, ""),
        (8 * GiB, 2 * 1024 * 1024, 4096, ""),
    ],
    ids=["cs-1", "cs-2GiB", "oversize-1MiB-chunks", "oversize-4KiB-chunks"],
)
def test_verify_under_a_1gib_cap_exits_2_on_a_hostile_pointer(
    server: RedisServer, trained: dict[str, Any], size: int, count: int, chunk: int, needle: str
) -> None:
    """``plinius verify`` with RLIMIT_AS = 1 GiB: one line, exit 2, never killed, never an
    internal error, whatever size the pointer claims."""
    prefix = trained["spec"].split("prefix=")[1]
    cur = f"{prefix}:cur:mirror"

    def verify_capped() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_argv("verify", "--backend", trained["spec"], "--key-file", trained["key"]),
            env=trained["env"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
            preexec_fn=_cap_address_space,
        )

    with redis.Redis(port=server.port) as r:
        good = r.hgetall(cur)
        assert good, "no mirror was trained"
        res = verify_capped()
        assert res.returncode == 0, res.stderr  # the mirror verifies under the cap
        r.hset(cur, mapping={"s": size, "n": count, "cs": chunk})
        try:
            res = verify_capped()
        finally:
            r.hset(cur, mapping=good)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in res.stderr, res.stderr
    assert needle in lines[0], lines[0]


# --- every reply path RedisBackend reads, answered with every kind of nastiness ---------------

PREFIX = "p"
DATA = bytes(range(256)) * 39 + b"tail"  # 10 KB: three 4 KiB chunks
FOREIGN_PENDING = {b"blob/00ff00ff00ff00ff": b"3 plinius-someone-else"}


@dataclass(frozen=True)
class ReplyPath:
    """One reply the backend reads: the command that gets it, the operation that sends it."""

    id: str
    command: str
    op: str  # open | open-new (no marker yet) | save | read | map | delete | blobs | describe
    returns: str = "reply"  # "int": a wrong type is a status, else an integer
    options: str = ""
    db: int = 0
    password: bool = False
    match: Callable[[list[bytes]], bool] | None = None
    setup: Callable[[HostileRedis], None] | None = None
    #: the command comes after a NOSCRIPT error (the EVAL fallback)
    after_noscript: bool = False


def _with_foreign_pending(h: HostileRedis) -> None:
    h.store[f"{PREFIX}:pend".encode()] = dict(FOREIGN_PENDING)


def _replica_lost_after_commit(h: HostileRedis) -> None:
    """WAIT says 1 before the switch, 0 after it: the save reverts the switch."""
    h.script("WAIT", sequence(None, b":0\r\n"))


def _nx(args: list[bytes]) -> bool:
    return b"NX" in args


PATHS = [
    ReplyPath("auth", "AUTH", "open", password=True),
    ReplyPath("setname", "CLIENT SETNAME", "open"),
    ReplyPath("select", "SELECT", "open", db=1),
    ReplyPath("config-policy", "CONFIG GET", "open"),
    ReplyPath("marker", "GET", "open"),
    ReplyPath("scan-prefix", "SCAN", "open-new"),
    ReplyPath("set-marker", "SET", "open-new", match=_nx),
    ReplyPath("sweep-hgetall", "HGETALL", "save"),
    ReplyPath("sweep-client-list", "CLIENT LIST", "save", setup=_with_foreign_pending),
    ReplyPath("clean", "SCRIPT CLEAN", "save", returns="int"),
    ReplyPath("announce-hset", "HSET", "save", returns="int"),
    ReplyPath("multi", "MULTI", "save"),
    ReplyPath("queued", "SET", "save", match=lambda a: not _nx(a)),
    ReplyPath("exec", "EXEC", "save"),
    ReplyPath("wait", "WAIT", "save", "int", "&replicas=1&wait_ms=100"),
    ReplyPath("commit", "SCRIPT COMMIT", "save"),
    ReplyPath("commit-eval", "SCRIPT COMMIT", "save", after_noscript=True),
    ReplyPath(
        "revert",
        "SCRIPT REVERT",
        "save",
        "int",
        "&replicas=1&wait_ms=100",
        setup=_replica_lost_after_commit,
    ),
    ReplyPath("pointer", "HMGET", "read"),
    ReplyPath("last-chunk", "STRLEN", "read", returns="int"),
    ReplyPath("chunk", "GETRANGE", "read"),
    ReplyPath("map-chunk", "GETRANGE", "map"),
    ReplyPath("delete", "SCRIPT DELETE", "delete"),
    ReplyPath("scan-blobs", "SCAN", "blobs"),
    ReplyPath("info", "INFO", "describe"),
    ReplyPath("config-describe", "CONFIG GET", "describe"),
]

#: name -> (action, or a function of the path's ``returns`` giving it); slow ones hit the deadline
NASTIES: dict[str, Any] = {
    "huge-bulk": b"$999999999999\r\n",
    "huge-array": b"*999999999999\r\n",
    "negative-array": b"*-5\r\n",
    "negative-bulk": b"$-7\r\n",
    "nested": b"*1\r\n" * 64 + b"$1\r\nx\r\n",
    "wrong-type": lambda returns: b"+OK\r\n" if returns == "int" else b":1\r\n",
    "error": b"-ERR no such thing\r\n",
    "non-utf8-error": b"-\xff\xfe\x1b[2J\x07 boom\r\n",
    "non-utf8-bulk": b"$6\r\n\xff\xfe\x1b[2J\r\n",
    "int-overflow": b":99999999999999999999999\r\n",
    "not-resp": b"HTTP/1.1 400 Bad Request\r\n",
    "long-line": b"+" + b"x" * (1 << 17) + b"\r\n",
    "partial-then-close": Hangup(b"$10\r\nabc"),
    "slow-drip": Drip(b"+OK\r\n", interval=0.4),
    "silent": Silent(),
}
SLOW = {"slow-drip", "silent"}
#: answers the backend accepts on purpose: CONFIG and CLIENT LIST may be forbidden (managed
#: servers), CLIENT LIST and INFO are free text
HARMLESS = {
    ("config-policy", "error"),
    ("config-policy", "non-utf8-error"),
    ("config-describe", "error"),
    ("config-describe", "non-utf8-error"),
    ("sweep-client-list", "error"),
    ("sweep-client-list", "non-utf8-error"),
    ("sweep-client-list", "non-utf8-bulk"),
    ("info", "non-utf8-bulk"),
}


def hostile_op(
    h: HostileRedis, path: ReplyPath, action: Any, deadline: float, stack: ExitStack
) -> Callable[[], Any]:
    """Set ``h`` up for ``path`` (an open backend holding a blob, unless the path is the open
    itself), script ``action`` for its command, and return the operation that reads it."""
    if path.op != "open-new":
        h.marked(PREFIX)
    # the set-up (open, first save) gets a generous deadline, whatever the machine's speed;
    # the operation under test gets ``deadline``
    setup_deadline = deadline if path.op.startswith("open") else SETUP_DEADLINE
    spec = (
        f"redis://127.0.0.1:{h.port}/{path.db}?prefix={PREFIX}&chunk=4K"
        f"&deadline={setup_deadline}{path.options}"
    )
    if path.after_noscript:
        action = sequence(b"-NOSCRIPT No matching script. Please use EVAL.\r\n", action)
    if path.op.startswith("open"):
        h.script(path.command, action, match=path.match)
        return lambda: stack.enter_context(open_backend(spec))
    if "replicas=" in path.options:
        h.replicas = 1
    b = stack.enter_context(open_backend(spec))
    raw_put(b, "blob", DATA)
    b.deadline = deadline
    if path.setup is not None:
        path.setup(h)
    h.script(path.command, action, match=path.match)
    ops: dict[str, Callable[[], Any]] = {
        "save": lambda: raw_put(b, "blob", DATA[::-1]),
        "read": lambda: b.read("blob"),
        "map": lambda: b.map("blob"),
        "delete": lambda: b.delete("blob"),
        "blobs": b.blobs,
        "describe": b.describe,
    }
    return ops[path.op]


@pytest.mark.parametrize("nasty", list(NASTIES))
@pytest.mark.parametrize("path", PATHS, ids=[p.id for p in PATHS])
def test_every_reply_path_refuses_every_nasty_reply_in_one_line(
    path: ReplyPath, nasty: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line (BackendError), within the deadline's bound, never an internal error; the few
    answers accepted on purpose (HARMLESS) let the operation succeed."""
    if path.password:
        monkeypatch.setenv(PASSWORD_ENV, "hunter2")
    action = NASTIES[nasty]
    if callable(action):
        action = action(path.returns)
    # a nasty that is not slow fails at once: its generous deadline is never what ends it
    deadline = 0.5 if nasty in SLOW else SETUP_DEADLINE
    with HostileRedis() as h, ExitStack() as stack:
        op = hostile_op(h, path, action, deadline, stack)
        if (path.id, nasty) in HARMLESS:
            op()
            return
        msg = refused(op, within=10 * 0.5 if nasty in SLOW else 20)
        assert "hunter2" not in msg
        if nasty in SLOW:
            assert "?deadline=" in msg, msg


def test_wrong_marker_and_foreign_keys_are_named(hostile: HostileRedis) -> None:
    hostile.store[b"p:plinius"] = b"\x1b[2Jnot ours"
    refused(lambda: open_backend(hostile.url("p")), "another format")
    hostile.store.clear()
    hostile.store[b"p:x"] = b"theirs"
    refused(lambda: open_backend(hostile.url("p")), "did not write")


def test_pointer_fields_are_checked_before_they_size_anything(hostile: HostileRedis) -> None:
    """Each field of a hostile pointer: a version that is not a token, sizes that are not
    counts, a chunk size outside ?chunk='s range, a count that does not add up."""
    with open_backend(hostile.marked("p").url("p", "&chunk=4K")) as b:
        raw_put(b, "blob", DATA)
        cur = hostile.store[b"p:cur:blob"]
        assert isinstance(cur, dict)
        good = dict(cur)
        for field, value, needle in [
            (b"v", b"../../etc", "version"),
            (b"v", b"a" * 65, "at most 64"),
            (b"s", b"-1", "not a count"),
            (b"s", b"1e9", "not a count"),
            (b"s", b" 10000", "not a count"),
            (b"n", b"99999999999999999999999", "not a count"),
            (b"s", b"9" * 65, "at most 64"),
            (b"cs", b"1", "chunk size"),
            (b"cs", b"4095", "chunk size"),
            (b"cs", str(128 << 20).encode(), "chunk size"),
            (b"n", b"2", "inconsistent"),
        ]:
            cur.clear()
            cur.update(good)
            cur[field] = value
            refused(lambda: b.read("blob"), needle)
            refused(lambda: b.map("blob"), needle)
        cur.clear()
        cur.update(good)
        assert raw_get(b, "blob") == DATA


def test_pending_entries_and_listed_blobs_are_checked(hostile: HostileRedis) -> None:
    with open_backend(hostile.marked("p").url("p")) as b:
        hostile.store[b"p:pend"] = {b"../x/y": b"1 "}
        refused(lambda: raw_put(b, "blob", b"x"), "pending version")
        hostile.store[b"p:pend"] = {b"blob/00ff": b"\xff\xfe"}
        refused(lambda: raw_put(b, "blob", b"x"), "malformed")
        hostile.store[b"p:pend"] = {}
        hostile.store[b"p:cur:bad:name"] = {b"v": b"00"}
        refused(b.blobs, "not a blob")


def test_a_short_chunk_stops_the_requests(hostile: HostileRedis) -> None:
    """A server that answers chunk 0 short gets no request for chunks past the window."""
    with open_backend(hostile.marked("p").url("p", "&chunk=4K")) as b:
        data = os.urandom(64 * 4096)
        raw_put(b, "blob", data)
        hostile.seen.clear()
        hostile.script("GETRANGE", b"$0\r\n\r\n", times=1)
        refused(lambda: b.read("blob", 0, len(data)), "missing")
        assert hostile.seen.count("GETRANGE") <= 8 + 8  # the window, then the re-check's none


def test_reply_growth_is_bounded_by_bytes_received(hostile: HostileRedis) -> None:
    """A CLIENT LIST of 15 MiB (under the 16 MiB bound) is read; memory follows what arrived."""
    with open_backend(hostile.marked("p").url("p")) as b:
        _with_foreign_pending(hostile)
        body = b"id=1 name=x " + b"y" * (15 << 20)
        hostile.script("CLIENT LIST", encode(body))
        raw_put(b, "blob", b"z")  # the foreign owner is not listed: its version is removed
        assert f"{PREFIX}:pend".encode() in hostile.store
        assert hostile.store[f"{PREFIX}:pend".encode()] == {}
        hostile.script("CLIENT LIST", b"$%d\r\n" % (17 << 20))
        _with_foreign_pending(hostile)
        refused(lambda: raw_put(b, "blob", b"z"), "at most")


# --- the fuzzer --------------------------------------------------------------------------------

QUICK_CASES = int(os.environ.get("PLINIUS_REDIS_FUZZ_QUICK", "300"))
#: ``PLINIUS_FUZZ_CASES=N`` sets the slow run's count (0 or unset: 3000)
SLOW_CASES = int(os.environ.get("PLINIUS_FUZZ_CASES", "0") or "0") or 3000
FUZZ_DEADLINE = 0.5
#: peak RSS the fuzzing child may add over its start (a reply may legitimately be 16 MiB)
RSS_GROWTH = 256 << 20


def random_reply(rng: random.Random, depth: int = 0) -> bytes:
    """Random RESP-ish bytes: valid values of every type, lying lengths, garbage."""
    kind = rng.randrange(14)
    if kind == 0:
        return b"+" + _junk(rng, rng.choice([0, 2, 10])) + b"\r\n"
    if kind == 1:
        return b"-" + _junk(rng, rng.choice([0, 5, 40])) + b"\r\n"
    if kind == 2:
        return (
            b":" + rng.choice([b"0", b"1", b"-1", b"9" * rng.randrange(1, 40), b"x", b""]) + b"\r\n"
        )
    if kind in (3, 4):
        body = _junk(rng, rng.choice([0, 1, 16, 64, 300]))
        n = rng.choice([len(body)] * 4 + [-1, -2, len(body) + 1, len(body) - 1, 1 << 40])
        return b"$%d\r\n" % n + body + b"\r\n"
    if kind in (5, 6) and depth < 4:
        n = rng.choice([0, 1, 2, 4, 4, 5, -1, -3, 1 << 33])
        items = min(max(n, 0), 6)
        return b"*%d\r\n" % n + b"".join(random_reply(rng, depth + 1) for _ in range(items))
    if kind == 7:  # a plausible pointer with random fields
        fields = [rng.choice([b"00ff00ff00ff00ff", b"", b"zz", None]) for _ in range(1)]
        fields += [rng.choice([b"0", b"4096", b"10000", b"3", b"1", str(1 << 40).encode(), None])
                   for _ in range(3)]  # fmt: skip
        return encode(list(fields))
    if kind == 8:
        return b"$%d\r\n" % rng.choice([4096, 10000, 1 << 20]) + _junk(rng, rng.randrange(200))
    if kind == 9:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 10:
        return b"*2\r\n$1\r\n0\r\n*" + str(rng.choice([1, 3, 100000, 200000])).encode() + b"\r\n"
    if kind == 11:
        return b"+OK\r\n" if rng.random() < 0.5 else b"+QUEUED\r\n"
    if kind == 12:
        return rng.choice([b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"$0\r\n\r\n"])
    return b"+OK\r\n" * rng.randrange(1, 4)


def _junk(rng: random.Random, n: int) -> bytes:
    pool = [b"a", b"\xff", b"\r", b"\n", b"\x00", b"\x1b", b"OK", b"$", b"*", b":", b"-", b"0"]
    return b"".join(rng.choice(pool) for _ in range(n))[:n] if n else b""


def random_action(rng: random.Random) -> Any:
    r = rng.random()
    reply = random_reply(rng)
    if r < 0.015:
        return Drip(reply or b"+OK\r\n", interval=0.2)
    if r < 0.025:
        return Silent()
    if r < 0.10:
        return Hangup(reply[: rng.randrange(len(reply) + 1)])
    if r < 0.20:
        return reply + random_reply(rng)  # an extra reply: the next command's is off by one
    return reply


def fuzz_child(cases: int, seed: int) -> None:
    """Run ``cases`` fuzz cases in this process and print one JSON summary line; called in a
    child whose address space is capped."""
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    slowest = 0.0
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    per_path: dict[str, int] = {}
    with HostileRedis() as h:
        pristine: dict[bytes, Any] | None = None
        for i in range(cases):
            path = rng.choice(PATHS)
            per_path[path.id] = per_path.get(path.id, 0) + 1
            h.clear()
            h.replicas = 0
            h.store.clear()
            if pristine is not None:
                h.store.update(copy.deepcopy(pristine))
            action = random_action(rng)
            if rng.random() < 0.3:  # the k-th such command, not the first
                action = sequence(*([None] * rng.randrange(1, 4)), action)
            t0 = time.monotonic()
            try:
                with ExitStack() as stack:
                    op = hostile_op(h, path, action, FUZZ_DEADLINE, stack)
                    t0 = time.monotonic()
                    op()
                outcome = "ok"
            except PliniusError as exc:
                outcome = type(exc).__name__
                msg = str(exc)
                if not msg or "\n" in msg or not all(c.isprintable() for c in msg):
                    failures.append(f"case {i} {path.id}: not one printable line: {msg!r}")
            except Exception as exc:  # the point: anything but a plinius error is a bug
                outcome = f"BUG {type(exc).__name__}"
                failures.append(f"case {i} {path.id} {action!r:.200}: {exc!r:.300}")
            elapsed = time.monotonic() - t0
            slowest = max(slowest, elapsed)
            if elapsed > 10 * FUZZ_DEADLINE + 2:
                failures.append(f"case {i} {path.id}: took {elapsed:.1f} s")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    print(json.dumps({
        "cases": cases, "outcomes": outcomes, "failures": failures[:20],
        "failure_count": len(failures), "slowest_s": round(slowest, 2),
        "rss_growth": peak - baseline, "paths": len(per_path),
    }))  # fmt: skip


#: this module's folder and tests/ (hostile_resp), for the fuzzer's child
TESTS = Path(__file__).resolve().parents[1]


def run_fuzz(cases: int, seed: int) -> dict[str, Any]:
    """The fuzzer in a child capped at 1 GiB of address space (glibc arenas kept to two, so
    threads do not reserve the cap away): an allocation a reply sized fails there, loudly."""
    code = (
        f"import sys; sys.path[:0] = {[str(Path(__file__).resolve().parent), str(TESTS)]!r}\n"
        f"import test_redis_hostile as t; t.fuzz_child({cases}, {seed})\n"
    )
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    res = subprocess.run(
        [sys.executable, "-c", _LIMIT.format(limit=GiB) + code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60 + cases * 2 * FUZZ_DEADLINE,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, (res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    doc: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"\nredis hostile-server fuzz: {doc['cases']} cases over {doc['paths']} reply paths, "
        f"outcomes {dict(sorted(doc['outcomes'].items()))}, slowest {doc['slowest_s']} s, "
        f"peak RSS growth {doc['rss_growth'] >> 20} MiB"
    )
    assert doc["failure_count"] == 0, doc["failures"]
    assert doc["rss_growth"] < RSS_GROWTH, doc
    assert sum(doc["outcomes"].values()) == cases
    return doc


def test_fuzz_hostile_replies_quick() -> None:
    doc = run_fuzz(QUICK_CASES, seed=1)
    assert doc["outcomes"].get("BackendError", 0) > QUICK_CASES // 3


@pytest.mark.slow
def test_fuzz_hostile_replies_many() -> None:
    doc = run_fuzz(SLOW_CASES, seed=2)
    assert doc["outcomes"].get("BackendError", 0) > SLOW_CASES // 3


# --- the two time bounds -------------------------------------------------------------------------


def test_per_call_timeout_is_separate_from_the_deadline(hostile: HostileRedis) -> None:
    """``?timeout=`` bounds one socket call, ``?deadline=`` the operation: a silent server
    fails at the first, a drip that keeps every call short at the second."""
    with open_backend(hostile.marked("p").url("p", "&timeout=1&deadline=600")) as b:
        hostile.script("HMGET", Silent())
        msg = refused(lambda: b.read("blob"), "?timeout=1", within=30)
        assert "deadline" not in msg
        hostile.clear()
        assert b.read("blob") is None  # reconnected


def test_close_cuts_an_operation_in_another_thread_short(hostile: HostileRedis) -> None:
    b = open_backend(hostile.marked("p").url("p", "&deadline=600"))
    hostile.script("HMGET", Silent())
    errors: list[BaseException] = []

    def read() -> None:
        try:
            b.read("blob")
        except BaseException as exc:  # the reader's outcome, checked below
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    b.close()
    t.join(timeout=30)
    assert not t.is_alive() and time.monotonic() - t0 < 10
    assert len(errors) == 1 and isinstance(errors[0], BackendError), errors
    one_line(errors[0])


def test_tls_handshake_with_a_silent_server_is_bounded(hostile: HostileRedis) -> None:
    """``rediss://`` to a server that never answers the handshake: one line, no hang."""
    spec = f"rediss://127.0.0.1:{hostile.port}/0?prefix=p&deadline={SHORT}&verify=none"
    refused(lambda: open_backend(spec), "TLS")


def test_a_server_that_stops_reading_hits_the_deadline(hostile: HostileRedis) -> None:
    """The server takes MULTI and then reads nothing more: the chunks' sends block once the
    socket buffers are full, and the save ends at its deadline."""
    with open_backend(hostile.url("p", f"&deadline={SETUP_DEADLINE}")) as b:
        b.deadline = SHORT
        hostile.script("MULTI", Silent())
        refused(lambda: raw_put(b, "blob", bytes(64 << 20)), "deadline", "save 'blob'")
