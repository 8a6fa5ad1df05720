"""The untrusted host: sets up platform, backend and enclave, drives the loop, logs, reports.

Everything secret happens behind the enclave's ecalls; this module only sees losses, timings and
iteration numbers. ``run_training`` is what ``plinius train`` runs, and what the crash and spot
experiments start again and again in fresh processes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plinius.backends.registry import open_backend
from plinius.crypto import OVERHEAD, key_id, read_key_file
from plinius.encdata import iter_sealed, read_info
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave, StepResult
from plinius.errors import ConfigError
from plinius.nn import Network, parse_cfg_text, zoo
from plinius.owner import default_dataset, provision


def model_source(spec: str) -> tuple[str, str]:
    """(label, cfg text) for a zoo name, ``size-N`` or a ``.cfg`` path."""
    _, text = zoo.cfg_text(spec)
    return (Path(spec).name if spec.endswith(".cfg") else spec), text


@dataclass
class TrainOptions:
    model: str
    backend: str
    key_file: str
    iterations: int | None = None
    mirror_every: int = 1
    seed: int = 0
    fresh: bool = False
    crash_at: int | None = None
    log: str | None = None
    data: str | None = None
    async_mirror: bool = False
    batch: int | None = None
    state_dir: str | None = None
    no_mirror: bool = False


@dataclass
class TrainReport:
    model: str
    dataset: str
    backend: dict[str, Any]
    engine: str
    sgx: str
    start_iteration: int
    final_iteration: int
    iterations_run: int
    resumed: bool
    wall_s: float
    iteration_s_median: float
    mirror_ms_median: float
    mirrors: int
    restore_ms: float
    data: dict[str, Any]
    weights_sha256: str
    metadata_bytes_per_mirror: int
    buffers_per_mirror: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LossLog:
    """Appends one row per iteration to a CSV or JSON-lines file (kept across restarts)."""

    FIELDS = ("iteration", "loss", "avg_loss", "mirror_ms", "time", "pid", "resumed_from")

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._f: Any = None
        if self.path is None:
            return
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            self._f = open(self.path, "a", newline="")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ConfigError(f"cannot write the loss log {self.path}: {exc.strerror}") from None
        self._csv = self.path.suffix != ".json" and self.path.suffix != ".jsonl"
        if self._csv:
            self._w = csv.writer(self._f)
            if new:
                self._w.writerow(self.FIELDS)

    def write(self, step: StepResult, mirror_ms: float, resumed_from: int | None) -> None:
        if self._f is None:
            return
        row = (
            step.iteration,
            step.loss,
            step.avg_loss,
            round(mirror_ms, 3),
            round(time.time(), 3),
            os.getpid(),
            -1 if resumed_from is None else resumed_from,
        )
        if self._csv:
            self._w.writerow(row)
        else:
            self._f.write(json.dumps(dict(zip(self.FIELDS, row, strict=True))) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def run_training(
    opts: TrainOptions,
    on_step: Callable[[StepResult, int], None] | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> TrainReport:
    """Train ``opts.model`` to ``opts.iterations`` with a mirror in ``opts.backend``."""
    if opts.mirror_every < 1:
        raise ConfigError("--mirror-every must be >= 1")
    t_start = time.perf_counter()
    key = read_key_file(opts.key_file)
    platform = SimulatedPlatform(state_dir=opts.state_dir)
    label, cfg_text = model_source(opts.model)
    net = Network(parse_cfg_text(cfg_text, label), batch=opts.batch, seed=opts.seed)
    enclave = Enclave(platform, net, label, cfg_text, opts.seed)
    notes: list[str] = ["sgx: simulated (software enclave boundary; no SGX on this machine)"]
    if not enclave.ecall_unseal_key(key_id(key)):
        provision(enclave, key, platform.quoting_public_pem, net.fingerprint())
        notes.append("data key provisioned over an attested channel and sealed by the enclave")
    else:
        notes.append("data key unsealed (sealed by this enclave earlier): no new provisioning")

    if opts.data is None:
        path, made = default_dataset(key, platform.state_dir, opts.seed)
        if made:
            say(
                f"note: encrypted the embedded MNIST subset under your key into {path} "
                "(the data owner's step, done for you)"
            )
        data_path = str(path)
    else:
        data_path = opts.data
    info = read_info(data_path)

    backend = open_backend(opts.backend)
    runs_on = backend.describe().as_dict()
    load = enclave.ecall_load_data(backend, data_path)
    data = load.as_dict()
    if not load.reloaded:
        # what the PM-data module saved: reading the file again as a restart without it would
        t0 = time.perf_counter()
        for _ in iter_sealed(data_path, info, "train"):
            pass
        reload_s = time.perf_counter() - t0
        data["file_reload_s"] = reload_s
        notes.append(
            f"training data already in {backend.name}: opened in {load.seconds * 1e3:.1f} ms, "
            f"nothing reloaded (reading it from the file would take {reload_s * 1e3:.1f} ms "
            "before any copy into storage)"
        )
    data["dataset"] = info.name

    restore_ms = 0.0
    resumed_from: int | None = None
    if not opts.no_mirror:
        enclave.ecall_attach_mirror(backend, MirrorCounters(platform))
        enclave.ecall_set_async(opts.async_mirror)
        if opts.fresh:
            enclave.ecall_forget_mirror()
        else:
            t0 = time.perf_counter()
            resumed_from = enclave.ecall_restore()
            restore_ms = (time.perf_counter() - t0) * 1e3
            if resumed_from is not None:
                say(
                    f"resumed from the mirror at iteration {resumed_from} "
                    f"({restore_ms:.1f} ms to restore)"
                )
    start = enclave.ecall_iteration()
    target = opts.iterations if opts.iterations is not None else net.max_batches
    log = LossLog(opts.log)
    iter_times: list[float] = []
    mirror_ms: list[float] = []
    try:
        it = start
        while it < target:
            t0 = time.perf_counter()
            step = enclave.ecall_train_step(mirror=False)
            it = step.iteration
            if opts.crash_at is not None and it == opts.crash_at:
                log.close()
                os.kill(os.getpid(), signal.SIGKILL)
            waited = 0.0
            if not opts.no_mirror and (it % opts.mirror_every == 0 or it >= target):
                waited = enclave.ecall_mirror()
                mirror_ms.append(waited * 1e3)
            step.mirror_s = waited
            iter_times.append(time.perf_counter() - t0)
            log.write(step, waited * 1e3, resumed_from)
            if on_step is not None:
                on_step(step, target)
        enclave.ecall_flush()
    finally:
        log.close()
        enclave.ecall_close()
    n_buffers = len(net.param_buffers()) + len(net.optimizer_buffers())
    report = TrainReport(
        model=label,
        dataset=info.name,
        backend=runs_on,
        engine=enclave.engine_name,
        sgx="simulated",
        start_iteration=start,
        final_iteration=enclave.ecall_iteration(),
        iterations_run=len(iter_times),
        resumed=resumed_from is not None,
        wall_s=time.perf_counter() - t_start,
        iteration_s_median=statistics.median(iter_times) if iter_times else 0.0,
        mirror_ms_median=statistics.median(mirror_ms) if mirror_ms else 0.0,
        mirrors=len(mirror_ms),
        restore_ms=restore_ms,
        data=data,
        weights_sha256=enclave.ecall_weights_digest(),
        metadata_bytes_per_mirror=OVERHEAD * (n_buffers + 1),
        buffers_per_mirror=n_buffers,
        notes=notes,
    )
    backend.close()
    return report
