"""The one way tests run the real ``plinius`` command: a fresh interpreter, as a user meets it.

``-P`` keeps the test directory off ``sys.path``, so the installed package is what runs. stdin is
``/dev/null``: a command that waited for input would fail instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = (sys.executable, "-P", "-m", "plinius.cli.main")


def cli_argv(*args: str) -> list[str]:
    """The argument vector of ``plinius ARGS...``, for tests that start it with ``Popen``."""
    return [*CLI, *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``plinius ARGS...`` run to completion; output captured as text, never checked here."""
    return subprocess.run(
        cli_argv(*args),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def train_args(
    spec: str, key: str | Path, data: str | Path, iterations: int, *extra: str, model: str = "tiny"
) -> list[str]:
    """The arguments of ``plinius train`` as the trainer tests run it (``extra`` may name another
    ``--model``: the last one given wins)."""
    return [
        "train",
        "--model",
        model,
        "--backend",
        spec,
        "--key-file",
        str(key),
        "--data",
        str(data),
        "--iterations",
        str(iterations),
        *extra,
    ]
