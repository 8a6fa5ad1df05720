"""Where results go: checked output paths, atomic result files and exact JSON on stdout.

The CLI and the experiments both write results; this is their one home, so no library module
needs to import from ``plinius.cli``. A bad output path ends in one line naming it (a
``ConfigError``), never a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from plinius.core import fsutil
from plinius.core.errors import ConfigError, PliniusError


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (what ``--json`` promises scripts)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _probe_dir(directory: Path, what: str) -> None:
    """Create and remove a file in ``directory``: a writability test that also holds for root."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".plinius-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write {what} in {directory}: {exc.strerror}; choose a writable directory"
        ) from None


def output_file(path: str, what: str) -> str:
    """``path`` if a regular file can be written there: its directory exists and is writable,
    and whatever is at ``path`` already is a regular file (never a FIFO, device or directory)."""
    p = Path(fsutil.check_path(path, what))
    if not p.name or path.endswith(os.sep):
        raise ConfigError(f"{what} {path!r} names a directory; give a file name")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot use {what} {path}: {exc.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "special file (FIFO, socket or device)"
        raise ConfigError(f"{what} {path} is a {kind}; give a regular file path")
    parent = p.parent
    if not parent.is_dir():
        raise ConfigError(f"directory {parent} of {what} {path} does not exist: create it first")
    _probe_dir(parent, what)
    return path


def output_dir(path: str, what: str = "output directory") -> Path:
    """``path`` as a writable directory, created if missing."""
    p = Path(fsutil.check_path(path, what))
    if not path:
        raise ConfigError(f"{what} is empty; give a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what} {path} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path}: {exc.strerror}") from None
    if not p.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a directory")
    _probe_dir(p, what)
    return p


def write_text(path: Path, text: str, what: str) -> None:
    """Write an output file (atomically), turning an I/O error into one line naming it."""
    try:
        fsutil.atomic_write(path, text.encode(), mode=0o644, durable=False)
    except PliniusError as exc:
        raise ConfigError(f"{what}: {exc}") from None
