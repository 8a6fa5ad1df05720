"""The command line: exit codes, JSON shapes and error messages users and scripts rely on."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from plinius import __version__
from plinius.cli.main import main


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "plinius.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


def test_version() -> None:
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"plinius {__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_backends_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert {"romulus", "ssd", "dax", "tmpfs"} <= set(by_name)
    for r in rows:
        assert r["available"], r.get("error")
        assert {"name", "byte_addressable", "durability", "runs_on"} <= set(r)
        assert r["durability"] in ("power-fail", "process-crash", "none")
        assert {"fs_type", "mount_options", "device", "dax", "emulated"} <= set(r["runs_on"])
    assert by_name["tmpfs"]["durability"] == "process-crash"
    assert by_name["ssd"]["byte_addressable"] is False
    assert by_name["romulus"]["byte_addressable"] is True
    assert by_name["romulus"]["runs_on"]["extra"]["flush_instruction"]


def test_backends_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in ("romulus", "ssd", "dax", "tmpfs"):
        assert name in out


def test_keygen(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    res = run_cli("keygen", "--out", str(key))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = key.read_bytes()
    res = run_cli("keygen", "--out", str(key))
    assert res.returncode == 2
    assert "refusing to overwrite" in res.stderr
    assert key.read_bytes() == before


def test_bench_small_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli(
        "bench",
        "--backends",
        "tmpfs,ssd",
        "--sizes",
        "1,3",
        "--repeats",
        "2",
        "--only",
        "save,engines",
        "--out",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "results.json").read_text())
    assert (out / "report.md").read_text().startswith("# plinius bench")
    assert (out / "save_restore.png").stat().st_size > 10_000
    assert len(doc["results"]) == 4
    for r in doc["results"]:
        for k in ("backend", "model_mb", "save_s", "restore_s", "save_mbps", "restore_mbps"):
            assert k in r
        assert r["save_s"] > 0 and r["restore_s"] > 0
        assert r["save_mbps"] == pytest.approx(r["bytes"] / 2**20 / r["save_s"])
    ssd = [r for r in doc["results"] if r["backend"] == "ssd"]
    assert all(r["speedup_save_vs_ssd"] == 1.0 for r in ssd)
    assert {e["engine"] for e in doc["engines"]} == {"cryptography", "pycryptodome"}
    assert all(e["seal_mbps"] > 0 and e["raw_encrypt_mbps"] > 0 for e in doc["engines"])
    prov = doc["provenance"]
    assert prov["sgx"] == "simulated" and prov["crypto_engine"] in ("cryptography", "pycryptodome")
    assert doc["backends"]["ssd"]["fs_type"] and "emulated" in doc["backends"]["tmpfs"]


def test_bench_quick_every_section(tmp_path: Path) -> None:
    """The main job in quick mode: every section runs, every figure is drawn, targets listed."""
    out = tmp_path / "out"
    res = run_cli("bench", "--quick", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert {k: v["status"] for k, v in doc["sections"].items()} == {
        s: "ok" for s in ("results", "engines", "sps", "fio", "batch", "overhead")
    }
    assert {r["backend"] for r in doc["results"]} == {"romulus", "tmpfs", "dax", "ssd"}
    instances = {"romulus", "tmpfs", "romulus?mode=msync", "dax", "ssd"}
    assert instances <= {r["instance"] for r in doc["results"]}
    for r in doc["results"]:
        assert r["durability"] == doc["backends"][r["instance"]]["durability"]
    assert {r["model_mb"] for r in doc["results"]} == {10, 64}
    assert doc["sps"]["rows"] and doc["sps"]["txn_cost"]["bytes"] == 64 << 20
    assert doc["batch"][0]["encrypted_s"] > 0 and doc["overhead"][0]["model"] == "batch"
    for png in ("save_restore", "speedup", "sps", "batch", "fio_fig2"):
        assert (out / f"{png}.png").stat().st_size > 10_000, png
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "romulus?mode=msync save vs ssd, size-64" in report
    msync = doc["backends"]["romulus?mode=msync"]["durability"]
    assert f"| {msync} vs {msync} |" in report
    assert report.rstrip().splitlines()[0] == "# plinius bench" and "## Recommendation" in report
    assert doc["backends"]["romulus"]["emulated"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--only", "save,teleport"], "unknown section(s) teleport"),
        (["bench", "--backends", "floppy"], "unknown backend 'floppy'"),
        (["bench", "--sizes", "ten"], "--sizes"),
        (["bench", "--backends", "ssd:/proc/nope/x", "--sizes", "1"], "does not exist"),
        (["bench", "--engine", "rot13", "--sizes", "1"], "unknown crypto engine"),
    ],
)
def test_bench_bad_input(args: list[str], message: str, tmp_path: Path) -> None:
    res = run_cli(*args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert message in res.stderr


def test_bench_without_fio_marks_the_section_not_run(tmp_path: Path) -> None:
    env = {**os.environ, "PLINIUS_FIO": str(tmp_path / "no-fio-here")}
    res = run_cli("bench", "--only", "fio", "--out", str(tmp_path / "o"), "--json", env=env)
    assert res.returncode == 0, res.stderr
    section = json.loads(res.stdout)["sections"]["fio"]
    assert section["status"] == "skipped" and "fio" in section["error"]
    assert "Not run" in (tmp_path / "o" / "report.md").read_text()
