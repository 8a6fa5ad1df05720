"""``plinius fio --client``: the job files run by real ``fio --server`` processes on loopback ports.

No mocks and no skips: CI installs fio, and the servers are started here on free ports, each in
its own temporary directory as cwd, and killed afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import run_cli

from plinius.errors import ConfigError
from plinius.fio import FioReport, plot_fig2
from plinius.fio.client import DEFAULT_PORT, FioClient, parse_clients
from plinius.fio.report import fig2_lines

JOBS = Path(__file__).resolve().parents[1] / "fio_jobs"
#: the smallest sweep: one job file, one thread, 1 MiB files, one run capped at 1 s per job
QUICK = ("fio", "--quick", "--jobs", "fig2", "--backends", "tmpfs", "--threads", "1")
QUICK += ("--size", "1M", "--runtime", "1", "--no-plot")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PLINIUS_FIO"}
    return {**env, "PLINIUS_FIO_JOBS": str(JOBS)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"fio --server on port {port} exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"fio --server on port {port} did not listen within {timeout:.0f} s")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Two real ``fio --server`` processes on free loopback ports."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(2):
            port = _free_port()
            cwd = tmp_path_factory.mktemp(f"fio-server-{i}")
            proc = subprocess.Popen(
                ["fio", f"--server=ip:127.0.0.1,{port}"],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            procs.append(proc)
            _wait_listening(port, proc)
            ports.append(port)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def test_parse_clients() -> None:
    got = parse_clients("127.0.0.1:8766,storage-b,[::1]:9000")
    assert got == [FioClient("127.0.0.1", 8766), FioClient("storage-b"), FioClient("::1", 9000)]
    assert got[1].port == DEFAULT_PORT
    assert [c.fio_arg for c in got] == ["127.0.0.1,8766", "storage-b,8765", "ip6:::1,9000"]
    assert got[2].label == "[::1]:9000"


@pytest.mark.parametrize(
    "text", ["", ":8765", "a,,b", "h:0", "h:65536", "h:x", "h:", "[::1", "[nope]:1", "h:1,h:1"]
)
def test_parse_clients_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--client"):
        parse_clients(text)


def test_two_hosts_merged(servers: list[int], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    hosts = [f"127.0.0.1:{p}" for p in servers]
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = run_cli(
        *QUICK,
        "--client",
        ",".join(hosts),
        "--remote-dir",
        str(remote),
        "--out",
        str(out),
        "--json",
        env=_env(),
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert elapsed < 60, f"two-host quick run took {elapsed:.1f} s"
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "fio.json").read_text())
    assert [c["label"] for c in doc["clients"]] == hosts
    assert all(c["fio_version"].startswith("fio-3") for c in doc["clients"])
    for host in hosts:
        rows = [r for r in doc["results"] if r["host"] == host]
        assert {r["job"] for r in rows} == {"seq-read", "rand-read", "seq-write", "rand-write"}
        assert all(r["status"] == "ok" and r["bw_bytes"] > 0 for r in rows)
        assert {r["direction"] for r in rows} == {"read", "write"}
    assert {t["host"] for t in doc["targets"]} == set(hosts)
    assert all(t["root"] == str(remote) for t in doc["targets"])
    md = (out / "fio.md").read_text()
    assert "| host | backend | job |" in md
    assert all(f"| {h} | tmpfs | seq-read |" in md for h in hosts)
    assert list(remote.iterdir()) == []  # the servers left no test files


def test_plot_has_one_line_per_host(servers: list[int], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    args = [a for a in QUICK if a != "--no-plot"]
    hosts = [f"127.0.0.1:{p}" for p in servers]
    res = run_cli(
        *args, "--client", ",".join(hosts), "--remote-dir", str(remote), "--out",
        str(tmp_path / "out"), env=_env(), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "fio_fig2.png").stat().st_size > 0
    report = FioReport.from_dict(json.loads((tmp_path / "out" / "fio.json").read_text()))
    lines = fig2_lines(report.results, report.targets)
    assert [label for _, _, label in lines] == [f"{h} tmpfs" for h in hosts]
    assert plot_fig2(report, tmp_path / "again.png").stat().st_size > 0


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    res = run_cli(
        *QUICK, "--client", f"127.0.0.1:{port}", "--out", str(tmp_path / "out"), env=_env()
    )
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "fio --server" in err[0]
    assert "Traceback" not in res.stderr


def test_missing_remote_dir_is_one_line(servers: list[int], tmp_path: Path) -> None:
    gone = tmp_path / "not-there"
    res = run_cli(
        *QUICK, "--client", f"127.0.0.1:{servers[0]}", "--remote-dir", str(gone),
        "--out", str(tmp_path / "out"), env=_env(),
    )  # fmt: skip
    assert res.returncode == 2
    assert f"{gone} is not a directory on fio server 127.0.0.1:{servers[0]}" in res.stderr


@pytest.mark.parametrize("bad", [":9000", "127.0.0.1:99999", "a,,b"])
def test_malformed_client_is_one_line(bad: str, tmp_path: Path) -> None:
    res = run_cli(*QUICK, "--client", bad, "--out", str(tmp_path / "out"), env=_env())
    assert res.returncode == 2
    assert "--client" in res.stderr and "Traceback" not in res.stderr


def test_local_run_rows_say_local(tmp_path: Path) -> None:
    """The schema is uniform: a local run's rows carry host "local" and no clients."""
    env = {**_env(), "PLINIUS_SHM_DIR": str(tmp_path)}
    res = run_cli(*QUICK, "--out", str(tmp_path / "out"), "--json", env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["clients"] == []
    assert doc["results"] and {r["host"] for r in doc["results"]} == {"local"}
    assert "| host |" not in (tmp_path / "out" / "fio.md").read_text()
