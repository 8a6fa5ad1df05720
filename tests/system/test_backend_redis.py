"""The shared contract and the Redis specifics on real ``redis-server`` processes (no mocks).

Every server here is a throw-away process on a free loopback port with its own directory
(:class:`plinius.backends.redis_server.RedisServer`): a primary with AOF ``always`` for the
contract, and dedicated ones where a test kills, replicates or misconfigures a server.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from cli_runner import run_cli, train_args

from plinius.backends import open_backend
from plinius.backends.redis import PASSWORD_ENV, RedisBackend
from plinius.backends.redis_server import RedisServer, free_port
from plinius.backends.testing import (
    FP,
    KEY,
    SAVING_CHILD,
    BackendContract,
    model_records,
    raw_get,
    raw_put,
)
from plinius.core.crypto import generate_key, make_engine, write_key_file
from plinius.core.errors import BackendError, BackendLockedError, ConfigError, NotFoundError
from plinius.format.mirror import MirrorStore


@pytest.fixture(autouse=True)
def _no_password_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers here have no password unless a test sets one (children inherit this)."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True, appendfsync="always") as srv:
        yield srv


def fresh(srv: RedisServer, options: str = "") -> str:
    """A spec on ``srv`` under a prefix no other test uses."""
    return f"{srv.url}?prefix=t-{uuid.uuid4().hex[:12]}{options}"


def server_keys(srv: RedisServer, pattern: str) -> list[bytes]:
    with redis.Redis(port=srv.port, password=srv.password) as r:
        return sorted(r.keys(pattern))


class TestRedis(BackendContract):
    """64 KiB chunks: the suite's blobs span many chunks, its ranges cross their boundaries."""

    @pytest.fixture
    def spec(self, server: RedisServer) -> str:
        return fresh(server, "&chunk=64K")


@pytest.mark.parametrize("chunk", ["4K", "1M"])
def test_round_trips_around_chunk_boundaries(server: RedisServer, chunk: str) -> None:
    cs = 4096 if chunk == "4K" else 1 << 20
    with open_backend(fresh(server, f"&chunk={chunk}")) as b:
        for size in (0, 1, cs - 1, cs, cs + 1, 3 * cs + 7):
            data = random.Random(size).randbytes(size)
            raw_put(b, "blob", data)
            assert raw_get(b, "blob") == data
            for off, n in ((0, size), (size // 3, size // 3), (max(size - 1, 0), min(size, 1))):
                got = b.read("blob", off, n)
                assert got is not None and bytes(got.data) == data[off : off + n]


# --- layout, ranged reads, leftovers -------------------------------------------------------------


def test_ranged_read_fetches_only_its_chunks(server: RedisServer) -> None:
    spec = fresh(server, "&chunk=4K")
    data = random.Random(3).randbytes(10 * 4096 + 5)
    with open_backend(spec) as b, redis.Redis(port=server.port) as r:
        raw_put(b, "blob", data)
        r.config_resetstat()
        got = b.read("blob", 4096 + 100, 4096)  # spans chunks 1 and 2 only
        assert got is not None and bytes(got.data) == data[4196 : 4196 + 4096]
        assert got.size == len(data)
        calls = r.info("commandstats")["cmdstat_getrange"]["calls"]
        assert calls == 2
        with pytest.raises(BackendError, match="outside"):
            b.read("blob", len(data) - 1, 2)


def test_map_survives_reads_of_other_blobs(server: RedisServer) -> None:
    with open_backend(fresh(server)) as b:
        raw_put(b, "records.x", b"r" * 5000)
        raw_put(b, "mirror", b"m" * 7000)
        mapped = b.map("records.x")
        assert mapped is not None
        assert raw_get(b, "mirror") == b"m" * 7000
        assert bytes(mapped) == b"r" * 5000
        with pytest.raises(TypeError):
            mapped[0] = 1  # type: ignore[index]


def test_old_versions_are_removed(server: RedisServer) -> None:
    spec = fresh(server, "&chunk=4K")
    prefix = spec.split("prefix=")[1].split("&")[0]
    with open_backend(spec) as b:
        for i in range(3):
            raw_put(b, "blob", bytes([i]) * 9000)
        assert len(server_keys(server, f"{prefix}:c:*")) == 3  # one version of 3 chunks
        b.delete("blob")
        assert server_keys(server, f"{prefix}:*") == [f"{prefix}:plinius".encode()]


def test_killed_clients_leave_nothing_after_next_save(server: RedisServer) -> None:
    """Chunks of versions a SIGKILLed client never committed go at the next save."""
    spec = fresh(server, "&chunk=4K")
    prefix = spec.split("prefix=")[1].split("&")[0]
    child = textwrap.dedent(
        f"""
        from plinius.backends import open_backend
        b = open_backend({spec!r})
        print("ready", flush=True)
        while True:
            with b.begin_write("blob", 4 << 20) as t:
                t.view(0, 4 << 20)[:] = bytes(4 << 20)
                t.commit()
        """
    )
    rng = random.Random(5)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    with open_backend(spec) as b:
        raw_put(b, "blob", b"x" * 5000)
        assert raw_get(b, "blob") == b"x" * 5000
    assert len(server_keys(server, f"{prefix}:c:*")) == 2
    assert server_keys(server, f"{prefix}:pend") == []


# --- the server killed mid-save ------------------------------------------------------------------


def kill_server_mid_save(rounds: int, seed: int) -> None:
    """SIGKILL the server while a child saves; after a restart from the AOF the previous or
    the new mirror loads, complete, never a torn one."""
    with RedisServer(appendonly=True, appendfsync="always") as srv:
        spec = f"{srv.url}?prefix=kill"
        rng = random.Random(seed)
        last = 0
        for _ in range(rounds):
            proc = subprocess.Popen(
                [sys.executable, "-c", SAVING_CHILD, spec], stdout=subprocess.PIPE, text=True
            )
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.4))
            srv.kill()
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
            printed = [int(x) for x in out.split()]
            if printed:
                last = max(last, printed[-1])
            srv.start()
            with open_backend(spec) as b:
                got = MirrorStore(b, make_engine(KEY), FP).load()
            if got is None:
                assert last == 0
                continue
            v = got.info.version
            assert v in (last, last + 1), (v, last)
            last = v
            for r in model_records(v, scale=int(v % 7) * 40 + 1):
                assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)
        assert last > 0, "no save ever committed"


def test_server_killed_mid_save() -> None:
    kill_server_mid_save(rounds=3, seed=1)


@pytest.mark.slow
def test_server_killed_mid_save_many_times() -> None:
    kill_server_mid_save(rounds=int(os.environ.get("PLINIUS_KILLS", "20")), seed=2)


# --- replicas ------------------------------------------------------------------------------------


def test_replicas_wait_and_a_dead_replica_keeps_the_previous_mirror() -> None:
    with RedisServer() as primary, RedisServer(replica_of=primary) as replica:
        spec = f"{primary.url}?prefix=rep&replicas=1&wait_ms=500"
        with open_backend(spec) as b:
            store = MirrorStore(b, make_engine(KEY), FP)
            store.save(model_records(1), version=1)
            info = b.describe()
            assert info.extra["connected_replicas"] == 1
            assert any("WAIT 1 500" in n for n in info.notes)
            # the replica holds the mirror too
            with open_backend(f"{replica.url}?prefix=rep&create=never") as rb:
                got = MirrorStore(rb, make_engine(KEY), FP).load()
                assert got is not None and got.info.version == 1
            replica.kill()
            t0 = time.monotonic()
            with pytest.raises(BackendError, match=r"0 of 1 replica\(s\) acknowledged"):
                store.save(model_records(2), version=2)
            assert time.monotonic() - t0 < 5
            got = store.load()
            assert got is not None and got.info.version == 1
        assert len(server_keys(primary, "rep:c:*")) == 1  # the failed version is gone
        assert server_keys(primary, "rep:pend") == []


# --- a private server in a directory (default instances) ----------------------------------------


def test_private_server_in_a_directory(shm_dir: Path) -> None:
    spec = f"redis:{shm_dir / 'r'}?prefix=p"
    with open_backend(spec) as b:
        raw_put(b, "a", b"kept")
        info = b.describe()
        assert info.durability == "process-crash"  # the AOF is on /dev/shm
        assert any("private redis-server" in n for n in info.notes)
        with pytest.raises(BackendLockedError, match="in use by pid"):
            open_backend(spec)
    with open_backend(spec) as b:
        assert raw_get(b, "a") == b"kept"
    with pytest.raises(NotFoundError):
        open_backend(f"redis:{shm_dir / 'none'}?create=never")


def test_private_server_dies_with_a_killed_owner(shm_dir: Path) -> None:
    spec = f"redis:{shm_dir / 'r'}?prefix=p"
    child = textwrap.dedent(
        f"""
        import os
        from plinius.backends import open_backend
        from plinius.backends.testing import raw_put
        b = open_backend({spec!r})
        raw_put(b, "a", b"saved")
        print(b._local.server.pid, flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout
    pid = int(out.split()[0])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (
        not Path(f"/proc/{pid}/cmdline").exists()
        or b"redis" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    with open_backend(spec) as b:
        assert raw_get(b, "a") == b"saved"


# --- bad input -----------------------------------------------------------------------------------


def test_foreign_prefix_refused(server: RedisServer) -> None:
    with redis.Redis(port=server.port) as r:
        r.set("theirs:session:1", b"someone else's")
    with pytest.raises(BackendError, match=r"did not write.*another \?prefix="):
        open_backend(f"{server.url}?prefix=theirs")
    assert server_keys(server, "theirs:*") == [b"theirs:session:1"]


def test_nothing_to_read_with_create_never(server: RedisServer) -> None:
    with pytest.raises(NotFoundError, match="no plinius data"):
        open_backend(fresh(server, "&create=never"))


def test_password_from_env_or_file_never_in_spec_or_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    with RedisServer(password=secret) as srv:
        spec = f"{srv.url}?prefix=pw"
        with pytest.raises(BackendError, match=r"refused the credentials.*PLINIUS_REDIS_PASSWORD"):
            open_backend(spec)
        wrong = "wrong-" + uuid.uuid4().hex
        monkeypatch.setenv(PASSWORD_ENV, wrong)
        with pytest.raises(BackendError, match="refused the credentials") as exc:
            open_backend(spec)
        assert wrong not in str(exc.value)
        monkeypatch.setenv(PASSWORD_ENV, secret)
        with open_backend(spec) as b:
            raw_put(b, "a", b"ok")
            info = b.describe()
            assert secret not in repr(info.as_dict()) and secret not in b.spec
        monkeypatch.delenv(PASSWORD_ENV)
        pw = tmp_path / "pw"
        pw.write_text(secret + "\n")
        with open_backend(f"{spec}&password_file={pw}") as b:
            assert raw_get(b, "a") == b"ok"
        with pytest.raises(ConfigError, match="PLINIUS_REDIS_PASSWORD") as exc2:
            open_backend(f"{spec}&password={secret}")
        assert secret not in str(exc2.value)
        with pytest.raises(ConfigError, match="password"):
            open_backend(f"redis://:{secret}@127.0.0.1:{srv.port}/0")


def test_unreachable_server_is_one_clear_line() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BackendError) as exc:
        open_backend(f"redis://127.0.0.1:{port}/0?prefix=x")
    msg = str(exc.value)
    assert f"127.0.0.1:{port}" in msg and "redis-server" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (the ``openssl`` tool)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_server_with_its_ca_and_a_wrong_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    with RedisServer(tls_cert=cert, tls_key=key) as srv:
        assert srv.url.startswith("rediss://")
        with open_backend(f"{srv.url}?prefix=tls&ca={cert}") as b:
            store = MirrorStore(b, make_engine(KEY), FP)
            store.save(model_records(1, scale=40), version=1)
            got = store.load()
            assert got is not None and got.info.version == 1
            assert b.describe().extra["tls"] is True
        with pytest.raises(BackendError, match=r"TLS failed.*certificate verify failed"):
            open_backend(f"{srv.url}?prefix=tls&ca={other}")
        with pytest.raises(BackendError, match=r"if it speaks TLS.*use rediss://"):
            open_backend(f"redis://127.0.0.1:{srv.port}/0?prefix=tls&timeout=1")


def test_tls_to_a_plain_server_fails_clearly(server: RedisServer) -> None:
    with pytest.raises(BackendError, match="TLS failed"):
        open_backend(f"rediss://127.0.0.1:{server.port}/0?prefix=x&timeout=1")


def test_evicting_server_refused_unless_allowed() -> None:
    with RedisServer(maxmemory_policy="allkeys-lru") as srv:
        with pytest.raises(BackendError, match=r"allkeys-lru.*allow_eviction=1"):
            open_backend(f"{srv.url}?prefix=ev")
        with open_backend(f"{srv.url}?prefix=ev&allow_eviction=1") as b:
            raw_put(b, "a", b"1")
            assert any(n.startswith("WARNING: maxmemory-policy") for n in b.describe().notes)


def test_durability_follows_the_server_configuration() -> None:
    cases = [
        ({"appendonly": True, "appendfsync": "always"}, "power-fail", None),
        ({"appendonly": True, "appendfsync": "everysec"}, "process-crash", "power failure"),
        ({"appendonly": False, "save": "3600 1"}, "none", "RDB snapshots only"),
        ({"appendonly": False, "save": ""}, "none", "persistence is off"),
    ]
    for config, durability, note in cases:
        with RedisServer(**config) as srv, open_backend(f"{srv.url}?prefix=d") as b:  # type: ignore[arg-type]
            raw_put(b, "a", b"works")
            info = b.describe()
            assert info.durability == durability, config
            assert info.emulated is False and info.byte_addressable is False
            assert "loopback" in info.device and "7." in info.extra["version"]
            if note is None:
                assert not any(n.startswith("WARNING") for n in info.notes)
            else:
                assert any(note in n for n in info.notes), info.notes


def test_bad_options_refused(server: RedisServer) -> None:
    for options, match in [
        ("&chunk=12", "chunk"),
        ("&wait_ms=0", "wait_ms"),
        ("&bogus=1", "bogus"),
        ("&create=always", "create"),
    ]:
        with pytest.raises(ConfigError, match=match):
            open_backend(fresh(server, options))
    with pytest.raises(ConfigError, match="prefix"):
        open_backend(f"{server.url}?prefix=a*b")


def test_class_facts() -> None:
    assert RedisBackend.locality == "remote" and RedisBackend.ranged_read
    from plinius.lab.profiles import fio_root

    assert fio_root("redis") is None and not RedisBackend.byte_addressable


def test_missing_redis_py_gives_the_install_hint() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from plinius.backends import backend_class\n"
        "try:\n    backend_class('redis')\nexcept Exception as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'plinius[redis]'" in out


@pytest.mark.parametrize(
    ("field", "value"), [("cs", b"0"), ("s", b"abc"), ("v", b"\xff\xfe"), ("n", b"99")]
)
def test_malformed_pointer_is_a_one_line_backend_error(
    server: RedisServer, field: str, value: bytes
) -> None:
    """The server is untrusted: garbage in a blob's pointer is a BackendError, never a
    ZeroDivisionError/ValueError/UnicodeDecodeError escaping as an internal error."""
    prefix = f"bad{field}"
    spec = f"{server.url}?prefix={prefix}"
    with open_backend(spec) as b:
        raw_put(b, "blob", b"x" * 5000)
    r = redis.Redis(host=server.host, port=server.port)
    r.hset(f"{prefix}:cur:blob", field, value)
    with open_backend(spec) as b, pytest.raises(BackendError, match="malformed data"):
        b.read("blob")


def test_pointer_claiming_more_than_memory_is_refused_before_allocating(
    server: RedisServer,
) -> None:
    """A hostile server's pointer may claim any size (consistent with its chunk count): the
    read is refused in one line instead of staging that many bytes."""
    spec = f"{server.url}?prefix=huge"
    with open_backend(spec) as b:
        raw_put(b, "blob", b"x" * 5000)
    r = redis.Redis(host=server.host, port=server.port)
    size = 1 << 50
    r.hset("huge:cur:blob", mapping={"s": size, "n": size // (1 << 20), "cs": 1 << 20})
    with open_backend(spec) as b, pytest.raises(BackendError, match="more than this machine"):
        b.read("blob")


def test_private_server_refuses_a_planted_data_symlink(shm_dir: Path, tmp_path: Path) -> None:
    """The directory is attacker-writable storage: a symlinked ``data`` would send the server's
    AOF anywhere; it is refused, and nothing is written where it points."""
    loc = shm_dir / "loc"
    loc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (loc / "data").symlink_to(elsewhere)
    with pytest.raises(BackendError, match="symbolic link"):
        open_backend(f"redis:{loc}")
    assert list(elsewhere.iterdir()) == []


def test_private_server_log_is_not_in_attacker_storage(shm_dir: Path, tmp_path: Path) -> None:
    """A planted ``redis.log`` link in the server's directory is never appended to: the log
    lives in a private directory of plinius's own."""
    loc = shm_dir / "loc"
    (loc / "data").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (loc / "data" / "redis.log").symlink_to(victim)
    with open_backend(f"redis:{loc}") as b:
        raw_put(b, "blob", b"x" * 100)
    assert victim.read_text() == "precious\n"


def test_pid_file_never_kills_a_server_that_is_not_ours(shm_dir: Path) -> None:
    """``server.pid`` is attacker-writable: naming the user's own redis-server (or another
    job's) must not get it killed."""
    with RedisServer() as other:
        loc = shm_dir / "loc"
        loc.mkdir()
        (loc / "server.pid").write_text(f"{other.pid}\n")
        with open_backend(f"redis:{loc}") as b:
            raw_put(b, "blob", b"y" * 10)
        assert other.proc is not None and other.proc.poll() is None


# --- nothing left in the temp directory ----------------------------------------------------------


def _redis_temp_entries(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("plinius-redis-"))


def test_plinius_backends_leaves_no_redis_temp_dirs(tmp_path: Path) -> None:
    """Each private server of ``plinius backends`` (redis and rediss) used to leave a
    ``plinius-redis-log-*`` directory behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    res = run_cli("backends", "--json", env={**os.environ, "TMPDIR": str(tmp)})
    assert res.returncode == 0, res.stderr
    assert '"redis"' in res.stdout
    assert _redis_temp_entries(tmp) == []


def test_private_redis_train_leaves_no_redis_temp_dirs(tmp_path: Path, shm_dir: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "PLINIUS_STATE_DIR": str(tmp_path / "state"),
        "PLINIUS_PLATFORM_DIR": str(tmp_path / "platform"),
    }
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    data = tmp_path / "data.pld"
    res = run_cli("owner", "encrypt-data", "--key-file", str(key), "--out", str(data), env=env)
    assert res.returncode == 0, res.stderr
    spec = f"redis:{shm_dir / 'r'}?prefix=p"
    res = run_cli(*train_args(spec, key, data, 2), env=env)
    assert res.returncode == 0, res.stderr
    res = run_cli("verify", "--backend", spec, "--key-file", str(key), env=env)
    assert res.returncode == 0, res.stderr
    assert _redis_temp_entries(tmp) == []


def test_servers_not_closed_are_cleaned_up_at_exit(tmp_path: Path) -> None:
    """A throw-away server whose owner forgets ``close()`` (or a backend never closed) is
    stopped and its files removed when the owning process exits normally; a forked child
    exiting does not touch its parent's server."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    child = textwrap.dedent(
        f"""
        import os
        from plinius.backends import open_backend
        from plinius.backends.redis_server import RedisServer
        srv = RedisServer().start()
        b = open_backend({f"redis:{tmp_path / 'r'}"!r})
        if os.fork() == 0:
            import sys; sys.exit(0)  # a normal exit of a forked child
        os.wait()
        assert srv.proc.poll() is None, "the child stopped its parent's server"
        print(srv.pid, b._local.server.pid, flush=True)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    pids = [int(x) for x in res.stdout.split()]
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    for p in pids:
        cmd = Path(f"/proc/{p}/cmdline")
        assert not cmd.exists() or b"redis" not in cmd.read_bytes()
    assert _redis_temp_entries(tmp) == []
