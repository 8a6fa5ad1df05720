"""The mirror format's features and the attacks on it, once each rather than once per backend.

The storage contract every backend passes is :class:`plinius.backends.testing.BackendContract`
(``test_backend_*.py`` and the plug-in example): blobs, ranged reads, atomic replacement, SIGKILLed
saves, read-only opens, a mirror round trip at a few sizes with one engine. What the mirror format
does with the bytes storage hands back does not depend on the backend (a small mirror is read and
opened the same way from any of them), so every size with every crypto engine and every attack
(wrong key, other model, tampered, swapped, replayed, truncated, foreign and newer mirrors) runs
here once, on tmpfs.

Where the backend does change the behaviour, a test runs once per backend implementation
(:data:`REAL`): the memory a save and a restore allocate (staging memory reused by the file
backends, O_DIRECT writes, views into a PM pool, chunks sent to a Redis server) and a 256 MiB
mirror through each write and read path. ``ssd`` and ``dax`` share the file backends' code with
``tmpfs``; the Redis case starts a real ``redis-server`` and is a system test.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from plinius.backends import Backend, open_backend
from plinius.backends.testing import (
    FP,
    KEY,
    OTHER_FP,
    OTHER_KEY,
    SIZES,
    check_mirror_round_trip,
    model_records,
    raw_get,
    raw_put,
)
from plinius.core.crypto import OVERHEAD, make_engine
from plinius.core.errors import (
    IntegrityError,
    ModelMismatchError,
    NotAMirrorError,
    StaleMirrorError,
    TruncatedError,
    UnsupportedVersionError,
    WrongKeyError,
)
from plinius.format.mirror import MirrorStore, Record

if TYPE_CHECKING:
    from plinius.backends.redis_server import RedisServer

#: one backend per implementation whose behaviour a test depends on
REAL = [
    "tmpfs",  # the file backends (tmpfs, ssd, dax): staged in reusable memory, pwrite, rename
    "ssd-direct",  # O_DIRECT writes from aligned staging memory, on a disk
    "romulus",  # sealed straight into a PM pool, restored from its mapping
    pytest.param("redis", marks=pytest.mark.system),  # chunks on a real server
]


@pytest.fixture
def backend(shm_dir: Path) -> Iterator[Backend]:
    """The one backend the format and the attacks run on."""
    with open_backend(f"tmpfs:{shm_dir / 'store'}") as b:
        yield b


@pytest.fixture
def store(backend: Backend) -> MirrorStore:
    return MirrorStore(backend, make_engine(KEY), FP)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    from plinius.backends.redis_server import RedisServer

    with RedisServer(appendonly=True, appendfsync="always") as srv:
        yield srv


@pytest.fixture(params=REAL)
def real_backend(
    request: pytest.FixtureRequest,
    shm_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Backend]:
    kind = str(request.param)
    if kind == "redis":
        from plinius.backends.redis import PASSWORD_ENV

        monkeypatch.delenv(PASSWORD_ENV, raising=False)  # the throw-away server has none
        srv: RedisServer = request.getfixturevalue("redis_server")
        spec = f"{srv.url}?prefix=t-{uuid.uuid4().hex[:12]}&chunk=64K"
    else:
        # pools are sized at creation: the 256 MiB mirror needs room for it in main
        pool = "640M" if "256_mib" in request.node.name else "48M"
        spec = {
            "tmpfs": f"tmpfs:{shm_dir / 'store'}",
            "ssd-direct": f"ssd:{tmp_path / 'store'}?direct=1",
            "romulus": f"romulus:{shm_dir / 'plinius.pool'}?size={pool}",
        }[kind]
    with open_backend(spec) as b:
        yield b


# --- the format ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_mirror_round_trip_sizes(backend: Backend, engine_name: str, size: int) -> None:
    check_mirror_round_trip(MirrorStore(backend, make_engine(KEY, engine_name), FP), size)


def test_restore_in_place(store: MirrorStore) -> None:
    recs = model_records(3)
    store.save(recs, version=3)
    into = {(r.layer, r.name): np.zeros_like(r.array) for r in recs}
    got = store.load(into=into)
    assert got is not None
    for r in recs:
        assert got.arrays[(r.layer, r.name)] is into[(r.layer, r.name)]
        assert np.array_equal(into[(r.layer, r.name)], r.array)


def test_no_mirror_gives_none(store: MirrorStore) -> None:
    assert store.load() is None
    assert store.peek() is None


def test_stats_account_for_time(store: MirrorStore) -> None:
    s = store.save(model_records(1, scale=50), version=1)
    assert s.bytes > 0 and s.encrypt_s > 0 and s.total_s >= s.encrypt_s
    got = store.load()
    assert got is not None and got.stats.decrypt_s > 0 and got.stats.bytes == s.bytes


def test_verify_and_open_any_model(backend: Backend, store: MirrorStore) -> None:
    store.save(model_records(4), version=4, iteration=9)
    info = store.verify(min_version=4)
    assert info is not None and info.iteration == 9
    anyone = MirrorStore(backend, make_engine(KEY), None)
    got = anyone.load()
    assert got is not None and got.info.fingerprint == FP
    with pytest.raises(ValueError, match="fingerprint"):
        anyone.save(model_records(1), version=5)


# --- what the backend changes: allocations, a 256 MiB mirror ----------------------------------


def test_no_large_allocation_per_save(real_backend: Backend) -> None:
    """After a warm-up, a 16 MiB save and restore allocate < 1 MiB of fresh Python memory."""
    import tracemalloc

    store = MirrorStore(real_backend, make_engine(KEY), FP)
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


@pytest.mark.slow
def test_mirror_256_mib(real_backend: Backend) -> None:
    store = MirrorStore(real_backend, make_engine(KEY), FP)
    big = np.frombuffer(np.random.default_rng(1).bytes(256 << 20), dtype=np.float32)
    store.save([Record(0, "weights", big)], version=1)
    dest = np.empty_like(big)
    got = store.load(into={(0, "weights"): dest})
    assert got is not None and got.stats.bytes > (256 << 20)
    assert np.array_equal(dest.view(np.uint8), big.view(np.uint8))


# --- attacks ---------------------------------------------------------------------------------


def test_wrong_key(backend: Backend, store: MirrorStore) -> None:
    store.save(model_records(1), version=1)
    other = MirrorStore(backend, make_engine(OTHER_KEY), FP)
    with pytest.raises(WrongKeyError, match="key id"):
        other.load()
    assert store.load() is not None  # still intact


def test_other_model(backend: Backend, store: MirrorStore) -> None:
    store.save(model_records(1), version=1)
    with pytest.raises(ModelMismatchError):
        MirrorStore(backend, make_engine(KEY), OTHER_FP).load()


def test_shape_mismatch_on_restore(store: MirrorStore) -> None:
    recs = model_records(1)
    store.save(recs, version=1)
    into = {(r.layer, r.name): np.zeros(r.array.size + 1, np.float32) for r in recs}
    with pytest.raises(ModelMismatchError, match="the model has"):
        store.load(into=into)


def test_tampered_record(backend: Backend, store: MirrorStore) -> None:
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


def test_tampered_tag_iv_and_header(backend: Backend, store: MirrorStore) -> None:
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


def test_swapped_records(backend: Backend, store: MirrorStore) -> None:
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


def test_replayed_old_mirror(backend: Backend, store: MirrorStore) -> None:
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


def test_truncated_mirror(backend: Backend, store: MirrorStore) -> None:
    store.save(model_records(1), version=1)
    good = raw_get(backend, "mirror")
    for cut in (len(good) - 1, len(good) // 2, 100, 0):
        raw_put(backend, "mirror", good[:cut])
        with pytest.raises((TruncatedError, NotAMirrorError)):
            store.load()


def test_foreign_blob(backend: Backend, store: MirrorStore) -> None:
    raw_put(backend, "mirror", random.Random(0).randbytes(5000))
    with pytest.raises(NotAMirrorError, match="not a plinius mirror"):
        store.load()


def test_newer_format(backend: Backend, store: MirrorStore) -> None:
    store.save(model_records(1), version=1)
    data = bytearray(raw_get(backend, "mirror"))
    data[8] = 99  # format version field
    raw_put(backend, "mirror", bytes(data))
    with pytest.raises(UnsupportedVersionError, match="upgrade plinius"):
        store.load()
