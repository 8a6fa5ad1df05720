"""The sweep on other hosts: the same job files, run by fio's client mode on each ``fio --server``.

Targets are planned here, as for a local run (names, shared targets, engine), then placed on every
server in ``remote_dir`` (default: the root the local plan would use), which must exist there:
fio does not create it. This fio expands the job files' ``${PLINIUS_*}`` before sending them, so
directory, engine and sizes reach the server unchanged. fio prefixes each file name with the
host it sends to; the copy sent of a sweep job file ends with ``unlink=1`` so the server keeps
no test files. Hosts run one after another, so their figures do not disturb each other and two
servers may share a directory. The server's mount is not inspected: its targets say so.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from plinius.fio.client import FioClient, probe
from plinius.fio.results import (
    FioOutputError,
    JobResult,
    average_runs,
    failed_results,
    parse_client_json,
)
from plinius.fio.runner import (
    SUITES,
    FioParams,
    FioReport,
    Target,
    _sizes,
    _timeout,
    job_sections,
    jobs_dir,
    plan_targets,
)
from plinius.fio.tool import FioTool, find_fio
from plinius.reporting.provenance import provenance


def remote_target(t: Target, client: FioClient, remote_dir: str | None) -> Target:
    """``t`` as it runs on ``client``: in ``remote_dir`` (or the same path), facts not read."""
    root = remote_dir or t.root
    return replace(
        t,
        host=client.label,
        root=root,
        fs_type="remote",
        mount_point="",
        mount_options="",
        device=f"fio server {client.label}",
        dax=False,
        device_facts={},
        directory=root,
        backends=[replace(b, notes=list(b.notes)) for b in t.backends],
        notes=[
            *t.notes,
            "server's mount not inspected; engine and emulation marks follow this machine's plan",
        ],
    )


def _sent_copy(job_file: Path, into: Path, suite: str) -> Path:
    """The job file as sent: a sweep's shared files are unlinked by its last job."""
    if SUITES[suite] != "sweep":
        return job_file
    out = into / job_file.name
    out.write_text(job_file.read_text().rstrip("\n") + "\nunlink=1\n")
    return out


def run_remote_target(
    target: Target,
    client: FioClient,
    params: FioParams,
    fio: FioTool,
    jobs: Path,
    tick: Callable[[], None] | None = None,
) -> list[JobResult]:
    """Every suite on one target of one server; failures are marked, never raised."""
    results: list[JobResult] = []
    with tempfile.TemporaryDirectory(prefix="plinius-fio-sent-") as tmp:
        for suite in params.suites:
            job_file = jobs / f"{suite}.fio"
            sent = _sent_copy(job_file, Path(tmp), suite)
            sections = job_sections(job_file)
            size, thread_counts = _sizes(params, suite)
            raw: list[JobResult] = []
            for _run in range(params.runs):
                for n in thread_counts:
                    env = {
                        "PLINIUS_DIR": target.root,
                        "PLINIUS_ENGINE": target.engine,
                        "PLINIUS_SIZE": str(size),
                        "PLINIUS_THREADS": str(n),
                        "PLINIUS_RUNTIME": str(params.runtime_s),
                        **target.env,
                    }
                    timeout = _timeout(params, size, n, len(sections))
                    res = fio.run_job_file(sent, env, timeout, client=client.fio_arg)
                    common = {"suite": suite, "target": target.name, "host": client.label}
                    try:
                        if res.timed_out:
                            raise FioOutputError(res.stderr.strip().splitlines()[-1])
                        runs = parse_client_json(
                            res.stdout, sections=sections, threads=n, stderr=res.stderr
                        )
                    except FioOutputError as exc:
                        why = f"on {client.label}: {exc}; fio exited {res.returncode}"
                        said = " ".join(f"{res.stdout}\n{res.stderr}".split())[:500]
                        if said:
                            why += ": " + said
                        runs = failed_results(sections, n, why, engine=target.engine, **common)
                    for r in runs:
                        r.suite, r.target, r.host = suite, target.name, client.label
                        r.engine = r.engine or target.engine
                    raw.extend(runs)
                    if tick:
                        tick()
            order = {name: i for i, (name, _) in enumerate(sections)}
            averaged = average_runs(raw)
            averaged.sort(key=lambda r: (order.get(r.job.split(":")[0], len(order)), r.threads))
            results.extend(averaged)
    if any(r.status != "ok" for r in results):
        target.status = "partial"
        target.error = next(r.error for r in results if r.status != "ok")
    return results


def run_fio_clients(
    clients: Sequence[FioClient],
    backends: Sequence[str] | None = None,
    directories: dict[str, str] | None = None,
    params: FioParams | None = None,
    *,
    remote_dir: str | None = None,
    fio: FioTool | None = None,
    jobs: str | os.PathLike[str] | None = None,
    tick: Callable[[], None] | None = None,
) -> FioReport:
    """The sweep on every server of ``clients``, merged into one report (host in every row).

    ``directories`` (``NAME:DIR``) and ``remote_dir`` are paths on the servers. Every server is
    probed first: an unreachable one raises ``FioServerError`` before any job.
    """
    params = params or FioParams()
    params.check()
    fio = fio or find_fio()
    jdir = jobs_dir(jobs)
    planned = plan_targets(backends, directories, params, fio)
    roots = list(dict.fromkeys(remote_dir or t.root for t in planned))
    facts = [probe(fio, c, roots) for c in clients]
    targets: list[Target] = []
    results: list[JobResult] = []
    for c in clients:
        for t in planned:
            rt = remote_target(t, c, remote_dir)
            targets.append(rt)
            results.extend(run_remote_target(rt, c, params, fio, jdir, tick))
    return FioReport(
        fio={**fio.as_dict(), "jobs_dir": str(jdir)},
        parameters=params,
        targets=targets,
        results=results,
        provenance=provenance(),
        clients=facts,
    )
