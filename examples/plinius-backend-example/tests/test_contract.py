"""The contract every plinius backend must pass, run against ``plaindir``.

Everything is inherited from the suite plinius ships; the only thing a plug-in provides is the
``spec`` of a fresh, empty instance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plinius.backends.testing import BackendContract


class TestPlainDir(BackendContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return f"plaindir:{tmp_path / 'store'}"
