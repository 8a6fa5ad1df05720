"""The shared contract on the ``tmpfs`` backend (RAM, no fsync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plinius.backends import open_backend
from plinius.backends.testing import BackendContract


class TestTmpfs(BackendContract):
    @pytest.fixture
    def spec(self, shm_dir: Path) -> str:
        return f"tmpfs:{shm_dir / 'store'}"


def test_durability_is_process_crash(shm_dir: Path) -> None:
    info = open_backend(f"tmpfs:{shm_dir}").describe()
    assert info.fs_type == "tmpfs"
    assert info.durability == "process-crash"
    assert info.emulated is False
    assert any("reboot" in n for n in info.notes)


def test_tmpfs_backend_on_disk_is_not_called_tmpfs(tmp_path: Path) -> None:
    info = open_backend(f"tmpfs:{tmp_path}").describe()
    assert info.durability == "process-crash"
    assert any("expected tmpfs" in n for n in info.notes)
