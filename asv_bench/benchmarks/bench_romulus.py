"""Romulus in asv: the paper's Fig. 6 (SPS) and mirror save/restore next to the file backends.

* ``SwapsPerSecond``: swaps/s on a 10 MB persistent uint64 array, 1..2048 swaps per durable
  transaction, per flush mode; the loop runs in C so the figure is the engine's.
* ``SwapsPerSecondPython``: the same loop driven from Python through the binding.
* ``TxnCost``: one durable rewrite of a 64 MiB blob (flush + copy to back) vs sealing it.
* ``MirrorSaveRestore``: encrypted mirrors of 10-100 MB on romulus, ssd, dax and tmpfs in the
  same run (the paper's Fig. 7 sizes), through the backends' common contract.

Pools and scratch directories follow ``PLINIUS_SHM_DIR`` / ``PLINIUS_DISK_DIR``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from plinius.pm.bench import TXN_SIZES, SwapArray, _default_dir, flush_modes, label, txn_cost

_MODES = {label(m, f): (m, f) for m, f in flush_modes()}
_ALL_MODES = ["pmem-clwb", "pmem-clflushopt", "pmem-clflush", "msync", "none"]


class SwapsPerSecond:
    """Fig. 6: swaps per second, the swap loop in C."""

    params = (list(TXN_SIZES), _ALL_MODES)
    param_names = ["swaps_per_txn", "flush_mode"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, swaps_per_txn: int, flush_mode: str) -> None:
        if flush_mode not in _MODES:
            raise NotImplementedError(f"{flush_mode} is not available on this CPU")
        self.arr = SwapArray(_default_dir(), *_MODES[flush_mode])

    def teardown(self, swaps_per_txn: int, flush_mode: str) -> None:
        self.arr.close()

    def track_sps(self, swaps_per_txn: int, flush_mode: str) -> float:
        return self.arr.c_rate(swaps_per_txn, seconds=0.3)

    track_sps.unit = "swaps/s"  # type: ignore[attr-defined]


class SwapsPerSecondPython:
    """The same swaps, each one driven from Python (declare + numpy store) through cffi."""

    params = ([1, 16, 256, 2048], ["pmem-clwb", "none"])
    param_names = ["swaps_per_txn", "flush_mode"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, swaps_per_txn: int, flush_mode: str) -> None:
        if flush_mode not in _MODES:
            raise NotImplementedError(f"{flush_mode} is not available on this CPU")
        self.arr = SwapArray(_default_dir(), *_MODES[flush_mode])

    def teardown(self, swaps_per_txn: int, flush_mode: str) -> None:
        self.arr.close()

    def track_sps(self, swaps_per_txn: int, flush_mode: str) -> float:
        return self.arr.python_rate(swaps_per_txn, seconds=0.3)

    track_sps.unit = "swaps/s"  # type: ignore[attr-defined]


class TxnCost:
    """One durable 64 MiB rewrite: commit time and its ratio to sealing the same bytes."""

    params = (["pmem", "msync", "none"],)
    param_names = ["mode"]
    timeout = 300
    number = 1
    repeat = 1

    def setup_cache(self) -> dict[str, dict[str, Any]]:
        return {m: txn_cost(64 << 20, repeats=5, mode=m) for m in self.params[0]}

    def track_txn_ms(self, cache: dict[str, dict[str, Any]], mode: str) -> float:
        return float(cache[mode]["txn_ms"])

    track_txn_ms.unit = "ms"  # type: ignore[attr-defined]

    def track_txn_over_seal(self, cache: dict[str, dict[str, Any]], mode: str) -> float:
        return float(cache[mode]["txn_over_seal"])

    track_txn_over_seal.unit = "ratio"  # type: ignore[attr-defined]


class MirrorSaveRestore:
    """Save/restore of encrypted mirrors of 10-100 MB on every backend, in one run."""

    params = ([10, 33, 67, 100], ["romulus", "ssd", "dax", "tmpfs"])
    param_names = ["model_mb", "backend"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, model_mb: int, backend: str) -> None:
        from plinius.backends import open_backend
        from plinius.bench.saverestore import fingerprint_for, synthetic_model
        from plinius.crypto import make_engine
        from plinius.defaults import scratch_specs
        from plinius.mirror import MirrorStore

        self._stack = contextlib.ExitStack()
        try:
            specs = self._stack.enter_context(scratch_specs([backend]))
        except (OSError, ImportError) as exc:
            self._stack.close()
            raise NotImplementedError(f"{backend} unavailable here: {exc}") from exc
        self.backend = self._stack.enter_context(open_backend(specs[backend]))
        self.records = synthetic_model(model_mb)
        self.store = MirrorStore(
            self.backend, make_engine(bytes(16)), fingerprint_for(self.records)
        )
        self.version = 1
        self.store.save(self.records, version=self.version)  # warm: allocations, page cache
        self.into = {(r.layer, r.name): r.array.copy() for r in self.records}

    def teardown(self, model_mb: int, backend: str) -> None:
        self._stack.close()

    def time_save(self, model_mb: int, backend: str) -> None:
        self.version += 1
        self.store.save(self.records, version=self.version)

    def time_restore(self, model_mb: int, backend: str) -> None:
        self.store.load(into=self.into)
