"""examples/torch_mnist.py: SIGKILLed at random steps and resumed, it ends bit-identical.

The example runs as a user runs it (a fresh interpreter per start); kills are real SIGKILLs
landing at a random step (mid-step, mid-seal with ``--async``), and each restart must continue
from the mirror. ``plinius verify`` must accept the mirror the example leaves.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli

pytest.importorskip("torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs")

from safetensors.numpy import load_file  # installed with torch (the torch extra): no skip

from plinius.core.crypto import generate_key, write_key_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torch_mnist.py"
STEPS = 60
KILLS = 2
EVERY = 3  # kills land between mirrors too: a restart redoes the steps after the last one
FLAGS = ("--steps", str(STEPS), "--every", str(EVERY), "--batch", "32", "--log-every", "1")
START_RE = re.compile(r"starting at step (\d+) of")
DIGEST_RE = re.compile(r"^state sha256 ([0-9a-f]{64})$", re.M)


def _argv(spec: str, key: Path) -> list[str]:
    return [sys.executable, "-P", str(EXAMPLE), "--backend", spec, "--key-file", str(key)]


def _run(spec: str, key: Path, *extra: str) -> str:
    argv = [*_argv(spec, key), *FLAGS, *extra]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _digest(stdout: str) -> str:
    found = DIGEST_RE.findall(stdout)
    assert len(found) == 1, stdout
    return str(found[0])


def _killed_run(spec: str, key: Path, rng: random.Random, *extra: str) -> tuple[int, int]:
    """Start the example and SIGKILL it a random 0-20 ms after it prints a random step in the
    first half of what it has left; return (the step it started from, the step it was killed at).
    """
    argv = [*_argv(spec, key), *FLAGS, *extra]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    start = kill_step = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := START_RE.search(line):
                start = int(m.group(1))
                kill_step = start + rng.randint(1, max(1, (STEPS - start) // 2))
            elif kill_step > 0 and line.startswith("step ") and int(line.split()[1]) >= kill_step:
                time.sleep(rng.uniform(0.0, 0.02))
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {err}"
    assert start >= 0, err
    return start, kill_step


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torch-example") / "owner.key"
    write_key_file(path, generate_key())
    return path


@pytest.fixture(scope="module")
def reference(key: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The final state digest of one uninterrupted run."""
    d = tmp_path_factory.mktemp("torch-ref")
    return _digest(_run(f"tmpfs:{d}", key))


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("romulus", ()), ("tmpfs", ("--async",))],
    ids=["romulus-sync", "tmpfs-async"],
)
def test_killed_and_resumed_run_is_bit_identical(
    kind: str, extra: tuple[str, ...], key: Path, reference: str, shm_dir: Path
) -> None:
    spec = f"romulus:{shm_dir / 'mnist.pool'}" if kind == "romulus" else f"tmpfs:{shm_dir / 'm'}"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)  # printed on failure: the kill points can be replayed
    runs = [_killed_run(spec, key, rng, *extra) for _ in range(KILLS)]
    starts, kills = [s for s, _ in runs], [k for _, k in runs]
    out = _run(spec, key, *extra)
    m = START_RE.search(out)
    assert m is not None, out
    resumed_at = int(m.group(1))
    assert starts[0] == 0, f"kill seed {seed}: the first run did not start afresh: {starts}"
    # kills after at least one mirror point: some restart must have resumed past step 0
    assert max([*starts[1:], resumed_at]) > 0, f"kill seed {seed}: never resumed: {starts}"
    assert _digest(out) == reference, f"kill seed {seed}, kills at steps {kills}, starts {starts}"

    verified = run_cli("verify", "--backend", spec, "--key-file", str(key))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"iteration {STEPS} " in verified.stdout, verified.stdout
    if kind != "romulus":
        return  # export reads every backend alike: once is enough (each process costs seconds)

    # the mirror (made at the last step) exported as safetensors holds the final weights
    out_file = shm_dir / "model.safetensors"
    exported = run_cli(
        "export", "--backend", spec, "--key-file", str(key), "--safetensors", str(out_file)
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    h = hashlib.sha256()
    for name, arr in sorted(load_file(str(out_file)).items()):
        h.update(name.encode())
        h.update(arr.tobytes())
    assert f"model sha256 {h.hexdigest()}" in out
