"""Class 10: leaks through file modes and stale staging memory.

``plinius export`` writes the model in plaintext: the file must be 0600 whatever the umask, and a
symlink planted at the output path is refused (export never overwrites), never written through.
A key file others can read is warned about once. File mirrors must not carry stale staging bytes
in their padding.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from plinius.backends import open_backend
from plinius.core.crypto import OVERHEAD, make_engine
from plinius.format.mirror import HEADER_SIZE, MirrorStore, Record, plan

from .conftest import CliRunner, World

KEY = b"k" * 16


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, inherited by the CLI processes: files default to world-readable."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _train(run_cli: CliRunner, world: World) -> str:
    spec = f"tmpfs:{world.shm / 'be'}"
    res = run_cli(
        *("train", "--model", "tiny", "--iterations", "2", "--backend", spec),
        *("--key-file", str(world.key), "--data", str(world.data)),
        env=world.env,
    )
    assert res.returncode == 0, res.stderr
    return spec


def test_export_is_0600_and_does_not_follow_a_symlink(
    run_cli: CliRunner, world: World, umask_022: None
) -> None:
    spec = _train(run_cli, world)
    victim = world.root / "precious"
    victim.write_bytes(b"do not overwrite\n")
    out = world.root / "model.weights"
    out.symlink_to(victim)
    res = run_cli(
        *("export", "--backend", spec, "--key-file", str(world.key), "--weights", str(out)),
        env=world.env,
    )
    assert res.returncode == 2 and "never overwrites" in res.stderr, res.stderr
    assert victim.read_bytes() == b"do not overwrite\n"
    assert os.readlink(out) == str(victim), "the planted symlink is left as it was"
    fresh = world.root / "fresh.weights"
    res = run_cli(
        *("export", "--backend", spec, "--key-file", str(world.key), "--weights", str(fresh)),
        env=world.env,
    )
    assert res.returncode == 0, res.stderr
    st = os.lstat(fresh)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_size > 16
    assert not [p for p in world.root.iterdir() if p.name.endswith(".tmp")]


def test_group_readable_key_is_warned_once(run_cli: CliRunner, world: World) -> None:
    spec = _train(run_cli, world)
    os.chmod(world.key, 0o644)
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("warning: key file") == 1, res.stderr
    assert "chmod 600" in res.stderr
    os.chmod(world.key, 0o600)
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr


@pytest.mark.parametrize("kind", ["tmpfs", "ssd"])
def test_backend_gaps_are_zeroed(tmp_path: Path, shm_dir: Path, kind: str) -> None:
    spec = f"{kind}:{(shm_dir if kind == 'tmpfs' else tmp_path) / 'be'}"
    size = 3 * 4096 + 100
    with open_backend(spec) as be:
        txn = be.begin_write("secret", size)
        txn.view(0, size)[:] = b"\xaa" * size  # stale bytes left in staging memory
        txn.commit()
        txn = be.begin_write("blob", size)
        covered = [(0, 64), (4096, 8192), (8000, 9000), (size - 10, size)]
        for a, b in covered:
            txn.view(a, b - a)[:] = b"\x11" * (b - a)
        txn.commit()
        blob = be.read("blob")
        assert blob is not None
        data = np.frombuffer(bytes(blob.data), np.uint8)
    mask = np.zeros(size, bool)
    for a, b in covered:
        mask[a:b] = True
    assert (data[mask] == 0x11).all()
    assert (data[~mask] == 0).all(), "stale staging bytes leaked into the file's gaps"


def test_mirror_padding_is_zero_after_staging_reuse(shm_dir: Path) -> None:
    rng = np.random.default_rng(0)
    records = [
        Record(i, "w", rng.random(n, dtype=np.float32)) for i, n in enumerate((5, 1111, 77, 4099))
    ]
    entries, manifest_at = plan(records)
    with open_backend(f"tmpfs:{shm_dir / 'be'}") as be:
        store = MirrorStore(be, make_engine(KEY), b"f" * 32)
        store.save(records, version=1)
        blob = be.read("mirror")
        assert blob is not None
        total = blob.data.nbytes
        txn = be.begin_write("other", total)
        txn.view(0, total)[:] = b"\xaa" * total
        txn.commit()
        store.save(records, version=2)
        blob = be.read("mirror")
        assert blob is not None
        data = np.frombuffer(bytes(blob.data), np.uint8)
    mask = np.zeros(data.size, bool)
    mask[:HEADER_SIZE] = True
    for e in entries:
        mask[e.offset : e.offset + e.length + OVERHEAD] = True
    mask[manifest_at:] = True
    assert (~mask).sum() > 1000, "the plan should leave alignment padding"
    assert (data[~mask] == 0).all(), "stale staging bytes leaked into the mirror's padding"
