"""The untrusted host: sets up platform, backend and enclave, drives the loop, logs, reports.

The host is not kept from the data key: ``plinius train`` also plays the data owner on this
machine, so it reads the key file on every run to find the key the enclave sealed earlier (by
key id), to attest and provision the enclave when there is none, to authenticate the dataset
file's header, and without ``--data`` to encrypt the embedded MNIST subset. What stays behind the
enclave's ecalls is the model, the decrypted batches and the mirror's plaintext: the loop sees
only losses, timings and iteration numbers. ``run_training`` is what ``plinius train`` runs, and
what the crash and spot experiments start again and again in fresh processes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import stat
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plinius.backends.base import Backend
from plinius.backends.registry import parse_spec
from plinius.core import fsutil
from plinius.core.crypto import make_engine
from plinius.core.errors import ConfigError
from plinius.enclave.platform import open_platform
from plinius.enclave.trusted import StepResult
from plinius.format.encdata import iter_sealed, read_info
from plinius.format.mirror import metadata_bytes
from plinius.nn import Network, parse_cfg_text, zoo
from plinius.session import Replication, Resumed, Session
from plinius.session.owner import default_dataset


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
    #: ``--max-in-flight K`` (with ``--async-mirror``): snapshots that may wait for their persist
    max_in_flight: int = 1
    batch: int | None = None
    state_dir: str | None = None
    no_mirror: bool = False
    replicas: list[str] = field(default_factory=list)
    replica_every: int = 1
    #: None: two copy intervals (``replica.default_max_lag``)
    replica_max_lag: int | None = None
    accept_replica_loss: int | None = None
    #: ``--platform``: the root of trust (None: ``$PLINIUS_PLATFORM``, else the simulated CPU)
    platform: str | None = None


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
    #: with ``--replica``: per replica copies ok/failed/superseded, last version, bytes, seconds
    replica: dict[str, Any] | None = None
    #: the root of trust that ran (kind, location, what it is)
    platform: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LossLog:
    """Appends one row per iteration to a CSV or JSON-lines file (kept across restarts).

    Opened as a regular file only (a FIFO would block, a device would swallow or refuse rows);
    a failed write (disk full) stops training with one line naming the log.
    """

    FIELDS = ("iteration", "loss", "avg_loss", "mirror_ms", "time", "pid", "resumed_from")

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path is not None else None
        self._f: Any = None
        if self.path is None:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = fsutil.open_regular(self.path, "loss log", flags=flags)
        new = os.fstat(fd).st_size == 0
        self._f = os.fdopen(fd, "a", newline="")
        self._csv = self.path.suffix != ".json" and self.path.suffix != ".jsonl"
        if self._csv:
            self._w = csv.writer(self._f)
            if new:
                self._put(lambda: self._w.writerow(self.FIELDS))

    def _put(self, emit: Callable[[], object]) -> None:
        try:
            emit()
            self._f.flush()
        except OSError as exc:
            raise ConfigError(
                f"cannot write the loss log {self.path}: {exc.strerror}; free space or give "
                "another --log"
            ) from None

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
            self._put(lambda: self._w.writerow(row))
        else:
            line = json.dumps(dict(zip(self.FIELDS, row, strict=True))) + "\n"
            self._put(lambda: self._f.write(line))

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            # a failed write was reported already; its unflushed rest is lost with the disk space
            with contextlib.suppress(OSError):
                f.close()


MAX_COUNT = (1 << 31) - 1  # Darknet keeps iterations and batch sizes in C ints
MAX_SEED = (1 << 32) - 1


def check_options(opts: TrainOptions) -> None:
    """Refuse bad options before anything is read, allocated or trained (one clear line each).

    ``iterations`` is the total to reach, so 0 (and negatives) could only ever train nothing: an
    error rather than a silent success.
    """
    for flag, value, lo in (
        ("--iterations", opts.iterations, 1),
        ("--mirror-every", opts.mirror_every, 1),
        ("--crash-at", opts.crash_at, 1),
        ("--batch", opts.batch, 1),
        ("--seed", opts.seed, 0),
        ("--replica-every", opts.replica_every, 1),
        ("--replica-max-lag", opts.replica_max_lag, 1),
        ("--accept-replica-loss", opts.accept_replica_loss, 0),
        ("--max-in-flight", opts.max_in_flight, 1),
    ):
        hi = MAX_SEED if flag == "--seed" else MAX_COUNT
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"{flag} {value} is outside {lo}..{hi}")
    for what, path in (("key file", opts.key_file), ("--data", opts.data), ("--log", opts.log)):
        if path == "":
            raise ConfigError(f"{what} path is empty: give a file")
    if opts.max_in_flight > 1 and not opts.async_mirror:
        raise ConfigError(
            f"--max-in-flight {opts.max_in_flight}: snapshots wait in flight only with "
            "--async-mirror"
        )
    name, location, _ = parse_spec(opts.backend)
    fsutil.check_path(location, f"backend {name} location")
    check_replicas(opts)
    if opts.data is not None:
        os.close(fsutil.open_regular(opts.data, "dataset (--data)"))
    if opts.log is not None:
        fsutil.check_path(opts.log, "loss log")
        try:
            mode = os.stat(opts.log).st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG
        except OSError as exc:
            raise ConfigError(f"cannot use the loss log {opts.log}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise ConfigError(
                f"loss log {opts.log} is a directory, FIFO or device, not a regular file"
            )
        parent = Path(opts.log).parent
        if not parent.is_dir():
            raise ConfigError(f"directory {parent} of the loss log {opts.log} does not exist")


def check_replicas(opts: TrainOptions) -> None:
    """``--replica`` specs: well formed, each a different place than the primary and the rest."""
    if opts.replicas and opts.no_mirror:
        raise ConfigError("--replica copies the mirror: it cannot go with --no-mirror")
    for flag, value in (
        ("--replica-max-lag", opts.replica_max_lag),
        ("--accept-replica-loss", opts.accept_replica_loss),
    ):
        if value is not None and not opts.replicas:
            raise ConfigError(f"{flag} bounds replica copies: give --replica SPEC with it")
    seen = {_place(opts.backend)}
    for spec in opts.replicas:
        name, location, _ = parse_spec(spec)
        fsutil.check_path(location, f"replica {name} location")
        place = _place(spec)
        if place in seen:
            raise ConfigError(
                f"--replica {spec} is the same place as the primary or another replica: "
                "a replica must be a different backend instance"
            )
        seen.add(place)


def _place(spec: str) -> tuple[str, str]:
    name, location, _ = parse_spec(spec)
    return name, os.path.abspath(location) if "://" not in location else location


def run_training(
    opts: TrainOptions,
    on_step: Callable[[StepResult, int], None] | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> TrainReport:
    """Train ``opts.model`` to ``opts.iterations`` with a mirror in ``opts.backend``."""
    check_options(opts)
    t_start = time.perf_counter()
    platform = open_platform(opts.platform, state_dir=opts.state_dir)
    label, cfg_text = model_source(opts.model)
    net = Network(parse_cfg_text(cfg_text, label), batch=opts.batch, seed=opts.seed)
    notes: list[str] = ["sgx: simulated (software enclave boundary; no SGX on this machine)"]
    data: dict[str, Any] = {}

    def owner(key: bytes) -> None:
        """The data owner's step on this machine: the key's only use outside the enclave."""
        data["path"] = opts.data
        if opts.data is None:
            path, made = default_dataset(key, platform.state_dir, opts.seed)
            if made:
                say(
                    f"note: encrypted the embedded MNIST subset under your key into {path} "
                    "(the data owner's step, done for you)"
                )
            data["path"] = str(path)
        data["info"] = read_info(data["path"], make_engine(key))  # before the backend opens

    session = Session(
        net,
        label=label,
        key_file=opts.key_file,
        platform=platform,
        cfg_text=cfg_text,
        seed=opts.seed,
        say=say,
        owner=owner,
    )
    notes.append(
        "data key provisioned over an attested channel and sealed by the enclave"
        if session.provisioned
        else "data key unsealed (sealed by this enclave earlier): no new provisioning"
    )
    data_path, info = str(data["path"]), data["info"]
    enclave = session.enclave
    mirror_bytes = sum(a.nbytes for _, _, a in net.mirror_buffers())
    try:
        backend = session.open(
            opts.backend, mirror_bytes=mirror_bytes, data_bytes=os.path.getsize(data_path)
        )
        runs_on = backend.describe().as_dict()
        load = enclave.ecall_load_data(backend, data_path)
        loaded = load.as_dict()
        if not load.reloaded:
            # what the PM-data module saved: reading the file again as a restart without it
            t0 = time.perf_counter()
            for _ in iter_sealed(data_path, info, "train"):
                pass
            reload_s = time.perf_counter() - t0
            loaded["file_reload_s"] = reload_s
            notes.append(
                f"training data already in {backend.name}: opened in {load.seconds * 1e3:.1f} "
                f"ms, nothing reloaded (reading it from the file would take "
                f"{reload_s * 1e3:.1f} ms before any copy into storage)"
            )
        loaded["dataset"] = info.name
        target = opts.iterations if opts.iterations is not None else net.max_batches
        report = _train(opts, session, backend, target, mirror_bytes, notes, on_step, say)
    finally:
        session.close()
    return TrainReport(
        model=label,
        dataset=info.name,
        backend=runs_on,
        engine=enclave.engine_name,
        sgx="simulated",
        data=loaded,
        weights_sha256=enclave.ecall_weights_digest(),
        metadata_bytes_per_mirror=metadata_bytes(int(b[2].nbytes) for b in net.mirror_buffers()),
        buffers_per_mirror=len(net.mirror_buffers()),
        notes=notes,
        wall_s=time.perf_counter() - t_start,
        replica=session.replica_report(),
        platform=platform.describe(),
        **report,
    )


def _train(
    opts: TrainOptions,
    session: Session,
    backend: Backend,
    target: int,
    mirror_bytes: int,
    notes: list[str],
    on_step: Callable[[StepResult, int], None] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Attach the mirror, restore, train to iteration ``target``: the loop's figures."""
    enclave = session.enclave
    restore_ms = 0.0
    resumed_from: int | None = None
    mirror_ms: list[float] = []
    if not opts.no_mirror:
        replication = Replication(
            opts.replicas, opts.replica_every, opts.replica_max_lag, opts.accept_replica_loss
        )
        session.attach(
            backend,
            replication=replication,
            asynchronous=opts.async_mirror,
            mirror_bytes=mirror_bytes,
            max_in_flight=opts.max_in_flight,
        )

        def announce(found: Resumed) -> None:
            if found.iteration is not None:
                ms = found.seconds * 1e3
                at = found.iteration
                say(f"resumed from the mirror at iteration {at} ({ms:.1f} ms to restore)")
            if found.lost is not None:
                say(found.lost)
                notes.append(found.lost)

        resumed = session.restore(fresh=opts.fresh, announce=announce)
        restore_ms = resumed.seconds * 1e3
        resumed_from = resumed.iteration
        if resumed.lost is not None:
            mirror_ms.append(resumed.reseed_s * 1e3)  # the primary re-seeded at once
    start = enclave.ecall_iteration()
    log = LossLog(opts.log)
    iter_times: list[float] = []
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
                waited = session.mirror()
                mirror_ms.append(waited * 1e3)
            step.mirror_s = waited
            iter_times.append(time.perf_counter() - t0)
            log.write(step, waited * 1e3, resumed_from)
            if on_step is not None:
                on_step(step, target)
        session.flush()
        session.drain()
    finally:
        log.close()
    return {
        "start_iteration": start,
        "final_iteration": enclave.ecall_iteration(),
        "iterations_run": len(iter_times),
        "resumed": resumed_from is not None,
        "iteration_s_median": statistics.median(iter_times) if iter_times else 0.0,
        "mirror_ms_median": statistics.median(mirror_ms) if mirror_ms else 0.0,
        "mirrors": len(mirror_ms),
        "restore_ms": restore_ms,
    }
