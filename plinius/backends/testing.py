"""The contract every backend must pass (the zarr ``StoreTests`` pattern).

A backend's test module subclasses :class:`BackendContract` and provides one fixture, ``spec``,
returning the spec string of a fresh, empty backend (the crash tests reopen it from that string in
child processes, so the backend must be registered where a fresh interpreter finds it: an entry
point of an installed package). Everything else is inherited, including ``engine_name`` (every
registered crypto engine; one not installed fails with its install hint, e.g. the ``fast`` extra).

This module imports pytest: install ``plinius[test]``. Register the ``slow`` marker in your pytest
configuration (``markers = ["slow: ..."]``; deselect with ``-m "not slow"``), and set
``PLINIUS_KILLS`` (default 20) to choose how many child processes the crash test kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest

from plinius.backends import Backend, Blob, open_backend
from plinius.backends.base import DURABILITY_LEVELS
from plinius.crypto import OVERHEAD, engine_names, make_engine
from plinius.errors import (
    BackendError,
    IntegrityError,
    ModelMismatchError,
    NotAMirrorError,
    StaleMirrorError,
    TruncatedError,
    UnsupportedVersionError,
    WrongKeyError,
)
from plinius.mirror import MirrorStore, Record
from plinius.samples import SampleArea, put_samples

KEY = bytes(range(16))
OTHER_KEY = bytes(range(1, 17))
FP = bytes(32 * [7])
OTHER_FP = bytes(32 * [8])

SIZES = [0, 1, 63, 64, 65, 4095, 4096, 4097, (1 << 20) + 3]

KILLS = int(os.environ.get("PLINIUS_KILLS", "20"))


#: a child process that saves ever larger mirrors to the spec in argv[1] forever, printing each
#: committed version; the crash tests SIGKILL it (or the server under it) at random moments
SAVING_CHILD = textwrap.dedent(
    """
    import sys
    from plinius.backends.testing import model_records, KEY, FP
    from plinius.backends import open_backend
    from plinius.crypto import make_engine
    from plinius.mirror import MirrorStore
    b = open_backend(sys.argv[1])
    s = MirrorStore(b, make_engine(KEY), FP)
    info = s.peek()
    v = 0 if info is None else info.version
    print("ready", flush=True)
    while True:
        v += 1
        s.save(model_records(v, scale=int(v % 7) * 40 + 1), version=v)
        print(v, flush=True)
    """
)


def model_records(version: int, layers: int = 3, scale: int = 1) -> list[Record]:
    """Deterministic buffers whose content and shapes depend on ``version``."""
    rng = np.random.default_rng(version)
    recs = []
    for layer in range(layers):
        n = int(rng.integers(1, 5000)) * scale
        recs.append(Record(layer, "weights", rng.random(n, dtype=np.float32)))
        recs.append(Record(layer, "biases", rng.random(int(rng.integers(1, 64)), dtype=np.float32)))
    return recs


def raw_put(backend: Backend, key: str, data: bytes) -> None:
    """Overwrite a blob with arbitrary bytes (how an attacker or a bad copy would)."""
    with backend.begin_write(key, len(data)) as txn:
        txn.view(0, len(data))[:] = data
        txn.commit()


def raw_get(backend: Backend, key: str) -> bytes:
    blob = backend.read(key)
    assert blob is not None
    return bytes(blob.data)


class BackendContract:
    """Inherited by one test class per backend."""

    @pytest.fixture
    def spec(self, tmp_path: object) -> str:  # pragma: no cover - always overridden
        raise NotImplementedError

    @pytest.fixture(params=engine_names())
    def engine_name(self, request: pytest.FixtureRequest) -> str:
        """Every registered crypto engine (the suite's own: no conftest needed)."""
        return str(request.param)

    @pytest.fixture
    def backend(self, spec: str) -> Iterator[Backend]:
        b = open_backend(spec)
        yield b
        b.close()

    @pytest.fixture
    def store(self, backend: Backend) -> MirrorStore:
        return MirrorStore(backend, make_engine(KEY), FP)

    # --- raw blobs -----------------------------------------------------------------------------

    def test_blob_round_trip_and_keys(self, backend: Backend) -> None:
        assert backend.read("a") is None
        assert backend.map("a") is None
        raw_put(backend, "a", b"hello")
        raw_put(backend, "b.x", b"")
        assert raw_get(backend, "a") == b"hello"
        assert raw_get(backend, "b.x") == b""
        mapped = backend.map("a")
        assert mapped is not None and bytes(mapped) == b"hello"
        assert set(backend.blobs()) >= {"a", "b.x"}
        backend.delete("a")
        assert backend.read("a") is None
        assert "a" not in backend.blobs()
        backend.delete("a")  # idempotent

    def test_views_are_bounds_checked(self, backend: Backend) -> None:
        with backend.begin_write("a", 10) as txn:
            with pytest.raises(BackendError):
                txn.view(5, 6)
            with pytest.raises(BackendError):
                txn.view(-1, 2)
            txn.view(0, 10)[:] = b"x" * 10
            txn.commit()
            with pytest.raises(BackendError):
                txn.view(0, 1)

    def test_abort_and_exception_keep_previous(self, backend: Backend) -> None:
        raw_put(backend, "a", b"old!")
        txn = backend.begin_write("a", 4)
        txn.view(0, 4)[:] = b"new!"
        txn.abort()
        assert raw_get(backend, "a") == b"old!"
        with pytest.raises(RuntimeError), backend.begin_write("a", 8) as txn2:
            txn2.view(0, 8)[:] = b"newer!!!"
            raise RuntimeError("crash in the middle")
        assert raw_get(backend, "a") == b"old!"

    def test_replace_with_other_sizes(self, backend: Backend) -> None:
        for size in [10, 5000, 10, 0, 70000, 3]:
            data = bytes(random.Random(size).randbytes(size))
            raw_put(backend, "a", data)
            assert raw_get(backend, "a") == data

    def test_ranged_read(self, backend: Backend) -> None:
        data = random.Random(7).randbytes(10000)
        raw_put(backend, "a", data)
        raw_put(backend, "e", b"")
        for offset, length in [(0, 0), (0, 10), (5, 100), (9990, 10), (10000, 0), (123, None)]:
            blob = backend.read("a", offset, length)
            assert blob is not None
            want = data[offset:] if length is None else data[offset : offset + length]
            assert bytes(blob.data) == want
            assert blob.size == len(data) and blob.stats.bytes == len(want)
        for offset, length in [(9995, 10), (-1, 2), (10001, 0), (0, 10001), (5, -1)]:
            with pytest.raises(BackendError, match="outside"):
                backend.read("a", offset, length)
        empty = backend.read("e", 0, 0)
        assert empty is not None and bytes(empty.data) == b"" and empty.size == 0
        with pytest.raises(BackendError):
            backend.read("e", 0, 1)
        assert backend.read("missing", 0, 4) is None
        whole = backend.read("a")
        assert whole is not None and bytes(whole.data) == data and whole.size == len(data)

    def test_peek_reads_header_and_manifest_only(
        self, backend: Backend, store: MirrorStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        big = np.random.default_rng(3).random(1 << 18, dtype=np.float32)  # a 1 MiB record
        store.save([Record(99, "weights", big), *model_records(1)], version=1)
        moved: list[int] = []
        real_read = backend.read

        def spy(key: str, offset: int = 0, length: int | None = None) -> Blob | None:
            blob = real_read(key, offset, length)
            moved.append(0 if blob is None else blob.data.nbytes)
            return blob

        monkeypatch.setattr(backend, "read", spy)
        info = store.peek()
        assert info is not None and info.version == 1 and info.size > 1 << 20
        if backend.ranged_read:
            assert sum(moved) < 64 << 10, moved  # header + manifest, never the records
        else:
            assert moved == [info.size]  # one whole read

    def test_reopen_sees_committed_state(self, spec: str, backend: Backend) -> None:
        raw_put(backend, "a", b"persisted")
        backend.close()
        with open_backend(spec) as again:
            assert raw_get(again, "a") == b"persisted"

    def test_describe(self, backend: Backend) -> None:
        info = backend.describe()
        assert info.backend == backend.name
        assert info.durability in DURABILITY_LEVELS
        assert info.durability in type(backend).durability_levels
        assert info.fs_type and info.path and info.device
        assert info.byte_addressable == backend.byte_addressable
        d = info.as_dict()
        assert {"fs_type", "mount_options", "device", "dax", "emulated", "durability"} <= set(d)

    def test_bad_keys_refused(self, backend: Backend) -> None:
        from plinius.errors import ConfigError

        for bad in ["", "../x", "a/b", ".hidden", "x" * 65]:
            with pytest.raises(ConfigError):
                backend.begin_write(bad, 1)

    # --- mirrors -------------------------------------------------------------------------------

    @pytest.mark.parametrize("size", SIZES)
    def test_mirror_round_trip_sizes(self, backend: Backend, engine_name: str, size: int) -> None:
        store = MirrorStore(backend, make_engine(KEY, engine_name), FP)
        rng = np.random.default_rng(size)
        buf = rng.integers(0, 256, size, dtype=np.uint8)
        recs = [
            Record(0, "weights", buf),
            Record(1, "scales", rng.random((3, 5), dtype=np.float32)),
            Record(1, "rolling_mean", np.arange(7, dtype=np.float64)),
            Record(2, "empty", np.zeros((0, 4), dtype=np.float32)),
        ]
        store.save(recs, version=5, iteration=42, meta={"loss": 0.5})
        got = store.load()
        assert got is not None
        assert got.info.version == 5 and got.info.iteration == 42
        assert got.info.meta == {"loss": 0.5}
        for r in recs:
            out = got.arrays[(r.layer, r.name)]
            assert out.dtype == r.array.dtype and out.shape == r.array.shape
            assert np.array_equal(out, r.array)
        assert got.info.metadata_bytes == OVERHEAD * (len(recs) + 1)

    @pytest.mark.slow
    def test_mirror_256_mib(self, backend: Backend) -> None:
        store = MirrorStore(backend, make_engine(KEY), FP)
        big = np.frombuffer(np.random.default_rng(1).bytes(256 << 20), dtype=np.float32)
        store.save([Record(0, "weights", big)], version=1)
        dest = np.empty_like(big)
        got = store.load(into={(0, "weights"): dest})
        assert got is not None and got.stats.bytes > (256 << 20)
        assert np.array_equal(dest.view(np.uint8), big.view(np.uint8))

    def test_no_large_allocation_per_save(self, store: MirrorStore) -> None:
        """After a warm-up, a 16 MiB save and restore allocate < 1 MiB of fresh Python memory."""
        import tracemalloc

        w = np.random.default_rng(0).random(4 << 20, dtype=np.float32)
        recs = [Record(99, "weights", w), *model_records(1)]
        into = {(r.layer, r.name): np.empty_like(r.array) for r in recs}
        store.save(recs, version=1)
        store.load(into=into)
        tracemalloc.start()
        try:
            store.save(recs, version=2)
            store.load(into=into)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < (1 << 20), f"peak fresh allocation {peak} B"

    def test_restore_in_place(self, store: MirrorStore) -> None:
        recs = model_records(3)
        store.save(recs, version=3)
        into = {(r.layer, r.name): np.zeros_like(r.array) for r in recs}
        got = store.load(into=into)
        assert got is not None
        for r in recs:
            assert got.arrays[(r.layer, r.name)] is into[(r.layer, r.name)]
            assert np.array_equal(into[(r.layer, r.name)], r.array)

    def test_no_mirror_gives_none(self, store: MirrorStore) -> None:
        assert store.load() is None
        assert store.peek() is None

    def test_stats_account_for_time(self, store: MirrorStore) -> None:
        s = store.save(model_records(1, scale=50), version=1)
        assert s.bytes > 0 and s.encrypt_s > 0 and s.total_s >= s.encrypt_s
        got = store.load()
        assert got is not None and got.stats.decrypt_s > 0 and got.stats.bytes == s.bytes

    def test_wrong_key(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(1), version=1)
        other = MirrorStore(backend, make_engine(OTHER_KEY), FP)
        with pytest.raises(WrongKeyError, match="key id"):
            other.load()
        assert store.load() is not None  # still intact

    def test_other_model(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(1), version=1)
        with pytest.raises(ModelMismatchError):
            MirrorStore(backend, make_engine(KEY), OTHER_FP).load()

    def test_shape_mismatch_on_restore(self, store: MirrorStore) -> None:
        recs = model_records(1)
        store.save(recs, version=1)
        into = {(r.layer, r.name): np.zeros(r.array.size + 1, np.float32) for r in recs}
        with pytest.raises(ModelMismatchError, match="the model has"):
            store.load(into=into)

    def test_tampered_record(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(2), version=2)
        info = store.peek()
        assert info is not None
        e = info.entries[2]
        data = bytearray(raw_get(backend, "mirror"))
        data[e.offset + 12 + e.length // 2] ^= 0x01
        raw_put(backend, "mirror", bytes(data))
        with pytest.raises(IntegrityError, match=f"layer {e.layer} {e.name}"):
            store.load()
        with pytest.raises(IntegrityError, match=f"layer {e.layer} {e.name}"):
            store.verify()
        assert store.peek() is not None  # the manifest alone is still authentic

    def test_verify_and_open_any_model(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(4), version=4, iteration=9)
        info = store.verify(min_version=4)
        assert info is not None and info.iteration == 9
        anyone = MirrorStore(backend, make_engine(KEY), None)
        got = anyone.load()
        assert got is not None and got.info.fingerprint == FP
        with pytest.raises(ValueError, match="fingerprint"):
            anyone.save(model_records(1), version=5)

    def test_tampered_tag_iv_and_header(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(2), version=2)
        good = raw_get(backend, "mirror")
        info = store.peek()
        assert info is not None
        e = info.entries[0]
        for pos in (e.offset, e.offset + 12 + e.length, 120, info.size - 1):
            data = bytearray(good)
            data[pos] ^= 0x80
            raw_put(backend, "mirror", bytes(data))
            with pytest.raises(IntegrityError):
                store.load()

    def test_swapped_records(self, backend: Backend, store: MirrorStore) -> None:
        w = np.arange(100, dtype=np.float32)
        store.save([Record(0, "weights", w), Record(1, "weights", w + 1)], version=1)
        info = store.peek()
        assert info is not None
        a, b = info.entries
        data = bytearray(raw_get(backend, "mirror"))
        n = a.length + OVERHEAD
        sa = data[a.offset : a.offset + n]
        data[a.offset : a.offset + n] = data[b.offset : b.offset + n]
        data[b.offset : b.offset + n] = sa
        raw_put(backend, "mirror", bytes(data))
        with pytest.raises(IntegrityError, match="layer 0 weights"):
            store.load()

    def test_replayed_old_mirror(self, backend: Backend, store: MirrorStore) -> None:
        recs = model_records(1)
        store.save(recs, version=1)
        old = raw_get(backend, "mirror")
        store.save(recs, version=2)
        new = raw_get(backend, "mirror")
        # the whole old mirror put back: refused once the caller knows version 2 was committed
        raw_put(backend, "mirror", old)
        with pytest.raises(StaleMirrorError, match="version 1"):
            store.load(min_version=2)
        # an old record spliced into the new mirror: its AAD names version 1
        info = store.peek()
        assert info is not None
        e = info.entries[0]
        spliced = bytearray(new)
        n = e.length + OVERHEAD
        spliced[e.offset : e.offset + n] = old[e.offset : e.offset + n]
        raw_put(backend, "mirror", bytes(spliced))
        with pytest.raises(IntegrityError, match="layer 0 weights"):
            store.load()

    def test_truncated_mirror(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(1), version=1)
        good = raw_get(backend, "mirror")
        for cut in (len(good) - 1, len(good) // 2, 100, 0):
            raw_put(backend, "mirror", good[:cut])
            with pytest.raises((TruncatedError, NotAMirrorError)):
                store.load()

    def test_foreign_blob(self, backend: Backend, store: MirrorStore) -> None:
        raw_put(backend, "mirror", random.Random(0).randbytes(5000))
        with pytest.raises(NotAMirrorError, match="not a plinius mirror"):
            store.load()

    def test_newer_format(self, backend: Backend, store: MirrorStore) -> None:
        store.save(model_records(1), version=1)
        data = bytearray(raw_get(backend, "mirror"))
        data[8] = 99  # format version field
        raw_put(backend, "mirror", bytes(data))
        with pytest.raises(UnsupportedVersionError, match="upgrade plinius"):
            store.load()

    # --- sample area ---------------------------------------------------------------------------

    def test_sample_area(self, backend: Backend) -> None:
        samples = [bytes([i % 256]) * 812 for i in range(300)]
        put_samples(backend, "train", samples, 812, 300)
        area = SampleArea(backend, "train")
        assert len(area) == 300 and area.sample_size == 812
        for i in (0, 1, 150, 299):
            assert bytes(area[i]) == samples[i]
        with pytest.raises(IndexError):
            area[300]

    def test_sample_area_wrong_count_keeps_previous(self, backend: Backend) -> None:
        put_samples(backend, "train", [b"a" * 8] * 4, 8, 4)
        with pytest.raises(ValueError):
            put_samples(backend, "train", [b"b" * 8] * 3, 8, 4)
        with pytest.raises(ValueError):
            put_samples(backend, "train", [b"b" * 7] * 4, 8, 4)
        area = SampleArea(backend, "train")
        assert bytes(area[3]) == b"a" * 8

    # --- crash consistency ---------------------------------------------------------------------

    def test_interrupted_saves_keep_a_committed_mirror(self, spec: str) -> None:
        """SIGKILL a saving child at random moments; every reload is exactly one committed state."""
        rng = random.Random(1234)
        last_committed = 0
        for _ in range(KILLS):
            proc = subprocess.Popen(
                [sys.executable, "-P", "-c", SAVING_CHILD, spec], stdout=subprocess.PIPE, text=True
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
            printed = [int(x) for x in out.split()]
            if printed:
                last_committed = max(last_committed, printed[-1])
            with open_backend(spec) as b:
                got = MirrorStore(b, make_engine(KEY), FP).load()
            if last_committed == 0 and got is None:
                continue
            assert got is not None
            v = got.info.version
            # the child may have committed one more version than it managed to print
            assert v in (last_committed, last_committed + 1), (v, last_committed)
            last_committed = v
            for r in model_records(v, scale=int(v % 7) * 40 + 1):
                assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)
        assert last_committed > 0, "the child never committed a mirror"
