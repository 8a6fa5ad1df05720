"""Mirror format 3: records sealed as segments, each bound to its index, count and record length.

Small segment sizes (one page) make multi-segment records cheap to build here; the layout rules
are the same at the default size.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends.base import Backend
from plinius.backends.registry import open_backend
from plinius.backends.staging import StagedWriteTxn
from plinius.backends.testing import raw_get, raw_put
from plinius.core.crypto import OVERHEAD, Engine, make_engine
from plinius.core.errors import FormatError, IntegrityError, TruncatedError, UnsupportedVersionError
from plinius.core.memory import PAGE
from plinius.format.mirror import (
    _HEADER,
    HEADER_SIZE,
    ID_BYTES,
    MAGIC,
    MirrorStore,
    Record,
    _batch_bytes,
    _manifest_aad,
    metadata_bytes,
    plan,
    record_aad,
    record_segments,
    segment_count,
)

KEY = bytes(range(16))
FP = b"\x07" * 32
SEG = PAGE
SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 5]


@pytest.fixture(params=["tmpfs", "romulus"])
def backend(request: pytest.FixtureRequest, shm_dir: Path) -> Iterator[Backend]:
    spec = {"tmpfs": f"tmpfs:{shm_dir / 'f'}", "romulus": f"romulus:{shm_dir / 'p.pool'}?size=16M"}
    with open_backend(spec[request.param]) as b:
        yield b


@pytest.fixture
def files(shm_dir: Path) -> Iterator[Backend]:
    with open_backend(f"tmpfs:{shm_dir / 'f'}") as b:
        yield b


def _bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def _store(b: Backend, engine: str | None = None) -> MirrorStore:
    return MirrorStore(b, make_engine(KEY, engine), FP, segment_bytes=SEG)


@pytest.mark.parametrize("size", SIZES)
def test_segment_boundaries_round_trip(backend: Backend, engine_name: str, size: int) -> None:
    store = _store(backend, engine_name)
    recs = [Record(0, "w", _bytes(size, size)), Record(1, "b", _bytes(3 * SEG + 5, 1))]
    store.save(recs, version=3)
    info = store.peek()
    assert info is not None and info.format == 3 and info.segment == SEG
    e = info.entries[0]
    segs = record_segments(e.offset, e.length, SEG)
    assert len(segs) == max(1, -(-size // SEG)) == segment_count(size, SEG)
    assert [n for _, _, n in segs] == [min(SEG, size - i * SEG) for i in range(len(segs))]
    for at, _, n in segs:
        assert (at + 12) % (PAGE if n >= PAGE else 64) == 0, "ciphertext not aligned"
    assert info.metadata_bytes == metadata_bytes([size, 3 * SEG + 5], SEG)
    assert info.metadata_bytes == OVERHEAD * (len(segs) + 4 + 1)
    dest = {(0, "w"): np.full(size, 0xEE, np.uint8), (1, "b"): np.zeros(3 * SEG + 5, np.uint8)}
    got = store.load(into=dest)
    assert got is not None
    for r in recs:
        assert got.arrays[(r.layer, r.name)] is dest[(r.layer, r.name)]
        assert np.array_equal(dest[(r.layer, r.name)], r.array)
    assert store.verify() is not None


def _segments(store: MirrorStore, layer: int = 0) -> list[tuple[int, int]]:
    """(blob offset, sealed length) of each segment of the record of ``layer``."""
    info = store.peek()
    assert info is not None
    e = next(e for e in info.entries if e.layer == layer)
    return [(at, n + OVERHEAD) for at, _, n in record_segments(e.offset, e.length, SEG)]


def _tampered(store: MirrorStore, raw: bytearray) -> None:
    raw_put(store.backend, store.blob, bytes(raw))


def test_flipped_segment_is_named(files: Backend) -> None:
    store = _store(files)
    store.save([Record(0, "w", _bytes(3 * SEG + 5))], version=1)
    raw = bytearray(raw_get(files, "mirror"))
    at, n = _segments(store)[2]
    raw[at + 12 + n // 2] ^= 1
    _tampered(store, raw)
    with pytest.raises(IntegrityError, match="layer 0 w segment 3 of 4"):
        store.load()
    with pytest.raises(IntegrityError):
        store.verify()


@pytest.mark.parametrize("how", ["reorder", "duplicate", "drop"])
def test_segments_cannot_move_within_a_record(files: Backend, how: str) -> None:
    store = _store(files)
    store.save([Record(0, "w", _bytes(4 * SEG))], version=1)
    raw = bytearray(raw_get(files, "mirror"))
    segs = _segments(store)
    sealed = [bytes(raw[a : a + n]) for a, n in segs]
    if how == "reorder":
        order = [0, 2, 1, 3]
    elif how == "duplicate":
        order = [0, 0, 2, 3]
    else:  # segment 1 dropped, the later ones moved up, the last place filled with a copy
        order = [0, 2, 3, 3]
    for (a, n), src in zip(segs, order, strict=True):
        raw[a : a + n] = sealed[src]
    _tampered(store, raw)
    with pytest.raises(IntegrityError, match="layer 0 w segment"):
        store.load()


def test_segments_cannot_swap_between_records(files: Backend) -> None:
    store = _store(files)
    store.save([Record(0, "w", _bytes(2 * SEG)), Record(1, "w", _bytes(2 * SEG, 1))], version=1)
    raw = bytearray(raw_get(files, "mirror"))
    (a0, n), _ = _segments(store, 0)
    (b0, _), _ = _segments(store, 1)
    raw[a0 : a0 + n], raw[b0 : b0 + n] = raw[b0 : b0 + n], raw[a0 : a0 + n]
    _tampered(store, raw)
    with pytest.raises(IntegrityError, match="layer 0 w segment 1 of 2"):
        store.load()


@pytest.mark.parametrize(("long", "short"), [(4 * SEG, 3 * SEG), (3 * SEG, 3 * SEG - 1)])
def test_a_record_cut_short_fails(files: Backend, long: int, short: int) -> None:
    """Same run, save and version, so only the bound count and length tell the segments of a
    longer record from those of the record the manifest names."""
    store = _store(files)
    ids = {"run_id": b"r" * ID_BYTES, "save_id": b"s" * ID_BYTES}
    data = _bytes(long)
    store.save([Record(0, "w", data)], version=1, **ids)
    longer = bytearray(raw_get(files, "mirror"))
    long_segs = _segments(store)
    store.save([Record(0, "w", data[:short])], version=1, **ids)
    raw = bytearray(raw_get(files, "mirror"))
    for (a, n), (la, _) in zip(_segments(store), long_segs, strict=False):
        raw[a : a + n] = longer[la : la + n]
    _tampered(store, raw)
    with pytest.raises(IntegrityError, match="layer 0 w segment 1 of 3"):
        store.load()


def test_truncated_blob(files: Backend) -> None:
    store = _store(files)
    store.save([Record(0, "w", _bytes(3 * SEG + 5))], version=1)
    raw = raw_get(files, "mirror")
    _tampered(store, bytearray(raw[: len(raw) - 100]))
    with pytest.raises(TruncatedError):
        store.load()


# --- the pipelined restore ---------------------------------------------------------------------


@pytest.mark.parametrize("read_into", ["file", "default"])
def test_pipelined_restore_equals_serial(
    files: Backend, monkeypatch: pytest.MonkeyPatch, read_into: str
) -> None:
    """Batches read with the file backend's ``pread`` or the contract's default (read + copy),
    as a remote store would, give what one read and one decrypt give."""
    if read_into == "default":
        monkeypatch.setattr(files, "read_into", functools.partial(Backend.read_into, files))
    store = _store(files)
    recs = [Record(i, "w", _bytes(n, i)) for i, n in enumerate([5 * SEG + 3, 0, 77, 9 * SEG])]
    store.save(recs, version=2, iteration=9)
    info = store.peek()
    assert info is not None and info.size >= 4 * _batch_bytes(SEG), "too small to pipeline"
    calls: list[tuple[int, int]] = []
    real = files.read_into

    def spy(blob: str, offset: int, out: memoryview) -> int:
        calls.append((offset, out.nbytes))
        return real(blob, offset, out)

    monkeypatch.setattr(files, "read_into", spy)
    streamed = store.load()
    assert streamed is not None and len(calls) >= 4, "the restore did not read by batches"
    assert all(off % PAGE == 0 for off, _ in calls)
    opened = store.open()
    assert opened is not None
    serial = opened.load()
    for r in recs:
        key = (r.layer, r.name)
        assert np.array_equal(streamed.arrays[key], r.array)
        assert np.array_equal(serial.arrays[key], r.array)
    assert streamed.info.iteration == serial.info.iteration == 9
    assert streamed.stats.read_s > 0 and streamed.stats.decrypt_s > 0
    assert streamed.stats.bytes == serial.stats.bytes == info.size


def test_pipelined_restore_stops_on_a_bad_batch(files: Backend) -> None:
    store = _store(files)
    store.save([Record(0, "w", _bytes(12 * SEG))], version=1)
    raw = bytearray(raw_get(files, "mirror"))
    at, _ = _segments(store)[7]
    raw[at + 20] ^= 4
    _tampered(store, raw)
    with pytest.raises(IntegrityError, match="segment 8 of 12"):
        store.load(into={(0, "w"): np.zeros(12 * SEG, np.uint8)})
    # the reusable buffers are free again: a good mirror restores afterwards
    store.save([Record(0, "w", _bytes(12 * SEG, 3))], version=2)
    got = store.load()
    assert got is not None and np.array_equal(got.arrays[(0, "w")], _bytes(12 * SEG, 3))


def test_default_segments_round_trip(files: Backend) -> None:
    """The default segment size, a record of several segments and a batched restore."""
    store = MirrorStore(files, make_engine(KEY), FP)
    big = _bytes((5 << 20) + 11)
    store.save([Record(0, "w", big), Record(1, "s", _bytes(100))], version=1)
    got = store.load()
    assert got is not None and np.array_equal(got.arrays[(0, "w")], big)
    assert got.info.metadata_bytes == OVERHEAD * (3 + 1 + 1)


def test_save_reports_written_ranges(files: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sealed byte is announced to ``WriteTxn.written`` once sealed."""
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(StagedWriteTxn, "written", lambda self, o, n: seen.append((o, n)))
    store = _store(files)
    store.save([Record(0, "w", _bytes(3 * SEG + 5)), Record(1, "b", _bytes(10))], version=1)
    info = store.peek()
    assert info is not None and seen
    covered = np.zeros(info.size, bool)
    for o, n in seen:
        covered[o : o + n] = True
    for e in info.entries:
        for at, _, n in record_segments(e.offset, e.length, SEG):
            assert covered[at : at + n + OVERHEAD].all()
    assert covered[-1]


# --- format 2 still opens ----------------------------------------------------------------------


def _write_old(
    b: Backend, engine: Engine, recs: list[Record], *, fmt: int = 2, segment: int = 0
) -> None:
    """A format 2 writer (one sealed buffer per record), as plinius wrote them before format 3."""
    version, run_id, save_id = 4, os.urandom(ID_BYTES), os.urandom(ID_BYTES)
    entries, m_at = plan(recs, 0)
    doc: dict[str, Any] = {
        "format": fmt,
        "fingerprint": FP.hex(),
        "version": version,
        "iteration": 40,
        "meta": {"k": 1},
        "records": [e.as_json() for e in entries],
    }
    manifest = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    total = m_at + len(manifest) + OVERHEAD
    fields = (MAGIC, fmt, HEADER_SIZE, 0, engine.key_id, version, FP, total, m_at)
    header = _HEADER.pack(
        *fields, len(manifest) + OVERHEAD, len(entries), run_id, save_id, segment
    ).ljust(HEADER_SIZE, b"\0")
    with b.begin_write("mirror", total) as txn:
        txn.view(0, total)[:] = bytes(total)
        txn.view(0, HEADER_SIZE)[:] = header
        for r, e in zip(recs, entries, strict=True):
            aad = record_aad(FP, e.layer, e.name, version, run_id, save_id)
            engine.encrypt_into(aad, r.array, txn.view(e.offset, e.length + OVERHEAD))
        out = txn.view(m_at, len(manifest) + OVERHEAD)
        engine.encrypt_into(_manifest_aad(FP, header, version), manifest, out)
        txn.commit()


def test_format_2_mirror_still_opens(backend: Backend) -> None:
    engine = make_engine(KEY)
    recs = [
        Record(0, "w", _bytes(3 * SEG + 5)),
        Record(1, "b", _bytes(0)),
        Record(2, "c", _bytes(9)),
    ]
    _write_old(backend, engine, recs)
    store = _store(backend)
    got = store.load()
    assert got is not None and got.info.format == 2 and got.info.segment == 0
    assert got.info.version == 4 and got.info.iteration == 40 and got.info.meta == {"k": 1}
    for r in recs:
        assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)
    assert got.info.metadata_bytes == OVERHEAD * (len(recs) + 1)
    assert store.verify() is not None
    raw = bytearray(raw_get(backend, "mirror"))
    raw[got.info.entries[0].offset + 100] ^= 1
    raw_put(backend, "mirror", bytes(raw))
    with pytest.raises(IntegrityError, match="layer 0 w"):
        store.load()


def test_format_2_mirror_restores_through_the_pipeline(
    files: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = [Record(i, "w", _bytes(3 * SEG + i, i)) for i in range(8)]
    _write_old(files, make_engine(KEY), recs)
    calls: list[int] = []
    real = files.read_into
    monkeypatch.setattr(files, "read_into", lambda b, o, out: calls.append(o) or real(b, o, out))
    got = _store(files).load()
    assert got is not None and len(calls) > 1
    for r in recs:
        assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)


def test_format_1_refused_and_bad_segment_size(files: Backend) -> None:
    engine = make_engine(KEY)
    _write_old(files, engine, [Record(0, "w", _bytes(10))], fmt=1)
    with pytest.raises(UnsupportedVersionError, match="--fresh"):
        _store(files).load()
    # authenticated, but a format 3 header must name a page-multiple segment size
    _write_old(files, engine, [Record(0, "w", _bytes(10))], fmt=3, segment=100)
    with pytest.raises(FormatError, match="segment size"):
        _store(files).load()
    _write_old(files, engine, [Record(0, "w", _bytes(10))], fmt=2, segment=SEG)
    with pytest.raises(FormatError, match="segment size"):
        _store(files).load()


def test_bad_segment_size_refused_at_construction(files: Backend) -> None:
    with pytest.raises(ValueError, match="segment size"):
        MirrorStore(files, make_engine(KEY), FP, segment_bytes=PAGE + 1)
