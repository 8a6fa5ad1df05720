"""Exact resume after SIGKILL at random points: a TorchMirror run killed (a real kill of a real
process) and resumed ends bit-identical to one never interrupted, sync and async, on every
local backend."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs")

from plinius.core.crypto import generate_key, write_key_file

CHILD = Path(__file__).resolve().parents[1] / "torch_kill_child.py"
ITERATIONS = 16


def _child(spec: str, key: Path, asynchronous: bool) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        str(CHILD),
        spec,
        str(key),
        str(ITERATIONS),
        "1" if asynchronous else "0",
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def _finish(spec: str, key: Path, asynchronous: bool) -> str:
    proc = _child(spec, key, asynchronous)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("DONE "), out
    return last.split()[1]


def _kill_at_random(spec: str, key: Path, asynchronous: bool, rng: random.Random) -> int:
    """Start a run and SIGKILL it after a random iteration, at a random moment within the
    next step (often mid-mirror); the iteration it had reported."""
    target = rng.randint(1, ITERATIONS - 2)
    proc = _child(spec, key, asynchronous)
    assert proc.stdout is not None
    done = 0
    for line in proc.stdout:
        if line.startswith("DONE"):
            break
        done = int(line)
        if done >= target:
            time.sleep(rng.random() * 0.01)
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The owner key and the digest of an uninterrupted run."""
    d = tmp_path_factory.mktemp("torch-kill")
    key = d / "owner.key"
    write_key_file(key, generate_key())
    return key, _finish(f"tmpfs:{d / 'ref'}", key, False)


def _spec(kind: str, shm_dir: Path, tmp_path: Path) -> str:
    return {
        "tmpfs": f"tmpfs:{shm_dir / 'store'}",
        "romulus": f"romulus:{shm_dir / 'run.pool'}?size=16M",
        "ssd": f"ssd:{tmp_path / 'store'}",
    }[kind]


def _rounds(reference: tuple[Path, str], spec: str, asynchronous: bool, kills: int) -> None:
    key, want = reference
    rng = random.Random(f"{spec}-{asynchronous}-{kills}")
    for _ in range(kills):
        _kill_at_random(spec, key, asynchronous, rng)
    assert _finish(spec, key, asynchronous) == want


#: the default run: each backend and each mode once (every pair under ``slow``), one kill each
QUICK = [("tmpfs", True), ("romulus", False), ("romulus", True), ("ssd", False)]


@pytest.mark.parametrize(("kind", "asynchronous"), QUICK, ids=[f"{k}-{a}" for k, a in QUICK])
def test_killed_run_resumes_bit_identical(
    reference: tuple[Path, str], shm_dir: Path, tmp_path: Path, kind: str, asynchronous: bool
) -> None:
    _rounds(reference, _spec(kind, shm_dir, tmp_path), asynchronous, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["tmpfs", "romulus", "ssd"])
def test_killed_run_resumes_bit_identical_many_times(
    reference: tuple[Path, str], shm_dir: Path, tmp_path: Path, kind: str, asynchronous: bool
) -> None:
    _rounds(reference, _spec(kind, shm_dir, tmp_path), asynchronous, kills=5)
