"""The shared contract on the ``dax`` backend; off a DAX mount it must say it is emulated."""

from __future__ import annotations

from pathlib import Path

import pytest

from plinius.backends import open_backend
from plinius.backends.testing import BackendContract


class TestDax(BackendContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return f"dax:{tmp_path / 'store'}"


def test_non_dax_path_is_flagged_emulated(tmp_path: Path) -> None:
    info = open_backend(f"dax:{tmp_path}").describe()
    assert info.dax is False
    assert info.emulated is True
    assert any("emulated" in n for n in info.notes)
