"""Issue 25 item 7: a mirror's fixed cost, cached without changing a byte of what it means.

* A save reuses what its layout fixes (offsets, the manifest's record list, every segment's
  place and associated data around the version, run and save ids): the bytes are the ones the
  reference functions build, the cache follows a layout that changes (an optimizer that grows
  its state), and a mirror saved from the cache restores bit-exact and still refuses tampering
  and spliced segments.
* Versions of a run stay consecutive across processes; the crash cases ("the one save in
  flight") are still recovered and a put-back older mirror refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import plinius.format.mirror as mirror_mod
from plinius.backends.base import Backend
from plinius.backends.registry import open_backend
from plinius.core.crypto import generate_key, make_engine, write_key_file
from plinius.core.errors import IntegrityError, RollbackError
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import SimulatedPlatform
from plinius.format.mirror import (
    MirrorStore,
    Record,
    _manifest_bytes,
    record_aad,
    record_segments,
    segment_aad,
)
from plinius.nn import load_model
from plinius.session import Session

KEY = bytes(range(16))
FP = bytes(range(32))
SEG = 4096  # small segments: records of several segments with little memory


@pytest.fixture
def backend(shm_dir: Path) -> Iterator[Backend]:
    with open_backend(f"tmpfs:{shm_dir / 'm'}") as b:
        yield b


def _records(rng: np.random.Generator, grown: bool = False) -> list[Record]:
    out = [
        Record(0, "conv.weight", rng.random((3, 5000), dtype=np.float32)),  # 15 segments
        Record(0, "conv.bias", rng.random(7, dtype=np.float32)),
        Record(2, "rng", rng.integers(0, 255, 100, dtype=np.uint8)),
        Record(0, "empty", np.zeros(0, np.float32)),
    ]
    if grown:  # the optimizer's momentum, created at its first step
        out.insert(2, Record(1, "0.momentum_buffer", rng.random((3, 5000), dtype=np.float32)))
    return out


def test_the_cached_layout_builds_the_reference_bytes(backend: Backend) -> None:
    store = MirrorStore(backend, make_engine(KEY), FP, segment_bytes=SEG)
    records = _records(np.random.default_rng(0))
    layout = store._layout(records)
    run, save, version = os.urandom(16), os.urandom(16), 77
    stamp = mirror_mod._STAMP_AAD.pack(version) + run + save
    for rec, e, segs in zip(records, layout.entries, layout.segments, strict=True):
        want = record_segments(e.offset, e.length, SEG)
        assert [(at, start, n) for _, _, at, start, n in segs] == want
        base = record_aad(FP, rec.layer, rec.name, version, run, save)
        for i, (prefix, suffix, *_) in enumerate(segs):
            assert prefix + stamp + suffix == segment_aad(base, i, len(segs), e.length, SEG)
    meta = {"net": {"layout": [[0, "w", "torch.float32", [3], False]], "x": 1.5}, "cfg": "é"}
    ref = _manifest_bytes(version, 12, FP, meta, layout.entries)
    assert layout.manifest(version, 12, meta) == ref
    assert json.loads(layout.manifest(version, True, meta))["iteration"] is True


def test_a_changed_layout_is_built_again_and_restores_bit_exact(backend: Backend) -> None:
    store = MirrorStore(backend, make_engine(KEY), FP, segment_bytes=SEG)
    rng = np.random.default_rng(1)
    small = _records(rng)
    store.save(small, 1, 1, {"a": 1})
    first = store._layout(small)
    assert store._layout(small) is first  # the same layout: cached
    grown = [*small[:2], _records(rng, grown=True)[2], *small[2:]]
    store.save(grown, 2, 2, {"a": 2})
    second = store._layout(grown)
    assert second is not first
    assert [e.name for e in second.entries] == [r.name for r in grown]
    got = store.load()
    assert got is not None and got.info.version == 2 and got.info.meta == {"a": 2}
    for r in grown:
        assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)
    # the same names with another shape is another layout too
    reshaped = [Record(r.layer, r.name, r.array.reshape(-1)) for r in grown]
    store.save(reshaped, 3, 3, {})
    assert store._layout(reshaped) is not second
    got = store.load()
    assert got is not None and got.arrays[(0, "conv.weight")].shape == (15000,)


def test_saves_from_the_cache_verify_restore_and_refuse_spliced_segments(
    backend: Backend, shm_dir: Path
) -> None:
    store = MirrorStore(backend, make_engine(KEY), FP, segment_bytes=SEG)
    rng = np.random.default_rng(2)
    records = _records(rng)
    run = os.urandom(16)
    store.save(records, 1, 1, {}, run_id=run)
    old = (shm_dir / "m" / "mirror").read_bytes()
    for r in records:  # the model trains on: new values, same layout
        r.array[...] = rng.random(r.array.shape).astype(r.array.dtype) if r.array.size else 0
    store.save(records, 2, 2, {}, run_id=run)
    new = (shm_dir / "m" / "mirror").read_bytes()
    assert len(new) == len(old)  # padded alike: one size for the run
    info = store.verify()
    assert info is not None and info.version == 2
    got = store.load()
    assert got is not None
    for r in records:
        assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)
    e = info.entries[0]
    at, _, n = record_segments(e.offset, e.length, SEG)[3]
    for forged in (
        new[: at + 20] + bytes([new[at + 20] ^ 1]) + new[at + 21 :],  # one bit of a segment
        new[:at] + old[at : at + n + 28] + new[at + n + 28 :],  # the same segment, last save
    ):
        with backend.begin_write("mirror", len(forged)) as txn:
            txn.view(0, len(forged))[:] = forged
            txn.commit()
        with pytest.raises(IntegrityError, match="segment 4 of 15"):
            store.load()


def _session(tmp: Path) -> Session:
    key = tmp / "k.key"
    if not key.exists():
        write_key_file(key, generate_key())
    platform = SimulatedPlatform(tmp / "cpu", state_dir=tmp / "state")
    return Session(load_model("tiny"), label="tiny", key_file=key, platform=platform, say=print)


def test_versions_go_on_consecutively_and_an_old_mirror_is_refused(
    tmp_path: Path, shm_dir: Path
) -> None:
    s = _session(tmp_path)
    spec = f"tmpfs:{shm_dir / 'm'}"
    try:
        s.attach(s.open(spec, mirror_bytes=1 << 20))
        assert s.restore().iteration is None
        guard = s.enclave._guard
        assert guard is not None
        counters, slot = guard.counters, guard.slot
        blobs = []
        for _ in range(3):
            s.mirror()
            state = counters.read(slot)
            assert state is not None and state.committed is not None and state.pending is None
            assert state.committed.version == state.high == len(blobs) + 1
            got = s.backend.read("mirror") if s.backend else None
            assert got is not None
            blobs.append(bytes(got.data))
    finally:
        s.close()
    # a later process: the mirror last committed restores, and the versions go on from it
    s2 = _session(tmp_path)
    try:
        b = s2.open(spec, mirror_bytes=1 << 20)
        s2.attach(b)
        assert s2.restore().iteration is not None
        s2.mirror()
        s2.mirror()
        assert s2.enclave._version == 5
    finally:
        s2.close()
    # an older mirror put back is refused: neither committed nor the one in flight
    s3 = _session(tmp_path)
    try:
        b = s3.open(spec, mirror_bytes=1 << 20)
        with b.begin_write("mirror", len(blobs[1])) as txn:
            txn.view(0, len(blobs[1]))[:] = blobs[1]
            txn.commit()
        s3.attach(b)
        with pytest.raises(RollbackError):
            s3.restore()
    finally:
        s3.close()


def test_the_one_save_in_flight_is_recovered_after_a_kill(tmp_path: Path, shm_dir: Path) -> None:
    """A kill after the backend committed, before the record's commit: the record names the
    save in flight (its ``begin``), so the new mirror is accepted; a
    kill before the backend's commit leaves the previous mirror, also accepted."""
    spec = f"tmpfs:{shm_dir / 'm'}"
    for killed_after_backend in (True, False):
        s = _session(tmp_path)
        try:
            s.attach(s.open(spec, mirror_bytes=1 << 20))
            s.restore()
            s.mirror()
            before = s.enclave._version
            real = MirrorCounters.commit

            def die(*args: object, **kw: object) -> None:
                raise KeyboardInterrupt  # the process dies here (nothing after it runs)

            if killed_after_backend:
                MirrorCounters.commit = die  # type: ignore[method-assign]
            else:
                s.backend.begin_write = die  # type: ignore[method-assign,union-attr]
            try:
                with pytest.raises(KeyboardInterrupt):
                    s.mirror()
            finally:
                MirrorCounters.commit = real  # type: ignore[method-assign]
        finally:
            if not killed_after_backend and s.backend is not None:
                del s.backend.begin_write
            s.close()
        s2 = _session(tmp_path)
        try:
            s2.attach(s2.open(spec, mirror_bytes=1 << 20))
            s2.restore()
            want = before + 1 if killed_after_backend else before
            assert s2.enclave._version >= want
            assert s2.backend is not None
            store = MirrorStore(s2.backend, s2.enclave._eng, s2.model.fingerprint())
            info = store.peek()
            assert info is not None and info.version == want
        finally:
            s2.close()


def test_the_overhead_section_judges_the_fixed_cost_and_prints_it() -> None:
    from plinius.lab.bench.sections import overhead
    from plinius.lab.bench.verdicts import TargetTable

    def row(ratio: tuple[float, float, float]) -> dict[str, object]:
        med, lo, hi = ratio
        return {
            "kind": overhead.FIXED,
            "model": "tiny",
            "backend": "romulus",
            "models": {"tiny": "Linear", "cnn": "CNN"},
            "ms": {"tiny-sync": {"median": 0.5, "ci95": [0.45, 0.55], "n": 30}},
            "tiny_vs_torch_save": {"median": med, "ci95": [lo, hi], "n": 30, "paired": True},
        }

    verdicts = {}
    for ratio in ((1.4, 1.3, 1.5), (6.0, 5.5, 7.0), (5.0, 4.0, 6.0)):
        t = TargetTable(None)
        overhead.targets({overhead.NAME: [row(ratio)]}, t)
        got = {r.id: r for r in t.rows}
        assert got["torch_overhead_sync"].bar_value == 0.10  # the example CNN, sync
        assert got["torch_overhead_async"].bar_value == 0.05
        verdicts[ratio[0]] = got["torch_fixed_cost"].verdict
        assert got["torch_overhead_sync"].verdict == "not run"  # the fixed row is not the CNN's
    assert verdicts == {1.4: "met", 6.0: "not met", 5.0: "inconclusive"}
    text = "\n".join(overhead.render({overhead.NAME: [row((1.4, 1.3, 1.5))]}))
    assert "Fixed host cost" in text and "0.500 [0.450–0.550]" in text and "1.40" in text
    t = TargetTable(None)
    overhead.targets({overhead.NAME: [{"kind": overhead.FIXED, "not_run": "no torch"}]}, t)
    assert {r.id: r for r in t.rows}["torch_fixed_cost"].why == "no torch"
