"""Runs the job files in ``fio_jobs/`` against the directory of every backend.

A *target* is one place fio measures: a scratch directory on the root a backend class names
(the lab profile's root: ``tmpfs``/``romulus`` under ``PLINIUS_SHM_DIR``, ``ssd``/``dax`` under
``PLINIUS_DISK_DIR``) or in a directory the user names. The engine that stands for a backend's
access path and whether its storage here is only a stand-in are the lab profile's
(``fio_engine``, ``fio_facts``: :mod:`plinius.lab.profiles`); a backend that is not file-backed
(a remote store) has nothing here to measure.
Backends whose directories sit on the same mount and would use the same fio engine are measured
once and share the figures (here ``ssd`` and an emulated ``dax`` are the same ext4 disk), so the
sweep does not report noise as a difference. Every target records what it really is (file
system, mount options, device, DAX or not), and a backend whose storage is only a stand-in (PM
emulated by tmpfs, DAX emulated by a non-DAX mount) is marked emulated.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import plinius
from plinius.backends.base import Backend
from plinius.backends.fsinfo import MountInfo, block_device_facts, mount_of
from plinius.backends.registry import backend_class
from plinius.core.errors import BackendError, ConfigError, PliniusError
from plinius.core.units import fmt_bytes
from plinius.lab.fio.client import LOCAL
from plinius.lab.fio.results import (
    FioOutputError,
    JobResult,
    Status,
    average_runs,
    failed_results,
    parse_fio_json,
)
from plinius.lab.fio.tool import FioTool, find_fio
from plinius.lab.plan import root_dir
from plinius.lab.profiles import default_backends, fio_root, profile
from plinius.lab.reporting.provenance import provenance

SCHEMA = "plinius-fio/1"
JOBS_ENV = "PLINIUS_FIO_JOBS"
#: the job files plinius knows, and whether each sweeps the thread counts (fig2) or runs once
SUITES: dict[str, Literal["sweep", "single"]] = {"fig2": "sweep", "mirror": "single"}
#: the paper's Fig. 2 engine: fio's ``sync`` (read/write(2)), one I/O in flight per thread
SYNC_ENGINE = "sync"
PM_ENGINES = ("auto", "sync", "libpmem")
_HEADROOM = 32 << 20
#: ``fs_type`` of a fio server's directory whose mount could not be read from here
NOT_INSPECTED = "unknown"
#: ``device_facts`` key: the disks a fio server reported in its ``disk_util``
FIO_DISKS = "fio_disk_util"


@dataclass(frozen=True)
class FioParams:
    """What to run: the paper's Fig. 2 set by default, small and time-limited with ``quick()``."""

    suites: tuple[str, ...] = ("fig2", "mirror")
    size: int = 512 << 20  # per thread (fig2)
    threads: tuple[int, ...] = (1, 2, 4, 8)
    runs: int = 3
    runtime_s: int = 5  # cap per job; 0 = none (the paper's setting)
    model_size: int = 100 << 20  # mirror jobs: the paper's largest model
    pm_engine: str = "auto"
    share_targets: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> FioParams:
        """CI size: 16 MiB per thread, 1 and 2 threads, one run, 2 s per job at most."""
        base = cls(size=16 << 20, threads=(1, 2), runs=1, runtime_s=2, model_size=16 << 20)
        return replace(base, **overrides)

    def check(self) -> None:
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise ConfigError(
                f"unknown fio job set(s) {', '.join(unknown) or '(none)'}: choose from "
                f"{', '.join(SUITES)}"
            )
        if self.runs < 1:
            raise ConfigError(f"runs={self.runs}: need at least one run")
        if not self.threads or any(t < 1 for t in self.threads):
            raise ConfigError(f"threads={self.threads}: thread counts must be >= 1")
        if self.size < 4096 or self.model_size < 1 << 20:
            raise ConfigError("size must be >= 4 KiB per thread and the model size >= 1 MiB")
        if self.runtime_s < 0:
            raise ConfigError(f"runtime={self.runtime_s}: use 0 for no limit or a positive cap")
        if self.pm_engine not in PM_ENGINES:
            raise ConfigError(f"pm engine {self.pm_engine!r}: choose from {', '.join(PM_ENGINES)}")

    def need_bytes(self) -> int:
        """Free space a target needs: fig2's files, or the mirror's two model-sized files."""
        need = 0
        if "fig2" in self.suites:
            need = self.size * max(self.threads)
        if "mirror" in self.suites:
            need = max(need, 2 * self.model_size)
        return need + _HEADROOM

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackendOnTarget:
    """How one backend relates to the target that measured it."""

    backend: str
    emulated: bool
    byte_addressable: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    """One directory fio ran in, what it really is, and the backends it stands for."""

    name: str
    root: str
    engine: str
    fs_type: str
    mount_point: str
    mount_options: str
    device: str
    dax: bool
    volatile: bool
    backends: list[BackendOnTarget]
    device_facts: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    directory: str = ""
    status: Status = "ok"
    error: str = ""
    notes: list[str] = field(default_factory=list)
    host: str = LOCAL

    @classmethod
    def on_mount(cls, name: str, root: str, engine: str, m: MountInfo, **more: Any) -> Target:
        """The target ``name`` measuring ``root`` with ``engine``, on mount ``m`` (its file
        system, options, device, DAX, RAM-backed or not); ``more``: the other fields."""
        more.setdefault("backends", [])
        return cls(
            name=name,
            root=root,
            engine=engine,
            fs_type=m.fs_type,
            mount_point=m.mount_point,
            mount_options=m.options,
            device=m.device,
            dax=m.dax,
            volatile=m.volatile,
            **more,
        )

    @property
    def label(self) -> str:
        """What was measured: backend names, each emulated one starred (``"ssd, dax*"``); on a
        fio server, its directory and storage (``"/data (ext4 on /dev/vda)"``): local backend
        names and marks never describe a server's storage."""
        if self.host != LOCAL:
            return f"{self.root} ({self.storage})"
        return ", ".join(b.backend + ("*" if b.emulated else "") for b in self.backends)

    @property
    def storage(self) -> str:
        """The file system and device as known (``ext4 on /dev/vda``, ``tmpfs``), or that the
        mount was not inspected, with the disks the server's fio reported."""
        disks = self.device_facts.get(FIO_DISKS, "")
        if self.fs_type == NOT_INSPECTED:
            many = "s" if "," in disks else ""
            return "file system not inspected" + (
                f"; fio reports disk{many} {disks}" if disks else ""
            )
        if self.device in ("", self.fs_type):
            return self.fs_type
        return f"{self.fs_type} on {self.device}"

    @property
    def emulated(self) -> bool:
        return any(b.emulated for b in self.backends)

    def share_key(self) -> tuple[str, ...]:
        env = ",".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return (self.mount_point, self.device, self.fs_type, self.engine, env)

    def runs_on(self) -> dict[str, dict[str, Any]]:
        """Per backend, the RunsOn-shaped facts ``reporting.markdown.provenance_md`` prints; a
        target on a fio server is one entry, ``HOST NAME``, of that server's storage."""
        if self.host != LOCAL:
            return {f"{self.host} {self.name}": self._remote_runs_on()}
        out = {}
        for b in self.backends:
            out[b.backend] = {
                "backend": b.backend,
                "path": self.root,
                "fs_type": self.fs_type,
                "mount_options": self.mount_options,
                "device": self.device,
                "dax": self.dax,
                "byte_addressable": b.byte_addressable,
                "durability": "process-crash" if self.volatile else "power-fail",
                "emulated": b.emulated,
                "notes": [*b.notes, *self.notes],
                "extra": {
                    "fio_target": self.name,
                    "fio_engine": self.engine,
                    "fsync": True,
                    "mount_point": self.mount_point,
                    **{f"device_{k}": v for k, v in self.device_facts.items()},
                    **({"fio_env": self.env} if self.env else {}),
                },
            }
        return out

    def _remote_runs_on(self) -> dict[str, Any]:
        known = self.fs_type != NOT_INSPECTED
        return {
            "backend": None,
            "host": self.host,
            "path": self.root,
            "fs_type": self.fs_type,
            "mount_options": self.mount_options,
            "device": self.device or self.device_facts.get(FIO_DISKS) or "not reported",
            "dax": self.dax if known else None,
            "byte_addressable": False,
            "durability": ("process-crash" if self.volatile else "power-fail")
            if known
            else "unknown",
            "emulated": False,
            "notes": list(self.notes),
            "extra": {
                "fio_target": self.name,
                "fio_engine": self.engine,
                "fsync": True,
                "mount_point": self.mount_point,
                **{f"device_{k}": v for k, v in self.device_facts.items()},
                **({"fio_env": self.env} if self.env else {}),
            },
        }

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        d["emulated"] = self.emulated
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        d = {k: v for k, v in d.items() if k not in ("label", "emulated")}
        d["backends"] = [BackendOnTarget(**b) for b in d.get("backends", [])]
        return cls(**d)


@dataclass
class FioReport:
    """Everything one ``plinius fio`` run produced; ``fio.json`` is ``as_dict()``."""

    fio: dict[str, str]
    parameters: FioParams
    targets: list[Target]
    results: list[JobResult]
    provenance: dict[str, Any]
    schema: str = SCHEMA
    #: the ``fio --server`` hosts of a ``--client`` run (empty for a local one)
    clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.status == "ok" for t in self.targets) and all(
            r.status == "ok" for r in self.results
        )

    def target_of(self, backend: str) -> Target | None:
        return next(
            (t for t in self.targets if any(b.backend == backend for b in t.backends)), None
        )

    def for_backend(self, backend: str) -> list[JobResult]:
        """The figures that describe ``backend``'s storage (shared with its target's others)."""
        t = self.target_of(backend)
        return [r for r in self.results if t is not None and (r.host, r.target) == (t.host, t.name)]

    def runs_on(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for t in self.targets:
            out.update(t.runs_on())
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "provenance": self.provenance,
            "fio": self.fio,
            "parameters": self.parameters.as_dict(),
            "targets": [t.as_dict() for t in self.targets],
            "backends": self.runs_on(),
            "results": [r.as_dict() for r in self.results],
            "clients": self.clients,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FioReport:
        """Read back a ``fio.json`` (for ``plinius bench`` and the plot)."""
        p = dict(d.get("parameters", {}))
        for k in ("suites", "threads"):
            if k in p:
                p[k] = tuple(p[k])
        return cls(
            fio=d.get("fio", {}),
            parameters=FioParams(**p),
            targets=[Target.from_dict(t) for t in d.get("targets", [])],
            results=[JobResult.from_dict(r) for r in d.get("results", [])],
            provenance=d.get("provenance", {}),
            schema=d.get("schema", SCHEMA),
            clients=list(d.get("clients", [])),
        )


def jobs_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the ``*.fio`` files are: given, ``$PLINIUS_FIO_JOBS``, the package, the checkout."""
    cands: list[Path] = []
    if explicit:
        cands.append(Path(explicit))
    elif os.environ.get(JOBS_ENV):
        cands.append(Path(os.environ[JOBS_ENV]))
    else:
        cands += [
            Path(plinius.__file__).resolve().parent / "fio_jobs",  # installed with the package
            Path(plinius.__file__).resolve().parent.parent / "fio_jobs",  # a source checkout
            Path.cwd() / "fio_jobs",
        ]
    for c in cands:
        if (c / "fig2.fio").is_file():
            return c
    raise ConfigError(
        f"fio job files not found (looked in {', '.join(map(str, cands))}): run from the plinius "
        f"checkout or set {JOBS_ENV} to its fio_jobs directory"
    )


_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def job_sections(path: Path) -> list[tuple[str, str]]:
    """``(job name, rw)`` of each job section: accounts for the jobs of a run with no JSON."""
    sections: list[tuple[str, str]] = []
    current: str | None = None
    rw = "read"
    for line in path.read_text().splitlines():
        m = _SECTION_RE.match(line)
        if m:
            if current and current != "global":
                sections.append((current, rw))
            current, rw = m.group(1), "read"
        elif current and line.strip().startswith(("rw=", "readwrite=")):
            rw = line.split("=", 1)[1].strip()
    if current and current != "global":
        sections.append((current, rw))
    return sections


def _backend_facts(name: str, cls: type[Backend], engine: str, m: MountInfo) -> BackendOnTarget:
    emulated, notes = profile(name).fio_facts(cls, engine, m)
    return BackendOnTarget(name, emulated, cls.byte_addressable, notes)


def _root_of(cls: type[Backend]) -> Path:
    return root_dir(cls.default_root)


def _file_backed(name: str) -> type[Backend]:
    """The class of ``name``; a ConfigError when it keeps no files fio could measure."""
    cls = backend_class(name)
    if fio_root(name) is None:
        raise ConfigError(
            f"backend {name!r} is not file-backed ({cls.locality}): fio has no storage of it to "
            "measure; leave it out of --backends"
        )
    return cls


def plan_targets(
    backends: Sequence[str] | None = None,
    directories: dict[str, str] | None = None,
    params: FioParams | None = None,
    fio: FioTool | None = None,
) -> list[Target]:
    """The targets for ``backends`` (default: the default file-backed ones), placed on their
    roots or ``directories``.

    Reads mounts only; nothing is created until the run.
    """
    params = params or FioParams()
    directories = dict(directories or {})
    if backends:
        names = list(backends)
    else:
        names = [n for n in default_backends() if n not in directories and fio_root(n) is not None]
    names += [n for n in directories if n not in names]
    targets: list[Target] = []
    for name in names:
        cls = _file_backed(name)
        root = Path(directories[name]) if name in directories else _root_of(cls)
        m = mount_of(root)
        engines = None if fio is None else fio.engines
        chosen, env = profile(name).fio_engine(params.pm_engine, m, engines)
        engine = chosen or SYNC_ENGINE
        facts = _backend_facts(name, cls, engine, m)
        t = Target.on_mount(
            name,
            str(root),
            engine,
            m,
            backends=[facts],
            device_facts=block_device_facts(m.device),
            env=env,
        )
        if t.device_facts.get("rotational") == "1" and not t.volatile:
            t.notes.append(f"{m.device} reports rotational=1 (a virtual or spinning disk)")
        same = next(
            (o for o in targets if params.share_targets and o.share_key() == t.share_key()), None
        )
        if same is not None:
            same.backends.append(facts)
        else:
            targets.append(t)
    for t in targets:  # a shared target is named after the backend it really is
        t.backends.sort(key=lambda b: b.emulated)
        t.name = t.backends[0].backend
    return targets


def check_directory(directory: str | os.PathLike[str], need: int) -> None:
    """Fail early, with the fix, when fio could not write its files into ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        raise BackendError(f"fio target {d} is not a directory: create it or choose another")
    try:
        fd, probe = tempfile.mkstemp(prefix=".plinius-probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BackendError(
            f"fio target {d} is not writable ({exc.strerror}): choose a writable directory "
            "(PLINIUS_DISK_DIR / PLINIUS_SHM_DIR, or NAME:DIR in --backends)"
        ) from None
    free = shutil.disk_usage(d).free
    if free < need:
        raise BackendError(
            f"fio target {d} has {fmt_bytes(free)} free but the jobs need {fmt_bytes(need)}: "
            "use --quick or a smaller --size/--model-size, or another directory"
        )


def _sizes(params: FioParams, suite: str) -> tuple[int, list[int]]:
    if SUITES[suite] == "sweep":
        return params.size, list(params.threads)
    return params.model_size, [1]


def count_steps(targets: Sequence[Target], params: FioParams) -> int:
    """fio invocations a sweep makes (for progress bars)."""
    per = sum(len(_sizes(params, s)[1]) for s in params.suites) * params.runs
    return per * len(targets)


def _timeout(params: FioParams, size: int, threads: int, njobs: int) -> float:
    # Generous: file layout is not capped by runtime=; assume >= 5 MB/s for it.
    layout = size * threads / 5e6
    cap = params.runtime_s if params.runtime_s else 3600
    return 120 + layout + njobs * (cap + 30)


@dataclass
class SweepHost:
    """How one host runs the sweep's jobs: locally in a scratch directory, or on a fio server."""

    directory: str  # what ${PLINIUS_DIR} names on that host
    label: str = ""  # "on HOST" in errors ("" locally)
    client: str | None = None  # fio's --client argument, None to run here
    job_file: Callable[[str, Path], Path] = lambda suite, path: path  # the file fio is given
    after_suite: Callable[[], None] = lambda: None  # e.g. free the scratch space
    parse: Callable[[str, list[tuple[str, str]], int, str], list[JobResult]] = (
        lambda out, sections, n, err: parse_fio_json(out, threads=n, stderr=err)
    )


def sweep_target(
    target: Target,
    host: SweepHost,
    params: FioParams,
    fio: FioTool,
    jobs: Path,
    tick: Callable[[], None] | None = None,
) -> list[JobResult]:
    """Every suite of ``params`` on ``target`` as ``host`` runs it: the one loop over suites,
    runs and thread counts that local and remote sweeps share. fio failures become failed
    results (never raised) and mark the target partial."""
    results: list[JobResult] = []
    for suite in params.suites:
        job_file = jobs / f"{suite}.fio"
        sent = host.job_file(suite, job_file)
        sections = job_sections(job_file)
        size, thread_counts = _sizes(params, suite)
        raw: list[JobResult] = []
        for _run in range(params.runs):
            for n in thread_counts:
                env = {
                    "PLINIUS_DIR": host.directory,
                    "PLINIUS_ENGINE": target.engine,
                    "PLINIUS_SIZE": str(size),
                    "PLINIUS_THREADS": str(n),
                    "PLINIUS_RUNTIME": str(params.runtime_s),
                    **target.env,
                }
                timeout = _timeout(params, size, n, len(sections))
                res = fio.run_job_file(sent, env, timeout, client=host.client)
                common: dict[str, Any] = {"suite": suite, "target": target.name}
                common |= {"host": host.label} if host.client else {"engine": target.engine}
                try:
                    if res.timed_out:
                        raise FioOutputError(res.stderr.strip().splitlines()[-1])
                    runs = host.parse(res.stdout, sections, n, res.stderr)
                except FioOutputError as exc:
                    where = f"on {host.label}: " if host.client else ""
                    why = f"{where}{exc}; fio exited {res.returncode}"
                    said = " ".join(f"{res.stdout}\n{res.stderr}".split())[:500]
                    if said:
                        why += ": " + said
                    if host.client:
                        common["engine"] = target.engine
                    runs = failed_results(sections, n, why, **common)
                for r in runs:
                    r.suite, r.target, r.engine = suite, target.name, r.engine or target.engine
                    if host.client:
                        r.host = host.label
                    elif r.status == "ok" and res.returncode != 0:
                        r.extra["fio_exit"] = res.returncode
                raw.extend(runs)
                if tick:
                    tick()
        host.after_suite()
        order = {name: i for i, (name, _) in enumerate(sections)}
        averaged = average_runs(raw)
        averaged.sort(key=lambda r: (order.get(r.job.split(":")[0], len(order)), r.threads))
        results.extend(averaged)
    if any(r.status != "ok" for r in results):
        target.status = "partial"
        target.error = next(r.error for r in results if r.status != "ok")
    return results


def run_target(
    target: Target,
    params: FioParams,
    fio: FioTool,
    jobs: Path,
    tick: Callable[[], None] | None = None,
) -> list[JobResult]:
    """Every suite on one target, in a scratch directory removed afterwards; never raises for
    fio or target failures, which are marked on the target and results instead."""
    steps = count_steps([target], params)
    root = Path(target.root)
    try:
        if not root.is_dir():
            raise BackendError(
                f"fio target root {root} does not exist: create it or set PLINIUS_SHM_DIR / "
                "PLINIUS_DISK_DIR (or NAME:DIR in --backends)"
            )
        check_directory(root, params.need_bytes())
        scratch = Path(tempfile.mkdtemp(prefix=f"plinius-fio-{target.name}-", dir=root))
    except (BackendError, OSError) as exc:
        target.status = "failed"
        target.error = str(exc) if isinstance(exc, PliniusError) else f"{root}: {exc.strerror}"
        for _ in range(steps):
            if tick:
                tick()
        return []
    target.directory = str(scratch)

    def free_scratch() -> None:  # free the space before the next suite
        for p in scratch.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)

    try:
        host = SweepHost(directory=str(scratch), after_suite=free_scratch)
        return sweep_target(target, host, params, fio, jobs, tick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Sweep:
    """A sweep checked and planned before any job runs: its parameters, the fio it runs, the
    job files and the targets planned on this machine."""

    params: FioParams
    fio: FioTool
    jobs: Path
    planned: list[Target]

    def report(self, targets: list[Target], results: list[JobResult], **more: Any) -> FioReport:
        """The report of the sweep's ``targets`` and ``results`` (``more``: e.g. ``clients``)."""
        return FioReport(
            fio={**self.fio.as_dict(), "jobs_dir": str(self.jobs)},
            parameters=self.params,
            targets=targets,
            results=results,
            provenance=provenance(),
            **more,
        )


def plan_sweep(
    backends: Sequence[str] | None = None,
    directories: dict[str, str] | None = None,
    params: FioParams | None = None,
    *,
    fio: FioTool | None = None,
    jobs: str | os.PathLike[str] | None = None,
) -> Sweep:
    """Find fio, check the parameters and the job files, plan the targets: what a local and a
    remote sweep share. Raises ``ToolMissingError`` (no usable fio) and ``ConfigError`` (bad
    parameters, a missing job file); reads mounts only."""
    params = params or FioParams()
    params.check()
    fio = fio or find_fio()
    jdir = jobs_dir(jobs)
    for s in params.suites:
        if not (jdir / f"{s}.fio").is_file():
            raise ConfigError(f"job file {jdir / f'{s}.fio'} is missing")
    return Sweep(params, fio, jdir, plan_targets(backends, directories, params, fio))


def run_fio(
    backends: Sequence[str] | None = None,
    directories: dict[str, str] | None = None,
    params: FioParams | None = None,
    *,
    fio: FioTool | None = None,
    jobs: str | os.PathLike[str] | None = None,
    tick: Callable[[], None] | None = None,
    on_targets: Callable[[list[Target]], None] | None = None,
) -> FioReport:
    """The whole sweep: find fio, plan targets, run every suite on each, keep partial results.

    Raises ``ToolMissingError`` (no usable fio) and ``ConfigError`` (bad parameters, no job
    files) before anything runs; failures of fio or of a target are recorded, not raised.
    """
    sweep = plan_sweep(backends, directories, params, fio=fio, jobs=jobs)
    if on_targets:
        on_targets(sweep.planned)
    results: list[JobResult] = []
    for t in sweep.planned:
        results.extend(run_target(t, sweep.params, sweep.fio, sweep.jobs, tick))
    return sweep.report(sweep.planned, results)
