"""The commit a checkout is at, with ``-dirty`` for local changes: stdlib only.

One function for the build hook (``setup.py`` loads this file by path, before plinius or its
dependencies are installed) and for :mod:`plinius.lab.reporting.provenance` (an editable install).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def checkout_commit(repo: Path) -> str | None:
    """``git rev-parse HEAD`` of ``repo`` (+ ``-dirty``), or None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None
