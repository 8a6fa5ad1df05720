"""The SPS section shows the C engine's streaming back writes beside copy + flush (like for like
with the original RomulusLog) in one run, without leaving the environment changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plinius.lab.bench import romulus_engine


def test_both_ways_of_writing_back_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(romulus_engine.NT_ENV, raising=False)
    pmem_modes = [m for m in romulus_engine.flush_modes() if m[0] == "pmem"]
    assert pmem_modes, "every x86-64 CPU has clflush"
    modes = [pmem_modes[0], ("none", None)]
    got = romulus_engine.sps(
        txn_sizes=(1, 16), modes=modes, seconds=0.02, repeats=1, python_seconds=0,
        directory=str(tmp_path),
    )  # fmt: skip
    assert romulus_engine.NT_ENV not in os.environ
    by_mode: dict[str, set[str]] = {}
    for r in got["rows"]:
        assert r["sps_c"] > 0
        by_mode.setdefault(r["mode"], set()).add(r["back_writes"])
    pmem = romulus_engine.label(*modes[0])
    assert by_mode[pmem] == {"streaming stores"}
    assert by_mode[f"{pmem} copy+flush back"] == {"copy + flush"}
    assert "streaming" in got["back_writes"]


def test_one_way_when_the_run_pins_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(romulus_engine.NT_ENV, "4096")
    modes = [m for m in romulus_engine.flush_modes() if m[0] == "pmem"][:1]
    got = romulus_engine.sps(
        txn_sizes=(1,), modes=modes, seconds=0.02, repeats=1, python_seconds=0,
        directory=str(tmp_path),
    )  # fmt: skip
    assert {r["mode"] for r in got["rows"]} == {romulus_engine.label(*modes[0])}
    assert os.environ[romulus_engine.NT_ENV] == "4096"
