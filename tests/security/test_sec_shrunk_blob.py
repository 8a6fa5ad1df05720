"""Review of issue 23 (L3): the attacker cuts the mirror file between the reader's size
``fstat`` and its ``pread`` (same inode). The reader must refuse with one PliniusError saying
the blob changed while it was read; it raised ``struct.error`` from the header's unpack
("internal error (a bug in plinius)")."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends.base import Backend
from plinius.backends.registry import open_backend
from plinius.core.crypto import make_engine
from plinius.core.errors import TruncatedError
from plinius.enclave.counter import Extent, MirrorCounters, Stamp, slot_name
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import mirror_guard
from plinius.format.mirror import MirrorStore, Record

KEY = bytes(range(16))
FP = hashlib.sha256(b"review model").digest()


@pytest.fixture
def backend(shm_dir: Path) -> Iterator[Backend]:
    with open_backend(f"tmpfs:{shm_dir / 'm'}") as b:
        yield b


def _saved(backend: Backend, cpu: Path) -> tuple[MirrorStore, MirrorCounters]:
    """A 20 KiB mirror committed on the platform (its size recorded: one sized read)."""
    store = MirrorStore(backend, make_engine(KEY), FP)
    counters = MirrorCounters(SimulatedPlatform(cpu))
    slot = slot_name(*backend.slot_parts(), store.blob)
    stamp = Stamp(b"r" * 16, 1, os.urandom(16))
    arr = np.random.default_rng(1).random((20 << 10) // 4, dtype=np.float32)

    def begin(size: int, manifest: int) -> None:
        counters.begin(slot, stamp, Extent(size, manifest))

    store.save([Record(0, "w", arr)], 1, run_id=stamp.run_id, save_id=stamp.save_id,
               before_write=begin)  # fmt: skip
    counters.commit(slot, stamp)
    return store, counters


@pytest.mark.parametrize("cut", [0, 60, 127])
@pytest.mark.parametrize("op", ["peek", "open", "load"])
def test_blob_cut_between_size_and_read_is_one_plinius_error(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int, op: str
) -> None:
    store, counters = _saved(backend, tmp_path / "cpu")
    path = str(Path(backend.dir) / store.blob)  # type: ignore[attr-defined]
    real_preadv = os.preadv
    cuts = [0]

    def preadv(fd: int, buffers: Any, offset: int) -> int:
        if not cuts[0] and os.readlink(f"/proc/self/fd/{fd}") == path:
            cuts[0] += 1
            os.truncate(path, cut)  # the attacker, after the reader's fstat of the size
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    with pytest.raises(TruncatedError, match="changed while it was read"):
        getattr(store, op)(freshness=mirror_guard(counters, store, settle=False))
    assert cuts == [1]
