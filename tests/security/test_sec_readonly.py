"""Read-only commands create nothing: no backend directory, no pool file, no platform location."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import CliRunner, World, assert_refused


@pytest.mark.parametrize("kind", ["tmpfs", "ssd", "romulus"])
@pytest.mark.parametrize("command", ["verify", "export", "infer"])
def test_missing_backend_is_reported_not_created(
    run_cli: CliRunner, world: World, kind: str, command: str
) -> None:
    where: Path = (world.shm if kind != "ssd" else world.root) / "nothing-here"
    spec = f"{kind}:{where}" + ("?size=32M" if kind == "romulus" else "")
    extra = ["--weights", str(world.root / "w.weights")] if command == "export" else []
    res = run_cli(command, "--backend", spec, "--key-file", str(world.key), *extra, env=world.env)
    assert_refused(res, "nothing")
    assert not where.exists() and not (world.root / "w.weights").exists()


def test_verify_without_a_platform_creates_none(
    run_cli: CliRunner, world: World, tmp_path: Path
) -> None:
    spec = f"tmpfs:{world.shm / 'm'}"
    res = run_cli(
        "train", "--model", "tiny", "--backend", spec, "--key-file", str(world.key),
        "--data", str(world.data), "--iterations", "2", env=world.env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    elsewhere = tmp_path / "no-cpu-here"
    env = {**world.env, "PLINIUS_PLATFORM_DIR": str(elsewhere)}
    res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=env)
    assert_refused(res, "no platform location")
    assert not elsewhere.exists()
