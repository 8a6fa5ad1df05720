"""``plinius bench`` runs every contender in interleaved rotated rounds and reports medians with
95 % intervals, the order that ran, and the issue's targets table with verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from cli_runner import run_cli

from plinius.lab.bench.render import render_markdown
from plinius.lab.bench.stats import Interval


def test_small_run_has_rounds_intervals_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli(
        "bench",
        "--backends",
        "romulus,tmpfs,ssd",
        "--sizes",
        "1",
        "--rounds",
        "3",
        "--only",
        "save,limits",
        "--out",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["parameters"]["rounds"] == doc["parameters"]["repeats"] == 3
    # the rounds: every contender once per round, the order rotated and recorded
    order = doc["rounds"]["size-1"]["order"]
    n = doc["rounds"]["size-1"]["contenders"]
    assert len(order) == 3 and all(len(o) == n for o in order)
    assert order[1] == [*order[0][1:], order[0][0]]
    assert {"save:romulus", "save:tmpfs", "save:ssd"} <= set(order[0])
    assert any(x.startswith("limits:aes-gcm") for x in order[0])
    # every figure with its interval; old keys kept
    rows = {r["instance"]: r for r in doc["results"]}
    for r in rows.values():
        assert r["rounds"] == 3 and len(r["samples"]["save"]) == 3
        iv = Interval.from_json(r["intervals"]["save_s"])
        assert iv.lo <= r["save_s"] == iv.median <= iv.hi and iv.n == 3
        assert "speedup_save_vs_baseline" in r and "save_s_min" in r
    # the disk file is evicted before its cold restore (the headline); RAM has none to evict
    assert rows["ssd"]["restore_headline"] == "cold" and rows["ssd"]["eviction"]["evicted"]
    assert rows["romulus"]["restore_cold_s"] is None
    assert rows["romulus"]["restore_headline"] == "warm"
    for c in doc["contenders"]:
        for o in c["ops"].values():
            lo, hi = o["interval"]["ci95"]
            assert lo <= o["interval"]["median"] <= hi and len(o["seconds"]) == 3
    # the targets table: ratios with intervals and a verdict each, missing inputs say why
    targets = {t["id"]: t for t in doc["targets"]}
    verdicts = {"met", "not met", "inconclusive", "reported", "not run", "no measurable overhead"}
    assert {t["verdict"] for t in targets.values()} <= verdicts
    aes = targets["save_vs_aes_all_cores"]
    assert aes["verdict"] in {"met", "not met", "inconclusive"}
    assert aes["interval"]["n"] == 3 and aes["workload"] == "size-1"
    assert targets["save_romulus_vs_tmpfs"]["interval"]["paired"] is True
    assert targets["save_vs_safetensors_tmpfs"]["verdict"] == "not run"
    assert targets["save_vs_safetensors_tmpfs"]["why"]
    prov = doc["provenance"]
    assert prov["cpu"]["governor"] and prov["load_average"]["after"] is not None
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "cpufreq governor" in report
    line = next(x for x in report.splitlines() if x.startswith("| romulus save ≥ 0.85×"))
    assert "[" in line and aes["verdict"] in line
    assert "round 1: save:" in report
    assert (out / "targets.png").stat().st_size > 5_000


def test_report_labels_reference_figures_as_not_this_machine() -> None:
    doc = {
        "parameters": {"sizes_mb": [1], "repeats": 3, "engine": "cryptography"},
        "sections": {},
        "provenance": {},
        "backends": {},
        "results": [],
        "sps": {
            "rows": [
                {
                    "mode": "pmem-clwb",
                    "swaps_per_txn": 16,
                    "sps_c": 5e6,
                    "sps_python": None,
                    "reference_romulus_log": 8.8e6,
                }
            ]
        },
    }
    md = render_markdown(doc, [])
    assert "RomulusLog C++ ref (not this machine)" in md
    assert "**not this machine**" in md
