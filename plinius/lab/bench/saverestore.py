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

import json
import math
import statistics
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import numpy as np

from plinius.backends import open_backend
from plinius.core.crypto import OVERHEAD, Engine, associated_data
from plinius.core.memory import PAGE, align_up, aligned_empty
from plinius.format.mirror import MirrorStore, Record
from plinius.lab.bench.contenders import Contender, Samples
from plinius.lab.bench.stats import median_interval, speedup
from plinius.lab.profiles import is_baseline

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


def named_workload(label: str) -> BenchModel:
    """A workload shaped like a real model (``resnet50``, ``bert-base+adam``, ...): the exact
    parameter shapes (and optimizer state) from :mod:`plinius.lab.bench.workloads`, random
    values."""
    from plinius.lab.bench import workloads

    specs = workloads.workload_specs(label)
    arrays = workloads.make_arrays(specs, seed=0)
    records = [Record(i, name, np.ascontiguousarray(a)) for i, (name, a) in enumerate(arrays)]
    total = model_bytes(records)
    opt = sum(r.array.nbytes for r in records if _is_optimizer_state(r.name))
    return BenchModel(label, round(total / MIB, 2), records, total - opt, opt)


def _is_optimizer_state(name: str) -> bool:
    low = name.lower()
    return low.startswith("opt.") or any(
        m in low for m in ("momentum", "exp_avg", "adam", "optim", "moment")
    )


def workload(label: str) -> BenchModel:
    """``size-N`` (the paper's models) or a named real-model workload."""
    if label.startswith("size-"):
        return bench_model(float(label.removeprefix("size-")))
    return named_workload(label)


def _facts_of(result: Any) -> Any:
    """A JSON-ready form of an eviction result (a dataclass, an object with ``as_dict``...)."""
    if result is None:
        return None
    if is_dataclass(result) and not isinstance(result, type):
        return asdict(result)
    as_dict = getattr(result, "as_dict", None)
    return as_dict() if callable(as_dict) else str(result)


def _evict(backend: Any, blob: str) -> Any:
    """``backend.evict(blob)`` where backends have it (None: cold restore not applicable)."""
    evict = getattr(backend, "evict", None)
    return evict(blob) if callable(evict) else None


class BackendRun:
    """One backend instance saving and restoring one workload: a :class:`Contender` of section
    ``save`` with ops ``save``, ``restore`` (warm) and, where the backend can evict its blob
    from the page cache, ``restore_cold`` (evicted first, untimed; the eviction result is kept
    in the facts). One untimed save and restore warm up pools, files and staging memory.

    A restore decrypts into kept destination arrays, touched once by that first restore, as a
    real restore goes into a model's existing memory; never into fresh ``np.empty`` arrays,
    whose first touch (page faults, ~1 GB/s on small VMs) would be timed as the restore's. The
    raw AES-GCM limits decrypt into a kept, touched buffer likewise (``limits``). And a restore
    starts, as at start-up, with the backend settled: the background work of the save just
    before it (romulus: the copier's copy of main to back, ``settle()``) is waited for untimed
    (its seconds in the restore's ``settle_s``), not timed as part of the restore. The same
    wait follows every save, untimed (``background_s`` in the save breakdown), so that no
    contender of the round is timed while another one's background work still runs."""

    def __init__(
        self,
        label: str,
        spec: str,
        model: BenchModel,
        engine: Engine,
        role: str = "",
        models: str | None = None,
    ) -> None:
        """``models``: set when this instance is a device model, to the label of the instance
        it delays ("" when that one is not in the run)."""
        self.model = model
        self.save_stats: list[dict[str, float]] = []
        self.restore_stats: list[dict[str, float]] = []
        self._stack = ExitStack()
        try:
            backend = self._stack.enter_context(open_backend(spec))
            runs_on = backend.describe()
            self.store = MirrorStore(backend, engine, fingerprint_for(model.records))
            self.dests = {(r.layer, r.name): np.empty_like(r.array) for r in model.records}
            self.version = 1
            self.store.save(model.records, version=1)
            self._load()
            first = _evict(backend, self.store.blob)
        except BaseException:
            self._stack.close()
            raise
        self.backend = backend
        facts = _facts_of(first)
        evicts = first is not None and not (
            isinstance(facts, dict) and not facts.get("evicted", True)
        )
        if first is None:
            cold = "not applicable (the backend has no page cache to evict from)"
        elif not evicts:
            why = facts.get("reason") if isinstance(facts, dict) else ""
            cold = f"not applicable (eviction had no effect: {why or 'pages stay resident'})"
        else:
            cold = "evicted before each cold restore (result of the last in 'eviction')"
        ops = ("save", "restore") + (("restore_cold",) if evicts else ())
        self.contender = Contender(
            section="save",
            name=label,
            workload=model.name,
            nbytes=model.mirror_bytes,
            ops=ops,
            run=self.run,
            close=self.close,
            facts={
                "instance": label,
                "spec": spec,
                "backend": backend.name,
                "role": role,
                "models": models,
                "durability": runs_on.durability,
                "emulated": runs_on.emulated,
                "byte_addressable": runs_on.byte_addressable,
                "cold_restore": cold,
                "eviction": [facts] if first is not None else [],
            },
        )

    def _settle(self) -> float:
        """Untimed, before a restore: the backend's background work of the last save (romulus:
        the copier's copy of main to back) finished, as at a real restore (start-up)."""
        settle = getattr(self.backend, "settle", None)
        return float(settle()) if callable(settle) else 0.0

    def _load(self, settled: float = 0.0) -> float:
        t0 = time.perf_counter()
        got = self.store.load(into=self.dests, min_version=self.version)
        secs = time.perf_counter() - t0
        if got is None:
            raise AssertionError(f"{self.store.what}: nothing to restore after a save")
        stats = got.stats.as_dict()
        stats["settle_s"] = settled
        self.restore_stats.append(stats)
        return secs

    def run(self, op: str) -> float:
        if op == "save":
            self.version += 1
            waited = self._model_wait()
            t0 = time.perf_counter()
            s = self.store.save(self.model.records, version=self.version, iteration=self.version)
            secs = time.perf_counter() - t0
            stats = s.as_dict()
            if waited is not None:
                # what the device model added to this save (the copier's waits included)
                stats["model_wait_s"] = (self._model_wait() or 0.0) - waited
            if callable(getattr(self.backend, "settle", None)):
                # the work the save left running (romulus: the copy of main to back), waited
                # for untimed and reported: else it would run into the next contender's timing
                # (measured: a raw AES-GCM timed right after a romulus save took 1.6x as long)
                stats["background_s"] = self._settle()
            self.save_stats.append(stats)
            return secs
        if op == "restore":
            return self._load(self._settle())
        if op == "restore_cold":
            settled = self._settle()
            ev = _evict(self.backend, self.store.blob)
            evictions = self.contender.facts["eviction"]
            evictions.append(_facts_of(ev))
            del evictions[:-3]  # the last few are enough to show whether eviction held
            return self._load(settled)
        raise ValueError(f"unknown operation {op!r}")

    def _model_wait(self) -> float | None:
        get = getattr(self.backend, "model_wait_s", None)
        return get() if callable(get) else None

    def close(self) -> None:
        try:
            for r in (self.model.records[0], self.model.records[-1]):
                if not np.array_equal(self.dests[(r.layer, r.name)], r.array):
                    raise AssertionError(f"{self.store.what}: restored bytes differ from saved")
        finally:
            self._stack.close()


def _median_breakdown(stats: list[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each phase over the saves that report it (0.0 where none does)."""
    out = {}
    for k in keys:
        got = [s[k] for s in stats if k in s]
        out[k] = statistics.median(got) if got else 0.0
    return out


def samples_json(s: Samples) -> dict[str, Any]:
    """One contender's record in results.json: what it is, its facts, every sample and the
    median with its bootstrap interval per operation (seconds and MiB/s)."""
    c = s.contender
    ops: dict[str, Any] = {}
    for op, secs in s.seconds.items():
        iv = median_interval(secs)
        thr = median_interval([c.nbytes / MIB / x for x in secs])
        ops[op] = {"seconds": list(secs), "interval": iv.as_json(), "mibps": thr.as_json()}
    facts = json.loads(json.dumps(c.facts, default=str))
    return {
        "section": c.section,
        "id": c.ident,
        "name": c.name,
        "workload": c.workload,
        "nbytes": c.nbytes,
        "ops": ops,
        "facts": facts,
        "errors": list(s.errors),
    }


def backend_row(run: BackendRun, s: Samples, raw_seal_s: float) -> dict[str, Any] | None:
    """The results row of one backend instance at one workload (the keys results.json always
    had, plus ``rounds``, ``samples``, ``intervals`` and the cold restore)."""
    if "save" not in s.seconds or "restore" not in s.seconds:
        return None
    f = run.contender.facts
    m = run.model
    nbytes = m.mirror_bytes
    mib = nbytes / MIB
    save, warm = s.seconds["save"], s.seconds["restore"]
    cold = s.seconds.get("restore_cold")
    save_med, load_med = statistics.median(save), statistics.median(warm)
    intervals: dict[str, Any] = {
        "save_s": median_interval(save).as_json(),
        "restore_s": median_interval(warm).as_json(),
        "save_mbps": median_interval([mib / x for x in save]).as_json(),
        "restore_mbps": median_interval([mib / x for x in warm]).as_json(),
    }
    if cold:
        intervals["restore_cold_s"] = median_interval(cold).as_json()
        intervals["restore_cold_mbps"] = median_interval([mib / x for x in cold]).as_json()
    raw_mbps = mib / raw_seal_s
    return {
        "instance": f["instance"],
        "durability": f["durability"],
        "emulated": f["emulated"],
        "backend": f["backend"],
        "model_mb": m.model_mb,
        "bytes": nbytes,
        "repeats": len(save),
        "rounds": len(save),
        "save_s": save_med,
        "restore_s": load_med,
        "save_mbps": mib / save_med,
        "restore_mbps": mib / load_med,
        "save_s_min": min(save),
        "save_s_max": max(save),
        "restore_s_min": min(warm),
        "restore_s_max": max(warm),
        "restore_cold_s": statistics.median(cold) if cold else None,
        "restore_cold_mbps": mib / statistics.median(cold) if cold else None,
        "restore_headline": "cold" if cold else "warm",
        "cold_restore": f["cold_restore"],
        "eviction": f["eviction"][-1] if f["eviction"] else None,
        "save_breakdown": _median_breakdown(
            run.save_stats,
            (
                "encrypt_s",
                "write_s",
                "flush_s",
                "fsync_s",
                "replace_s",
                *(
                    k
                    for k in ("model_wait_s", "background_s")
                    if any(k in s for s in run.save_stats)
                ),
            ),
        ),
        "restore_breakdown": _median_breakdown(
            run.restore_stats, ("read_s", "decrypt_s", "settle_s")
        ),
        "raw_seal_mbps": raw_mbps,
        "save_vs_raw_seal": (mib / save_med) / raw_mbps,
        "byte_addressable": f["byte_addressable"],
        "role": f["role"],
        "models": f.get("models"),
        "model": m.name,
        "mirror_bytes": nbytes,
        "param_bytes": m.param_bytes,
        "optimizer_bytes": m.optimizer_bytes,
        "samples": {op: list(v) for op, v in s.seconds.items()},
        "intervals": intervals,
        "errors": list(s.errors),
    }


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
    return is_baseline(backend)


def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill the speed-up keys of ``rows`` (results rows, in plan order), pairing only rows of
    equal ``durability`` at the same model: never RAM against a disk.

    ``speedup_*_vs_baseline``: versus the baseline of the row's durability level (see
    :func:`_baseline`; its label in ``baseline``). ``speedup_*_vs_ssd``: versus the first
    instance of the paper's baseline backend (the class that declares ``baseline``) at that model,
    only for rows of that instance's durability; None otherwise. Rows with per-round
    ``samples`` also get each speed-up's bootstrap interval in ``intervals`` (paired by round),
    and ``speedup_restore_cold_vs_baseline``: the baseline's cold restore (where it has one)
    against this row's headline restore (cold where it has one).
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
        if "samples" in r:
            r["speedup_restore_cold_vs_baseline"] = None
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("model") or r["model_mb"], r["durability"]), []).append(r)
    for group in groups.values():
        base = _baseline(group)
        if base is None:
            continue
        for r in group:
            r["baseline"] = base["instance"]
            r["speedup_save_vs_baseline"] = base["save_s"] / r["save_s"]
            r["speedup_restore_vs_baseline"] = base["restore_s"] / r["restore_s"]
            _speedup_intervals(r, base, "baseline")
    for model in dict.fromkeys(r.get("model") or r["model_mb"] for r in rows):
        at = [r for r in rows if (r.get("model") or r["model_mb"]) == model]
        paper = next((r for r in at if _is_paper(r["backend"])), None)
        if paper is None:
            continue
        for r in at:
            if r["durability"] == paper["durability"]:
                r["speedup_save_vs_ssd"] = paper["save_s"] / r["save_s"]
                r["speedup_restore_vs_ssd"] = paper["restore_s"] / r["restore_s"]
                _speedup_intervals(r, paper, "ssd")
    return rows


def headline_restore(r: dict[str, Any]) -> list[float]:
    """A row's headline restore samples: cold where the backend can evict, else warm."""
    s = r["samples"]
    return list(s.get("restore_cold") or s["restore"])


def _speedup_intervals(r: dict[str, Any], base: dict[str, Any], against: str) -> None:
    if "samples" not in r or "samples" not in base:
        return
    iv = r.setdefault("intervals", {})
    iv[f"speedup_save_vs_{against}"] = speedup(r["samples"]["save"], base["samples"]["save"])
    iv[f"speedup_save_vs_{against}"] = iv[f"speedup_save_vs_{against}"].as_json()
    iv[f"speedup_restore_vs_{against}"] = speedup(
        r["samples"]["restore"], base["samples"]["restore"]
    ).as_json()
    if against == "baseline":
        cold = speedup(headline_restore(r), headline_restore(base))
        r["speedup_restore_cold_vs_baseline"] = cold.median
        iv["speedup_restore_cold_vs_baseline"] = cold.as_json()


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if math.isfinite(seconds) else "-"
