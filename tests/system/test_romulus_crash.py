"""Crash consistency of the Romulus engine, tested for real.

* Process kills: a forked child saves mirrors of random sizes through the ``romulus`` backend
  and is SIGKILLed at random moments; after recovery the blob is exactly the last or the next
  committed version (its content is a function of its version number), never a mix.
* Crash points: the engine's test hook exits at the N-th flush or fence; the walk covers every
  point of two consecutive transactions (one on the logged path, one overflowing to a full copy),
  of pool creation and of recovery itself.
* Background commit: the same walks with the copy to back on the copier thread, and with the
  copier held until the next transaction (or close) waits for it, so the crash points in the
  copy land during that wait; after recovery main and back are equal. Real SIGKILLs land while
  the copier sleeps half-way through its copy (test hook), counted from the pool file.
* Power failure: at the N-th event the file is replaced by what PM could hold (flushed and fenced
  lines plus a random subset of the pending ones, as PMDK's pmreorder does); recovery must give
  the state before or after. With a fence removed on purpose, the same walk must find a torn state:
  that is what shows these tests can fail.

``PLINIUS_LONG=1`` multiplies the kills and random points (thousands instead of hundreds).
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from plinius.backends import open_backend
from plinius.backends.romulus import (
    CRASH_EXIT,
    Pool,
    RomulusBackend,
    sim_copier,
    sim_disarm,
    sim_events,
)
from plinius.core.errors import PliniusError

LONG = os.environ.get("PLINIUS_LONG", "") not in ("", "0")
KILLS = int(os.environ.get("PLINIUS_ROMULUS_KILLS", "3000" if LONG else "300"))
POWER_SEEDS = 100 if LONG else 12
RANDOM_POINTS = 20_000 if LONG else 1000
MiB = 1 << 20

# Python >= 3.12 warns on fork() in a process with threads (BLAS and the engine's flush workers
# are C threads holding no Python locks). The forked child only drives the C engine and leaves
# with os._exit, which is what this walk needs: a process image frozen at the crash point.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)


def in_child(fn: Callable[[], None]) -> int:
    """Run ``fn`` in a forked child; its exit status (CRASH_EXIT when the hook fired)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns into pytest
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@contextmanager
def env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- engine-level states -------------------------------------------------------------------------


def pattern(version: int, n: int) -> bytes:
    """Bytes that differ from every other version at every 8-byte word: a mix is visible."""
    words = (np.arange((n + 7) // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(
        version * 0x1000193 + 1
    )
    return words.tobytes()[:n]


# the committed states: blob a and blob b
STATES = [
    {"a": pattern(0, 3000), "b": pattern(100, 500)},
    {"a": pattern(1, 3000), "b": pattern(100, 500)},  # T1: a rewritten in place (logged path)
    {"a": pattern(2, 40_000), "b": pattern(102, 500)},  # T2: a reallocated (log overflow)
]


def write_blob(p: Pool, name: str, data: bytes, reuse: bool) -> None:
    old = p.root(name)
    same = reuse and old is not None and old[1] == len(data)
    off = old[0] if same and old is not None else p.alloc(len(data))
    p.writable(off, len(data))[:] = data
    p.set_root(name, off, len(data))
    if old is not None and old[0] != off:
        p.free(old[0])


def txn1(p: Pool) -> None:
    with p.transaction():
        write_blob(p, "a", STATES[1]["a"], reuse=True)


def txn2(p: Pool) -> None:
    with p.transaction():
        write_blob(p, "a", STATES[2]["a"], reuse=True)
        write_blob(p, "b", STATES[2]["b"], reuse=True)


def assert_twins(p: Pool) -> None:
    """After recovery back is main, byte for byte over the used size: never a mix."""
    st = p.stats()
    raw = p.raw()
    main = raw[st.main_off : st.main_off + st.used]
    back = raw[st.back_off : st.back_off + st.used]
    assert main == back, "main and back differ after recovery"


def which_state(p: Pool) -> int:
    """Index of the committed state the pool holds; AssertionError on anything else."""
    assert_twins(p)
    got = {}
    for name in ("a", "b"):
        found = p.root(name)
        assert found is not None, f"root {name} lost"
        got[name] = bytes(p.view(*found))
    for i, state in enumerate(STATES):
        if got == state:
            return i
    raise AssertionError("torn state: a mix of versions")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """A pool holding state 0 (created, then two committed transactions)."""
    path = tmp_path / "template.pool"
    with Pool(path, 512 * 1024) as p:
        with p.transaction():
            write_blob(p, "a", STATES[0]["a"], reuse=False)
            write_blob(p, "b", STATES[0]["b"], reuse=False)
        assert which_state(p) == 0
    return path


#: how the commits of the walks copy main to back: inline (the default for these small
#: transactions: below bg_min), on the copier thread, or on a copier held until the next begin
#: (or close) waits for it, so its crash points are crashes during that wait
COPIERS = ("sync", "copier", "held")


def open_walk_pool(path: Path, copier: str) -> Pool:
    p = Pool(path)
    if copier != "sync":
        p.set_commit("background", bg_min=0)
        sim_copier(p, hold=copier == "held")
    return p


def count_events(template: Path, work: Path, copier: str = "sync") -> tuple[int, int]:
    """Flush/fence events of T1 alone and of T1+T2, counted in this process (no crash)."""
    shutil.copyfile(template, work)
    with open_walk_pool(work, copier) as p:
        p.sim_arm(0)
        txn1(p)
        e1 = sim_events()
        assert p.stats().full_copies == 0  # T1 takes the logged path ...
        txn2(p)
        e2 = sim_events()
        assert p.stats().full_copies == 1  # ... and T2 overflows to a full copy
        assert p.stats().bg_copies == (0 if copier == "sync" else 2)
        sim_disarm()
    return e1, e2


def crash_run(
    template: Path,
    work: Path,
    at: int,
    kind: str,
    seed: int = 1,
    skip_fences: int = 0,
    copier: str = "sync",
) -> int:
    """Run T1 then T2 on a copy of ``template`` in a child that crashes at event ``at``."""
    shutil.copyfile(template, work)

    def child() -> None:
        p = open_walk_pool(work, copier)
        p.sim_arm(at, kind, seed, skip_fences)  # type: ignore[arg-type]
        txn1(p)
        txn2(p)
        p.close()

    return in_child(child)


def recovered_state(work: Path) -> int:
    with Pool(work) as p:
        return which_state(p)


def header_state(path: Path) -> int:
    """The state word as the file holds it (before any recovery)."""
    with open(path, "rb") as f:
        f.seek(128)
        return int(struct.unpack("<Q", f.read(8))[0])


@pytest.mark.parametrize("copier", COPIERS)
def test_crash_point_walk_process(template: Path, tmp_path: Path, copier: str) -> None:
    """Exit at every flush and fence of two transactions; recovery gives before or after."""
    work = tmp_path / "work.pool"
    e1, e2 = count_events(template, work, copier)
    assert e2 - e1 >= 8 and e1 >= 8
    seen = []
    copying = 0
    for at in range(1, e2 + 1):
        assert crash_run(template, work, at, "process", copier=copier) == CRASH_EXIT
        copying += header_state(work) == 2  # crashed after FENCE 3, before the copy ended
        state = recovered_state(work)
        allowed = (0, 1) if at <= e1 else (1, 2)
        assert state in allowed, (at, state)
        seen.append(state)
    assert seen == sorted(seen), "a later crash point recovered an older state"
    assert {0, 1, 2} <= set(seen)  # every transition was crossed
    # crashes inside the copy to back (on the copier thread, during the next begin's or the
    # close's wait when held): at least the copy runs and FENCE 4 of both transactions
    assert copying >= 4, copying
    assert crash_run(template, work, e2 + 100, "process", copier=copier) == 0  # no crash
    assert recovered_state(work) == 2


def test_power_failure_walk_during_the_wait(template: Path, tmp_path: Path) -> None:
    """Power failures at every point with the copy held until the next begin waits."""
    work = tmp_path / "work.pool"
    e1, e2 = count_events(template, work, "held")
    for at in range(1, e2 + 1):
        for seed in range(max(2, POWER_SEEDS // 3)):
            assert crash_run(template, work, at, "power", seed, copier="held") == CRASH_EXIT
            state = recovered_state(work)
            assert state in ((0, 1) if at <= e1 else (1, 2)), (at, seed, state)


def test_crash_point_walk_power(template: Path, tmp_path: Path) -> None:
    """Every point, several random subsets of the pending lines each."""
    work = tmp_path / "work.pool"
    e1, e2 = count_events(template, work)
    for at in range(1, e2 + 1):
        for seed in range(POWER_SEEDS):
            assert crash_run(template, work, at, "power", seed) == CRASH_EXIT
            state = recovered_state(work)
            assert state in ((0, 1) if at <= e1 else (1, 2)), (at, seed, state)


def test_power_failure_random_points(template: Path, tmp_path: Path) -> None:
    work = tmp_path / "work.pool"
    e1, e2 = count_events(template, work)
    rng = random.Random(2024)
    for _ in range(RANDOM_POINTS):
        at, seed = rng.randint(1, e2), rng.randrange(1 << 30)
        assert crash_run(template, work, at, "power", seed) == CRASH_EXIT
        assert recovered_state(work) in ((0, 1) if at <= e1 else (1, 2)), (at, seed)


@pytest.mark.parametrize(
    ("fence", "copier"), [(1, "sync"), (2, "sync"), (3, "sync"), (4, "sync"), (4, "held")]
)
def test_a_missing_fence_is_caught(template: Path, tmp_path: Path, fence: int, copier: str) -> None:
    """Remove one of the four fences: some power failure must now tear the state."""
    work = tmp_path / "work.pool"
    e1, e2 = count_events(template, work, copier)
    for seed in range(64):
        for at in range(1, e2 + 1):
            code = crash_run(
                template, work, at, "power", seed, skip_fences=1 << fence, copier=copier
            )
            if code != CRASH_EXIT:
                continue  # a skipped fence is not an event: the walk can end early
            try:
                state = recovered_state(work)
            except (AssertionError, PliniusError):
                return  # torn or unreadable: caught
            if state not in ((0, 1) if at <= e1 else (1, 2)):
                return  # a committed transaction was lost: caught
    pytest.fail(f"no power failure tore the state with fence {fence} removed")


# --- creation and recovery can crash too ---------------------------------------------------------


def _events_of_open(path: Path, size: int | None) -> int:
    with env(PLINIUS_ROMULUS_CRASH_AT="0"), Pool(path, size) as p:
        n = sim_events()
        assert p.opened_as in ("created", "rolled back", "rolled forward")
    sim_disarm()
    return n


def _crash_in_open(path: Path, size: int | None, at: int, kind: str, seed: int) -> int:
    def child() -> None:
        with env(
            PLINIUS_ROMULUS_CRASH_AT=str(at),
            PLINIUS_ROMULUS_CRASH_KIND=kind,
            PLINIUS_ROMULUS_CRASH_SEED=str(seed),
        ):
            Pool(path, size).close()

    return in_child(child)


@pytest.mark.parametrize("kind", ["process", "power"])
def test_crash_during_creation_is_redone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "new.pool"
    n = _events_of_open(path, MiB)
    assert n >= 4
    for at in range(1, n + 1):
        for seed in range(POWER_SEEDS if kind == "power" else 1):
            path.unlink()
            assert _crash_in_open(path, MiB, at, kind, seed) == CRASH_EXIT
            assert path.stat().st_size == MiB
            with Pool(path) as p:  # no size needed: the stamp says it is ours
                assert p.opened_as in ("recreated", "opened"), (at, seed)
                assert p.roots() == {} and p.stats().state == "idle"
                with p.transaction():
                    write_blob(p, "a", b"usable", reuse=False)


@pytest.mark.parametrize("kind", ["process", "power"])
@pytest.mark.parametrize("state", ["mutating", "copying"])
def test_crash_during_recovery_is_safe(
    template: Path, tmp_path: Path, kind: str, state: str
) -> None:
    """Recovery interrupted at each of its own points (twice in a row) still ends right."""
    # a pool caught in the middle of T1: MUTATING before fence 3, COPYING after it
    work = tmp_path / "work.pool"
    e1, _ = count_events(template, work)
    base = tmp_path / "interrupted.pool"
    expect = 0 if state == "mutating" else 1
    at = 4 if state == "mutating" else e1 - 1  # inside T1's flushes / inside its copy to back
    assert crash_run(template, base, at, "process") == CRASH_EXIT
    hdr_state = struct.unpack("<Q", base.read_bytes()[128:136])[0]
    assert hdr_state == (1 if state == "mutating" else 2)
    shutil.copyfile(base, work)
    n = _events_of_open(work, None)
    assert n >= 3
    for at2 in range(1, n + 1):
        for seed in range(POWER_SEEDS if kind == "power" else 1):
            shutil.copyfile(base, work)
            assert _crash_in_open(work, None, at2, kind, seed) == CRASH_EXIT
            # the second recovery may have less left to do than the first: crash it if it
            # gets that far
            assert _crash_in_open(work, None, at2, kind, seed + 1) in (0, CRASH_EXIT)
            assert recovered_state(work) == expect, (at2, seed)


# --- process kills through the backend -----------------------------------------------------------

SIZES = [4096, 4096, 65_536, 65_536, 300_000, 1_000_008, 2 * MiB + 8]
_BASE = np.arange(3 * MiB // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def size_of(seq: int) -> int:
    return SIZES[(seq * 7 + seq // 3) % len(SIZES)]


def fill(view: memoryview, seq: int) -> None:
    words = np.frombuffer(view, dtype=np.uint64)
    words[0] = seq
    np.add(_BASE[1 : len(words)], np.uint64(seq), out=words[1:])


def check(data: memoryview) -> int:
    words = np.frombuffer(data, dtype=np.uint64)
    seq = int(words[0])
    assert data.nbytes == size_of(seq), f"version {seq} has the size of another version"
    assert np.array_equal(words[1:], _BASE[1 : len(words)] + np.uint64(seq)), f"torn {seq}"
    return seq


def _saver(spec: str, wfd: int) -> None:
    b = open_backend(spec)
    blob = b.read("mirror")
    seq = 0 if blob is None else check(blob.data)
    os.write(wfd, b"R")
    while True:
        seq += 1
        size = size_of(seq)
        with b.begin_write("mirror", size) as txn:
            fill(txn.view(0, size), seq)
            txn.commit()
        os.write(wfd, struct.pack("<Q", seq))


def _kill_loop(spec: str, kills: int, seed: int) -> tuple[int, dict[str, int]]:
    """Kill a saving child ``kills`` times; the commits it reported and what recovery found."""
    rng = random.Random(seed)
    last = 0
    commits = 0
    found: dict[str, int] = {}
    for _ in range(kills):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(r)
                _saver(spec, w)
            finally:
                os._exit(1)
        os.close(w)
        assert os.read(r, 1) == b"R"  # the child opened (and recovered) the pool
        time.sleep(rng.uniform(0, 0.012))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reported = b""
        while select.select([r], [], [], 0)[0]:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            reported += chunk
        os.close(r)
        if len(reported) >= 8:
            n = len(reported) // 8 * 8
            last = struct.unpack("<Q", reported[n - 8 : n])[0]
            commits += n // 8
        with open_backend(spec) as b:
            assert isinstance(b, RomulusBackend)
            found[b.pool.opened_as] = found.get(b.pool.opened_as, 0) + 1
            blob = b.read("mirror")
            got = 0 if blob is None else check(blob.data)
        # the child may have committed one more version than it managed to report
        assert got in (last, last + 1), (got, last)
        last = got
    return commits, found


@pytest.mark.slow
def test_sigkill_during_saves_keeps_a_committed_mirror(shm_dir: Path) -> None:
    """Hundreds (PLINIUS_LONG: thousands) of SIGKILLs at random moments, over the three modes."""
    per_mode = max(1, KILLS // 3)
    total: dict[str, int] = {}
    for i, mode in enumerate(("pmem", "none", "msync")):
        spec = f"romulus:{shm_dir / f'{mode}.pool'}?size=16M&mode={mode}"
        commits, found = _kill_loop(spec, per_mode, seed=i)
        assert commits > per_mode, f"the children hardly committed in mode {mode} ({commits})"
        for k, v in found.items():
            total[k] = total.get(k, 0) + v
    print(f"recovery after {KILLS} kills: {total}")
    # the kills must land inside transactions, not only between them
    assert total.get("rolled back", 0) >= KILLS // 20, total
    assert total.get("rolled forward", 0) >= KILLS // 20, total


# --- real kills while the copier copies main to back ------------------------------------------

#: futex(2), where a thread waiting on the copier's condition variable sleeps
_FUTEX = {"x86_64": 202, "aarch64": 98}
_KILL_SIZE = 2 * MiB + 8  # above bg_min: this commit's copy runs on the copier thread


def _main_thread_syscall(pid: int) -> int:
    with open(f"/proc/{pid}/syscall") as f:
        first = f.read().split()[0]
    return int(first) if first.isdigit() else -1  # "running": not in a system call


def _committed_then(spec: str, wfd: int, then: str) -> None:
    """Child: commit one version, report it and its offset, then wait in begin or sleep."""
    with env(PLINIUS_ROMULUS_BG_DELAY_MS="60000"):  # the copier sleeps half-way
        b = open_backend(spec)
    assert isinstance(b, RomulusBackend)
    blob = b.read("mirror")
    seq = 1 if blob is None else check_fixed(blob.data) + 1
    with b.begin_write("mirror", _KILL_SIZE) as txn:
        fill(txn.view(0, _KILL_SIZE), seq)
        txn.commit()
    found = b.pool.root("mirror")  # main's table: no wait
    assert found is not None
    os.write(wfd, struct.pack("<QQQ", seq, found[0], b.pool.region_size))
    if then == "wait":
        b.begin_write("mirror", _KILL_SIZE)  # waits for the copier: killed in the wait
    time.sleep(120)


def check_fixed(data: memoryview) -> int:
    words = np.frombuffer(data, dtype=np.uint64)
    seq = int(words[0])
    assert np.array_equal(words[1:], _BASE[1 : len(words)] + np.uint64(seq)), f"torn {seq}"
    return seq


def _wait_until(cond: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("mode", ["pmem", "none", "msync"])
def test_sigkill_during_the_background_copy(shm_dir: Path, mode: str) -> None:
    """SIGKILL a child while its copier sleeps half-way through the copy to back, once while
    the child sleeps and once while its next begin waits for the copier: every kill lands with
    back half-copied (counted from the file), and recovery rolls the commit forward."""
    path = shm_dir / f"{mode}.pool"
    spec = f"romulus:{path}?size=16M&mode={mode}"
    landed = {"sleeping": 0, "wait": 0}
    for then in ("sleep", "wait", "sleep", "wait"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(r)
                _committed_then(spec, w, then)
            finally:
                os._exit(1)
        os.close(w)
        head = b""
        while len(head) < 24:
            chunk = os.read(r, 24 - len(head))
            assert chunk, "the child died before committing"
            head += chunk
        os.close(r)
        seq, off, region = struct.unpack("<QQQ", head)
        main_at, back_at = 4096 + off, 4096 + region + off

        def part(at: int, n: int = 4096) -> bytes:
            with open(path, "rb") as f:
                f.seek(at)
                return f.read(n)

        # the copier has copied the blob's start and sleeps half-way
        first_half = partial(lambda b, m: part(b) == part(m), back_at, main_at)
        _wait_until(first_half, "the copier's first half")
        if then == "wait":
            futex = _FUTEX[os.uname().machine]
            in_wait = partial(lambda c, f: _main_thread_syscall(c) == f, pid, futex)
            _wait_until(in_wait, "begin waiting")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        tail = _KILL_SIZE - 4096
        if header_state(path) == 2 and part(back_at + tail) != part(main_at + tail):
            landed["wait" if then == "wait" else "sleeping"] += 1
        with open_backend(spec) as b:
            assert isinstance(b, RomulusBackend)
            assert b.pool.opened_as == "rolled forward"
            assert_twins(b.pool)
            blob = b.read("mirror")
            assert blob is not None and check_fixed(blob.data) == seq
    assert landed == {"sleeping": 2, "wait": 2}, landed
