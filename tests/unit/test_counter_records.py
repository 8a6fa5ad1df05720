"""Review of issue 23 (L1, L2): a slot's freshness record is never bricked by a kill during its
first save, and two writers of one slot (two enclave instances, as two processes would be:
separate open file descriptions of the record) take turns, never lowering ``high``.

A real SIGKILL during the first create is in ``tests/system/test_counter_kill.py``.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest

import plinius.enclave.slot_files as cm
from plinius.enclave.counter import Extent, MirrorCounters, Stamp
from plinius.enclave.platform import SimulatedPlatform

SLOT = "e" * 32
EXTENT = Extent(1000, 300)


def stamp(version: int) -> Stamp:
    return Stamp(b"r" * 16, version, bytes([version]) * 16)


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform(tmp_path / "cpu")


def test_an_empty_record_left_by_a_kill_holds_no_state(platform: SimulatedPlatform) -> None:
    """An older plinius created the record under its final name, then wrote it: a kill in
    between left it empty, and every later run of the slot failed ("not sealed data")."""
    c = MirrorCounters(platform)
    (c.dir / SLOT).touch(mode=0o600)
    c2 = MirrorCounters(platform)
    assert c2.read(SLOT) is None
    c2.check(SLOT, "here", None, settle=True)  # a first run (or --fresh): nothing to refuse
    c2.begin(SLOT, stamp(1), EXTENT)
    c2.commit(SLOT, stamp(1))
    state = MirrorCounters(platform).read(SLOT)
    assert state is not None and state.high == 1 and state.committed == stamp(1)


def test_the_first_record_is_made_whole_under_another_name(
    platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first record is written the slot's name is absent: a kill then leaves no
    record (a first run), never an empty one."""
    c = MirrorCounters(platform)
    record = c.dir / SLOT
    seen: list[bool] = []
    real_fsync = cm.os.fsync

    def fsync(fd: int) -> None:
        seen.append(record.exists())
        real_fsync(fd)

    monkeypatch.setattr(cm.os, "fsync", fsync)
    c.begin(SLOT, stamp(1), EXTENT)
    monkeypatch.undo()
    assert seen and not seen[0]  # the record's bytes were flushed before it had its name
    assert sorted(p.name for p in c.dir.iterdir()) == [SLOT]  # no temporary name left
    assert record.stat().st_mode & 0o777 == 0o600


def test_a_concurrent_first_record_is_never_overwritten(
    platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A and B both find no record; B creates it (version 3) while A seals its own (version 2):
    A's begin is then judged against B's record, not written over it."""
    a, b = MirrorCounters(platform), MirrorCounters(platform)
    real_seal = cm.seal
    fired = [False]

    def seal(*args: Any, **kw: Any) -> bytes:
        if not fired[0]:
            fired[0] = True
            b.begin(SLOT, stamp(3), EXTENT)  # the other creator, first to name the record
        return real_seal(*args, **kw)

    monkeypatch.setattr(cm, "seal", seal)
    with pytest.raises(ValueError, match="version 2 is not above 3"):
        a.begin(SLOT, stamp(2), EXTENT)
    monkeypatch.undo()
    state = MirrorCounters(platform).read(SLOT)
    assert state is not None and state.high == 3 and state.pending == stamp(3)
    a.begin(SLOT, stamp(4), EXTENT)  # a later version still goes on top of B's
    state = MirrorCounters(platform).read(SLOT)
    assert state is not None and state.high == 4 and state.pending == stamp(4)


def test_two_writers_of_one_slot_take_turns(
    platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's begin (another instance, in another thread: its own open file description, as in
    another process) starts while A is between its read and its write of the record. B must
    wait for A's write and then apply its begin on top of it: ``high`` ends at 7 with B's
    stamp pending, never lowered to A's 6. Deterministic: A goes on once B has either finished
    (no lock between them) or reached the record lock (where it waits for A)."""
    a, b = MirrorCounters(platform), MirrorCounters(platform)
    a.begin(SLOT, stamp(5), EXTENT)
    a.commit(SLOT, stamp(5))
    real_seal, real_flock = cm.seal, fcntl.flock
    b_ready = threading.Event()  # B finished, or is at the lock
    b_errors: list[BaseException] = []
    b_thread: list[threading.Thread] = []

    def b_begin() -> None:
        try:
            b.begin(SLOT, stamp(7), EXTENT)
        except BaseException as exc:  # reported by the main thread
            b_errors.append(exc)
        finally:
            b_ready.set()

    def flock(fd: int, op: int) -> None:
        if b_thread and threading.current_thread() is b_thread[0] and op & fcntl.LOCK_EX:
            b_ready.set()
        real_flock(fd, op)

    def seal(*args: Any, **kw: Any) -> bytes:
        if not b_thread:  # A's seal: A has read the record and not yet written it
            b_thread.append(threading.Thread(target=b_begin, daemon=True))
            b_thread[0].start()
            assert b_ready.wait(60), "B neither finished nor reached the lock"
        return real_seal(*args, **kw)

    monkeypatch.setattr(cm, "seal", seal)
    monkeypatch.setattr(fcntl, "flock", flock)
    a.begin(SLOT, stamp(6), EXTENT)
    b_thread[0].join(60)
    monkeypatch.undo()
    assert not b_thread[0].is_alive()
    assert b_errors == []
    state = MirrorCounters(platform).read(SLOT)
    assert state is not None
    assert state.high == 7, f"high went back to {state.high}: B's begin of version 7 was lost"
    assert state.pending == stamp(7) and state.committed == stamp(5)
    # and each instance's in-memory copy follows the other's write
    assert a.read(SLOT) == state and b.read(SLOT) == state


def test_a_reader_waits_for_a_writer(
    platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read takes a shared lock: it never sees a record another instance is rewriting."""
    a, b = MirrorCounters(platform), MirrorCounters(platform)
    a.begin(SLOT, stamp(1), EXTENT)
    ops: list[int] = []
    real_flock = fcntl.flock

    def flock(fd: int, op: int) -> None:
        ops.append(op)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    b.read(SLOT)
    a.commit(SLOT, stamp(1))
    monkeypatch.undo()
    # the writer keeps its record file open (one open per slot): it unlocks it explicitly
    assert ops == [fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_UN]
