"""Shared fixtures: crypto engines, and RAM-backed scratch directories under /dev/shm."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plinius.crypto import ENGINES


def pytest_configure(config: pytest.Config) -> None:
    """Tests never touch the user's real simulated CPU: one throw-away platform location.

    Subprocesses inherit it; tests that need their own (the attack suite) set it per test.
    """
    os.environ["PLINIUS_PLATFORM_DIR"] = tempfile.mkdtemp(prefix="plinius-test-platform-")
    os.environ["PLINIUS_STATE_DIR"] = tempfile.mkdtemp(prefix="plinius-test-state-")


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
