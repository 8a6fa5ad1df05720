"""``Backend.read_into`` (ranged reads into the caller's memory) and ``Backend.evict`` (cold reads).

Eviction is checked on a real disk-backed directory (under /var/tmp, never /dev/shm): after it no
page of the blob may be resident, or the result must say why not. On tmpfs it must not pretend.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from plinius.backends.base import Backend
from plinius.backends.files import FileBackend, resident_pages
from plinius.backends.fsinfo import mount_of
from plinius.backends.registry import open_backend
from plinius.core.errors import BackendError, NotFoundError
from plinius.core.memory import PAGE, aligned_empty

SIZE = 3 * (1 << 20) + 123


def _put(b: Backend, blob: str, data: bytes) -> None:
    with b.begin_write(blob, len(data)) as txn:
        txn.view(0, len(data))[:] = data
        txn.commit()


def _payload(n: int = SIZE) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("kind", ["tmpfs", "ssd", "romulus"])
def test_read_into_matches_read(kind: str, shm_dir: Path, disk_dir: Path) -> None:
    spec = {
        "tmpfs": f"tmpfs:{shm_dir / 'f'}",
        "ssd": f"ssd:{disk_dir / 's'}",
        "romulus": f"romulus:{shm_dir / 'p.pool'}?size=16M",
    }[kind]
    data = _payload()
    with open_backend(spec) as b:
        _put(b, "blob", data)
        for offset, n in [(0, SIZE), (0, 0), (PAGE - 3, 2 * PAGE + 7), (SIZE - 5, 5)]:
            out = aligned_empty(n).data
            assert b.read_into("blob", offset, out) == n
            assert bytes(out) == data[offset : offset + n]
            # the contract's default (read + copy) gives the same bytes
            out2 = bytearray(n)
            assert Backend.read_into(b, "blob", offset, memoryview(out2)) == n
            assert bytes(out2) == bytes(out)
        with pytest.raises(BackendError, match="outside"):
            b.read_into("blob", SIZE - 4, memoryview(bytearray(5)))
        with pytest.raises(NotFoundError):
            b.read_into("absent", 0, memoryview(bytearray(1)))


def test_file_read_into_skips_the_staging_copy(shm_dir: Path) -> None:
    """The file implementation reads straight into ``out``: it never touches the read stage."""
    with open_backend(f"tmpfs:{shm_dir / 'f'}") as b:
        assert isinstance(b, FileBackend)
        _put(b, "blob", _payload())
        out = aligned_empty(SIZE).data
        b.read_into("blob", 0, out)
        assert b._read_stage.capacity == 0
        b.read("blob")
        assert b._read_stage.capacity >= SIZE


def test_evict_on_disk_leaves_no_page_resident(disk_dir: Path) -> None:
    assert not mount_of(disk_dir).volatile, f"{disk_dir} should be on a disk for this test"
    with open_backend(f"ssd:{disk_dir / 's'}") as b:
        _put(b, "blob", _payload())
        b.read("blob")  # warm
        b.map("blob")  # and mapped by the backend itself: evict must drop its own mapping
        got = b.evict("blob")
        assert got is not None
        assert got.pages_total == -(-SIZE // PAGE)
        assert got.resident_before > 0, "a blob just written and read should be cached"
        assert got.evicted, got.reason
        assert got.resident_after == 0 and got.reason == ""
        # the next read still returns the bytes (from the device now)
        blob = b.read("blob")
        assert blob is not None and bytes(blob.data) == _payload()
        fd = os.open(disk_dir / "s" / "blob", os.O_RDONLY)
        try:
            assert resident_pages(fd, SIZE) > 0, "a read should bring the pages back"
        finally:
            os.close(fd)


def test_evict_on_tmpfs_says_it_cannot(shm_dir: Path) -> None:
    with open_backend(f"tmpfs:{shm_dir / 'f'}") as b:
        _put(b, "blob", _payload())
        got = b.evict("blob")
        assert got is not None and not got.evicted
        assert "RAM" in got.reason
        assert got.resident_after == got.pages_total == -(-SIZE // PAGE)
        with pytest.raises(NotFoundError):
            b.evict("absent")


def test_evict_not_applicable_to_a_pool(shm_dir: Path) -> None:
    with open_backend(f"romulus:{shm_dir / 'p.pool'}?size=16M") as b:
        _put(b, "blob", _payload(1000))
        assert b.evict("blob") is None
