"""The command line: exit codes, JSON shapes and error messages users and scripts rely on."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_runner import run_cli

from plinius import __version__
from plinius.backends import registered
from plinius.cli.main import main


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


def test_owner_keygen_is_a_deprecated_alias_of_keygen(tmp_path: Path) -> None:
    """One implementation: the old spelling says so in one line, then does what keygen does."""
    key = tmp_path / "owner.key"
    res = run_cli("owner", "keygen", "--out", str(key))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == ["plinius owner keygen is deprecated: use `plinius keygen`"]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    again = run_cli("keygen", "--out", str(tmp_path / "new.key"))
    said = [r.stdout.split("(key id")[0].replace(str(tmp_path), "") for r in (res, again)]
    assert said == ["wrote /owner.key ", "wrote /new.key "]
    assert res.stdout.endswith("keep it secret and backed up\n")
    assert "refusing to overwrite" in run_cli("owner", "keygen", "--out", str(key)).stderr


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
    assert {e["engine"] for e in doc["engines"]} == {"openssl", "cryptography", "pycryptodome"}
    assert all(e["seal_mbps"] > 0 and e["raw_encrypt_mbps"] > 0 for e in doc["engines"])
    prov = doc["provenance"]
    # what "auto" chose, and why: the ways measured on this machine, per call size
    assert prov["sgx"] == "simulated"
    choice = prov["crypto_engine_choice"]
    assert choice["chosen"] == prov["crypto_engine"] and choice["how"].startswith("measured here")
    assert choice["table_source"] and choice["note"] and choice["cpu"]
    assert doc["backends"]["ssd"]["fs_type"] and "emulated" in doc["backends"]["tmpfs"]


def test_bench_quick_every_section(tmp_path: Path) -> None:
    """The main job in quick mode: every section runs, every figure is drawn, targets listed."""
    out = tmp_path / "out"
    res = run_cli("bench", "--quick", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    status = {k: v["status"] for k, v in doc["sections"].items()}
    from plinius.lab.bench.torch_section import torch_unavailable

    # it runs on the real-model workloads, none in quick (and needs torch: 3.11 envs only)
    assert status.pop("torch") == "skipped"
    why = "plinius[torch]" if torch_unavailable() else "real-model workloads"
    assert why in doc["sections"]["torch"]["error"]
    from plinius.lab.bench.peers import peers_unavailable

    # numpy, pickle and safetensors' numpy API need nothing more; torch adds its peers
    assert status.pop("peers") == ("ok" if peers_unavailable() is None else "skipped")
    # it launches torchrun ranks: not in --quick beside other sections (and it needs torch)
    assert status.pop("distributed") == "skipped"
    assert "torch" in doc["sections"]["distributed"]["error"]
    assert status == {
        s: "ok"
        for s in (
            *("save", "limits", "engines", "sps", "fio", "batch", "overhead", "inflight"),
            "freshness",
        )
    }
    # quick: fewer rounds than a full run, and it says so; every target has a verdict
    assert doc["parameters"]["rounds"] == 3 and "quick run" in doc["parameters"]["rounds_note"]
    from plinius.lab.bench.mirror_cost import TINY_MODEL
    from plinius.lab.bench.torch_section import EXAMPLE_MODEL

    # batch: the overhead section's model; the PyTorch example's row and the tiny model's fixed
    # cost against torch.save where torch is installed
    example = set() if torch_unavailable() else {EXAMPLE_MODEL, TINY_MODEL}
    fixed = {"64 MiB buffer", "64 MiB transaction"}  # the engines' and the sps section's bars
    # resnet50: the romulus-vs-AES bars at ResNet-50, "not run" in quick (it has no such workload)
    wls = {"size-64", "batch", "resnet50", *example, *fixed}
    assert {t["workload"] for t in doc["targets"]} == wls
    assert all(t["verdict"] != "not run" or t["why"] for t in doc["targets"])
    # every registered backend is benchmarked: the built-ins, redis on a private loopback
    # server (redis-server is installed where tests run), and any plug-in installed beside
    backends = {r["backend"] for r in doc["results"]}
    assert {"romulus", "tmpfs", "dax", "ssd", "redis"} <= backends
    assert backends - {"romulus", "tmpfs", "dax", "ssd", "redis"} <= set(registered())
    assert "rediss" not in backends  # benchmarked once, as redis
    assert "loopback" in doc["backends"]["redis"]["device"]
    fio_skipped = {x["backend"] for x in doc["fio"]["not_characterised"]}
    assert fio_skipped == {"redis"}
    assert "redis" not in {b["backend"] for t in doc["fio"]["targets"] for b in t["backends"]}
    instances = {"romulus", "tmpfs", "romulus?mode=msync", "dax", "ssd"}
    assert instances <= {r["instance"] for r in doc["results"]}
    for r in doc["results"]:
        assert r["durability"] == doc["backends"][r["instance"]]["durability"]
    assert {r["model_mb"] for r in doc["results"]} == {10, 64}
    assert doc["sps"]["rows"] and doc["sps"]["txn_cost"]["bytes"] == 64 << 20
    assert doc["batch"][0]["encrypted_s"] > 0 and doc["overhead"][0]["model"] == "batch"
    for png in ("save_restore", "speedup", "sps", "batch", "fio_fig2", "targets"):
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
