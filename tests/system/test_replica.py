"""Replicated mirroring end to end: real trainer processes, real ``redis-server`` replicas.

A replica gets the sealed mirror as committed (same stamp), in its own freshness slot; a wiped
primary restores from it and is re-seeded; a dead replica never stops training; an old replica
copy put back is refused; SIGKILLs mid-copy always leave a mirror to restore.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_runner import cli_argv, train_args
from cli_runner import run_cli as plinius

from plinius.backends.redis_server import RedisServer
from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import PliniusError
from plinius.enclave.counter import MirrorCounters, Stamp, slot_name
from plinius.enclave.platform import SimulatedPlatform


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An owner key and the owner's encrypted dataset, shared."""
    root = tmp_path_factory.mktemp("world")
    key = root / "owner.key"
    write_key_file(key, generate_key())
    env = {**os.environ, "PLINIUS_STATE_DIR": str(root / "state")}
    data = root / "data.pld"
    res = plinius("owner", "encrypt-data", "--key-file", str(key), "--out", str(data), env=env)
    assert res.returncode == 0, res.stderr
    return {"key": str(key), "data": str(data)}


@pytest.fixture
def env(world: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A simulated CPU (and its sealed state) of this test's own: no slot is shared."""
    return {
        **os.environ,
        "PLINIUS_STATE_DIR": str(tmp_path / "state"),
        "PLINIUS_PLATFORM_DIR": str(tmp_path / "platform"),
    }


#: a model whose mirror (~8 MB) takes longer to copy than one step takes: kills land mid-copy
BIG = ("--model", "size-4", "--batch", "1")


def train_argv(world: dict[str, str], spec: str, iterations: int, *extra: str) -> list[str]:
    """``extra`` may name another ``--model`` (the last one given wins)."""
    return cli_argv(*train_args(spec, world["key"], world["data"], iterations, "--json", *extra))


def train(
    world: dict[str, str], env: dict[str, str], spec: str, iterations: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_argv(world, spec, iterations, *extra),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def ok(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def reference(
    world: dict[str, str], env: dict[str, str], shm_dir: Path, n: int, *model: str
) -> str:
    """The digest of an uninterrupted run of ``n`` iterations."""
    res = train(world, env, f"tmpfs:{shm_dir / 'ref'}", n, "--no-mirror", *model)
    return str(ok(res)["weights_sha256"])


def verify(
    world: dict[str, str], env: dict[str, str], spec: str
) -> subprocess.CompletedProcess[str]:
    return plinius("verify", "--backend", spec, "--key-file", world["key"], "--json", env=env)


def wipe(spec: str) -> None:
    """Delete a local backend instance (a reclaimed VM keeps nothing local)."""
    path = Path(spec.split(":", 1)[1].split("?")[0])
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def test_replica_holds_a_verifiable_mirror(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    primary, replica = f"tmpfs:{shm_dir / 'p'}", f"redis:{shm_dir / 'r'}"
    doc = ok(train(world, env, primary, 12, "--replica", replica))
    (rep,) = doc["replica"]["replicas"]
    assert (rep["ok"], rep["failed"], rep["last_version"]) == (12, 0, 12)
    assert rep["bytes"] > 12 * 80_000 and rep["seconds"] > 0
    v = verify(world, env, replica)
    assert v.returncode == 0, v.stderr
    got = json.loads(v.stdout)
    assert got["iteration"] == 12 and got["version"] == 12
    # the same sealed mirror: same size and version as the primary's
    prim = verify(world, env, primary)
    assert prim.returncode == 0, prim.stderr
    assert {k: json.loads(prim.stdout)[k] for k in got} == got


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_wiped_primary_resumes_from_replica_exactly(
    world: dict[str, str], env: dict[str, str], shm_dir: Path, kind: str
) -> None:
    ref = reference(world, env, shm_dir, 12)
    primary = f"{kind}:{shm_dir / ('p.pool' if kind == 'romulus' else 'p')}"
    replica = f"redis:{shm_dir / 'r'}"
    ok(train(world, env, primary, 6, "--replica", replica))
    wipe(primary)
    res = train(world, env, primary, 12, "--replica", replica)
    doc = ok(res)
    assert doc["start_iteration"] == 6 and doc["weights_sha256"] == ref
    assert f"primary mirror at {primary} is missing: restored version 6 from replica" in res.stderr
    assert "0 mirrors since then are lost" in res.stderr
    resumed = res.stderr.index("resumed from the mirror at iteration 6")
    assert resumed < res.stderr.index("is missing: restored")  # the order users saw before
    # the primary was re-seeded with new versions: it verifies and is the newest again
    v = verify(world, env, primary)
    assert v.returncode == 0 and json.loads(v.stdout)["iteration"] == 12, v.stderr
    again = train(world, env, primary, 13, "--replica", replica)
    assert ok(again)["start_iteration"] == 12 and "missing" not in again.stderr


def test_without_replica_a_wiped_primary_is_still_refused(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    primary = f"tmpfs:{shm_dir / 'p'}"
    ok(train(world, env, primary, 4, "--replica", f"redis:{shm_dir / 'r'}"))
    wipe(primary)
    res = train(world, env, primary, 8)
    assert res.returncode == 2 and "the mirror was deleted" in res.stderr


def test_replica_every_r_primary_preferred_then_older_replica(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    ref = reference(world, env, shm_dir, 12)
    primary, replica = f"tmpfs:{shm_dir / 'p'}", f"redis:{shm_dir / 'r'}"
    args = ("--replica", replica, "--replica-every", "4")
    doc = ok(train(world, env, primary, 7, *args))
    assert doc["replica"]["replicas"][0]["last_version"] == 4
    assert doc["replica"]["replicas"][0]["ok"] == 1
    # the primary (version 7) is newer than the replica (version 4): it wins
    res = train(world, env, primary, 9, *args)
    assert ok(res)["start_iteration"] == 7 and "replica" not in res.stderr
    assert json.loads(verify(world, env, replica).stdout)["version"] == 8
    wipe(primary)
    res = train(world, env, primary, 12, *args)
    doc = ok(res)
    assert doc["start_iteration"] == 8 and doc["weights_sha256"] == ref
    assert "restored version 8 from replica" in res.stderr
    assert "1 mirrors since then are lost" in res.stderr


def wait_for_replica_copy(server: RedisServer, proc: subprocess.Popen[str]) -> None:
    """Until the replica server holds a committed copy (an event, not a rate)."""
    deadline = time.monotonic() + 120
    with redis.Redis(host=server.host, port=server.port) as r:
        while time.monotonic() < deadline:
            if r.exists("plinius:cur:mirror"):
                return
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
    raise AssertionError("no replica copy within 120 s")


@pytest.mark.parametrize("max_lag", [None, "1000000"])
def test_replica_server_killed_mid_run(
    world: dict[str, str],
    env: dict[str, str],
    shm_dir: Path,
    tmp_path: Path,
    max_lag: str | None,
) -> None:
    """A replica that stops taking copies stops training once the primary would run more than
    --replica-max-lag versions ahead (default 2): one line, exit 2, the primary intact and
    resumable. A user who raises the bound trains on, warned once per failure streak."""
    server = RedisServer(directory=tmp_path / "srv").start()
    replica = f"redis://127.0.0.1:{server.port}/0"
    lag = ("--replica-max-lag", max_lag) if max_lag else ()
    primary = f"tmpfs:{shm_dir / 'p'}"
    try:
        proc = subprocess.Popen(
            train_argv(world, primary, 400, "--replica", replica, *lag),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        wait_for_replica_copy(server, proc)
        server.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        server.close()
    if max_lag is None:
        assert proc.returncode == 2, err
        (line,) = [x for x in err.splitlines() if x.startswith("plinius train: error:")]
        assert "above --replica-max-lag 2" in line and "newest replica copy" in line
        v = verify(world, env, primary)
        assert v.returncode == 0, v.stderr
        doc = json.loads(v.stdout)
        assert doc["iteration"] < 400
        # the newest copy the replica took is at most 2 versions behind the primary
        slot = slot_name("redis", f"127.0.0.1:{server.port}/0?prefix=plinius", "mirror")
        state = MirrorCounters(SimulatedPlatform(env["PLINIUS_PLATFORM_DIR"])).read(slot)
        assert state is not None and state.committed is not None
        assert doc["version"] - state.committed.version <= 2
        res = train(world, env, primary, doc["iteration"] + 2)  # without the dead replica
        assert ok(res)["start_iteration"] == doc["iteration"]
        return
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["final_iteration"] == 400
    (rep,) = doc["replica"]["replicas"]
    assert rep["ok"] >= 1 and rep["failed"] >= 1 and rep["last_version"] < 400
    assert rep["last_error"] and doc["replica"]["max_lag"] == 1000000
    assert err.count(f"warning: replica {replica}") == 1  # once per failure streak


def test_old_replica_copy_put_back_is_refused(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    primary, replica = f"tmpfs:{shm_dir / 'p'}", f"redis:{shm_dir / 'r'}"
    ok(train(world, env, primary, 4, "--replica", replica))
    shutil.copytree(shm_dir / "r", shm_dir / "old")
    ok(train(world, env, primary, 8, "--replica", replica))
    shutil.rmtree(shm_dir / "r")
    shutil.copytree(shm_dir / "old", shm_dir / "r")  # the replica's server files put back
    v = verify(world, env, replica)
    assert v.returncode == 2 and "rollback refused" in v.stderr
    wipe(primary)
    res = train(world, env, primary, 10, "--replica", replica)
    assert res.returncode == 2
    assert "rollback refused" in res.stderr and "no replica holds a usable mirror" in res.stderr


def test_bad_replica_options(world: dict[str, str], env: dict[str, str], shm_dir: Path) -> None:
    primary = f"tmpfs:{shm_dir / 'p'}"
    res = train(world, env, primary, 2, "--replica", primary)
    assert res.returncode == 2 and "same place as the primary" in res.stderr
    res = train(world, env, primary, 2, "--replica", "nocolon")
    assert res.returncode == 2 and "malformed backend spec" in res.stderr
    res = train(world, env, primary, 2, "--replica-every", "0")
    assert res.returncode == 2
    res = train(world, env, primary, 2, "--no-mirror", "--replica", f"tmpfs:{shm_dir / 'r'}")
    assert res.returncode == 2 and "--no-mirror" in res.stderr


def kill_mid_copy(
    world: dict[str, str],
    env: dict[str, str],
    argv: list[str],
    counters: MirrorCounters,
    slot: str,
    after: int,
) -> tuple[int, str]:
    """Start the trainer and SIGKILL it while a replica copy above version ``after`` is in
    flight (the replica slot's record shows it pending) and an earlier one is committed;
    (that version, its stderr)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    state = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                state = counters.read(slot)
            except PliniusError:  # read while the record was being rewritten
                continue
            if (
                state is not None
                and state.committed is not None
                and state.pending is not None
                and state.pending.version > after
            ):
                proc.kill()
                break
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, err
    assert state is not None and state.pending is not None, err
    return state.pending.version, err


def kill_loop(world: dict[str, str], env: dict[str, str], shm_dir: Path, rounds: int) -> None:
    """SIGKILL the trainer mid replica copy (between the replica slot's begin and commit) again
    and again, wiping the primary after every second kill: every restart restores a mirror,
    and the run still ends exactly."""
    final = 60
    ref = reference(world, env, shm_dir, final, *BIG)
    primary, replica = f"tmpfs:{shm_dir / 'p'}", f"redis:{shm_dir / 'r'}"
    argv = train_argv(world, primary, final, *BIG, "--replica", replica, "--async-mirror")
    counters = MirrorCounters(SimulatedPlatform(env["PLINIUS_PLATFORM_DIR"]))
    slot = slot_name("redis", f"{shm_dir / 'r'}?prefix=plinius", "mirror")
    version = wiped = 0
    for i in range(rounds):
        version, err = kill_mid_copy(world, env, argv, counters, slot, version)
        if i:
            assert "resumed from the mirror" in err, err
        if i % 2:
            wipe(primary)  # a replica copy committed before: the restart must find a mirror
            wiped += 1
    res = train(world, env, primary, final, *BIG, "--replica", replica, "--async-mirror")
    doc = ok(res)
    assert "resumed from the mirror" in res.stderr and doc["weights_sha256"] == ref
    assert wiped == rounds // 2


def test_sigkill_mid_replica_copy_restores(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    kill_loop(world, env, shm_dir, 3)


@pytest.mark.slow
def test_sigkill_mid_replica_copy_many_times(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    kill_loop(world, env, shm_dir, 12)


def test_bench_overhead_rows_with_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    from plinius.lab.bench.iteration import replica_overhead

    row = replica_overhead("batch", 2).as_dict()
    assert row["replica"].startswith("redis-server on loopback") and not row["not_run"]
    assert row["no_mirror_s"] > 0 and row["sync_s"] > 0 and row["async_s"] > 0
    assert row["async_overhead"] == row["async_s"] / row["no_mirror_s"] - 1
    monkeypatch.delenv("PLINIUS_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    row = replica_overhead("batch", 2).as_dict()
    assert "redis-server not found" in row["not_run"]
    assert row["sync_overhead"] is None and row["async_overhead"] is None


# --- review findings: a shared or abandoned replica is never another run's mirror -----------------


def test_shared_replica_never_restores_another_jobs_run(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    """Jobs A and B (same model, key and data) share one replica. A's present primary wins
    even when B copied a newer version; with A's primary wiped, B's copy is refused (it is not
    the run the platform recorded for A's primary) instead of silently resuming B's model."""
    a, b, replica = f"tmpfs:{shm_dir / 'a'}", f"tmpfs:{shm_dir / 'b'}", f"redis:{shm_dir / 'r'}"
    doc_a = ok(train(world, env, a, 6, "--replica", replica))
    ok(train(world, env, b, 12, "--replica", replica))  # the replica now holds B's version 12
    more = train(world, env, a, 8, "--replica", replica)
    doc_more = ok(more)
    assert doc_more["start_iteration"] == 6 and "restored version" not in more.stderr
    assert doc_more["weights_sha256"] != doc_a["weights_sha256"]
    # B's later copy is on the replica again; A's primary is wiped: refused, not B's model
    ok(train(world, env, b, 14, "--replica", replica))
    wipe(a)
    res = train(world, env, a, 10, "--replica", replica)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "another run" in res.stderr and "no replica holds a usable mirror" in res.stderr


def test_replica_spelled_twice_is_one_storage(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    """Slot identity comes from the backend: a replica naming the primary's storage through
    another spelling is refused before training."""
    primary = f"tmpfs:{shm_dir / 'p'}"
    res = train(world, env, primary, 2, "--replica", f"tmpfs:{shm_dir}/./p/")
    assert res.returncode == 2 and "same" in res.stderr, res.stderr


def test_redis_slot_identity_is_server_db_prefix() -> None:
    """One freshness slot per server, db and prefix however the spec spells it (default port
    and db, redis vs rediss), never the caller's working directory."""
    from plinius.backends import open_backend

    with RedisServer() as srv:
        port = srv.port
        parts = {}
        for spec in (
            f"redis://127.0.0.1:{port}?prefix=j1",
            f"redis://127.0.0.1:{port}/0?prefix=j1",
            f"redis://127.0.0.1:{port}/0?prefix=j2",
            f"redis://127.0.0.1:{port}/1?prefix=j1",
        ):
            with open_backend(spec) as b:
                parts[spec] = b.slot_parts()
        cwd = os.getcwd()
        try:
            os.chdir("/")
            with open_backend(f"redis://127.0.0.1:{port}/0?prefix=j1") as b:
                elsewhere = b.slot_parts()
        finally:
            os.chdir(cwd)
    values = list(parts.values())
    assert values[0] == values[1] == elsewhere
    assert len({values[1], values[2], values[3]}) == 3
    assert values[0] == ("redis", f"127.0.0.1:{port}/0?prefix=j1")


def test_secret_in_replica_spec_stops_before_training_and_is_not_echoed(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    res = train(
        world, env, f"tmpfs:{shm_dir / 'p'}", 2,
        "--replica", f"redis:{shm_dir / 'r'}?password=hunter2",
    )  # fmt: skip
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "hunter2" not in res.stderr + res.stdout
    assert not (shm_dir / "p").exists() or not any((shm_dir / "p").glob("mirror*"))


# --- review 22: the rollback bound holds by construction ---------------------------------------


def refuse_writes(server: RedisServer, on: bool = True) -> None:
    """The attacker owns the replica server: every write fails with NOREPLICAS."""
    with redis.Redis(host=server.host, port=server.port) as r:
        r.config_set("min-replicas-to-write", 1 if on else 0)


def test_failing_replica_stops_training_within_the_bound(
    world: dict[str, str], env: dict[str, str], shm_dir: Path, tmp_path: Path
) -> None:
    """Break 1: a replica made to refuse every copy no longer lets training pile up mirrors it
    does not hold; a deleted primary then loses at most --replica-max-lag (2) mirrors."""
    primary = f"tmpfs:{shm_dir / 'p'}"
    with RedisServer(directory=tmp_path / "srv") as server:
        replica = f"redis://127.0.0.1:{server.port}/0"
        ok(train(world, env, primary, 3, "--replica", replica))
        refuse_writes(server)
        res = train(world, env, primary, 40, "--replica", replica)
        assert res.returncode == 2, res.stderr
        assert "above --replica-max-lag 2" in res.stderr and "NOREPLICAS" in res.stderr
        assert json.loads(verify(world, env, primary).stdout)["version"] == 5
        wipe(primary)
        refuse_writes(server, False)
        res = train(world, env, primary, 8, "--replica", replica)
        assert ok(res)["start_iteration"] == 3
        assert "restored version 3 from replica" in res.stderr
        assert "2 mirrors since then are lost" in res.stderr


def test_restore_refuses_a_loss_beyond_the_bound_unless_named(
    world: dict[str, str], env: dict[str, str], shm_dir: Path, tmp_path: Path
) -> None:
    """Break 1, restore side: a primary recorded at version 40 and a replica copy at 3 (the
    user had raised the bound) is refused naming both versions; only --accept-replica-loss
    naming at least the 37 lost mirrors restores it."""
    primary = f"tmpfs:{shm_dir / 'p'}"
    with RedisServer(directory=tmp_path / "srv") as server:
        replica = f"redis://127.0.0.1:{server.port}/0"
        ok(train(world, env, primary, 3, "--replica", replica))
        refuse_writes(server)
        ok(train(world, env, primary, 40, "--replica", replica, "--replica-max-lag", "100"))
        wipe(primary)
        refuse_writes(server, False)
        res = train(world, env, primary, 44, "--replica", replica)
        assert res.returncode == 2
        (line,) = [x for x in res.stderr.splitlines() if "error:" in x]
        assert "recorded version 40" in line and "replica copy is version 3" in line
        assert "more than --replica-max-lag 2" in line and "--accept-replica-loss 37" in line
        res = train(world, env, primary, 44, "--replica", replica, "--accept-replica-loss", "36")
        assert res.returncode == 2 and "--accept-replica-loss 37" in res.stderr
        res = train(world, env, primary, 44, "--replica", replica, "--accept-replica-loss", "37")
        assert ok(res)["start_iteration"] == 3
        assert "37 mirrors since then are lost (accepted" in res.stderr


@pytest.mark.parametrize("third", [False, True])
def test_floor_counts_a_replica_that_does_not_open(
    world: dict[str, str], env: dict[str, str], shm_dir: Path, tmp_path: Path, third: bool
) -> None:
    """Break 2: redis copies made to fail after version 3, the ssd replica holds version 20;
    the primary is deleted and the ssd directory re-pointed (a symlink: it no longer opens).
    Its slot's record still sets the floor: the redis copy at 3 is refused, naming the ssd
    replica. With a third replica whose copy the attacker deleted, the same."""
    primary = f"tmpfs:{shm_dir / 'p'}"
    ssd_dir = tmp_path / "ssd"
    with RedisServer(directory=tmp_path / "srv") as server:
        rspec = f"redis://127.0.0.1:{server.port}/0"
        replicas = ["--replica", rspec, "--replica", f"ssd:{ssd_dir}"]
        if third:
            replicas += ["--replica", f"tmpfs:{shm_dir / 't'}"]
        ok(train(world, env, primary, 3, *replicas))
        refuse_writes(server)
        ok(train(world, env, primary, 20, *replicas))
        refuse_writes(server, False)
        wipe(primary)
        if third:
            (shm_dir / "t" / "mirror").unlink()
        shutil.rmtree(ssd_dir)
        empty = tmp_path / "empty"
        empty.mkdir()
        ssd_dir.symlink_to(empty)
        res = train(world, env, primary, 24, *replicas)
        assert res.returncode == 2, res.stderr
        assert f"replica ssd:{ssd_dir} is unavailable" in res.stderr
        (line,) = [x for x in res.stderr.splitlines() if "error:" in x]
        assert "recorded version 20" in line and "replica copy is version 3" in line
        held = [f"ssd:{ssd_dir}"] + ([f"tmpfs:{shm_dir / 't'}"] if third else [])
        assert any(f"version 20 was committed on replica {h} (bring it back)" in line for h in held)
        assert "restored version 3 from replica" not in res.stderr


def test_saves_cut_short_by_crashes_do_not_lock_training_out(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    """Review 22 follow-up: two saves killed between the platform's begin and commit burn
    versions 11 and 12; the replica holds everything committed (10), so the next save (13) is
    within the bound: training resumes instead of stopping at every restart."""
    primary, replica = f"tmpfs:{shm_dir / 'p'}", f"tmpfs:{shm_dir / 'r'}"
    ok(train(world, env, primary, 10, "--replica", replica))
    counters = MirrorCounters(SimulatedPlatform(env["PLINIUS_PLATFORM_DIR"]))
    slot = slot_name("tmpfs", str(shm_dir / "p"), "mirror")
    for version in (11, 12):  # what a SIGKILL inside the save leaves: a pending stamp
        state = counters.read(slot)
        assert state is not None and state.committed is not None
        run = state.committed.run_id
        counters.begin(slot, Stamp(run, version, os.urandom(16)), state.committed_extent)
        counters.check(slot, primary, state.committed, settle=True)  # the restart settles
    res = train(world, env, primary, 14, "--replica", replica)
    doc = ok(res)
    assert doc["start_iteration"] == 10 and doc["replica"]["replicas"][0]["last_version"] == 16
