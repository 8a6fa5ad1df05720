"""The storage contract every backend must pass (the zarr ``StoreTests`` pattern).

A backend's test module subclasses :class:`BackendContract` and provides one fixture, ``spec``,
returning the spec string of a fresh, empty backend at a location that does not exist yet (the
first ordinary open creates it; the read-only test opens it as ``plinius verify`` does first). The
crash test reopens it from that string in child processes, so the backend must be registered where
a fresh interpreter finds it: an entry point of an installed package. Everything else is
inherited.

The contract is storage: blobs, keys, write views, ranged reads and ``read_into``, abort and
exceptions keeping the previous version, replacement by other sizes, reopening, ``describe``,
refused names, read-only opens (``create="never"`` where the class declares
``read_only_open``, else a plain open that creates nothing), a second opener, and what only a
real backend can show because the backend changes the behaviour: saves SIGKILLed at random
moments, the ranged peek at a mirror (header and manifest only), a mirror round trip at a few
sizes (one crypto engine, ``engine_name``: ``auto`` unless a subclass overrides it), and the
sample area. The mirror format's own features and the attacks on it (every size with every
engine, wrong key, tampering, swapped, replayed and truncated mirrors, ...) do not depend on the
backend: plinius runs them once, in its own tests (``tests/test_mirror_format_attacks.py``).

This module imports pytest: install ``plinius[test]``. Set ``PLINIUS_KILLS`` (default 20) to
choose how many child processes the crash test kills.
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

from plinius.backends import (
    Backend,
    Blob,
    backend_class,
    open_backend,
    open_read_only,
    parse_spec,
)
from plinius.backends.base import DURABILITY_LEVELS
from plinius.core.crypto import OVERHEAD, make_engine
from plinius.core.errors import (
    BackendError,
    BackendLockedError,
    ConfigError,
    NotFoundError,
    PoolLockedError,
)
from plinius.core.memory import PAGE
from plinius.format.mirror import MirrorStore, Record
from plinius.format.samples import SampleArea, put_samples

KEY = bytes(range(16))
OTHER_KEY = bytes(range(1, 17))
FP = bytes(32 * [7])
OTHER_FP = bytes(32 * [8])

#: every size plinius' own mirror tests round-trip (with every engine, on one backend)
SIZES = [0, 1, 63, 64, 65, 4095, 4096, 4097, (1 << 20) + 3]
#: the sizes the contract round-trips on each backend: empty, across a page, 1 MiB + 3
CONTRACT_SIZES = [0, 4097, (1 << 20) + 3]

KILLS = int(os.environ.get("PLINIUS_KILLS", "20"))


#: a child process that saves ever larger mirrors to the spec in argv[1] forever, printing each
#: committed version; the crash tests SIGKILL it (or the server under it) at random moments
SAVING_CHILD = textwrap.dedent(
    """
    import sys
    from plinius.backends.testing import model_records, KEY, FP
    from plinius.backends import open_backend
    from plinius.core.crypto import make_engine
    from plinius.format.mirror import MirrorStore
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


def check_mirror_round_trip(store: MirrorStore, size: int) -> None:
    """Save records of several dtypes and shapes (one of ``size`` bytes, one empty) and load
    them back: same bytes, dtypes, shapes, version, iteration, meta and metadata size."""
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
    # an IV and a tag per sealed segment (at least one per record) and for the manifest
    segments = sum(max(1, -(-r.array.nbytes // store.segment)) for r in recs)
    assert got.info.metadata_bytes == OVERHEAD * (segments + 1)
    if size <= store.segment:
        assert got.info.metadata_bytes == OVERHEAD * (len(recs) + 1)


class BackendContract:
    """Inherited by one test class per backend: the storage contract."""

    @pytest.fixture
    def spec(self, tmp_path: object) -> str:  # pragma: no cover - always overridden
        raise NotImplementedError

    @pytest.fixture
    def engine_name(self) -> str:
        """The one crypto engine the contract's mirrors use (``auto``: the first installed).
        plinius' own mirror tests run every engine; storage does not change with it."""
        return "auto"

    @pytest.fixture
    def backend(self, spec: str) -> Iterator[Backend]:
        b = open_backend(spec)
        yield b
        b.close()

    @pytest.fixture
    def store(self, backend: Backend, engine_name: str) -> MirrorStore:
        return MirrorStore(backend, make_engine(KEY, engine_name), FP)

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

    def test_read_into(self, backend: Backend) -> None:
        """Ranged reads into the caller's memory (how a restore streams a large mirror)."""
        size = 3 * PAGE + 123
        data = random.Random(11).randbytes(size)
        raw_put(backend, "a", data)
        for offset, n in [(0, size), (0, 0), (PAGE - 3, PAGE + 7), (size - 5, 5), (size, 0)]:
            out = bytearray(n)
            assert backend.read_into("a", offset, memoryview(out)) == n
            assert bytes(out) == data[offset : offset + n]
        with pytest.raises(BackendError, match="outside"):
            backend.read_into("a", size - 4, memoryview(bytearray(5)))
        with pytest.raises(NotFoundError):
            backend.read_into("missing", 0, memoryview(bytearray(1)))

    def test_reopen_sees_committed_state(self, spec: str, backend: Backend) -> None:
        raw_put(backend, "a", b"persisted")
        backend.close()
        with open_backend(spec) as again:
            assert raw_get(again, "a") == b"persisted"

    def test_read_only_open(self, spec: str, engine_name: str) -> None:
        """What ``plinius verify``/``export``/``infer`` do, ``open_read_only(spec)``,
        checked against what the class declares (``Backend.read_only_open``). Declared: it gets
        ``create="never"``, which refuses a location that does not exist with
        :class:`NotFoundError` (one line). Not declared: it is opened plainly, which either
        refuses the same way or opens. Either way nothing is created there, and an existing
        backend's blobs and mirror are read."""
        name, location, _ = parse_spec(spec)
        cls = backend_class(name)
        declared = cls.read_only_open
        how = (
            f'{cls.__name__} declares read_only_open = True: open_backend({spec!r}, create="never")'
            if declared
            else f"{cls.__name__} declares read_only_open = False (the default): plinius' "
            f"read-only commands open it plainly, open_backend({spec!r})"
        )
        path = location if cls.locality == "local" and os.path.isabs(location) else None
        for _ in range(2):  # twice: the first attempt created nothing
            try:
                ro = open_read_only(spec)
            except NotFoundError as exc:
                assert str(exc) and "\n" not in str(exc), repr(exc)
            else:
                ro.close()
                if declared:
                    pytest.fail(
                        f"{how} opened a location that does not exist (or the spec fixture "
                        "names one that exists already)"
                    )
            if path is not None:
                assert not os.path.lexists(path), (
                    f"{how} created {path}: a read-only open must create nothing"
                    + ("" if declared else "; accept create=auto|never and declare it")
                )
        recs = model_records(2)
        with open_backend(spec) as b:
            raw_put(b, "a", b"kept")
            MirrorStore(b, make_engine(KEY, engine_name), FP).save(recs, version=2, iteration=3)
        with open_read_only(spec) as ro:
            assert raw_get(ro, "a") == b"kept"
            got = MirrorStore(ro, make_engine(KEY, engine_name), FP).load()
            assert got is not None and got.info.version == 2 and got.info.iteration == 3
            for r in recs:
                assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)

    def test_second_opener(self, spec: str, backend: Backend) -> None:
        """A backend with a lock refuses a second opener of its location in one line (and keeps
        refusing: a refused open does not drop the holder's lock); one without sees the
        committed state. Either way the holder goes on working."""
        raw_put(backend, "a", b"first")
        try:
            other = open_backend(spec)
        except (BackendLockedError, PoolLockedError) as exc:
            assert "\n" not in str(exc), repr(exc)
            with pytest.raises(type(exc)):
                open_backend(spec)
        else:
            with other:
                assert raw_get(other, "a") == b"first"
        raw_put(backend, "a", b"second")
        assert raw_get(backend, "a") == b"second"

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
        for bad in ["", "../x", "a/b", ".hidden", "x" * 65]:
            with pytest.raises(ConfigError):
                backend.begin_write(bad, 1)

    # --- mirrors: what the backend changes -----------------------------------------------------

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

    @pytest.mark.parametrize("size", CONTRACT_SIZES)
    def test_mirror_round_trip(self, store: MirrorStore, size: int) -> None:
        check_mirror_round_trip(store, size)

    def test_mirror_round_trip_in_batches(self, backend: Backend, engine_name: str) -> None:
        """One-page segments: a 1 MiB mirror is many sealed segments, which a backend that
        copies its reads restores batch by batch through ``read_into``."""
        store = MirrorStore(backend, make_engine(KEY, engine_name), FP, segment_bytes=PAGE)
        check_mirror_round_trip(store, (1 << 20) + 3)

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
