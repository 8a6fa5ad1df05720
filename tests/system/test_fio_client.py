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

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.core.errors import ConfigError
from plinius.lab.fio import FioReport, plot_fig2
from plinius.lab.fio.client import DEFAULT_PORT, FioClient, parse_clients
from plinius.lab.fio.report import fig2_lines
from plinius.lab.fio.runner import BackendOnTarget, Target

JOBS = Path(__file__).resolve().parents[2] / "fio_jobs"
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
    assert "| host | measured in | job |" in md
    where = f"{remote} ({mount_label(mount_of(remote))})"  # not the local backend's name
    assert all(f"| {h} | {where} | seq-read |" in md for h in hosts)
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
    where = f"{remote} ({mount_label(mount_of(remote))})"
    assert [label for _, _, label in lines] == [f"{h} {where}" for h in hosts]
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


def _rows_of(md: str, host: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith(f"| {host} |")]


def test_remote_rows_name_what_was_measured_where(servers: list[int], tmp_path: Path) -> None:
    """``tmpfs`` and ``romulus*`` share /dev/shm here, but the server measured REMOTE (ext4 on
    this machine's disk): every row names the host, that directory, its file system and
    device, and never a local backend or its emulation mark."""
    remote = tmp_path / "remote"
    remote.mkdir()
    host = f"127.0.0.1:{servers[0]}"
    m = mount_of(remote)
    out = tmp_path / "out"
    args = [a if a != "tmpfs" else "tmpfs,romulus" for a in QUICK]
    res = run_cli(
        *args, "--client", host, "--remote-dir", str(remote), "--out", str(out), "--json",
        env=_env(), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (t,) = doc["targets"]  # one directory on one server, measured once
    assert (t["host"], t["root"], t["directory"]) == (host, str(remote), str(remote))
    assert t["backends"] == [] and t["emulated"] is False
    # a loopback server is this machine: its mount is known, read here
    assert (t["fs_type"], t["device"], t["mount_point"]) == (m.fs_type, m.device, m.mount_point)
    assert "fio_disk_util" in t["device_facts"]  # the disks the remote fio reported (if any)
    assert t["label"] == f"{remote} ({mount_label(m)})"
    local_names = ["romulus", "*"] + (["tmpfs"] if m.fs_type != "tmpfs" else [])
    assert all(w not in t["label"] for w in local_names)
    assert not any("romulus" in k or "tmpfs" in k for k in doc["backends"])
    assert {r["target"] for r in doc["results"]} == {t["name"]}
    md = (out / "fio.md").read_text()
    rows = _rows_of(md, host)
    assert rows and all(f"| {t['label']} |" in row for row in rows)
    assert not any(w in row for row in rows for w in local_names)
    assert "| host | measured in | job |" in md
    assert not any(w in ln for ln in md.splitlines() if ln.startswith("- ") for w in local_names)
    text = run_cli(
        *args, "--client", host, "--remote-dir", str(remote), "--out", str(out),
        env=_env(), timeout=120,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    shown = [ln for ln in (text.stdout + text.stderr).splitlines() if host in ln]
    assert shown and not any("romulus" in ln or "emulated" in ln.lower() for ln in shown)


def test_remote_targets_never_carry_local_backends() -> None:
    """A server that is not on loopback: its mount is not read here, so the file system is
    unknown and said so; the local plan's backends, marks and shared targets do not travel."""
    from plinius.lab.fio.remote import remote_targets

    local = Target(
        name="tmpfs", root="/dev/shm/plinius", engine="sync", fs_type="tmpfs",
        mount_point="/dev/shm", mount_options="rw", device="tmpfs", dax=False, volatile=True,
        backends=[BackendOnTarget("tmpfs", False, False), BackendOnTarget("romulus", True, True)],
    )  # fmt: skip
    disk = Target(**{**local.__dict__, "name": "ssd", "root": "/var/tmp/plinius",
                     "backends": [BackendOnTarget("ssd", False, False)]})  # fmt: skip
    (t,) = remote_targets([local, disk], FioClient("storage-b", 9000), "/data")
    assert (t.host, t.root, t.backends, t.emulated) == ("storage-b:9000", "/data", [], False)
    assert t.fs_type == "unknown" and t.device == "" and not t.volatile
    assert t.label == "/data (file system not inspected)"
    assert "tmpfs" not in t.label and "romulus" not in str(t.as_dict())
    two = remote_targets([local, disk], FioClient("storage-b", 9000), None)
    assert [x.root for x in two] == ["/dev/shm/plinius", "/var/tmp/plinius"]
    t.device_facts["fio_disk_util"] = "nvme0n1"
    assert t.label == "/data (file system not inspected; fio reports disk nvme0n1)"
