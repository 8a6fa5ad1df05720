"""``plinius bench`` with no flags answers "where should my mirror live?": one page that opens
with the answer for the named mirror; the paper's grid is ``--paper``; bad answer flags are one
line and exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_runner import run_cli


def test_the_answer_run_opens_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli(
        "bench", "--mirror-size", "4M", "--backends", "tmpfs,ssd", "--rounds", "3",
        "--step-time", "0.5", "--every", "20", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    ask = {"workload": "size-2", "step_s": 0.5, "every": 20, "mirror_bytes": 4 << 20}
    assert doc["parameters"]["answer"] == ask
    assert set(doc["sections"]) <= {"save", "peers"}  # the answer runs nothing else
    assert doc["contention"]["cores"] >= 1 and "load_after" in doc["contention"]
    head = (out / "report.md").read_text().splitlines()[:60]
    assert head[0].startswith("# Where should a 2.8 MiB encrypted mirror live?")
    assert "you asked for 4.0 MiB: this is the closest synthetic model" in head[2]
    assert any(line.startswith("**Recommendation (power-fail)**") for line in head)
    assert any(line.startswith("**Recommendation (process-crash)**") for line in head)
    assert any("every 20 training steps of 0.5 s" in line for line in head)
    assert "Where should" in res.stdout + res.stderr  # the answer is printed too
    # one figure for the answer; the paper's figures belong to --paper
    assert (out / "answer.png").stat().st_size > 10_000
    assert not (out / "save_restore.png").exists() and not (out / "targets.png").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mirror-size", "12x"], "--mirror-size"),
        (["--mirror-size", "10K"], "at least 1M"),
        (["--paper", "--mirror-size", "10M"], "use one or the other"),
        (["--mirror-size", "10M", "--workload", "resnet50"], "give one"),
        (["--workload", "nosuch"], "unknown workload"),
        (["--step-time", "0"], "--step-time"),
        (["--rounds", "5", "--max-rounds", "3"], "--max-rounds 3: at least --rounds (5)"),
    ],
)
def test_bad_answer_flags_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    res = run_cli("bench", *args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_device_model_named_in_backends_is_compared_with_its_pool(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli(
        "bench", "--mirror-size", "4M", "--backends", "romulus,romulus?device=optane-1dimm",
        "--rounds", "3", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    model = next(r for r in doc["results"] if r["instance"] == "romulus?device=optane-1dimm")
    assert model["models"] == "romulus" and model["save_breakdown"]["model_wait_s"] > 0
    plain = next(r for r in doc["results"] if r["instance"] == "romulus")
    assert plain["models"] is None and "model_wait_s" not in plain["save_breakdown"]
    target = next(t for t in doc["targets"] if t["id"] == "save_pm_device_vs_romulus")
    assert target["verdict"] != "not run" and target["interval"]
    head = "\n".join((out / "report.md").read_text().splitlines()[:60])
    assert "a model of real PM, compare with `romulus`; its modelled media added" in head
    assert "**Recommendation (process-crash)**: `romulus` (the only option measured)" in head


def test_without_matplotlib_the_run_says_so_once_and_still_writes(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    out = tmp_path / "out"
    res = run_cli(
        "bench", "--mirror-size", "4M", "--backends", "tmpfs", "--rounds", "3", "--out", str(out),
        env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    # said once, at the start, with the install hint intact (not eaten as console markup)
    assert res.stderr.count("pip install 'plinius[plot]'") == 1
    assert res.stderr.index("no matplotlib") < res.stderr.index("bench: ")
    assert json.loads((out / "results.json").read_text())["parameters"]["answer"]
    report = (out / "report.md").read_text()
    assert report.startswith("# Where should") and "Figures not drawn" in report
    assert not list(out.glob("*.png"))
