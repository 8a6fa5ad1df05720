"""plinius finds ``plaindir`` through the installed entry point, in-process and from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from plinius_backend_example import PlainDirBackend

from plinius.backends import backend_class, open_backend, registered


def test_registered_through_the_entry_point() -> None:
    assert registered()["plaindir"] == "plinius_backend_example.plaindir:PlainDirBackend"
    assert backend_class("plaindir") is PlainDirBackend


def test_open_by_spec(tmp_path: Path) -> None:
    with open_backend(f"plaindir:{tmp_path / 'd'}") as b:
        assert isinstance(b, PlainDirBackend)
        assert b.describe().backend == "plaindir"


def test_plinius_backends_lists_it(tmp_path: Path) -> None:
    """A fresh ``plinius backends`` process opens a scratch instance on the disk root."""
    env = {**os.environ, "PLINIUS_DISK_DIR": str(tmp_path), "PLINIUS_SHM_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-P", "-m", "plinius.cli.main", "backends", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    row = rows["plaindir"]
    assert row["available"] is True, row
    assert row["summary"].startswith("example plug-in")
    assert row["runs_on"]["backend"] == "plaindir"
