"""Shared fixtures: crypto engines, and RAM-backed scratch directories under /dev/shm."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plinius.crypto import ENGINES


@pytest.fixture(params=list(ENGINES))
def engine_name(request: pytest.FixtureRequest) -> str:
    """Every crypto engine; a missing one fails (CI installs the ``fast`` extra)."""
    return str(request.param)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on /dev/shm (tmpfs), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="plinius-test-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
