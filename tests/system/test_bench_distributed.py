"""``plinius bench --only distributed --world-size 2 --quick --json`` end to end: the section
launches torchrun ranks itself (W = 2 for the comparison, then 1 and 4), every contender of
DDP and FSDP2 runs, every restore is exact at W = 2 and W = 4 (W = 4 marked correctness only on
a machine with fewer cores), every timed figure has a finite interval, its targets are judged,
the report says what the storage and the enclave were, and no scratch file is left. A launch
that fails (an unknown workload) is reported in one line instead of failing the bench. No
assert is about speed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli
from needs import import_torch

import_torch()

from plinius.lab.bench import distributed as d  # noqa: E402 - after the torch gate

pytestmark = pytest.mark.system


def _interval_ok(x: dict[str, Any]) -> bool:
    lo, hi = x["ci95"]
    return all(math.isfinite(v) for v in (lo, x["median"], hi)) and lo <= x["median"] <= hi


def _roots(tmp_path: Path) -> dict[str, str]:
    shm = Path(os.environ.get("PLINIUS_SHM_DIR", "/dev/shm"))
    roots = {"PLINIUS_SHM_DIR": str(shm / f"plinius-test-dist-{tmp_path.name}")}
    roots["PLINIUS_DISK_DIR"] = str(tmp_path / "disk")
    for r in roots.values():
        Path(r).mkdir(parents=True)
    return roots


def test_quick_run_compares_checks_and_judges(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    out = tmp_path / "out"
    try:
        res = run_cli(
            "bench", "--only", "distributed", "--world-size", "2", "--quick", "--rounds", "2",
            "--json", "--out", str(out), env={**os.environ, **roots}, timeout=400,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        doc = json.loads(res.stdout)
        assert doc["sections"]["distributed"]["status"] == "ok", doc["sections"]
        for r in roots.values():
            assert list(Path(r).iterdir()) == []  # key, platforms and storage removed
    finally:
        for r in roots.values():
            for p in sorted(Path(r).rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            Path(r).rmdir()
    got = doc["distributed"]
    runs = {r["world"]: r for r in got["runs"]}
    assert sorted(runs) == [1, 2, 4] and runs[2]["role"] == "comparison"
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    cores = d.cores()
    for w, r in runs.items():
        assert r["timing"] == (w <= cores)
        for c in r["contenders"]:
            assert c["status"] == "ok", c["errors"]
            if w != 1 and c["kind"] not in ("dcp.async_save", d.SOLO):
                assert c["exact"], c  # restored bit for bit on every rank
            for op in c["ops"].values():
                assert len(op["seconds"]) == r["rounds"]
                assert all(len(ranks) == w for ranks in op["per_rank"])
                if r["timing"]:
                    assert _interval_ok(op["ms"]) and _interval_ok(op["mib_s"])
    comp = runs[2]["contenders"]
    want = {(w, k) for w in d.WRAPS for k in d.KINDS} | {("ddp", d.SOLO)}
    assert {(c["wrap"], c["kind"]) for c in comp} == want
    assert len(got["ratios"]) == 2 * 4 + 1
    assert all(_interval_ok(r["speedup"]) for r in got["ratios"])
    targets = {t["id"]: t for t in doc["targets"] if t["id"].startswith("dist_")}
    assert len(targets) == 5
    judged = {"met", "not met", "inconclusive"}
    if cores >= 2:
        assert all(t["verdict"] in judged for t in targets.values()), targets
        assert targets["dist_ddp_save_w2_vs_w1"]["interval"]["paired"] is True
    report = (out / "report.md").read_text()
    part = report[report.index("## Distributed") :]
    assert "enclave is simulated" in part and "tmpfs is RAM" in part
    assert "correctness only" in part and "sync_files=True" in part


def test_a_launch_that_fails_is_reported_in_one_line(tmp_path: Path) -> None:
    got = d.measure(world_size=1, rounds=1, workload="nosuch+adam", scaling=(), specs=4)
    (run,) = got["runs"]
    assert run["status"] == "failed" and "nosuch" in run["error"]
    assert "\n" not in run["error"]
    text = "\n".join(d.markdown(got))
    assert "failed" in text
