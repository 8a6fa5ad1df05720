"""The experiment supervisor with real trainer processes: a finished run is final."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli

from plinius.core.crypto import generate_key, write_key_file
from plinius.lab.experiments.supervisor import RunSpec, Supervisor, read_log, wait_until


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("owner")
    key = root / "owner.key"
    write_key_file(key, generate_key())
    data = root / "data.pld"
    res = run_cli("owner", "encrypt-data", "--key-file", str(key), "--out", str(data))
    assert res.returncode == 0, res.stderr
    return str(key), str(data)


def spec(owner: tuple[str, str], backend: str, iterations: int, mirror: bool) -> RunSpec:
    return RunSpec("tiny", backend, owner[0], iterations, owner[1], mirror)


def test_a_run_that_finished_at_a_slot_boundary_is_not_restarted(
    owner: tuple[str, str], tmp_path: Path, shm_dir: Path
) -> None:
    sup = Supervisor(spec(owner, f"tmpfs:{shm_dir / 'a'}", 3, mirror=False), tmp_path / "a")
    sup.start()
    assert sup.proc is not None
    sup.proc.wait()  # it finished, and nobody has collected its exit yet: the next slot starts
    sup.start()
    kinds = [e.kind for e in sup.events]
    assert sup.starts == 1 and kinds == ["start", "exit"] and sup.finished
    sup.start()
    assert sup.starts == 1 and sup.poll_exit()
    assert sup.summary()["iterations_executed"] == 3


def test_a_kill_that_comes_too_late_records_the_exit(
    owner: tuple[str, str], tmp_path: Path, shm_dir: Path
) -> None:
    sup = Supervisor(spec(owner, f"tmpfs:{shm_dir / 'b'}", 3, mirror=False), tmp_path / "b")
    sup.start()
    assert sup.proc is not None
    sup.proc.wait()
    assert sup.kill("too late") is False
    assert [e.kind for e in sup.events] == ["start", "exit"] and sup.kills_after == []
    sup.start()
    assert sup.starts == 1


def test_reported_kill_points_are_the_logged_ones(
    owner: tuple[str, str], tmp_path: Path, shm_dir: Path
) -> None:
    sup = Supervisor(spec(owner, f"tmpfs:{shm_dir / 'c'}", 100000, mirror=True), tmp_path / "c")
    for _ in range(2):
        sup.start()
        target = sup.executed + 15
        assert wait_until(lambda t=target: sup.last_iteration() >= 0 and sup.executed >= t, 120)
        assert sup.kill("test")
        assert sup.kills_after[-1] == len(read_log(sup.log))
    assert sup.summary()["kills_after"] == sup.kills_after and len(sup.kills_after) == 2
