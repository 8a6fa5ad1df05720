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
from plinius.fio.results import JobResult, parse_client_json
from plinius.fio.runner import (
    SUITES,
    FioParams,
    FioReport,
    SweepHost,
    Target,
    jobs_dir,
    plan_targets,
    sweep_target,
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
    with tempfile.TemporaryDirectory(prefix="plinius-fio-sent-") as tmp:
        host = SweepHost(
            directory=target.root,
            label=client.label,
            client=client.fio_arg,
            job_file=lambda suite, path: _sent_copy(path, Path(tmp), suite),
            parse=lambda out, sections, n, err: parse_client_json(
                out, sections=sections, threads=n, stderr=err
            ),
        )
        return sweep_target(target, host, params, fio, jobs, tick)


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
