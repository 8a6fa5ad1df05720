"""fio wrapper: version checks, JSON parsing (real and crafted), failures kept, real quick runs.

fio is required: CI installs it, and a missing fio fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from plinius.backends.fsinfo import mount_of
from plinius.cli.main import main
from plinius.core.errors import BackendError, ConfigError, ToolMissingError
from plinius.lab.fio import (
    FioParams,
    FioReport,
    FioTool,
    JobResult,
    average_runs,
    check_directory,
    find_fio,
    parse_fio_json,
    parse_version,
    plan_targets,
    plot_fig2,
    run_fio,
)
from plinius.lab.fio.results import FioOutputError

JOBS = Path(__file__).resolve().parents[2] / "fio_jobs"


@pytest.fixture(autouse=True)
def _jobs_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point at this checkout's job files (tests may run against an installed wheel)."""
    monkeypatch.setenv("PLINIUS_FIO_JOBS", str(JOBS))
    monkeypatch.delenv("PLINIUS_FIO", raising=False)


@pytest.fixture(scope="module")
def fio() -> FioTool:
    try:
        return find_fio()
    except ToolMissingError as exc:  # never skip: CI installs fio
        pytest.fail(f"fio is required for these tests: {exc}")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# --- finding fio ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("fio-3.33", (3, 33)),
        ("fio-3.33\n", (3, 33)),
        ("fio-3.1-53-g1234abc", (3, 1)),
        ("fio-2.1.10", (2, 1, 10)),
        ("fio-3.36-dirty", (3, 36)),
        ("something else", None),
        ("", None),
    ],
)
def test_parse_version(text: str, version: tuple[int, ...] | None) -> None:
    assert parse_version(text) == version


def test_real_fio_found(fio: FioTool) -> None:
    assert fio.version >= (3, 0)
    assert "sync" in fio.engines


def test_missing_fio_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLINIUS_FIO", str(tmp_path / "no-such-fio"))
    with pytest.raises(ToolMissingError, match=r"fio not found.*apt-get install fio"):
        find_fio()
    assert main(["fio", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "fio not found" in err and "apt-get install fio" in err
    assert not (tmp_path / "out").exists()


def test_missing_fio_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError, match=r"not found on PATH.*dnf install fio"):
        find_fio()


def test_too_old_fio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = _script(tmp_path / "fio", 'echo "fio-2.1"\n')
    monkeypatch.setenv("PLINIUS_FIO", str(old))
    with pytest.raises(ToolMissingError, match=r"fio 2\.1 .* too old.*>= 3\.0"):
        find_fio()


def test_not_fio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLINIUS_FIO", str(_script(tmp_path / "fake", 'echo "hello"\n')))
    with pytest.raises(ToolMissingError, match="not a fio version"):
        find_fio()


# --- parsing ----------------------------------------------------------------------------------


def test_parse_real_fio_json(fio: FioTool, tmp_path: Path) -> None:
    """A JSON document recorded for real on a tiny job, one job failing (its file is gone)."""
    job = tmp_path / "tiny.fio"
    job.write_text(
        "[global]\ndirectory=${PLINIUS_DIR}\nioengine=sync\nbs=4k\nsize=${PLINIUS_SIZE}\n"
        "numjobs=${PLINIUS_THREADS}\nthread\ngroup_reporting\nstonewall\n"
        "[w]\nrw=randwrite\nfsync=1\nfilename_format=w.$jobnum\n"
        "[r]\nrw=read\nfilename_format=w.$jobnum\n"
        # unlink=1 removes the file after the write: the read of it must fail
        "[gone-w]\nrw=write\nfilename=gone\nunlink=1\nnumjobs=1\n"
        "[gone-r]\nrw=read\nfilename=gone\nunlink=1\nnumjobs=1\n"
    )
    env = {"PLINIUS_DIR": str(tmp_path), "PLINIUS_SIZE": "1m", "PLINIUS_THREADS": "2"}
    run = fio.run_job_file(job, env, timeout=60)
    (tmp_path / "recorded.json").write_text(run.stdout)
    results = {r.job: r for r in parse_fio_json(run.stdout, stderr=run.stderr)}
    assert set(results) == {"w", "r", "gone-w", "gone-r"}
    w, r = results["w"], results["r"]
    assert (w.direction, w.rw, w.threads, w.bs, w.size) == ("write", "randwrite", 2, 4096, 1 << 20)
    assert r.direction == "read" and r.status == "ok" and not r.capped
    for x in (w, r):
        assert x.status == "ok" and x.io_bytes == 2 << 20
        assert x.bw_bytes > 0 and x.iops > 0 and x.runtime_ms >= 0
        assert 0 < x.clat_p50_ns <= x.clat_p99_ns <= x.clat_p99_9_ns
    assert w.fsync_mean_ns > 0 and r.fsync_mean_ns == 0
    assert results["gone-w"].status == "ok" and results["gone-w"].threads == 1
    bad = results["gone-r"]
    assert not run.ok and bad.failed and "No such file or directory" in bad.error


def _job(name: str, rw: str, **over: Any) -> dict[str, Any]:
    def side(io: int, bw: float, pct: dict[str, int] | None = None) -> dict[str, Any]:
        clat: dict[str, Any] = {"mean": 1.0}
        if pct is not None:
            clat["percentile"] = pct
        return {"io_bytes": io, "bw_bytes": bw, "iops": bw / 4096, "runtime": 10, "clat_ns": clat}

    pct = {"1.000000": 1, "50.000000": 500, "99.000000": 990, "99.900000": 999}
    job: dict[str, Any] = {
        "jobname": name,
        "error": 0,
        "job options": {"rw": rw},
        "read": side(0, 0),
        "write": side(0, 0),
        "sync": {"lat_ns": {"mean": 0.0}},
    }
    if rw in ("read", "randread", "randrw"):
        job["read"] = side(8 << 20, 4e8, pct)
    if rw in ("write", "randwrite", "randrw"):
        job["write"] = side(4 << 20, 2e8, pct)
        job["sync"] = {"lat_ns": {"mean": 1234.0}}
    job.update(over)
    return job


CRAFTED = {
    "fio version": "fio-3.33",
    "global options": {"bs": "4k", "size": "4M", "numjobs": "2", "ioengine": "psync"},
    "jobs": [
        _job("seq-read", "read"),
        _job("mixed", "randrw", **{"job options": {"rw": "randrw", "bs": "64k"}}),
        _job("failed", "write", error=5),
        _job("idle", "read", read={"io_bytes": 0, "bw_bytes": 0, "iops": 0, "runtime": 0}),
        _job("no-pct", "randwrite", write={"io_bytes": 1 << 20, "bw_bytes": 1e6, "iops": 244}),
    ],
}


def test_parse_crafted_edge_cases() -> None:
    text = "fio: some warning on stdout\n" + json.dumps(CRAFTED)
    res = {r.job: r for r in parse_fio_json(text, stderr="disk on fire")}
    assert list(res) == ["seq-read", "mixed:read", "mixed:write", "failed", "idle", "no-pct"]
    sr = res["seq-read"]
    assert (sr.threads, sr.bs, sr.size, sr.engine) == (2, 4096, 4 << 20, "psync")
    assert (sr.clat_p50_ns, sr.clat_p99_ns, sr.clat_p99_9_ns) == (500, 990, 999)
    assert not sr.capped and sr.mbps == pytest.approx(400.0)
    assert res["mixed:write"].bs == 64 << 10 and res["mixed:write"].capped  # 4 MiB of 8 MiB
    assert res["mixed:write"].fsync_mean_ns == 1234.0 and res["mixed:read"].fsync_mean_ns == 0
    failed = res["failed"]
    assert failed.failed and "fio error 5" in failed.error
    assert "some warning" in failed.error and "disk on fire" in failed.error
    assert failed.bw_bytes == 2e8  # what fio measured is kept
    assert res["idle"].failed and "no I/O" in res["idle"].error
    assert res["no-pct"].status == "ok" and res["no-pct"].clat_p99_ns == 0.0
    assert parse_fio_json(json.dumps(CRAFTED), threads=8)[0].threads == 8


@pytest.mark.parametrize(
    "text", ["", "fio: failed to parse job file\n", '{"jobs": ', '{"no": "jobs"}']
)
def test_unusable_output(text: str) -> None:
    with pytest.raises(FioOutputError):
        parse_fio_json(text)


def _r(bw: float, status: str = "ok", threads: int = 1, error: str = "") -> JobResult:
    return JobResult(
        job="seq-read",
        rw="read",
        direction="read",
        threads=threads,
        bs=4096,
        size=1 << 20,
        bw_bytes=bw,
        iops=bw / 4096,
        clat_p99_ns=bw / 100,
        status=status,  # type: ignore[arg-type]
        error=error,
        target="tmpfs",
        suite="fig2",
    )


def test_average_runs_marks_partial_and_failed() -> None:
    runs = [_r(100.0), _r(300.0), _r(0.0, "failed", error="boom")]
    runs += [_r(0.0, "failed", threads=2, error="bang")]
    by_threads = {r.threads: r for r in average_runs(runs)}
    one = by_threads[1]
    assert one.status == "partial" and one.runs == 2 and "1 of 3 runs failed: boom" in one.error
    assert one.bw_bytes == 200.0 and (one.bw_bytes_min, one.bw_bytes_max) == (100.0, 300.0)
    assert one.clat_p99_ns == 2.0 and one.extra["bw_bytes_runs"] == [100.0, 300.0]
    two = by_threads[2]
    assert two.failed and two.runs == 0 and two.error == "bang"


# --- targets ----------------------------------------------------------------------------------


def test_targets_label_emulation(fio: FioTool) -> None:
    targets = plan_targets(["romulus", "tmpfs", "dax", "ssd"], fio=fio)
    on = {b.backend: (t, b) for t in targets for b in t.backends}
    shm = mount_of(on["tmpfs"][0].root)
    disk = mount_of(on["ssd"][0].root)
    assert on["romulus"][1].emulated == (not shm.dax)
    assert on["dax"][1].emulated == (not disk.dax)
    assert on["tmpfs"][1].emulated == (not shm.volatile)
    if not shm.dax:  # here: romulus and tmpfs share one tmpfs target, measured once
        assert on["romulus"][0] is on["tmpfs"][0] and on["romulus"][0].engine == "sync"
        assert on["tmpfs"][0].name == "tmpfs" and on["tmpfs"][0].label == "tmpfs, romulus*"
        assert "PM emulated" in on["romulus"][1].notes[0]
    forced = plan_targets(["romulus"], params=FioParams(pm_engine="libpmem"), fio=fio)[0]
    assert forced.engine == "libpmem"
    if not shm.dax:
        assert forced.env == {"PMEM_IS_PMEM_FORCE": "1"} and forced.emulated
    separate = plan_targets(["ssd", "dax"], params=FioParams(share_targets=False), fio=fio)
    assert len(separate) == 2


def test_check_directory(tmp_path: Path) -> None:
    check_directory(tmp_path, 1 << 20)
    with pytest.raises(BackendError, match="free but the jobs need"):
        check_directory(tmp_path, 1 << 62)
    with pytest.raises(BackendError, match="not a directory"):
        check_directory(tmp_path / "missing", 1)
    with pytest.raises(BackendError, match="not writable"):
        check_directory("/proc", 1)  # unwritable even for root


def test_bad_parameters(fio: FioTool) -> None:
    with pytest.raises(ConfigError, match="unknown fio job set"):
        run_fio(["tmpfs"], params=FioParams(suites=("nope",)), fio=fio)
    with pytest.raises(ConfigError, match="at least one run"):
        run_fio(["tmpfs"], params=FioParams(runs=0), fio=fio)


# --- runs -------------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "out"
    rc = main(["fio", *args, "--out", str(out)])
    return rc, json.loads((out / "fio.json").read_text())


def test_failing_run_keeps_partial_results(
    fio: FioTool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fio dies on the 2-thread run: the 1-thread figures are kept, the rest marked failed."""
    flaky = _script(
        tmp_path / "flaky-fio",
        'if [ "$PLINIUS_THREADS" = "2" ]; then echo "fio: injected failure" >&2; exit 1; fi\n'
        f'exec "{fio.path}" "$@"\n',
    )
    monkeypatch.setenv("PLINIUS_FIO", str(flaky))
    rc, doc = _cli(
        tmp_path, "--quick", "--backends", "tmpfs", "--jobs", "fig2", "--size", "4M", "--no-plot"
    )
    assert rc == 1
    res = doc["results"]
    assert {(r["job"], r["threads"]) for r in res} == {
        (j, t) for j in ("seq-read", "rand-read", "seq-write", "rand-write") for t in (1, 2)
    }
    for r in res:
        if r["threads"] == 1:
            assert r["status"] == "ok" and r["bw_bytes"] > 0
        else:
            assert r["status"] == "failed" and "injected failure" in r["error"]
    assert doc["targets"][0]["status"] == "partial"
    assert "Failures" in (tmp_path / "out" / "fio.md").read_text()


def test_unusable_targets_are_marked(fio: FioTool, tmp_path: Path) -> None:
    """An unwritable, a missing and a too-small target fail alone; the good one still runs."""
    rc, doc = _cli(
        tmp_path,
        "--quick",
        "--jobs",
        "mirror",
        "--backends",
        f"tmpfs,ssd:/proc,dax:{tmp_path / 'missing'}",
    )
    assert rc == 1
    targets = {t["name"]: t for t in doc["targets"]}
    assert targets["tmpfs"]["status"] == "ok"
    assert targets["ssd"]["status"] == "failed" and "not writable" in targets["ssd"]["error"]
    assert targets["dax"]["status"] == "failed" and "does not exist" in targets["dax"]["error"]
    assert {r["target"] for r in doc["results"]} == {"tmpfs"}
    rc, doc = _cli(tmp_path, "--quick", "--jobs", "fig2", "--backends", "tmpfs", "--size", "100T")
    assert rc == 1 and "free but the jobs need" in doc["targets"][0]["error"]


def test_libpmem_forced_on_tmpfs(fio: FioTool) -> None:
    """The real-PM engine path, forced onto tmpfs and labelled emulated."""
    params = FioParams.quick(
        suites=("fig2",), threads=(1,), size=4 << 20, runtime_s=1, pm_engine="libpmem"
    )
    report = run_fio(["romulus"], params=params, fio=fio)
    assert report.ok, report.targets[0].error
    assert {r.engine for r in report.results} == {"libpmem"}
    assert report.targets[0].emulated == (not report.targets[0].dax)


def test_quick_run_on_tmpfs_and_ssd(
    fio: FioTool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tox ``fio`` env's command, for real, on a RAM target and a disk target."""
    rc, doc = _cli(tmp_path, "--quick", "--backends", "tmpfs,ssd")
    assert rc == 0, doc["targets"]
    assert "seq-read" in capsys.readouterr().out
    out = tmp_path / "out"
    assert (out / "fio.md").exists() and (out / "fio_fig2.png").stat().st_size > 0
    assert doc["schema"] == "plinius-fio/1" and "git_commit" in doc["provenance"]
    assert doc["parameters"]["threads"] == [1, 2] and doc["fio"]["version"]
    assert set(doc["backends"]) == {"tmpfs", "ssd"}
    assert (
        doc["backends"]["ssd"]["fs_type"]
        == mount_of(os.environ.get("PLINIUS_DISK_DIR", "/var/tmp")).fs_type
    )
    report = FioReport.from_dict(doc)
    for name in ("tmpfs", "ssd"):
        res = report.for_backend(name)
        assert len(res) == 4 * 2 + 2
        assert all(r.status == "ok" and r.bw_bytes > 0 and r.runs == 1 for r in res)
        assert {r.job for r in res if r.suite == "mirror"} == {"mirror-write", "mirror-read"}
    # the plot can be drawn again from fio.json alone, as `plinius bench` will
    png = plot_fig2(report, tmp_path / "again.png")
    assert png.stat().st_size > 0
    # no scratch directories left behind
    for t in report.targets:
        assert not Path(t.directory).exists()
