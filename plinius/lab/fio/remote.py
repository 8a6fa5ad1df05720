"""The sweep on other hosts: the same job files, run by fio's client mode on each ``fio --server``.

Targets are planned here, as for a local run (names, shared targets, engine), then placed on every
server in ``remote_dir`` (default: the root the local plan would use), which must exist there:
fio does not create it. This fio expands the job files' ``${PLINIUS_*}`` before sending them, so
directory, engine and sizes reach the server unchanged. fio prefixes each file name with the
host it sends to; the copy sent of a sweep job file ends with ``unlink=1`` so the server keeps
no test files. Hosts run one after another, so their figures do not disturb each other and two
servers may share a directory.

A server's target is labelled by what was measured where: the host, the directory, its file
system and device. The local plan's backend names and emulation marks describe this machine's
storage, not the server's, so they do not travel: local targets that land in the same server
directory with the same engine are measured once. A loopback server is this machine, so its
directory's mount is read here; another server's is not inspected (and its targets say so),
with the disks its fio reports (``disk_util``) recorded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from plinius.backends.fsinfo import MountInfo, mount_of
from plinius.lab.fio.client import FioClient, probe
from plinius.lab.fio.results import JobResult, client_disks, parse_client_json
from plinius.lab.fio.runner import (
    FIO_DISKS,
    NOT_INSPECTED,
    SUITES,
    FioParams,
    FioReport,
    SweepHost,
    Target,
    count_steps,
    plan_sweep,
    sweep_target,
)
from plinius.lab.fio.tool import FioTool


def remote_target(t: Target, client: FioClient, remote_dir: str | None) -> Target:
    """The place ``t``'s jobs measure on ``client``: ``remote_dir`` (or the same path) there,
    with its mount as known (read here for a loopback server), and no local backend."""
    root = remote_dir or t.root
    m = mount_of(root) if client.loopback else MountInfo("", NOT_INSPECTED, "", "")
    how = (
        "mount read on this machine: the fio server is on loopback"
        if client.loopback
        else "the server's mount is not inspected from here; device: the disks its fio reports"
    )
    return Target.on_mount(
        root, root, t.engine, m, env=dict(t.env), directory=root, notes=[how], host=client.label
    )


def remote_targets(
    planned: Sequence[Target], client: FioClient, remote_dir: str | None
) -> list[Target]:
    """The planned targets placed on ``client``, each server directory and engine once."""
    out: dict[tuple[str, str, str], Target] = {}
    for t in planned:
        rt = remote_target(t, client, remote_dir)
        key = (rt.root, rt.engine, ",".join(f"{k}={v}" for k, v in sorted(rt.env.items())))
        out.setdefault(key, rt)
    targets = list(out.values())
    for rt in targets:  # one directory measured with two engines: name both apart
        if sum(o.root == rt.root for o in targets) > 1:
            rt.name = f"{rt.root} [{rt.engine}]"
    return targets


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
    """Every suite on one target of one server; failures are marked, never raised. The disks
    the server's fio reports are recorded in the target's ``device_facts``."""
    disks: dict[str, None] = {}

    def parse(out: str, sections: list[tuple[str, str]], n: int, err: str) -> list[JobResult]:
        disks.update(dict.fromkeys(client_disks(out)))
        return parse_client_json(out, sections=sections, threads=n, stderr=err)

    with tempfile.TemporaryDirectory(prefix="plinius-fio-sent-") as tmp:
        host = SweepHost(
            directory=target.root,
            label=client.label,
            client=client.fio_arg,
            job_file=lambda suite, path: _sent_copy(path, Path(tmp), suite),
            parse=parse,
        )
        try:
            return sweep_target(target, host, params, fio, jobs, tick)
        finally:
            target.device_facts[FIO_DISKS] = ",".join(disks)


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
    sweep = plan_sweep(backends, directories, params, fio=fio, jobs=jobs)
    roots = list(dict.fromkeys(remote_dir or t.root for t in sweep.planned))
    facts = [probe(sweep.fio, c, roots) for c in clients]
    targets: list[Target] = []
    results: list[JobResult] = []
    for c in clients:
        placed = remote_targets(sweep.planned, c, remote_dir)
        for rt in placed:
            targets.append(rt)
            results.extend(run_remote_target(rt, c, sweep.params, sweep.fio, sweep.jobs, tick))
        if tick:  # local targets merged into one server directory: their steps are done
            done = count_steps(sweep.planned, sweep.params) - count_steps(placed, sweep.params)
            for _ in range(done):
                tick()
    return sweep.report(targets, results, clients=facts)
