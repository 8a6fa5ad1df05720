"""``--vm-loss``: real trainer processes, real deletions of the local instances, real Redis."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli as plinius
from spot_names import PAPER

from plinius.backends.redis_server import RedisServer
from plinius.core.crypto import generate_key, write_key_file
from plinius.lab.experiments.placement import local_instances
from plinius.lab.experiments.supervisor import RunSpec, wait_until
from plinius.lab.experiments.vmloss import VM_RUNS, VmSupervisor
from plinius.lab.experiments.vmreport import KEYS
from plinius.lab.spot.trace import load_trace


def _documented(result: dict[str, Any], report: str) -> None:
    """Every results.json key of the comparison is named in the report's key list."""
    listed = set(re.findall(r"^- `([^`]+)`", report, re.M))
    assert set(KEYS) <= listed
    arm_keys = {k.split(".", 1)[1] for k in KEYS if k.startswith("<arm>.")}
    for key in ("vm_loss", "runs", "replica", "same_final_weights"):
        assert key in result and key in listed
    for run in VM_RUNS:
        for key in ("iterations_lost", "iterations_executed", "wall_s", "cost_usd", "vm_losses"):
            assert key in arm_keys and key in result[run], (run, key)


def _check_arms(r: dict[str, Any], losses: int) -> None:
    """Every arm met the same ``losses`` scheduled VM losses (paired: one schedule, replayed by
    every arm, so equal counts and positions); a loss that found the trainer running deleted
    the VM's local instances before the restart, one that came after the arm finished is
    recorded as such, never skipped."""
    assert r["vm_loss"] is True and r["runs"] == list(VM_RUNS)
    assert r["replica"]["run"] is True
    schedule = r["loss_schedule"]
    assert len(schedule) == losses and [e["index"] for e in schedule] == list(range(losses))
    for run in VM_RUNS:
        arm = r[run]
        assert len(arm["vm_losses"]) == losses, run
        for event, loss in zip(schedule, arm["vm_losses"], strict=True):
            assert {k: loss[k] for k in event} == event, run  # the same loss, the same place
        assert arm["deleted_gone_at_restart"] is True
        for loss in arm["vm_losses"]:
            if loss["hit"]:
                assert loss["deleted"] and loss["gone_at_restart"] is True
            else:
                assert loss["restart"] == "none: the run had finished" and not loss["deleted"]
        assert arm["cost_usd"] > 0 and arm["wall_s"] > 0
    assert r["same_losses"] is True
    hits = {run: [x for x in r[run]["vm_losses"] if x["hit"]] for run in VM_RUNS}
    assert {x["restart"] for x in hits["local_only"]} == {"from scratch (--fresh)"}
    assert "restore from a replica" in {x["restart"] for x in hits["local_replica"]}
    assert r["local_only"]["iterations_lost"] > r["local_replica"]["iterations_lost"]
    assert r["nonresilient"]["iterations_lost"] > r["local_replica"]["iterations_lost"]
    assert r["same_final_weights"] is True


@pytest.mark.slow
def test_crash_test_vm_loss_quick_with_a_given_server(tmp_path: Path) -> None:
    """Seeded kill marks: local only redoes every stretch, the replica arm resumes; the
    experiment's copies on a server the user gave are removed afterwards."""
    with RedisServer() as server:
        res = plinius(
            "crash-test", "--vm-loss", "--quick", "--replica", server.url,
            "--out", str(tmp_path), "--json",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        # every copy is removed; only the marker that the prefix is plinius's stays
        assert server._command("DBSIZE").strip() == b":1"
        assert b"-vmloss-" in server._command("KEYS", "*plinius")
    doc = json.loads(res.stdout)
    r = doc["result"]
    _check_arms(r, losses=3)
    marks = r["kill_marks"]
    # the schedule: the seeded marks, each with one seeded moment inside the next iteration
    assert [e["after_executed"] for e in r["loss_schedule"]] == marks
    assert len({e["fraction"] for e in r["loss_schedule"]}) == 3
    for run in VM_RUNS:  # no arm met a loss before its mark
        for event, loss in zip(r["loss_schedule"], r[run]["vm_losses"], strict=True):
            assert loss["hit"] and loss["executed"] >= event["after_executed"], run
    # local only starts again from 0 after each loss: it redoes at least what each stretch did
    assert r["local_only"]["iterations_lost"] >= marks[-1] - len(marks)
    # the replica arm loses only what its last finished copy had not reached
    assert r["local_replica"]["iterations_lost"] < marks[-1] // 2
    assert r["replica"]["server"].startswith("given: 127.0.0.1")
    report = (tmp_path / "report.md").read_text()
    _documented(r, report)
    assert "outlives the VM" in report and "new VM is a new CPU" in report
    assert (tmp_path / "crash-vm-loss.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["result"]["runs"] == list(VM_RUNS)


@pytest.mark.slow
def test_spot_vm_loss_quick_on_the_paper_trace(tmp_path: Path) -> None:
    """The quick window of the paper's trace: 3 slots on, 9 off, 8 on, 8 off, then on. With
    0.5 s slots and 1000 iterations, whatever this machine's speed, some scheduled loss lands
    on trained work in every arm (the first, 1.5 s in, on a fast machine; else the second,
    4 s after the restart) and no arm finishes before the second (which a fast one would
    with --quick's 0.25 s and 200: its losses then hit only trainers still starting up)."""
    res = plinius(
        "spot", "--vm-loss", "--quick", "--slot-seconds", "0.5", "--iterations", "1000",
        "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["result"]
    assert r["complete"] and r["trace"] == "paper (AWS c3.2xlarge)"
    assert r["replica"]["server"].startswith("redis-server started here")
    # the schedule: every slot of the replayed window where the price rises above the bid
    on, start = load_trace(PAPER).running(0.0955), r["start_slot"]
    want = [x for x in range(start + 1, start + 160) if on[x - 1] and not on[x]]
    assert len(want) == 2  # the paper trace's early window: deterministic
    assert [(e["slot"], e["at_s"]) for e in r["loss_schedule"]] == [
        (x, round((x - start) * 0.5, 6)) for x in want
    ]
    _check_arms(r, losses=2)
    for run in VM_RUNS:
        losses = r[run]["vm_losses"]
        assert all(x["hit"] for x in losses), run  # none trains 1000 iterations that fast
        assert all(x["t"] >= x["at_s"] for x in losses if x["hit"]), run  # never early
    _documented(r, (tmp_path / "report.md").read_text())
    assert (tmp_path / "spot-vm-loss.png").stat().st_size > 10_000


def test_without_redis_server_the_replica_arm_is_reported_not_run(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(shutil.which("python3") or "/usr/bin/python3", bindir / "python3")
    env = {**os.environ, "PATH": str(bindir)}
    env.pop("PLINIUS_REDIS_SERVER", None)
    res = plinius(
        "crash-test", "--vm-loss", "--quick", "--kills", "1", "--iterations", "20",
        "--out", str(tmp_path / "out"), "--json", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["result"]
    assert r["replica"]["run"] is False
    assert "apt-get install -y redis-server" in r["local_replica"]["not_run"]
    assert len(r["local_only"]["vm_losses"]) == 1 == len(r["nonresilient"]["vm_losses"])
    assert r["same_losses"] is True and len(r["loss_schedule"]) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| local + replica | NOT RUN: not run: redis-server not found" in report


def test_replica_only_with_vm_loss(tmp_path: Path) -> None:
    res = plinius("crash-test", "--quick", "--replica", "redis://127.0.0.1:1/0")
    assert res.returncode == 2 and "--replica goes with --vm-loss" in res.stderr


def test_local_instances_by_class_facts_not_names() -> None:
    got = local_instances(
        ["tmpfs:/a/run/tmpfs", "redis://127.0.0.1:6379/0?prefix=p", "romulus:/b/romulus.pool"]
    )
    assert got == [Path("/a/run/tmpfs"), Path("/b/romulus.pool")]


def test_a_vm_loss_deletes_the_instance_before_the_restart(tmp_path: Path, shm_dir: Path) -> None:
    """The placement path holds the mirror before the loss, is gone right after the kill and at
    the restart, and the local-only restart begins from scratch."""
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    data = tmp_path / "data.pld"
    made = plinius("owner", "encrypt-data", "--key-file", str(key), "--out", str(data))
    assert made.returncode == 0, made.stderr
    (shm_dir / "run").mkdir()
    backend = f"tmpfs:{shm_dir / 'run' / 'tmpfs'}"
    spec = RunSpec(
        "tiny", backend, str(key), 100000, str(data), True,
        state_dir=str(tmp_path / "state"), platform_dir=str(tmp_path / "platform"),
    )  # fmt: skip
    sup = VmSupervisor(spec, tmp_path / "sup")
    (where,) = local_instances([backend])
    try:
        sup.start()
        assert wait_until(lambda: sup.last_iteration() >= 10, 120)
        assert (where / "mirror").exists()
        assert sup.kill("VM reclaimed")
        assert not where.exists() and not (tmp_path / "state").exists()
        assert (tmp_path / "platform").exists()  # the counter service outlives the VM
        sup.start()
        loss = sup.losses[0]
        assert loss["deleted"] == [str(where)] and loss["gone_at_restart"] is True
        assert loss["restart"] == "from scratch (--fresh)"
        assert wait_until(lambda: sup.last_iteration() >= 1 and len(sup.events) >= 3, 120)
        assert sup.proc is not None and "--fresh" in sup.proc.args
    finally:
        sup.stop()
    assert len(sup.losses) == 1  # the end of the experiment is no VM loss


def test_a_scheduled_loss_after_the_run_finished_is_recorded(tmp_path: Path, shm_dir: Path) -> None:
    """Every arm records every loss of the shared schedule: one that comes after the arm's
    trainer finished is kept, marked, with nothing deleted and nothing restarted."""
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    spec = RunSpec(
        "tiny", f"tmpfs:{shm_dir / 'run'}", str(key), 3, None, True,
        state_dir=str(tmp_path / "state"), platform_dir=str(tmp_path / "platform"),
    )  # fmt: skip
    sup = VmSupervisor(spec, tmp_path / "sup")
    sup.start()
    assert wait_until(sup.poll_exit, 120)
    event = {"index": 0, "slot": 17, "at_s": 0.75}
    assert sup.lose(event) is False
    (loss,) = sup.losses
    assert {k: loss[k] for k in event} == event and loss["hit"] is False
    assert loss["restart"] == "none: the run had finished" and loss["deleted"] == []
    assert (shm_dir / "run").exists()  # a finished run's instance is not touched
    sup.start()
    assert sup.starts == 1 and sup.summary()["vm_losses"] == [loss]
