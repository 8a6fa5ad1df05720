"""fio's JSON turned into typed results, and repeated runs averaged into one figure per job.

fio prints one JSON document per invocation; with ``group_reporting`` each job section is one
entry whose ``bw_bytes`` and ``iops`` are summed over its threads. A job that failed keeps whatever
fio measured, marked ``failed`` with fio's own error text, so a sweep never loses the jobs that ran.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from plinius.core.errors import PliniusError
from plinius.core.units import parse_size

Status = Literal["ok", "partial", "failed"]
#: clat percentiles kept, as fio names them in its JSON
PERCENTILES = {"p50": "50.000000", "p99": "99.000000", "p99_9": "99.900000"}
_READS = {"read", "randread"}
_WRITES = {"write", "randwrite"}


class FioOutputError(PliniusError):
    """fio ran but printed no JSON plinius can read."""


@dataclass
class JobResult:
    """One fio job (one direction of it) on one target: throughput, IOPS and latency.

    ``bw_bytes`` and ``iops`` are totals over ``threads``; latencies are completion latencies
    (``clat_ns``) of single I/Os; ``fsync_mean_ns`` is fio's mean fsync latency for write jobs
    that sync. After averaging, ``runs`` counts the runs behind the means and the min/max fields
    give their spread.
    """

    job: str
    rw: str
    direction: Literal["read", "write"]
    threads: int
    bs: int
    size: int
    engine: str = ""
    bw_bytes: float = 0.0
    iops: float = 0.0
    clat_p50_ns: float = 0.0
    clat_p99_ns: float = 0.0
    clat_p99_9_ns: float = 0.0
    fsync_mean_ns: float = 0.0
    io_bytes: int = 0
    runtime_ms: float = 0.0
    runs: int = 1
    bw_bytes_min: float = 0.0
    bw_bytes_max: float = 0.0
    capped: bool = False
    status: Status = "ok"
    error: str = ""
    suite: str = ""
    target: str = ""
    host: str = "local"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def mbps(self) -> float:
        """Throughput in MB/s (10^6 bytes, as fio and the paper count)."""
        return self.bw_bytes / 1e6

    @property
    def key(self) -> tuple[str, str, str, str, str, int]:
        return (self.host, self.target, self.suite, self.job, self.direction, self.threads)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def split_output(text: str, jobs_key: str = "jobs") -> tuple[str, dict[str, Any]]:
    """fio prints job errors (``fio: pid=..., err=2/...``) on stdout before its JSON document:
    return those lines and the parsed document, which starts at the first line opening with '{'.
    """
    m = re.search(r"^\{", text, re.MULTILINE)
    if m is None:
        raise FioOutputError("fio printed no JSON")
    try:
        doc = json.loads(text[m.start() :])
    except json.JSONDecodeError as exc:
        raise FioOutputError(f"fio printed malformed JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(jobs_key), list):
        raise FioOutputError(f"fio's JSON has no {jobs_key!r} list")
    return text[: m.start()].strip(), doc


def _int_opt(value: Any, default: int) -> int:
    try:
        return parse_size(str(value)) if value not in (None, "") else default
    except PliniusError:
        return default


def _percentile(clat: dict[str, Any], name: str) -> float:
    pct = clat.get("percentile") or {}
    want = float(name)
    for k, v in pct.items():
        try:
            if abs(float(k) - want) < 1e-6:
                return float(v)
        except ValueError:
            continue
    return 0.0


def parse_fio_json(text: str, *, threads: int | None = None, stderr: str = "") -> list[JobResult]:
    """Results of every job in one fio JSON document (one per direction that did I/O).

    ``threads`` overrides the job's ``numjobs`` (unexpanded in some fio versions); fio's messages
    (stdout before the JSON, and ``stderr``) are attached to jobs it marks with an ``error``.
    """
    prefix, doc = split_output(text)
    return _parse_jobs(doc, doc["jobs"], threads, " ".join(f"{prefix}\n{stderr}".split())[:500])


#: the aggregate entry fio's client mode appends after each host's jobs
ALL_CLIENTS = "All clients"


def parse_client_json(
    text: str, *, sections: Sequence[tuple[str, str]], threads: int, stderr: str = ""
) -> list[JobResult]:
    """Results of one ``fio --client`` run: its ``client_stats`` without the aggregate.

    fio 3.x's client mode fills ``job options`` wrongly (the last job's, or none), so each job's
    ``rw`` is taken from the job file's ``sections`` instead; the server host is the caller's.
    """
    prefix, doc = split_output(text, "client_stats")
    messages = " ".join(f"{prefix}\n{stderr}".split())[:500]
    rw_of = dict(sections)
    jobs = []
    for entry in doc["client_stats"]:
        name = str(entry.get("jobname", "?"))
        if name == ALL_CLIENTS:
            continue
        jobs.append({**entry, "job options": {"rw": rw_of.get(name, "read")}})
    if not jobs:
        raise FioOutputError("the fio server ran no job")
    return _parse_jobs(doc, jobs, threads, messages)


def client_disks(text: str) -> list[str]:
    """The disks a ``fio --client`` run's server reported in ``disk_util`` (names as its kernel
    gives them, e.g. ``vda``; none for memory-backed storage); empty when there is no such JSON."""
    try:
        _, doc = split_output(text, "client_stats")
    except FioOutputError:
        return []
    disks = doc.get("disk_util")
    if not isinstance(disks, list):
        return []
    names = (d.get("name") for d in disks if isinstance(d, dict))
    return list(dict.fromkeys(str(n) for n in names if isinstance(n, str) and n))


def _parse_jobs(
    doc: dict[str, Any], jobs: list[dict[str, Any]], threads: int | None, messages: str
) -> list[JobResult]:
    glob = doc.get("global options") or {}
    out: list[JobResult] = []
    for job in jobs:
        opts = {**glob, **(job.get("job options") or {})}
        rw = str(opts.get("rw", opts.get("readwrite", "read")))
        n = threads or _int_opt(opts.get("numjobs"), 1)
        bs = _int_opt(opts.get("bs", opts.get("blocksize")), 4096)
        size = _int_opt(opts.get("size"), 0)
        if rw in _READS:
            directions: list[Literal["read", "write"]] = ["read"]
        elif rw in _WRITES:
            directions = ["write"]
        else:  # mixed jobs (rw, randrw, ...): one result per direction that did I/O
            directions = [
                d for d in ("read", "write") if int((job.get(d) or {}).get("io_bytes", 0)) > 0
            ] or ["read"]
        err = int(job.get("error", 0) or 0)
        for d in directions:
            st = job.get(d) or {}
            clat = st.get("clat_ns") or {}
            sync = (job.get("sync") or {}).get("lat_ns") or {}
            io_bytes = int(st.get("io_bytes", 0))
            status: Status = "ok"
            error = ""
            if err:
                status = "failed"
                error = f"fio error {err} ({os.strerror(err)})"
                if messages:
                    error += ": " + messages
            elif io_bytes == 0:
                status = "failed"
                error = "fio did no I/O for this job" + (f": {messages}" if messages else "")
            r = JobResult(
                job=str(job.get("jobname", "?")) + (f":{d}" if len(directions) > 1 else ""),
                rw=rw,
                direction=d,
                threads=n,
                bs=bs,
                size=size,
                engine=str(opts.get("ioengine", "")),
                bw_bytes=float(st.get("bw_bytes", 0)),
                iops=float(st.get("iops", 0.0)),
                clat_p50_ns=_percentile(clat, PERCENTILES["p50"]),
                clat_p99_ns=_percentile(clat, PERCENTILES["p99"]),
                clat_p99_9_ns=_percentile(clat, PERCENTILES["p99_9"]),
                fsync_mean_ns=float(sync.get("mean", 0.0)) if d == "write" else 0.0,
                io_bytes=io_bytes,
                runtime_ms=float(st.get("runtime", 0)),
                status=status,
                error=error,
            )
            r.bw_bytes_min = r.bw_bytes_max = r.bw_bytes
            # Less I/O than size × threads means runtime= stopped the job early.
            r.capped = status == "ok" and size > 0 and io_bytes < size * n
            out.append(r)
    return out


def failed_results(
    sections: Sequence[tuple[str, str]], threads: int, error: str, **common: Any
) -> list[JobResult]:
    """Placeholders for the jobs of a run that produced no usable JSON, so none goes missing."""
    out = []
    for name, rw in sections:
        direction: Literal["read", "write"] = "write" if rw in _WRITES else "read"
        out.append(
            JobResult(
                job=name,
                rw=rw,
                direction=direction,
                threads=threads,
                bs=0,
                size=0,
                status="failed",
                error=error,
                **common,
            )
        )
    return out


def _mean(xs: Iterable[float]) -> float:
    vals = list(xs)
    return statistics.fmean(vals) if vals else 0.0


def average_runs(results: Iterable[JobResult]) -> list[JobResult]:
    """One result per (target, suite, job, direction, threads): means over the runs that worked.

    Latency percentiles are averaged too (the mean of per-run p99s, not a pooled p99). A job with
    some failed runs is ``partial`` and names the failures; one with no good run stays ``failed``.
    """
    groups: dict[tuple[str, str, str, str, str, int], list[JobResult]] = {}
    for r in results:
        groups.setdefault(r.key, []).append(r)
    out: list[JobResult] = []
    for runs in groups.values():
        good = [r for r in runs if r.status != "failed"]
        bad = [r for r in runs if r.status == "failed"]
        if not good:
            last = runs[-1]
            out.append(replace(last, runs=0, error=bad[-1].error))
            continue
        first = good[0]
        avg = replace(
            first,
            bw_bytes=_mean(r.bw_bytes for r in good),
            iops=_mean(r.iops for r in good),
            clat_p50_ns=_mean(r.clat_p50_ns for r in good),
            clat_p99_ns=_mean(r.clat_p99_ns for r in good),
            clat_p99_9_ns=_mean(r.clat_p99_9_ns for r in good),
            fsync_mean_ns=_mean(r.fsync_mean_ns for r in good),
            io_bytes=round(_mean(r.io_bytes for r in good)),
            runtime_ms=_mean(r.runtime_ms for r in good),
            runs=len(good),
            bw_bytes_min=min(r.bw_bytes for r in good),
            bw_bytes_max=max(r.bw_bytes for r in good),
            capped=any(r.capped for r in good),
            status="partial" if bad else "ok",
            extra={**first.extra, "bw_bytes_runs": [r.bw_bytes for r in good]},
            error=(f"{len(bad)} of {len(runs)} runs failed: {bad[-1].error}" if bad else ""),
        )
        out.append(avg)
    return out
