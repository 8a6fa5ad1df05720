"""Class 7: one process per file backend; a second writer or reader is refused, not raced.

Real processes: a victim trainer runs on a file backend; a second ``plinius train`` (and a
``verify``) on the same backend must exit 2 naming the holder's pid, and the victim's mirror must
keep advancing and verify once the victim is gone (a SIGKILLed holder leaves no stale lock).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import cli_argv

from plinius.backends import open_backend
from plinius.core.errors import BackendLockedError, ConfigError

from .conftest import CliRunner, World, assert_refused


def _spec(kind: str, world: World) -> str:
    root = world.shm if kind == "tmpfs" else world.root
    return f"{kind}:{root / kind}"


def _train_args(world: World, spec: str, iterations: int) -> list[str]:
    return [
        "train",
        "--model",
        "tiny",
        "--iterations",
        str(iterations),
        "--backend",
        spec,
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
    ]


def _start_victim(world: World, spec: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        cli_argv(*_train_args(world, spec, 100_000)),
        env=world.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    mirror = Path(spec.split(":", 1)[1]) / "mirror"
    deadline = time.monotonic() + 120
    while not mirror.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the victim never saved a mirror"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("kind", ["tmpfs", "ssd", "dax"])
def test_second_trainer_is_refused_and_victim_survives(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    spec = _spec(kind, world)
    victim = _start_victim(world, spec)
    try:
        second = run_cli(*_train_args(world, spec, 5), "--fresh", env=world.env)
        assert_refused(second, f"backend {spec} is in use by pid {victim.pid}")
        reader = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
        assert_refused(reader, f"in use by pid {victim.pid}")
        assert victim.poll() is None, "the victim died while the others were refused"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    # the kernel dropped the dead victim's lock: its last committed mirror verifies
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr
    assert "authenticates and is fresh" in res.stdout


def test_lock_in_process_names_the_holder(tmp_path: Path) -> None:
    spec = f"tmpfs:{tmp_path / 'be'}"
    with open_backend(spec) as first:
        with pytest.raises(BackendLockedError, match=f"in use by pid {os.getpid()}"):
            open_backend(spec)
        txn = first.begin_write("k", 3)
        txn.view(0, 3)[:] = b"abc"
        txn.commit()
    with open_backend(spec) as again:  # released on close
        blob = again.read("k")
        assert blob is not None and bytes(blob.data) == b"abc"


def test_dropped_backend_releases_its_lock(tmp_path: Path) -> None:
    spec = f"tmpfs:{tmp_path / 'be'}"
    open_backend(spec).describe()  # never closed explicitly
    open_backend(spec).close()


@pytest.mark.parametrize("how", ["symlink", "hardlink", "fifo"])
def test_planted_lock_file_is_refused_and_target_untouched(
    run_cli: CliRunner, world: World, how: str
) -> None:
    be = world.shm / "be"
    be.mkdir()
    victim = world.shm / "precious"
    victim.write_bytes(b"the owner's irreplaceable bytes\n")
    lock = be / ".lock"
    if how == "symlink":
        lock.symlink_to(victim)
    elif how == "hardlink":
        os.link(victim, lock)
    else:
        os.mkfifo(lock)
    res = run_cli(*_train_args(world, f"tmpfs:{be}", 2), env=world.env, timeout=60)
    assert_refused(res, "lock file")
    assert victim.read_bytes() == b"the owner's irreplaceable bytes\n"
    with pytest.raises(ConfigError, match="lock file"):
        open_backend(f"tmpfs:{be}")
