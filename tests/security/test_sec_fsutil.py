"""The shared file primitives refuse what an attacker plants instead of a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plinius.core.errors import ConfigError
from plinius.core.fsutil import atomic_write, read_regular
from plinius.core.units import parse_size


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_atomic_write_never_replaces_a_special_file(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        atomic_write(target, b"data")
    assert target.is_fifo() if kind == "fifo" else target.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary file left behind


def test_atomic_write_replaces_a_planted_symlink_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out").symlink_to(victim)
    atomic_write(tmp_path / "out", b"new")
    assert victim.read_bytes() == b"precious" and (tmp_path / "out").read_bytes() == b"new"


def test_read_regular_does_not_hang_on_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    with pytest.raises(ConfigError, match="FIFO"):
        read_regular(tmp_path / "f", "key file")


def test_sizes_that_overflow_are_refused() -> None:
    with pytest.raises(ConfigError, match="too large"):
        parse_size("9" * 400 + "G")
