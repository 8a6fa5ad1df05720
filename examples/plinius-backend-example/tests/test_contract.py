"""The contract every plinius backend must pass, run against ``plaindir``.

Everything is inherited from the suite plinius ships; the only thing a plug-in provides is the
``spec`` of a fresh, empty instance (a location that does not exist yet).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plinius.backends import open_backend
from plinius.backends.testing import BackendContract
from plinius.errors import ConfigError


class TestPlainDir(BackendContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return f"plaindir:{tmp_path / 'store'}"


def test_create_is_its_only_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="create='always'"):
        open_backend(f"plaindir:{tmp_path / 'd'}?create=always")
    with pytest.raises(ConfigError, match=r"only create=auto\|never, got bogus"):
        open_backend(f"plaindir:{tmp_path / 'd'}?bogus=1")
    assert not (tmp_path / "d").exists()
