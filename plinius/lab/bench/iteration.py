"""Training iteration time: encrypted PM data versus plaintext (Fig. 8), and mirroring overhead.

Both measure the real enclave code paths: batches read by index from the backend's sample area
and decrypted sample by sample (PM-data), versus the same batches gathered from plaintext arrays;
and a step followed by a synchronous or asynchronous mirror into a backend, versus no mirror,
also with every mirror copied to a replica (a private ``redis-server`` on loopback).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plinius.apps.trainer import model_source
from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.backends.registry import open_backend, parse_spec
from plinius.core.crypto import generate_key, make_engine
from plinius.core.datasets import load_dataset
from plinius.core.errors import PliniusError
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave
from plinius.format.encdata import encrypt_dataset
from plinius.format.pmdata import PMData
from plinius.lab.bench.stats import Interval, ratio_interval
from plinius.lab.plan import default_plan, default_spec
from plinius.nn import Network, parse_cfg_text
from plinius.session import Replication, Session

PAPER_BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class BatchPoint:
    model: str
    batch: int
    encrypted_s: float  # median iteration, samples decrypted from the backend
    plaintext_s: float  # median iteration, plaintext arrays
    decrypt_s: float  # median time reading + decrypting one batch

    @property
    def ratio(self) -> float:
        return self.encrypted_s / self.plaintext_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first touch of buffers and BLAS threads
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batch_sweep(
    model: str = "batch",
    batches: tuple[int, ...] = PAPER_BATCHES,
    repeats: int = 3,
    backend_dir: str = "/dev/shm",
    tick: Callable[[], None] | None = None,
) -> list[BatchPoint]:
    """Iteration time per batch size with encrypted-in-PM versus plaintext training data."""
    label, cfg = model_source(model)
    ds = load_dataset(None)
    engine = make_engine(generate_key())
    points = []
    with tempfile.TemporaryDirectory(dir=backend_dir) as tmp:
        data_file = Path(tmp) / "data.pld"
        encrypt_dataset(
            data_file, engine, ds.name, {"train": (ds.x_train, ds.y_train)}, ds.shape, ds.classes
        )
        with open_backend(default_spec(DEFAULT_SCRATCH, tmp)) as backend:
            areas, _ = PMData.ensure_loaded(backend, engine, data_file)
            area = areas["train"]
            rng = np.random.default_rng(0)
            onehot = np.eye(ds.classes, dtype=np.float32)[ds.y_train]
            for b in batches:
                net = Network(parse_cfg_text(cfg, label), batch=b)
                x = np.empty((b, net.inputs), np.float32)
                y = np.empty((b, net.outputs), np.float32)

                def enc_step(net: Network = net, x: np.ndarray = x, y: np.ndarray = y) -> None:
                    area.read_batch(rng.integers(0, len(area), size=(len(x),)), x, y)
                    net.train_step(x, y)

                def plain_step(net: Network = net, x: np.ndarray = x, y: np.ndarray = y) -> None:
                    idx = rng.integers(0, len(area), size=(len(x),))
                    np.take(ds.x_train, idx, axis=0, out=x)
                    np.take(onehot, idx, axis=0, out=y)
                    net.train_step(x, y)

                def read_only(x: np.ndarray = x, y: np.ndarray = y) -> None:
                    area.read_batch(rng.integers(0, len(area), size=(len(x),)), x, y)

                # interleave so drift in machine load hits both sides alike
                enc, plain = [], []
                for _ in range(repeats):
                    enc.append(_median_time(enc_step, 1))
                    plain.append(_median_time(plain_step, 1))
                points.append(
                    BatchPoint(
                        label,
                        b,
                        statistics.median(enc),
                        statistics.median(plain),
                        _median_time(read_only, repeats),
                    )
                )
                if tick:
                    tick()
    return points


@dataclass
class MirrorOverhead:
    model: str
    backend: str
    no_mirror_s: float
    sync_s: float
    async_s: float
    instance: str = ""  # name + options of the mirror's backend instance
    durability: str = ""  # what its describe() reported
    emulated: bool = False
    replica: str = ""  # where every mirror was also copied ("": no replica)
    not_run: str = ""  # why the row has no measurement (a replica that could not run)
    #: seconds per iteration (or per block) of each mode, paired by round: the intervals' input
    samples: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        if self.not_run:
            return {**asdict(self), "sync_overhead": None, "async_overhead": None}
        out = {
            **asdict(self),
            "sync_overhead": self.sync_s / self.no_mirror_s - 1,
            "async_overhead": self.async_s / self.no_mirror_s - 1,
        }
        for mode in ("sync", "async"):
            iv = overhead_interval(self.samples, mode)
            out[f"{mode}_overhead_interval"] = None if iv is None else iv.as_json()
        return out


def overhead_interval(samples: dict[str, list[float]], mode: str) -> Interval | None:
    """``median(mode) / median(none) - 1`` with its paired bootstrap interval; None without
    samples of both."""
    mine, base = samples.get(mode) or [], samples.get("none") or []
    if not mine or not base:
        return None
    iv = ratio_interval(mine, base)
    return Interval(iv.median - 1, iv.lo - 1, iv.hi - 1, iv.n, iv.paired)


def from_samples(
    model: str, backend: str, samples: dict[str, list[float]], **facts: Any
) -> MirrorOverhead:
    """A :class:`MirrorOverhead` row from per-round samples of ``none``, ``sync``, ``async``."""
    med = {m: statistics.median(samples[m]) for m in ("none", "sync", "async")}
    return MirrorOverhead(
        model, backend, med["none"], med["sync"], med["async"], samples=samples, **facts
    )


REPLICA_DESC = "redis-server on loopback (private, AOF always)"


def replica_overhead(
    model: str = "mnist", iterations: int = 5, batch: int | None = None
) -> MirrorOverhead:
    """:func:`mirror_overhead` with every mirror also copied to a private loopback Redis; a
    row saying "not run" and why when no server can run here."""
    try:
        return mirror_overhead(model, iterations=iterations, batch=batch, replica=True)
    except PliniusError as exc:
        label, _ = model_source(model)
        why = " ".join(str(exc).split())
        return MirrorOverhead(label, "", 0.0, 0.0, 0.0, replica=REPLICA_DESC, not_run=why)


def _replica_blocks(enclave: Enclave, iterations: int, times: dict[str, list[float]]) -> None:
    """Each mode as a block of consecutive steps, timed up to the last replica copy written:
    background copies overlap the steps after them, as in training, and none is left out."""
    for mode in ("none", "sync", "async"):
        enclave.ecall_set_async(mode == "async")
        t0 = time.perf_counter()
        for _ in range(iterations):
            enclave.ecall_train_step(mirror=mode != "none")
        enclave.ecall_flush()
        enclave.ecall_drain_replicas(600.0)
        times[mode].append((time.perf_counter() - t0) / iterations)


def mirror_overhead(
    model: str = "mnist",
    backend_spec: str | None = None,
    iterations: int = 5,
    batch: int | None = None,
    replica: bool = False,
) -> MirrorOverhead:
    """Median iteration time without a mirror, with a synchronous and an asynchronous one.

    Without ``backend_spec`` the mirror goes to the first instance of the default plan (the
    paper's setup), sized by its backend class for this model and data. ``replica``: every
    mirror is also copied to a private ``redis-server`` on loopback (``--replica redis:DIR``).
    """
    label, cfg = model_source(model)
    ds = load_dataset(None)
    key = generate_key()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        spec = backend_spec or default_plan()[0].spec_in(tmp)
        data_file = Path(tmp) / "data.pld"
        encrypt_dataset(
            data_file,
            make_engine(key),
            ds.name,
            {"train": (ds.x_train, ds.y_train)},
            ds.shape,
            ds.classes,
        )
        platform = SimulatedPlatform(Path(tmp) / "platform", state_dir=Path(tmp) / "state")
        net = Network(parse_cfg_text(cfg, label), batch=batch)
        session = Session(net, label=label, key=key, platform=platform, cfg_text=cfg)
        mirror_bytes = sum(a.nbytes for _, _, a in net.mirror_buffers())
        try:
            # an explicit spec is taken as it is; the default plan's is sized for this model
            sized = open_backend(spec) if backend_spec else spec
            backend = session.open(
                sized, mirror_bytes=mirror_bytes, data_bytes=data_file.stat().st_size
            )
            if backend_spec:
                session.adopt(backend)
            enclave = session.enclave
            enclave.ecall_load_data(backend, data_file)
            replication = Replication([f"redis:{tmp}/replica"], required=True) if replica else None
            session.attach(backend, replication=replication, mirror_bytes=mirror_bytes)
            times: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
            enclave.ecall_train_step(mirror=True)  # warm-up: pool allocation, first save
            if replica:
                enclave.ecall_drain_replicas(600.0)
                for _ in range(3):
                    _replica_blocks(enclave, iterations, times)
            for _ in range(0 if replica else iterations):  # interleaved: drift hits all alike
                for mode in ("none", "sync", "async"):
                    enclave.ecall_set_async(mode == "async")
                    t0 = time.perf_counter()
                    enclave.ecall_train_step(mirror=mode != "none")
                    times[mode].append(time.perf_counter() - t0)
                    enclave.ecall_flush()  # the next mode starts with nothing in flight
            runs_on = backend.describe()
            copies = (session.replica_report() or {}).get("replicas", [])
            name = backend.name
        finally:
            session.close()
        for r in copies:
            if r["failed"]:
                raise PliniusError(f"replica copies failed: {r['last_error']}")
    _, _, options = parse_spec(spec)
    query = "&".join(f"{k}={v}" for k, v in sorted(options.items()))
    return from_samples(
        label,
        name,
        times,
        instance=name + (f"?{query}" if query else ""),
        durability=runs_on.durability,
        emulated=runs_on.emulated,
        replica=REPLICA_DESC if replica else "",
    )
