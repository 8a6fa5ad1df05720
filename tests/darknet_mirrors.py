"""Owner keys with committed ``tiny`` mirrors made by the real CLI, for the fixtures of the
system and security tiers (one way to make them, whatever the backends)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cli_runner import run_cli

from plinius.core.crypto import generate_key, write_key_file


def train_mirrors(root: Path, specs: Mapping[str, str], iterations: int) -> Path:
    """A new owner key in ``root``, its encrypted data, and ``plinius train`` of ``tiny`` for
    ``iterations`` on every spec of ``specs``; the key file's path."""
    key = root / "owner.key"
    write_key_file(key, generate_key())
    data = root / "data.pld"
    res = run_cli("owner", "encrypt-data", "--key-file", str(key), "--out", str(data))
    assert res.returncode == 0, res.stderr
    for spec in specs.values():
        res = run_cli(
            "train", "--model", "tiny", "--backend", spec, "--key-file", str(key),
            "--data", str(data), "--iterations", str(iterations),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    return key
