"""Class 6: predictable temp names and symlinks planted in attacker-controlled storage.

The attacker knows (or guesses) the pid and plants symlinks at every temp name plinius used to
derive from it, pointing at a file the victim can write (a stand-in for the owner key). Nothing
may be written through them; blobs that are symlinks or FIFOs are refused, never followed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from plinius.backends import open_backend
from plinius.core.crypto import make_engine
from plinius.core.errors import BackendError
from plinius.format.encdata import encrypt_dataset, read_info
from plinius.format.mirror import MirrorStore, Record

from .conftest import CliRunner, World, assert_refused

PRECIOUS = b"plinius-key-v1 00112233445566778899aabbccddeeff\n"
KEY = b"k" * 16


def _precious(where: Path) -> Path:
    victim = where / "precious.key"
    victim.write_bytes(PRECIOUS)
    return victim


def _plant(directory: Path, names: list[str], target: Path) -> None:
    for name in names:
        (directory / name).symlink_to(target)


def _records() -> list[Record]:
    return [Record(0, "w", np.arange(1000, dtype=np.float32))]


def test_backend_temp_names_of_this_pid_are_not_followed(tmp_path: Path) -> None:
    victim = _precious(tmp_path)
    be = tmp_path / "be"
    be.mkdir()
    pid = os.getpid()
    _plant(be, [f".probe.tmp-{pid}", f"mirror.tmp-{pid}", f"records.x.tmp-{pid}"], victim)
    with open_backend(f"tmpfs:{be}") as backend:
        store = MirrorStore(backend, make_engine(KEY), b"f" * 32)
        store.save(_records(), version=1)
        got = store.load()
        assert got is not None and got.info.version == 1
    assert victim.read_bytes() == PRECIOUS
    assert not (be / "mirror").is_symlink()


def test_encrypt_dataset_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = _precious(tmp_path)
    out = tmp_path / "d.pld"
    _plant(tmp_path, [f"d.pld.tmp-{os.getpid()}"], victim)
    engine = make_engine(KEY)
    x = np.random.default_rng(0).random((4, 16), dtype=np.float32)
    encrypt_dataset(out, engine, "t", {"train": (x, np.arange(4) % 3)}, (1, 4, 4), 3)
    assert victim.read_bytes() == PRECIOUS
    assert read_info(out, engine).counts["train"] == 4
    assert os.stat(out).st_mode & 0o077 == 0


def _run_with_planted(world: World, names: list[str], victim: Path, *args: str) -> None:
    """Run the CLI in a process that first plants symlinks at the names its own pid yields."""
    code = textwrap.dedent(
        f"""
        import os, sys
        from plinius.cli.main import main
        pid = os.getpid()
        for name in {names!r}:
            os.symlink({str(victim)!r}, name.format(pid=pid))
        sys.exit(main({list(args)!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code],
        env=world.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_cli_encrypt_and_train_with_planted_pid_symlinks(run_cli: CliRunner, world: World) -> None:
    victim = _precious(world.root)
    be = world.shm / "be"
    be.mkdir()
    out = world.root / "again.pld"
    _run_with_planted(
        world,
        [f"{out}.tmp-{{pid}}"],
        victim,
        "owner",
        "encrypt-data",
        "--key-file",
        str(world.key),
        "--out",
        str(out),
    )
    assert victim.read_bytes() == PRECIOUS
    names = [f"{be}/{n}.tmp-{{pid}}" for n in ("mirror", ".probe")]
    _run_with_planted(
        world,
        names,
        victim,
        *("train", "--model", "tiny", "--iterations", "2", "--backend", f"tmpfs:{be}"),
        *("--key-file", str(world.key), "--data", str(out)),
    )
    assert victim.read_bytes() == PRECIOUS
    res = run_cli("verify", "--backend", f"tmpfs:{be}", "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr


def _trained(run_cli: CliRunner, world: World) -> str:
    spec = f"tmpfs:{world.shm / 'be'}"
    res = run_cli(
        *("train", "--model", "tiny", "--iterations", "2", "--backend", spec),
        *("--key-file", str(world.key), "--data", str(world.data)),
        env=world.env,
    )
    assert res.returncode == 0, res.stderr
    return spec


def test_fifo_in_place_of_the_mirror_is_refused_not_waited_on(
    run_cli: CliRunner, world: World
) -> None:
    spec = _trained(run_cli, world)
    mirror = world.shm / "be" / "mirror"
    saved = mirror.read_bytes()
    mirror.unlink()
    os.mkfifo(mirror)
    res = run_cli(
        "verify", "--backend", spec, "--key-file", str(world.key), env=world.env, timeout=60
    )
    assert_refused(res, "not a regular file")
    mirror.unlink()
    mirror.write_bytes(saved)
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr


def test_symlinked_blob_is_refused(run_cli: CliRunner, world: World) -> None:
    spec = _trained(run_cli, world)
    mirror = world.shm / "be" / "mirror"
    elsewhere = world.root / "mirror-copy"
    elsewhere.write_bytes(mirror.read_bytes())
    mirror.unlink()
    mirror.symlink_to(elsewhere)
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert_refused(res, "symbolic link")
    mirror.unlink()
    mirror.write_bytes(elsewhere.read_bytes())
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr


def test_symlinked_backend_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(BackendError, match="symbolic link"):
        open_backend(f"ssd:{tmp_path / 'link'}")
    assert list(real.iterdir()) == []


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from plinius.core.errors import ConfigError
from plinius.core.fsutil import atomic_write

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full file system: writes fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
target = Path(sys.argv[1]) / "table"
try:
    atomic_write(target, b"x" * 100_000)
except ConfigError as exc:
    print("refused:", exc)
"""


def test_a_write_that_fails_is_one_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    """Review of issue 27 (L1): a failed atomic write (EFBIG, as a full disk fails) raises the
    one-line ConfigError, never an internal error from closing the file, and leaves no
    temporary file behind."""
    res = subprocess.run(
        [sys.executable, "-P", "-c", FULL_DISK, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("refused: cannot write") and "File too large" in res.stdout
    assert list(tmp_path.iterdir()) == []
