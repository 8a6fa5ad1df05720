"""Save/restore of encrypted mirrors per backend instance and model: the paper's Fig. 7 and Table I.

A benchmark model is the zoo's ``size-N`` model (N MiB of parameters: the MNIST skeleton with
3×3, 256→256-filter conv layers of 2.25 MiB each). Its mirror is what ``plinius train`` mirrors:
every parameter buffer plus a momentum buffer of the same shape for every trainable one, so a
``size-100`` mirror is about 200 MiB. The buffers live in one page-aligned arena, allocated once
per model and reused for every instance and repeat, so the figures measure sealing and storage,
not memory allocation. Every row carries its backend *instance* (name and options), the
durability and emulation its ``describe()`` reported, and the exact mirror bytes; speed-ups are
computed only between instances of equal durability.
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
from plinius.backends.catalog import class_fact
from plinius.crypto import OVERHEAD, Engine, associated_data
from plinius.memory import PAGE, align_up, aligned_empty
from plinius.mirror import MirrorStore, Record

MIB = 1 << 20
PAPER_SIZES_MB = (10, 22, 33, 44, 56, 67, 78, 89, 100)
BENCH_FINGERPRINT = bytes(32)  # synthetic models share one architecture id per size below


def model_bytes(records: Sequence[Record]) -> int:
    return sum(r.array.nbytes for r in records)


@dataclass
class BenchModel:
    """A zoo ``size-N`` model's mirror records: parameters then momentum, as training mirrors."""

    name: str  # "size-N"
    model_mb: float  # N, the nominal MiB of parameters
    records: list[Record]
    param_bytes: int
    optimizer_bytes: int

    @property
    def mirror_bytes(self) -> int:
        return self.param_bytes + self.optimizer_bytes


def bench_model(model_mb: float, seed: int = 0) -> BenchModel:
    """The mirror of zoo model ``size-{model_mb}``: every parameter buffer and, for each trainable
    one, a momentum buffer of the same shape (named like the enclave trainer's records), in one
    page-aligned arena filled with random values. Nothing else of the network is allocated."""
    from plinius.nn.cfg import parse_cfg_text
    from plinius.nn.network import MOMENTUM_SUFFIX, build_layers
    from plinius.nn.zoo import cfg_text

    name = f"size-{model_mb:g}"
    label, text = cfg_text(name)
    _, layers = build_layers(parse_cfg_text(text, label))
    params = [(layer.index, s.name, s.shape) for layer in layers for s in layer.param_specs()]
    moments = [
        (layer.index, s.name + MOMENTUM_SUFFIX, s.shape)
        for layer in layers
        for s in layer.param_specs()
        if s.trainable
    ]
    layout: list[tuple[int, str, tuple[int, ...], int]] = []
    off = 0
    for layer_index, buf, shape in params + moments:
        n = math.prod(shape) * 4
        off = align_up(off, PAGE if n >= PAGE else 64)
        layout.append((layer_index, buf, shape, off))
        off += n
    arena = aligned_empty(align_up(max(off, 1), PAGE))
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    for layer_index, buf, shape, at in layout:
        arr = arena[at : at + math.prod(shape) * 4].view(np.float32).reshape(shape)
        rng.random(dtype=np.float32, out=arr)
        records.append(Record(layer_index, buf, arr))
    param_bytes = sum(r.array.nbytes for r in records[: len(params)])
    return BenchModel(name, model_mb, records, param_bytes, model_bytes(records) - param_bytes)


def fingerprint_for(records: Sequence[Record]) -> bytes:
    import hashlib

    shapes = ";".join(f"{r.layer}:{r.name}:{r.array.shape}" for r in records)
    return hashlib.sha256(b"plinius-bench-model:" + shapes.encode()).digest()


@dataclass
class Point:
    """Medians and spread of one backend instance at one model."""

    backend: str  # registry name
    model_mb: float  # N of the zoo model size-N (MiB of parameters; the paper's labels)
    bytes: int  # the mirror bytes really sealed (parameters + momentum)
    repeats: int
    save_s: float
    restore_s: float
    save_mbps: float  # MiB/s of mirror bytes
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
    instance: str = ""  # name + options, e.g. "romulus?mode=msync"
    durability: str = ""  # what the instance's describe() reported
    emulated: bool = False
    byte_addressable: bool = False
    role: str = ""
    model: str = ""  # "size-N"
    mirror_bytes: int = 0
    param_bytes: int = 0
    optimizer_bytes: int = 0
    baseline: str | None = None
    speedup_save_vs_baseline: float | None = None
    speedup_restore_vs_baseline: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "instance": d.pop("instance"),
            "durability": d.pop("durability"),
            "emulated": d.pop("emulated"),
            **d,
        }


def raw_seal_seconds(engine: Engine, records: Sequence[Record], repeats: int) -> float:
    """Median time to seal the same bytes into preallocated memory, no storage at all."""
    sizes = [r.array.nbytes + OVERHEAD for r in records]
    out = aligned_empty(max(sizes))
    aad = associated_data(BENCH_FINGERPRINT, 0, "weights", 0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r, n in zip(records, sizes, strict=True):
            engine.encrypt_into(aad, r.array, out[:n].data)
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
    instance: str | None = None,
) -> Point:
    """Save and restore ``records`` ``repeats`` times on ``spec`` (after one warm-up of each)."""
    nbytes = model_bytes(records)
    dests = {(r.layer, r.name): np.empty_like(r.array) for r in records}
    save_t: list[float] = []
    load_t: list[float] = []
    save_st: list[dict[str, float]] = []
    load_st: list[dict[str, float]] = []
    with open_backend(spec) as backend:
        runs_on = backend.describe()
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
        for r in (records[0], records[-1]):
            if not np.array_equal(dests[(r.layer, r.name)], r.array):
                raise AssertionError(f"{spec}: restored bytes differ from saved bytes")
    mib = nbytes / MIB
    save_med = statistics.median(save_t)
    load_med = statistics.median(load_t)
    return Point(
        backend=backend.name,
        model_mb=model_mb if model_mb is not None else round(mib, 2),
        bytes=nbytes,
        repeats=repeats,
        save_s=save_med,
        restore_s=load_med,
        save_mbps=mib / save_med,
        restore_mbps=mib / load_med,
        save_s_min=min(save_t),
        save_s_max=max(save_t),
        restore_s_min=min(load_t),
        restore_s_max=max(load_t),
        save_breakdown=_median_breakdown(save_st, ("encrypt_s", "write_s", "flush_s", "fsync_s")),
        restore_breakdown=_median_breakdown(load_st, ("read_s", "decrypt_s")),
        instance=instance or backend.name,
        durability=runs_on.durability,
        emulated=runs_on.emulated,
        byte_addressable=runs_on.byte_addressable,
        mirror_bytes=nbytes,
    )


def _baseline(group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reference of one durability level at one model: its first file-path instance that is
    not emulated (``ssd`` at power-fail, ``tmpfs`` at process-crash in the default plan), else
    its first instance that is not emulated; None when every instance there is emulated."""
    real = [r for r in group if not r.get("emulated")]
    files = [r for r in real if not r.get("byte_addressable")]
    pick = files or real
    return pick[0] if pick else None


def _is_paper(backend: str) -> bool:
    """Whether ``backend``'s class is the paper's baseline (``speedup_*_vs_ssd`` keys)."""
    return bool(class_fact(backend, "baseline", False))


def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill the speed-up keys of ``rows`` (results rows, in plan order), pairing only rows of
    equal ``durability`` at the same ``model_mb``: never RAM against a disk.

    ``speedup_*_vs_baseline``: versus the baseline of the row's durability level (see
    :func:`_baseline`; its label in ``baseline``). ``speedup_*_vs_ssd``: versus the first
    instance of the paper's baseline backend (the class that declares ``baseline``) at that model,
    only for rows of that instance's durability; None otherwise.
    """
    for r in rows:
        for k in (
            "speedup_save_vs_ssd",
            "speedup_restore_vs_ssd",
            "speedup_save_vs_baseline",
            "speedup_restore_vs_baseline",
        ):
            r[k] = None
        r["baseline"] = None
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model_mb"], r["durability"]), []).append(r)
    for group in groups.values():
        base = _baseline(group)
        if base is None:
            continue
        for r in group:
            r["baseline"] = base["instance"]
            r["speedup_save_vs_baseline"] = base["save_s"] / r["save_s"]
            r["speedup_restore_vs_baseline"] = base["restore_s"] / r["restore_s"]
    for mb in dict.fromkeys(r["model_mb"] for r in rows):
        paper = next((r for r in rows if r["model_mb"] == mb and _is_paper(r["backend"])), None)
        if paper is None:
            continue
        for r in rows:
            if r["model_mb"] == mb and r["durability"] == paper["durability"]:
                r["speedup_save_vs_ssd"] = paper["save_s"] / r["save_s"]
                r["speedup_restore_vs_ssd"] = paper["restore_s"] / r["restore_s"]
    return rows


def run_matrix(
    instances: Callable[[], AbstractContextManager[list[tuple[str, str]]]],
    sizes_mb: Sequence[float],
    engine: Engine,
    repeats: int,
    tick: Callable[[], None] | None = None,
    roles: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every instance at every model, as results rows with like-for-like speed-ups.

    ``instances()`` gives ``(label, spec)`` of every instance for one model; default instances
    are fresh for each model, so none inherits the allocations (or files) of the ones before.
    """
    points: list[Point] = []
    for size in sizes_mb:
        model = bench_model(size)
        raw = raw_seal_seconds(engine, model.records, max(3, repeats))
        row = []
        with instances() as specs:
            for label, spec in specs:
                p = measure(spec, model.records, engine, repeats, tick, size, label)
                p.model = model.name
                p.param_bytes = model.param_bytes
                p.optimizer_bytes = model.optimizer_bytes
                p.role = (roles or {}).get(label, "")
                row.append(p)
        for p in row:
            p.raw_seal_mbps = p.bytes / MIB / raw
            p.save_vs_raw_seal = p.save_mbps / p.raw_seal_mbps
        points.extend(row)
        del model
    return add_speedups([p.as_dict() for p in points])


def steps(n_instances: int, n_sizes: int, repeats: int) -> int:
    """Progress steps of :func:`run_matrix`: one per timed repeat of each instance and model."""
    return n_instances * n_sizes * repeats


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if math.isfinite(seconds) else "-"
