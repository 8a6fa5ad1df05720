"""The shared contract on the ``ssd`` backend, plus its own file-level checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plinius.backends import open_backend
from plinius.backends.testing import FP, KEY, BackendContract, model_records
from plinius.core.crypto import make_engine
from plinius.core.errors import BackendError, ConfigError, TruncatedError
from plinius.format.mirror import MirrorStore


class TestSsd(BackendContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return f"ssd:{tmp_path / 'store'}"


class TestSsdDirect(BackendContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return f"ssd:{tmp_path / 'store'}?direct=1"


def test_durability_is_power_fail_on_disk(tmp_path: Path) -> None:
    info = open_backend(f"ssd:{tmp_path}").describe()
    assert info.durability == "power-fail"
    assert info.extra["fsync"] is True


def test_truncated_file_on_disk(tmp_path: Path) -> None:
    b = open_backend(f"ssd:{tmp_path}")
    s = MirrorStore(b, make_engine(KEY), FP)
    s.save(model_records(1), version=1)
    path = tmp_path / "mirror"
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(TruncatedError, match="truncated"):
        s.load()


def test_no_temp_files_left_and_stale_ones_cleaned(tmp_path: Path) -> None:
    """Old-style and current staging names of dead processes go; the lock file stays."""
    for name in ("mirror.tmp-999999999", ".mirror.0123456789abcdef.tmp"):
        (tmp_path / name).write_bytes(b"junk from a dead process")
    b = open_backend(f"ssd:{tmp_path}")
    MirrorStore(b, make_engine(KEY), FP).save(model_records(1), version=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "mirror"]
    assert b.blobs() == ["mirror"]
    b.close()


def test_missing_parent_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        open_backend(f"ssd:{tmp_path / 'no' / 'such'}")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BackendError, match="not a directory"):
        open_backend(f"ssd:{f}")


def test_unwritable_directory() -> None:
    with pytest.raises(BackendError, match="ssd"):
        open_backend("ssd:/proc/plinius-cannot-write-here")


def test_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="direct=1"):
        open_backend(f"ssd:{tmp_path}?bogus=1")
