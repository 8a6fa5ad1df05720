"""Save/restore of encrypted mirrors per backend and model size: the paper's Fig. 7 and Table I.

A model of N MB is a stack of the paper's benchmark layers (3×3 conv, 256→256 filters, 2.25 MiB of
float32 weights each, plus biases), allocated once in one page-aligned arena and reused for every
backend and repeat, so the figures measure sealing and storage, not memory allocation.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from plinius.backends import open_backend
from plinius.crypto import OVERHEAD, Engine, associated_data
from plinius.memory import aligned_empty
from plinius.mirror import MirrorStore, Record

LAYER_WEIGHTS = 3 * 3 * 256 * 256  # float32 values of one benchmark conv layer (2.25 MiB)
LAYER_BIASES = 256
MIB = 1 << 20
PAPER_SIZES_MB = (10, 22, 33, 44, 56, 67, 78, 89, 100)
BENCH_FINGERPRINT = bytes(32)  # synthetic models share one architecture id per size below


def synthetic_model(model_mb: float, seed: int = 0) -> list[Record]:
    """Buffers of a model of about ``model_mb`` MiB, in one page-aligned arena (filled randomly)."""
    per_layer = (LAYER_WEIGHTS + LAYER_BIASES) * 4
    layers = max(1, math.ceil(model_mb * MIB / per_layer))
    arena = aligned_empty(layers * per_layer).view(np.float32)
    arena[:] = np.random.default_rng(seed).random(arena.size, dtype=np.float32)
    recs: list[Record] = []
    at = 0
    for layer in range(layers):
        recs.append(Record(layer, "biases", arena[at : at + LAYER_BIASES]))
        at += LAYER_BIASES
        recs.append(Record(layer, "weights", arena[at : at + LAYER_WEIGHTS]))
        at += LAYER_WEIGHTS
    return recs


def model_bytes(records: Sequence[Record]) -> int:
    return sum(r.array.nbytes for r in records)


def fingerprint_for(records: Sequence[Record]) -> bytes:
    import hashlib

    shapes = ";".join(f"{r.layer}:{r.name}:{r.array.shape}" for r in records)
    return hashlib.sha256(b"plinius-bench-model:" + shapes.encode()).digest()


@dataclass
class Point:
    """Medians and spread of one backend at one model size."""

    backend: str
    model_mb: float  # the nominal size asked for (the paper's labels)
    bytes: int  # the parameter bytes really sealed
    repeats: int
    save_s: float
    restore_s: float
    save_mbps: float
    restore_mbps: float
    save_s_min: float
    save_s_max: float
    restore_s_min: float
    restore_s_max: float
    save_breakdown: dict[str, float] = field(default_factory=dict)
    restore_breakdown: dict[str, float] = field(default_factory=dict)
    raw_seal_mbps: float = 0.0
    speedup_save_vs_ssd: float | None = None
    speedup_restore_vs_ssd: float | None = None
    save_vs_raw_seal: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def raw_seal_seconds(engine: Engine, records: Sequence[Record], repeats: int) -> float:
    """Median time to seal the same bytes into preallocated memory, no storage at all."""
    sizes = [r.array.nbytes + OVERHEAD for r in records]
    out = aligned_empty(max(sizes))
    aad = associated_data(BENCH_FINGERPRINT, 0, "weights", 0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r, n in zip(records, sizes, strict=True):
            engine.seal_into(aad, r.array, out[:n].data)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_breakdown(stats: list[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in stats) for k in keys}


def measure(
    spec: str,
    records: Sequence[Record],
    engine: Engine,
    repeats: int,
    tick: Callable[[], None] | None = None,
    model_mb: float | None = None,
) -> Point:
    """Save and restore ``records`` ``repeats`` times on ``spec`` (after one warm-up of each)."""
    nbytes = model_bytes(records)
    dests = {(r.layer, r.name): np.empty_like(r.array) for r in records}
    save_t: list[float] = []
    load_t: list[float] = []
    save_st: list[dict[str, float]] = []
    load_st: list[dict[str, float]] = []
    with open_backend(spec) as backend:
        store = MirrorStore(backend, engine, fingerprint_for(records))
        for i in range(repeats + 1):
            s = store.save(records, version=i + 1, iteration=i)
            got = store.load(into=dests, min_version=i + 1)
            assert got is not None
            if i == 0:
                continue  # warm-up: first touch of files, pools and staging memory
            save_t.append(s.total_s)
            load_t.append(got.stats.total_s)
            save_st.append(s.as_dict())
            load_st.append(got.stats.as_dict())
            if tick:
                tick()
        first = records[0]
        if not np.array_equal(dests[(first.layer, first.name)], first.array):
            raise AssertionError(f"{spec}: restored bytes differ from saved bytes")
    mb = nbytes / MIB
    save_med = statistics.median(save_t)
    load_med = statistics.median(load_t)
    return Point(
        backend=spec.split(":", 1)[0],
        model_mb=model_mb if model_mb is not None else round(mb, 2),
        bytes=nbytes,
        repeats=repeats,
        save_s=save_med,
        restore_s=load_med,
        save_mbps=mb / save_med,
        restore_mbps=mb / load_med,
        save_s_min=min(save_t),
        save_s_max=max(save_t),
        restore_s_min=min(load_t),
        restore_s_max=max(load_t),
        save_breakdown=_median_breakdown(save_st, ("encrypt_s", "write_s", "flush_s", "fsync_s")),
        restore_breakdown=_median_breakdown(load_st, ("read_s", "decrypt_s")),
    )


def run_matrix(
    instances: Callable[[], AbstractContextManager[dict[str, str]]],
    sizes_mb: Sequence[float],
    engine: Engine,
    repeats: int,
    tick: Callable[[], None] | None = None,
) -> list[Point]:
    """Every backend at every size; adds speed-ups versus ``ssd`` and the raw-seal ratio.

    ``instances()`` gives the backend specs for one size; default instances are fresh for each
    size, so no size inherits the allocations (or files) of the sizes measured before it.
    """
    points: list[Point] = []
    for size in sizes_mb:
        records = synthetic_model(size)
        raw = raw_seal_seconds(engine, records, max(3, repeats))
        row = []
        with instances() as specs:
            for spec in specs.values():
                row.append(measure(spec, records, engine, repeats, tick, model_mb=size))
        for p in row:
            p.raw_seal_mbps = p.bytes / MIB / raw
            p.save_vs_raw_seal = p.save_mbps / p.raw_seal_mbps
        base = next((p for p in row if p.backend == "ssd"), None)
        if base is not None:
            for p in row:
                p.speedup_save_vs_ssd = base.save_s / p.save_s
                p.speedup_restore_vs_ssd = base.restore_s / p.restore_s
        points.extend(row)
        del records
    return points


def steps(n_backends: int, n_sizes: int, repeats: int) -> int:
    return n_backends * n_sizes * repeats


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if math.isfinite(seconds) else "-"
