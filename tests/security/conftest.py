"""Shared fixtures of the attack suite: a victim's world and a way to run the real CLI.

Every attack runs ``plinius`` in a real process (``python -P -m plinius.cli.main``), as a
hostile operator would meet it, with its own state directory (attacker-controlled storage) and
platform directory (the simulated CPU, which the attacker does not control).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli as _run

from plinius.core.crypto import generate_key, write_key_file

CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> CliRunner:
    """``run_cli(*args, env=..., timeout=...)``: the real CLI in a fresh process."""
    return _run


def assert_refused(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A deliberate refusal: exit 2, one line on stderr naming what was found, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    low = res.stderr.lower()
    for n in needles:
        assert n.lower() in low, (n, res.stderr)


@dataclass
class World:
    """A victim: owner key, encrypted data set, state dir, platform dir, scratch dirs, and the
    platform spec (None: the simulated CPU in ``platform``; else a TPM keeping its files there)."""

    root: Path
    key: Path
    data: Path
    state: Path
    platform: Path
    shm: Path
    spec: str | None = None
    tpm: Any = None

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PLINIUS_STATE_DIR": str(self.state),
            "PLINIUS_PLATFORM_DIR": str(self.platform),
        }
        env.pop("PLINIUS_PLATFORM", None)
        if self.spec is not None:
            env["PLINIUS_PLATFORM"] = self.spec
        return env


@pytest.fixture
def platform_kind() -> str:
    """The victim's platform: the simulated CPU unless a module asks for both."""
    return "sim"


@pytest.fixture
def world(
    tmp_path: Path, shm_dir: Path, platform_kind: str, request: pytest.FixtureRequest
) -> World:
    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    w = World(
        root=tmp_path,
        key=key,
        data=tmp_path / "data.pld",
        state=tmp_path / "state",
        platform=tmp_path / "platform",
        shm=shm_dir,
    )
    if platform_kind == "tpm":
        w.tpm = request.getfixturevalue("swtpm")
        w.spec = w.tpm.spec(w.platform)
    res = _run("owner", "encrypt-data", "--key-file", str(key), "--out", str(w.data), env=w.env)
    assert res.returncode == 0, res.stderr
    return w
