"""Training iteration time: encrypted PM data versus plaintext (Fig. 8), and mirroring overhead.

Both measure the real enclave code paths: batches read by index from the backend's sample area
and decrypted sample by sample (PM-data), versus the same batches gathered from plaintext arrays;
and a step followed by a synchronous or asynchronous mirror into a backend, versus no mirror.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.backends.registry import open_backend, parse_spec
from plinius.crypto import generate_key, make_engine
from plinius.datasets import load_dataset
from plinius.defaults import default_plan, default_spec
from plinius.encdata import encrypt_dataset
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave
from plinius.nn import Network, parse_cfg_text
from plinius.pmdata import PMData
from plinius.trainer import creation_options, model_source

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

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "sync_overhead": self.sync_s / self.no_mirror_s - 1,
            "async_overhead": self.async_s / self.no_mirror_s - 1,
        }


def mirror_overhead(
    model: str = "mnist",
    backend_spec: str | None = None,
    iterations: int = 5,
    batch: int | None = None,
) -> MirrorOverhead:
    """Median iteration time without a mirror, with a synchronous and an asynchronous one.

    Without ``backend_spec`` the mirror goes to the first instance of the default plan (the
    paper's setup), sized by its backend class for this model and data.
    """
    label, cfg = model_source(model)
    ds = load_dataset(None)
    key = generate_key()
    engine = make_engine(key)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        spec = backend_spec or default_plan()[0].spec_in(tmp)
        data_file = Path(tmp) / "data.pld"
        encrypt_dataset(
            data_file, engine, ds.name, {"train": (ds.x_train, ds.y_train)}, ds.shape, ds.classes
        )
        platform = SimulatedPlatform(Path(tmp) / "platform", state_dir=Path(tmp) / "state")
        net = Network(parse_cfg_text(cfg, label), batch=batch)
        enclave = Enclave(platform, net, label, cfg)
        from plinius.owner import provision

        provision(enclave, key, platform.quoting_public_pem, net.fingerprint())
        sized = {} if backend_spec else creation_options(spec, net, str(data_file))
        with open_backend(spec, **sized) as backend:
            enclave.ecall_load_data(backend, data_file)
            enclave.ecall_attach_mirror(backend, MirrorCounters(platform))
            times: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
            enclave.ecall_train_step(mirror=True)  # warm-up: pool allocation, first save
            for _ in range(iterations):  # interleaved, so load drift hits all three alike
                for mode in ("none", "sync", "async"):
                    enclave.ecall_set_async(mode == "async")
                    t0 = time.perf_counter()
                    enclave.ecall_train_step(mirror=mode != "none")
                    times[mode].append(time.perf_counter() - t0)
                    enclave.ecall_flush()  # the next mode starts with nothing in flight
            runs_on = backend.describe()
            enclave.ecall_close()
            name = backend.name
    _, _, options = parse_spec(spec)
    query = "&".join(f"{k}={v}" for k, v in sorted(options.items()))
    return MirrorOverhead(
        label,
        name,
        statistics.median(times["none"]),
        statistics.median(times["sync"]),
        statistics.median(times["async"]),
        instance=name + (f"?{query}" if query else ""),
        durability=runs_on.durability,
        emulated=runs_on.emulated,
    )
