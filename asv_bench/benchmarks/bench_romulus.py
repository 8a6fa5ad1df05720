"""Romulus in asv: the paper's Fig. 6 (swaps) and the cost of one big durable transaction.

Every figure is a ``time_*`` benchmark of fixed work, so asv takes several samples and its own
statistics decide regressions (a single-sample ``track_*`` rate made ``asv continuous`` flag
noise as regressions). Swaps per second are 4096 / the reported time. Mirror save/restore on
romulus is in ``bench_sections.SaveContenders`` beside the other backends: one harness, one series.

Pools follow ``PLINIUS_SHM_DIR``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from plinius.backends.romulus.pool import Pool
from plinius.core.memory import aligned_empty
from plinius.lab.bench.romulus_engine import SwapArray, _default_dir, flush_modes, label

_MODES = {label(m, f): (m, f) for m, f in flush_modes()}
_ALL_MODES = ["pmem-clwb", "pmem-clflushopt", "pmem-clflush", "msync", "none"]
SWAPS = 4096


class TimeSwaps:
    """Fig. 6: 4096 random swaps in a 10 MB persistent array, k swaps per durable transaction.

    The loop runs in C, so the figure is the engine's (swaps/s = 4096 / time).
    """

    params = ([1, 16, 256, 2048], _ALL_MODES)
    param_names = ["swaps_per_txn", "flush_mode"]
    timeout = 300
    number = 1
    repeat = (5, 10, 20.0)

    def setup(self, swaps_per_txn: int, flush_mode: str) -> None:
        if flush_mode not in _MODES:
            raise NotImplementedError(f"{flush_mode} is not available on this CPU")
        self.arr = SwapArray(_default_dir(), *_MODES[flush_mode])
        self.seed = 1

    def teardown(self, swaps_per_txn: int, flush_mode: str) -> None:
        self.arr.close()

    def time_4096_swaps(self, swaps_per_txn: int, flush_mode: str) -> None:
        self.seed += 1
        a = self.arr
        a.pool.bench_swaps(a.offset, a.n, swaps_per_txn, SWAPS // swaps_per_txn, self.seed)


class TimeTxn64MiB:
    """One durable in-place rewrite of a 64 MiB blob: declare, write, commit (copy to back)."""

    params = (["pmem", "msync", "none"],)
    param_names = ["mode"]
    timeout = 300
    number = 1
    repeat = (5, 10, 20.0)
    size = 64 << 20

    def setup(self, mode: str) -> None:
        fd, name = tempfile.mkstemp(prefix="plinius-asv-txn-", suffix=".pool", dir=_default_dir())
        os.close(fd)
        os.unlink(name)  # the engine creates it
        self.path = Path(name)
        self.pool = Pool(self.path, 2 * self.size + (32 << 20), mode=mode)
        with self.pool.transaction():
            self.off = self.pool.alloc(self.size)
        self.src = aligned_empty(self.size)
        self.src[:] = np.random.default_rng(0).integers(0, 256, self.size, dtype=np.uint8)

    def teardown(self, mode: str) -> None:
        self.pool.close()
        self.path.unlink(missing_ok=True)

    def time_rewrite_commit(self, mode: str) -> None:
        self.pool.begin()
        view = self.pool.writable(self.off, self.size)
        np.frombuffer(view, dtype=np.uint8)[:] = self.src
        view.release()
        self.pool.commit()
