"""The default ``plinius bench`` plan comes from the backend classes; a backend that cannot run
here is listed as "not run" with the reason, never dropped or fatal."""

from __future__ import annotations

import sys

import pytest

from plinius.cli.bench import _plan, _probe_optional


def _record() -> dict[str, dict[str, object]]:
    _, record = _probe_optional(_plan(None))
    return {str(r["instance"]): r for r in record}


def test_missing_optional_dependency_is_not_run_with_its_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    monkeypatch.delitem(sys.modules, "plinius.backends.redis", raising=False)
    rec = _record()
    assert rec["redis"]["status"] == "not run"
    assert "pip install 'plinius[redis]'" in str(rec["redis"]["reason"])
    assert all(rec[n]["status"] == "run" for n in ("romulus", "tmpfs", "ssd", "dax"))


def test_missing_server_binary_is_not_run_with_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import plinius.backends.redis_server as rs

    monkeypatch.delenv("PLINIUS_REDIS_SERVER", raising=False)
    monkeypatch.setattr(rs.shutil, "which", lambda name: None)
    rec = _record()
    assert rec["redis"]["status"] == "not run"
    assert "apt-get install -y redis-server" in str(rec["redis"]["reason"])
    assert "rediss" not in rec  # benchmarked once, under its first name


def test_redis_runs_when_the_server_is_installed() -> None:
    rec = _record()
    assert rec["redis"]["status"] == "run" and rec["redis"]["backend"] == "redis"
