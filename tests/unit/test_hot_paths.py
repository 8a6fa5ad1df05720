"""Issue 23, item 8: no repeated work on the hot paths.

* A save unseals no freshness record and seals and writes it exactly twice: ``begin`` (flushed)
  and ``commit`` (not flushed; why it cannot go: :meth:`MirrorCounters.commit`). The record file
  stays the one truth: another writer's record is seen, never overwritten.
* A restore authenticates a mirror's header and manifest once, replicas included.
* A peek or restore sizes its first read by the platform's record of the save (no size probe,
  no header read apart): one read for a blob within the bound, never a byte beyond the record
  before the header has been admitted; a cut, grown or foreign blob gets the error it got before.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plinius.enclave.slot_files as counter_mod
import plinius.format.mirror as mirror_mod
from plinius.backends.base import Backend, Blob
from plinius.backends.registry import open_backend
from plinius.core.crypto import generate_key, make_engine, write_key_file
from plinius.core.errors import FormatError, RollbackError, TruncatedError
from plinius.enclave.counter import Extent, FreshnessGuard, MirrorCounters, Stamp
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import mirror_guard
from plinius.format.mirror import PEEK_WHOLE, SEGMENT_BYTES, MirrorStore, Record
from plinius.nn import load_model
from plinius.session import Replication, Session

KEY = bytes(range(16))
FP = hashlib.sha256(b"plinius hot paths test model").digest()


def count_record_io(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Seals and unseals of freshness records, and writes and flushes of record files."""
    seen: Counter[str] = Counter()
    for name in ("seal", "unseal"):
        real = getattr(counter_mod, name)

        def crypto(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            seen[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(counter_mod, name, crypto)
    for name in ("pwrite", "fdatasync", "fsync", "write"):
        real = getattr(os, name)

        def io(fd: int, *args: Any, _real: Any = real, _name: str = name) -> Any:
            if "/counters/" in os.readlink(f"/proc/self/fd/{fd}"):
                seen[_name] += 1
            return _real(fd, *args)

        monkeypatch.setattr(os, name, io)
    return seen


def count_manifests(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Manifest authentications (and seals: the manifest's AAD is built once for either)."""
    seen: Counter[str] = Counter()
    real = mirror_mod._manifest_aad

    def aad(*args: Any) -> bytes:
        seen["manifest"] += 1
        return real(*args)

    monkeypatch.setattr(mirror_mod, "_manifest_aad", aad)
    return seen


def spy_reads(backend: Backend) -> list[tuple[int, int | None]]:
    """Every ``read(blob, offset, length)`` of ``backend``, as (offset, length)."""
    calls: list[tuple[int, int | None]] = []
    real = backend.read

    def read(blob: str, offset: int = 0, length: int | None = None) -> Blob | None:
        calls.append((offset, length))
        return real(blob, offset, length)

    backend.read = read  # type: ignore[method-assign]
    return calls


# --- saves -------------------------------------------------------------------------------------


def tiny_session(tmp_path: Path) -> Session:
    key = tmp_path / "k.key"
    if not key.exists():
        write_key_file(key, generate_key())
    platform = SimulatedPlatform(tmp_path / "cpu", state_dir=tmp_path / "state")
    return Session(load_model("tiny"), label="tiny", key_file=key, platform=platform, say=print)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_save_unseals_nothing_and_seals_and_writes_the_record_twice(
    tmp_path: Path, shm_dir: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    s = tiny_session(tmp_path)
    try:
        s.attach(s.open(f"tmpfs:{shm_dir / 'm'}", mirror_bytes=1 << 20), asynchronous=asynchronous)
        assert s.restore().iteration is None
        s.mirror()  # the first save creates the record file
        s.flush()
        seen = count_record_io(monkeypatch)
        for _ in range(3):
            s.mirror()
            s.flush()
        # begin: seal, write, flush; commit: seal, write; nothing unsealed, nothing else
        assert seen == Counter(seal=6, pwrite=6, fdatasync=3), seen
    finally:
        s.close()


def test_replica_copies_unseal_nothing_either(
    tmp_path: Path, shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = tiny_session(tmp_path)
    try:
        replication = Replication([f"tmpfs:{shm_dir / 'r'}"], required=True)
        backend = s.open(f"tmpfs:{shm_dir / 'm'}", mirror_bytes=1 << 20)
        s.attach(backend, replication=replication, mirror_bytes=1 << 20)
        s.restore()
        s.mirror()
        s.drain()
        seen = count_record_io(monkeypatch)
        for _ in range(2):
            s.mirror()
            s.drain()  # one copy at a time: none is superseded
        assert seen == Counter(seal=8, pwrite=8, fdatasync=4), seen  # primary + replica slot
    finally:
        s.close()


def _stamp(run: int, version: int, save: int) -> Stamp:
    return Stamp(bytes([run]) * 16, version, bytes([save]) * 16)


def test_a_retried_begin_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = MirrorCounters(SimulatedPlatform(tmp_path / "cpu"))
    slot, s1, e1 = "c" * 32, _stamp(1, 1, 1), Extent(1000, 300)
    c.begin(slot, s1, e1)
    seen = count_record_io(monkeypatch)
    c.begin(slot, s1, e1)  # a replica copy retried
    assert seen == Counter(), seen
    c.commit(slot, s1)
    assert seen == Counter(seal=1, pwrite=1), seen


def test_another_writer_of_the_slot_is_seen_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state kept in memory spares the unseal only while the file holds what this object
    wrote: a record another enclave instance wrote since is unsealed and obeyed (its ``high``
    refuses a version again, its committed stamp is the only fresh one)."""
    platform = SimulatedPlatform(tmp_path / "cpu")
    a, b = MirrorCounters(platform), MirrorCounters(platform)
    slot, e = "d" * 32, Extent(1000, 300)
    a.begin(slot, _stamp(1, 1, 1), e)
    a.commit(slot, _stamp(1, 1, 1))
    b.begin(slot, _stamp(1, 2, 2), e)
    b.commit(slot, _stamp(1, 2, 2))
    seen = count_record_io(monkeypatch)
    with pytest.raises(ValueError, match="not above 2"):
        a.begin(slot, _stamp(1, 2, 9), e)
    assert seen["unseal"] == 1 and seen["pwrite"] == 0, seen
    with pytest.raises(RollbackError, match="older copy"):
        a.check(slot, "here", _stamp(1, 1, 1), settle=False)
    state = a.read(slot)
    assert state is not None and state.committed == _stamp(1, 2, 2)
    assert seen["unseal"] == 1, seen  # b's record, unsealed once, is now a's kept state too
    path = a.dir / slot
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    with pytest.raises(Exception, match=r"cannot unseal|not sealed"):
        a.read(slot)  # changed bytes are unsealed, so a damaged record is still refused


# --- restores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lose_primary", [False, True])
def test_a_restore_authenticates_each_manifest_once_replicas_included(
    tmp_path: Path, shm_dir: Path, monkeypatch: pytest.MonkeyPatch, lose_primary: bool
) -> None:
    """From the primary, or (primary lost) from the replica its peek chose: one manifest
    authentication, no record unsealed, one read of the primary (None when it is gone)."""
    replica = f"tmpfs:{shm_dir / 'r'}"
    first = tiny_session(tmp_path)
    try:
        backend = first.open(f"tmpfs:{shm_dir / 'm'}", mirror_bytes=1 << 20)
        first.attach(backend, replication=Replication([replica], required=True))
        first.restore()
        for _ in range(2):
            first.mirror()
        first.drain()
    finally:
        first.close()
    if lose_primary:
        (shm_dir / "m" / "mirror").unlink()
    s = tiny_session(tmp_path)
    try:
        primary = s.open(f"tmpfs:{shm_dir / 'm'}", mirror_bytes=1 << 20)
        s.attach(primary, replication=Replication([replica], 1, None, 5, required=True))
        reads = spy_reads(primary)
        seen = count_record_io(monkeypatch)
        manifests = count_manifests(monkeypatch)
        said: list[str] = []
        assert s.enclave.ecall_restore(said.append) == 0  # tiny's iteration (never trained)
        assert (s.enclave.ecall_restore_warning() is not None) == lose_primary
        assert manifests == Counter(manifest=1), manifests
        assert seen["unseal"] == 0, seen  # the records were read at attach
        assert len(reads) == 1, reads
    finally:
        monkeypatch.undo()
        s.close()


@dataclass
class World:
    """A mirror slot on a tmpfs backend with its platform record, saved through the same steps
    as the enclave's (begin with the extent, save, commit)."""

    backend: Backend
    store: MirrorStore
    counters: MirrorCounters
    slot: str
    version: int = 0
    reads: list[tuple[int, int | None]] = field(default_factory=list)

    def guard(self, *, settle: bool = False) -> FreshnessGuard:
        return mirror_guard(self.counters, self.store, settle=settle)

    def save(
        self, nbytes: int, *, commit: bool = True, meta: dict[str, Any] | None = None
    ) -> bytes:
        """Save a mirror of ``nbytes`` of records; the blob's bytes as committed."""
        self.version += 1
        stamp = Stamp(b"r" * 16, self.version, os.urandom(16))
        arr = np.random.default_rng(self.version).random(nbytes // 4, dtype=np.float32)

        def begin(size: int, manifest: int) -> None:
            self.counters.begin(self.slot, stamp, Extent(size, manifest))

        self.store.save(
            [Record(0, "w", arr)], self.version, meta=meta, run_id=stamp.run_id,
            save_id=stamp.save_id, before_write=begin,
        )  # fmt: skip
        if commit:
            self.counters.commit(self.slot, stamp)
        got = self.backend.read(self.store.blob)
        assert got is not None
        self.reads.clear()
        return bytes(got.data)

    def put(self, blob: bytes) -> None:
        """What an attacker does: replace the stored blob's bytes."""
        with self.backend.begin_write(self.store.blob, len(blob)) as txn:
            txn.view(0, len(blob))[:] = blob
            txn.commit()
        self.reads.clear()


@pytest.fixture
def world(tmp_path: Path, shm_dir: Path) -> Iterator[World]:
    from plinius.enclave.counter import slot_name

    with open_backend(f"tmpfs:{shm_dir / 'm'}") as backend:
        store = MirrorStore(backend, make_engine(KEY), FP)
        counters = MirrorCounters(SimulatedPlatform(tmp_path / "cpu"))
        w = World(backend, store, counters, slot_name(*backend.slot_parts(), store.blob))
        w.reads = spy_reads(backend)
        yield w


def _manifest_range(w: World) -> tuple[int, int]:
    info = w.store.peek()
    assert info is not None
    got = w.backend.read(w.store.blob, 0, 128)
    assert got is not None
    m_at = int.from_bytes(bytes(got.data[72:80]), "little")
    w.reads.clear()
    return m_at, info.size - m_at


def test_a_peek_and_a_restore_of_a_small_mirror_are_one_read(world: World) -> None:
    blob = world.save(16 << 10)
    size = len(blob)
    assert size <= PEEK_WHOLE
    info = world.store.peek(freshness=world.guard())
    assert info is not None and info.version == 1
    assert world.reads == [(0, size)]  # no probe, no header apart, no manifest apart
    world.reads.clear()
    peeked = world.store.peeked(freshness=world.guard())
    assert peeked is not None and peeked.data is not None
    restored = world.store.load(peeked=peeked)
    assert restored is not None and world.reads == [(0, size)]  # the peek's read, reused
    world.reads.clear()
    assert world.store.load(freshness=world.guard()) is not None
    assert world.reads == [(0, size)]


def test_a_peek_of_a_larger_mirror_is_its_header_and_manifest(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header and the manifest sit at the two ends of the blob: two reads, no probe."""
    blob = world.save(1 << 20)
    size = len(blob)
    m_at, m_len = _manifest_range(world)
    manifests = count_manifests(monkeypatch)
    peeked = world.store.peeked(freshness=world.guard())
    assert peeked is not None and peeked.data is None
    assert world.reads == [(0, 128), (m_at, m_len)]
    world.reads.clear()
    opened = world.store.open(peeked=peeked)
    assert opened is not None and opened.verify().version == 1
    assert world.reads == [(0, size)] and manifests["manifest"] == 1
    world.reads.clear()
    assert world.store.open(freshness=world.guard()) is not None
    assert world.reads == [(0, size)] and manifests["manifest"] == 2


def test_a_pipelined_restore_reads_header_and_manifest_then_streams(world: World) -> None:
    least = 2 * mirror_mod._batch_bytes(SEGMENT_BYTES)  # smaller ones are read whole
    world.save(least + (1 << 20))
    m_at, m_len = _manifest_range(world)
    restored = world.store.load(freshness=world.guard())
    assert restored is not None and restored.info.version == 1
    assert world.reads == [(0, 128), (m_at, m_len)]  # the records come by read_into


def test_a_save_in_flight_of_another_size_is_read_by_its_own_recorded_size(
    world: World,
) -> None:
    """Killed after the backend committed, before the record did: the record holds both
    sizes; the first read takes the smaller, and the larger blob is then read whole."""
    old = world.save(16 << 10)
    new = world.save(16 << 10, commit=False, meta={"pad": "x" * 999})
    assert len(new) > len(old)
    opened = world.store.open(freshness=world.guard())
    assert opened is not None and opened.info.version == 2
    assert world.reads == [(0, len(old)), (0, len(new))]
    world.put(old)
    opened = world.store.open(freshness=world.guard())
    assert opened is not None and opened.info.version == 1
    assert world.reads == [(0, len(old))]


def test_a_cut_grown_or_foreign_blob_never_reads_past_the_record(world: World) -> None:
    blob = world.save(16 << 10)
    size = len(blob)
    world.put(blob[:-1])  # cut: shorter than anything recorded
    with pytest.raises(TruncatedError):
        world.store.open(freshness=world.guard())
    assert max(n or 0 for _, n in world.reads) <= size
    world.put(blob + bytes(10))  # grown: bytes after the manifest
    with pytest.raises(FormatError, match="added"):
        world.store.open(freshness=world.guard())
    assert max(n or 0 for _, n in world.reads) <= size
    huge = bytearray(blob)
    huge[64:72] = (1 << 40).to_bytes(8, "little")  # claims a 1 TiB blob
    world.put(bytes(huge) + bytes(1 << 20))
    with pytest.raises((FormatError, RollbackError, TruncatedError)):
        world.store.peek(freshness=world.guard())
    assert max(n or 0 for _, n in world.reads) <= size
    world.put(blob)
    assert world.store.peek(freshness=world.guard()) is not None


def test_a_peeked_mirror_replaced_before_its_records_are_read_is_checked_again(
    world: World,
) -> None:
    old = world.save(1 << 20)
    world.save(1 << 20)
    peeked = world.store.peeked(freshness=world.guard())
    assert peeked is not None and peeked.data is None and peeked.info.version == 2
    world.put(old)  # the older mirror put back between the peek and the read
    with pytest.raises(RollbackError, match="older copy"):
        world.store.open(peeked=peeked)
    other = MirrorStore(world.backend, world.store.engine, FP)
    with pytest.raises(ValueError, match="store that peeked"):
        other.open(peeked=peeked)
