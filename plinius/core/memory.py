"""Page-aligned, reusable buffers.

On these VMs touching freshly allocated memory runs at ~1 GB/s and buffers that start off a page
boundary read several times slower, so hot paths keep one aligned buffer alive and reuse it.
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np

PAGE = mmap.PAGESIZE
CACHE_LINE = 64


def align_up(n: int, align: int) -> int:
    """Round ``n`` up to a multiple of ``align`` (a power of two)."""
    return (n + align - 1) & ~(align - 1)


def aligned_empty(nbytes: int, align: int = PAGE) -> np.ndarray:
    """A uint8 array of ``nbytes`` whose data starts on an ``align`` boundary."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    shift = (-raw.ctypes.data) % align
    return raw[shift : shift + nbytes]


class StagingBuffer:
    """A grow-only page-aligned buffer backed by anonymous mmap, reused across calls.

    Growing rounds up to 1/8 more than asked so a slowly growing model does not remap every time.
    """

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._size = 0

    @property
    def capacity(self) -> int:
        return self._size

    def view(self, nbytes: int) -> memoryview:
        """A writable view of the first ``nbytes``; valid until the next call that grows it."""
        if nbytes > self._size:
            self.close()
            size = align_up(max(nbytes + nbytes // 8, PAGE), PAGE)
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._size = size
        if self._map is None:  # nbytes == 0 and never grown
            return memoryview(bytearray(0))
        return memoryview(self._map)[:nbytes]

    def close(self) -> None:
        if self._map is not None:
            # A caller may still hold a view; then the GC reclaims the mapping later.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
            self._size = 0
