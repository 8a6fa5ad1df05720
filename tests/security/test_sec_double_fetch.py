"""Double fetch: the attacker writes the storage *while* it is read. A persistent-memory pool is
a shared mapping of an attacker-writable file, and a sample area is mapped too: bytes that are
checked, authenticated or decrypted are copied to private memory first, so AES-GCM's tag pass
and its decrypt pass always read the same bytes (found by review: pycryptodome's GCM reads the
sealed bytes twice; 15 of 200 restores accepted a flipped bit before)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends.registry import open_backend
from plinius.core.errors import PliniusError
from plinius.format.mirror import MirrorStore, Record

KEY = bytes(range(16))
FP = hashlib.sha256(b"double fetch").digest()


def test_a_pool_read_is_a_private_copy(shm_dir: Path) -> None:
    """What ``read`` returns never changes under the reader when the pool file does."""
    pool = shm_dir / "p.pool"
    with open_backend(f"romulus:{pool}?size=8M") as b:
        txn = b.begin_write("x", 4096)
        txn.view(0, 4096)[:] = b"\x5a" * 4096
        txn.commit()
        got = b.read("x")
        assert got is not None
        before = bytes(got.data)
        raw = pool.read_bytes()
        at = raw.find(b"\x5a" * 4096)
        assert at >= 0
        fd = os.open(pool, os.O_RDWR)
        try:
            os.pwrite(fd, b"\xa5" * 16, at + 100)  # the attacker, through the file
        finally:
            os.close(fd)
        assert bytes(got.data) == before  # not a view of the shared pool
        again = b.read("x")
        assert again is not None and bytes(again.data[100:116]) == b"\xa5" * 16


def _toggle(pool: str, offsets: list[int], stop: Any) -> None:
    """The attacker: flips one ciphertext bit of the pool FILE back and forth (plain pwrite;
    the enclave's MAP_SHARED mapping of the file sees it)."""
    import time

    fd = os.open(pool, os.O_RDWR)
    vals = [os.pread(fd, 1, o) for o in offsets]
    flip = [bytes([v[0] ^ 1]) for v in vals]
    i = 0
    while not stop.is_set():
        for o, v in zip(offsets, flip if i % 2 else vals, strict=True):
            os.pwrite(fd, v, o)
        i += 1
        t = time.perf_counter() + 0.0003
        while time.perf_counter() < t:
            pass
    for o, v in zip(offsets, vals, strict=True):
        os.pwrite(fd, v, o)


@pytest.mark.slow
def test_a_bit_flipped_in_the_pool_during_a_restore_never_reaches_the_plaintext(
    shm_dir: Path,
) -> None:
    """GCM decrypt (pycryptodome: GHASH pass, then CTR pass) reads the sealed bytes twice,
    straight from the attacker-writable MAP_SHARED pool mapping: a bit flipped between the two
    passes passes the tag and lands in the plaintext. Asserts no forged restore is accepted."""
    import multiprocessing as mp

    from plinius.core.crypto import make_engine as mk

    pool = str(shm_dir / "p.pool")
    arr = np.random.default_rng(1).random((2 << 20) // 4, dtype=np.float32)
    with open_backend(f"romulus:{pool}?size=16M") as b:
        store = MirrorStore(b, mk(KEY, "pycryptodome"), FP)
        store.save([Record(0, "w", arr)], 1)
        got = b.read("mirror")
        assert got is not None
        blob = bytes(got.data)
        info = store.peek()
        assert info is not None
        at = info.entries[0].offset + 12 + (1 << 20)
        probe = blob[at : at + 64]
        raw = Path(pool).read_bytes()
        offs, k = [], raw.find(probe)
        while k >= 0:
            offs.append(k)
            k = raw.find(probe, k + 1)
        ctx = mp.get_context("fork")
        stop = ctx.Event()
        p = ctx.Process(target=_toggle, args=(pool, offs, stop))
        p.start()
        forged = refused = 0
        try:
            for _ in range(400):
                try:
                    r = store.load()
                except PliniusError:
                    refused += 1
                    continue
                assert r is not None
                if not np.array_equal(r.arrays[(0, "w")], arr):
                    forged += 1
                    break
        finally:
            stop.set()
            p.join()
    assert forged == 0, f"a restore authenticated attacker-flipped plaintext ({refused} refused)"
