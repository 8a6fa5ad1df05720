"""The Romulus microbenchmarks: the paper's Fig. 6 (swaps per second) and the cost of one big txn.

SPS: random swaps of two uint64 in a 10 MB persistent array, ``k`` swaps per durable
transaction, for each flush mode. The loop runs in C (``rom_bench_swaps``) so the figure is the
engine's; the Python-driven rate (the same loop through the binding) is reported beside it.

Transaction cost: rewrite a ``size``-byte blob in place and commit; the commit (flush of the
logged lines + copy to back, four fences) is compared with sealing the same bytes with AES-GCM.
With background commit (the default) the copy to back runs after the commit returns: the
critical path and the copier's time are reported apart.

The reference figures of the original RomulusLog are from another machine: every use carries
its machine, date and the label "not this machine".
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.romulus.pool import FLUSHES, Pool, cpu_has

TXN_SIZES: tuple[int, ...] = tuple(2**i for i in range(12))  # 1, 2, 4 ... 2048 swaps
ARRAY_BYTES = 10_000_000  # the paper's 10 MB array
#: NOT THIS MACHINE: swaps/s measured on another CPU (single thread, 10 MB array, /dev/shm):
#: the original RomulusLog (C++, clwb) per transaction size, and PMDK's libpmemobj at every size.
#: Beside the original on the 2-core VMs these figures are 1.4-1.9x too high at S >= 16: every
#: use prints REFERENCE_MACHINE and REFERENCE_DATE with the label "not this machine".
REFERENCE_ROMULUS_LOG: dict[int, float] = {1: 1.2e6, 16: 8.8e6, 256: 15e6, 2048: 10e6}
REFERENCE_PMDK: tuple[float, float] = (0.86e6, 1.2e6)
REFERENCE_MACHINE = "an AMD EPYC server (not this machine)"
REFERENCE_DATE = "recorded before 2026-11-22 (date of the measurement not kept)"
#: like for like: the C engine writes back with streaming stores, the original copies and flushes
STREAMING_NOTE = (
    "The C engine writes back with streaming (non-temporal) stores, which need no flush; the "
    "original RomulusLog copies then flushes each line. PLINIUS_PM_NT_MIN picks per copy: 0 "
    "(default) streams every copy, a size larger than any copy (e.g. 1T) copies and flushes "
    "like the original. The SPS section runs its first pmem mode both ways."
)


def flush_modes() -> list[tuple[str, str | None]]:
    """(mode, flush instruction) pairs this CPU can run: pmem with each instruction, msync, none."""
    modes: list[tuple[str, str | None]] = [("pmem", f) for f in FLUSHES if cpu_has(f)]
    return [*modes, ("msync", None), ("none", None)]


def label(mode: str, flush: str | None) -> str:
    return f"{mode}-{flush}" if flush else mode


def _default_dir() -> str:
    return os.environ.get("PLINIUS_SHM_DIR", "/dev/shm")


class SwapArray:
    """A pool holding one persistent uint64 array, for the SPS loops."""

    def __init__(
        self, directory: str, mode: str, flush: str | None, array_bytes: int = ARRAY_BYTES
    ) -> None:
        self.n = array_bytes // 8
        fd, name = tempfile.mkstemp(prefix="plinius-sps-", suffix=".pool", dir=directory)
        os.close(fd)
        os.unlink(name)  # the engine creates it
        self.path = Path(name)
        self.pool = Pool(self.path, 2 * array_bytes + (4 << 20), mode=mode, flush=flush)
        with self.pool.transaction():
            self.offset = self.pool.alloc(self.n * 8)
            self.arr = np.frombuffer(self.pool.writable(self.offset, self.n * 8), dtype=np.uint64)
            self.arr[:] = np.arange(self.n, dtype=np.uint64)

    def c_rate(self, swaps_per_txn: int, seconds: float, seed: int = 1) -> float:
        """Swaps per second of the C loop, run for about ``seconds``."""
        ntxn = max(1, 2000 // swaps_per_txn)
        elapsed = self.pool.bench_swaps(self.offset, self.n, swaps_per_txn, ntxn, seed)
        ntxn = max(1, int(ntxn * seconds / max(elapsed, 1e-6)))
        elapsed = self.pool.bench_swaps(self.offset, self.n, swaps_per_txn, ntxn, seed + 1)
        return swaps_per_txn * ntxn / elapsed

    def python_rate(self, swaps_per_txn: int, seconds: float, seed: int = 1) -> float:
        """Swaps per second when Python drives each swap through the binding."""
        pool, arr, base = self.pool, self.arr, self.offset
        idx = np.random.default_rng(seed).integers(0, self.n, 2 * 65536).tolist()
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            pool.begin()
            for _ in range(swaps_per_txn):
                i, j = idx[(2 * done) % len(idx)], idx[(2 * done + 1) % len(idx)]
                a, b = arr[i], arr[j]
                pool.declare(base + 8 * i, 8)
                arr[i] = b
                pool.declare(base + 8 * j, 8)
                arr[j] = a
                done += 1
            pool.commit()
            now = time.perf_counter()
            if now >= deadline:
                return done / (now - t0)

    def close(self) -> None:
        del self.arr
        self.pool.close()
        self.path.unlink(missing_ok=True)


NT_ENV = "PLINIUS_PM_NT_MIN"
#: a streaming threshold no copy reaches: back is written by copy + flush, as the original does
COPY_AND_FLUSH = str(1 << 62)


@contextmanager
def _nt_min(value: str | None) -> Iterator[None]:
    """``PLINIUS_PM_NT_MIN`` set to ``value`` while a pool opens (the engine reads it then)."""
    if value is None:
        yield
        return
    old = os.environ.get(NT_ENV)
    os.environ[NT_ENV] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[NT_ENV]
        else:
            os.environ[NT_ENV] = old


def sps(
    txn_sizes: Sequence[int] = TXN_SIZES,
    modes: Sequence[tuple[str, str | None]] | None = None,
    seconds: float = 0.3,
    repeats: int = 3,
    python_seconds: float = 0.15,
    directory: str | None = None,
    both_back_writes: bool = True,
) -> dict[str, Any]:
    """SPS for every transaction size and flush mode; median and best of ``repeats`` runs.

    ``both_back_writes``: the first ``pmem`` mode runs a second time with back written by copy +
    flush (as the original RomulusLog) beside the engine's streaming stores, unless
    ``PLINIUS_PM_NT_MIN`` pins one way for the whole run."""
    directory = directory or _default_dir()
    rows: list[dict[str, Any]] = []
    runs_on: dict[str, Any] = {}
    chosen = list(modes if modes is not None else flush_modes())
    variants: list[tuple[str, str | None, str | None]] = [(m, f, None) for m, f in chosen]
    pmem = [(m, f) for m, f in chosen if m == "pmem"]
    if both_back_writes and pmem and not os.environ.get(NT_ENV):
        variants.append((*pmem[0], COPY_AND_FLUSH))
    for mode, flush, nt in variants:
        with _nt_min(nt):
            arr = SwapArray(directory, mode, flush)
        name = label(mode, flush) + (" copy+flush back" if nt else "")
        pinned = os.environ.get(NT_ENV) or "0"
        if mode != "pmem":  # streaming stores are the pmem mode's way to skip the flushes
            back = "copy (msync or no persistence)"
        elif nt is not None:
            back = "copy + flush"
        else:
            back = "streaming stores" if pinned == "0" else f"{NT_ENV}={pinned}"
        try:
            runs_on = {
                "directory": directory,
                "real_pm": arr.pool.real_pm,
                "array_bytes": arr.n * 8,
            }
            for k in txn_sizes:
                rates = [arr.c_rate(k, seconds / repeats, seed=r) for r in range(repeats)]
                py = arr.python_rate(k, python_seconds) if python_seconds else None
                rows.append(
                    {
                        "mode": name,
                        "back_writes": back,
                        "swaps_per_txn": k,
                        "sps_c": statistics.median(rates),
                        "sps_c_best": max(rates),
                        "sps_python": py,
                        "reference_romulus_log": REFERENCE_ROMULUS_LOG.get(k),
                    }
                )
        finally:
            arr.close()
    return {
        "figure": "Fig. 6: swaps per second, 10 MB persistent array",
        "unit": "swaps/s",
        "runs_on": {**runs_on, "nt_min": os.environ.get("PLINIUS_PM_NT_MIN") or "0"},
        "reference": {
            "label": "not this machine",
            "machine": REFERENCE_MACHINE,
            "date": REFERENCE_DATE,
            "romulus_log_cpp_clwb": REFERENCE_ROMULUS_LOG,
            "pmdk_libpmemobj_range": REFERENCE_PMDK,
        },
        "back_writes": STREAMING_NOTE,
        "rows": rows,
    }


def txn_cost(
    size: int = 64 << 20,
    repeats: int = 5,
    mode: str | None = None,
    directory: str | None = None,
    engine: str | None = None,
    commit: str = "background",
) -> dict[str, Any]:
    """Cost of one durable rewrite of a ``size``-byte blob vs sealing the same bytes.

    ``txn_ms`` is the critical path (with background commit: until the transaction is
    durable); ``bg_copy_ms`` is the copy to back the copier thread did after it, hidden unless
    the next transaction comes sooner (``bg_wait_ms``: what the next begin waited).
    """
    from plinius.core.crypto import make_engine  # crypto is optional for the SPS part
    from plinius.core.memory import aligned_empty

    directory = directory or _default_dir()
    fd, name = tempfile.mkstemp(prefix="plinius-txn-", suffix=".pool", dir=directory)
    os.close(fd)
    os.unlink(name)
    path = Path(name)
    pool = Pool(path, 2 * size + (32 << 20), mode=mode, commit=commit)
    src = aligned_empty(size)
    src[:] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    eng = make_engine(bytes(16), engine)
    commit_s: list[float] = []
    declare_s: list[float] = []
    seal_s: list[float] = []
    bg_copy_s: list[float] = []
    try:
        with pool.transaction():
            off = pool.alloc(size + 28)
        for _ in range(repeats):
            pool.begin()
            t0 = time.perf_counter()
            view = pool.writable(off, size + 28)
            t1 = time.perf_counter()
            eng.encrypt_into(b"plinius-bench", src, view)
            t2 = time.perf_counter()
            pool.commit()
            t3 = time.perf_counter()
            view.release()
            bg_copy_s.append(pool.stats().last_bg_copy_s)  # waits for the copier
            declare_s.append(t1 - t0)
            seal_s.append(t2 - t1)
            commit_s.append(t3 - t2)
        st = pool.stats()
        txn = statistics.median(c + d for c, d in zip(commit_s, declare_s, strict=True))
        seal = statistics.median(seal_s)
        return {
            "bytes": size,
            "mode": pool.mode,
            "flush": pool.flush_instruction,
            "engine": type(eng).__name__,
            "txn_ms": txn * 1e3,
            "txn_gbps": size / txn / 1e9,
            "declare_ms": statistics.median(declare_s) * 1e3,
            "seal_ms": seal * 1e3,
            "seal_gbps": size / seal / 1e9,
            "txn_over_seal": txn / seal,
            "full_copy": st.full_copies > 0,
            "fences_per_txn": st.last_fences,
            "commit": st.commit,
            "bg_copy_ms": statistics.median(bg_copy_s) * 1e3,
            "bg_wait_ms": st.bg_wait_s * 1e3 / repeats,
            "nt_min": os.environ.get("PLINIUS_PM_NT_MIN") or "0",
            "back_writes": STREAMING_NOTE,
            "threads": os.environ.get("PLINIUS_PM_THREADS") or os.cpu_count(),
        }
    finally:
        pool.close()
        path.unlink(missing_ok=True)
