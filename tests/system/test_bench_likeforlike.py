"""``plinius bench`` compares like with like: instances, durability, real mirror sizes, one unit.

A storage researcher reads the report to decide where an encrypted mirror should live, so every
row names its backend *instance* and durability, speed-ups never pair RAM with a disk, sizes are
the bytes training really mirrors, variants of one backend never collapse into one row, the
progress bar ends at its total, and the report ends with a recommendation per durability level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli as _cli

from plinius.core.crypto import generate_key, make_engine
from plinius.core.errors import ConfigError
from plinius.lab.bench.render import (
    NOISE_RULE,
    UNITS,
    beyond_noise,
    recommendation,
    render_markdown,
    summary_rows,
)
from plinius.lab.bench.rounds import steps
from plinius.lab.bench.saverestore import add_speedups, bench_model
from plinius.lab.bench.suite import SuiteOptions, run_suite, total_steps
from plinius.lab.bench.targets import targets
from plinius.lab.plan import DEFAULT_PLAN, InstancePlan, plan_instances, probe, unique_labels
from plinius.nn.cfg import parse_cfg_text
from plinius.nn.network import Network
from plinius.nn.zoo import cfg_text


def _row(
    instance: str,
    durability: str,
    save_s: float,
    restore_s: float,
    *,
    mb: float = 10,
    emulated: bool = False,
    byte_addressable: bool = False,
    spread: float = 0.0,
) -> dict[str, Any]:
    return {
        "instance": instance,
        "backend": instance.split("?", 1)[0],
        "durability": durability,
        "emulated": emulated,
        "byte_addressable": byte_addressable,
        "model_mb": mb,
        "model": f"size-{mb:g}",
        "bytes": 21_870_672,
        "save_s": save_s,
        "save_s_min": save_s - spread,
        "save_s_max": save_s + spread,
        "restore_s": restore_s,
        "restore_s_min": restore_s - spread,
        "restore_s_max": restore_s + spread,
        "save_mbps": 1.0,
        "restore_mbps": 1.0,
        "save_breakdown": {"encrypt_s": 0.0, "write_s": 0.0, "flush_s": 0.0, "fsync_s": 0.0},
    }


def _fake_results() -> list[dict[str, Any]]:
    """The review's situation: romulus in RAM, ssd on a disk, romulus msynced to that disk."""
    return [
        _row("romulus", "process-crash", 0.010, 0.008, emulated=True, byte_addressable=True),
        _row("tmpfs", "process-crash", 0.020, 0.010),
        _row(
            "romulus?mode=msync", "power-fail", 0.050, 0.012, emulated=True, byte_addressable=True
        ),
        _row("dax", "power-fail", 0.040, 0.011, emulated=True),
        _row("ssd", "power-fail", 0.038, 0.011),
    ]


# -- speed-ups pair equal durability only ---------------------------------------------------------


def test_speedups_only_pair_equal_durability() -> None:
    rows = {r["instance"]: r for r in add_speedups(_fake_results())}
    # RAM romulus is never divided by a disk: no "×ssd" for it at all
    assert rows["romulus"]["speedup_save_vs_ssd"] is None
    assert rows["tmpfs"]["speedup_restore_vs_ssd"] is None
    # equal durability: romulus msynced to the disk against ssd on that disk
    assert rows["romulus?mode=msync"]["speedup_save_vs_ssd"] == pytest.approx(0.038 / 0.050)
    assert rows["ssd"]["speedup_save_vs_ssd"] == 1.0
    # each level has its own baseline: the first non-emulated file instance of that level
    assert rows["romulus"]["baseline"] == "tmpfs"
    assert rows["romulus"]["speedup_save_vs_baseline"] == pytest.approx(2.0)
    assert rows["dax"]["baseline"] == "ssd"
    for r in rows.values():
        base = rows[r["baseline"]]
        assert base["durability"] == r["durability"]


def test_speedups_need_a_baseline_of_the_same_level() -> None:
    rows = add_speedups(
        [
            _row("romulus", "process-crash", 0.01, 0.01, emulated=True, byte_addressable=True),
            _row("ssd", "power-fail", 0.04, 0.01),
        ]
    )
    assert rows[0]["baseline"] is None and rows[0]["speedup_save_vs_baseline"] is None
    assert rows[0]["speedup_save_vs_ssd"] is None


def test_targets_state_both_sides_durability() -> None:
    results = add_speedups([{**r, "model_mb": 64} for r in _fake_results()])
    rows = {t["target"]: t for t in targets({"results": results})}
    msync = next(t for k, t in rows.items() if k.startswith("romulus?mode=msync save vs ssd"))
    assert msync["durability"] == "power-fail vs power-fail"
    ram = next(t for k, t in rows.items() if k.startswith("romulus save vs tmpfs"))
    assert ram["durability"] == "process-crash vs process-crash"
    assert not any("romulus save vs ssd" in k for k in rows)


# -- variants never collapse; instance labels -----------------------------------------------------


def test_two_variants_of_one_backend_are_two_instances() -> None:
    plan = unique_labels(
        [InstancePlan.from_text("ssd"), InstancePlan.from_text("ssd:/var/tmp/x?direct=1")]
    )
    assert [p.label for p in plan] == ["ssd", "ssd?direct=1"]
    same_opts = unique_labels(
        [InstancePlan.from_text("ssd:/var/tmp/a"), InstancePlan.from_text("ssd:/var/tmp/b")]
    )
    assert [p.label for p in same_opts] == ["ssd@/var/tmp/a", "ssd@/var/tmp/b"]
    with pytest.raises(ConfigError, match="given twice"):
        unique_labels([InstancePlan.from_text("ssd"), InstancePlan.from_text("ssd")])


def test_bench_rows_are_instances_with_durability_and_real_mirror_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli(
        "bench",
        "--backends",
        "tmpfs,ssd,ssd?direct=1",
        "--sizes",
        "1",
        "--repeats",
        "1",
        "--only",
        "save",
        "--out",
        str(out),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    rows = doc["results"]
    assert [r["instance"] for r in rows] == ["tmpfs", "ssd", "ssd?direct=1"]
    assert [r["backend"] for r in rows] == ["tmpfs", "ssd", "ssd"]
    for r in rows:
        ran = doc["backends"][r["instance"]]
        assert r["durability"] == ran["durability"] and r["emulated"] == ran["emulated"]
        for k in ("backend", "model_mb", "save_s", "restore_s", "save_mbps", "restore_mbps"):
            assert k in r
    assert doc["backends"]["ssd?direct=1"]["extra"]["o_direct"] is True
    assert doc["backends"]["ssd"]["extra"]["o_direct"] is False
    # the bytes saved are what training mirrors: every parameter and its momentum
    label, text = cfg_text("size-1")
    net = Network(parse_cfg_text(text, label), batch=1)
    params = sum(a.nbytes for _, _, a in net.param_buffers())
    moments = sum(a.nbytes for _, _, a in net.optimizer_buffers())
    for r in rows:
        assert r["bytes"] == r["mirror_bytes"] == params + moments
        assert (r["param_bytes"], r["optimizer_bytes"]) == (params, moments)
        assert r["model"] == "size-1"
        assert r["save_mbps"] == pytest.approx(r["bytes"] / 2**20 / r["save_s"])
    report = (out / "report.md").read_text()
    assert UNITS in report
    assert "| ssd?direct=1 | power-fail |" in report
    assert f"| {params + moments:,} |" in report


# -- sizes mean what they say ---------------------------------------------------------------------


def test_bench_model_is_the_training_mirror() -> None:
    label, text = cfg_text("size-10")
    net = Network(parse_cfg_text(text, label), batch=1)
    bufs = net.param_buffers() + net.optimizer_buffers()
    model = bench_model(10)
    assert [(r.layer, r.name, r.array.shape) for r in model.records] == [
        (layer, name, a.shape) for layer, name, a in bufs
    ]
    assert model.mirror_bytes == sum(a.nbytes for _, _, a in bufs)
    assert model.optimizer_bytes == sum(a.nbytes for _, _, a in net.optimizer_buffers())
    assert model.name == "size-10" and model.optimizer_bytes > 0


# -- the progress bar ends at its total -----------------------------------------------------------


def _count(opts: SuiteOptions) -> tuple[int, dict[str, Any]]:
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1

    doc = run_suite(opts, tick)
    return ticks, doc


def test_progress_total_equals_the_steps_done(tmp_path: Path) -> None:
    plan = unique_labels(
        [
            InstancePlan.from_text("tmpfs"),
            InstancePlan.from_text(f"tmpfs:{tmp_path}/a"),
            InstancePlan.from_text(f"tmpfs:{tmp_path}/b"),
        ]
    )
    opts = SuiteOptions(plan, [1.0, 2.0], 2, make_engine(generate_key()), sections=("save",))
    ticks, doc = _count(opts)
    assert doc["sections"]["save"]["status"] == "ok"
    assert len(doc["results"]) == 3 * 2
    # one step per interleaved round of each workload
    assert total_steps(opts) == steps(2, 2) == ticks
    # every round ran every instance once, in an order rotated from round to round
    order = doc["rounds"]["size-1"]["order"]
    assert len(order) == 2 and sorted(order[0]) == sorted(order[1]) and order[0] != order[1]
    assert order[1] == [*order[0][1:], order[0][0]]


def test_progress_total_holds_when_the_save_section_fails(tmp_path: Path) -> None:
    plan = [InstancePlan.from_text("tmpfs"), InstancePlan.from_text("ssd:/proc/nope/x")]
    opts = SuiteOptions(plan, [1.0], 3, make_engine(generate_key()), sections=("save",))
    ticks, doc = _count(opts)
    assert doc["sections"]["save"]["status"] == "failed"
    assert "/proc/nope" in doc["sections"]["save"]["error"]
    assert "results" not in doc["sections"]
    assert ticks == total_steps(opts) == 3


# -- the default plan makes every comparison like for like ----------------------------------------


def test_default_plan_pairs_each_durability_level() -> None:
    planned = [p for p in DEFAULT_PLAN if not p.optional or probe(p) is None]
    labels = [p.label for p in planned]
    assert {"romulus", "tmpfs", "romulus?mode=msync", "dax", "ssd"} <= set(labels)
    from plinius.backends import open_backend

    level: dict[str, str] = {}
    with plan_instances(unique_labels(planned)) as pairs:
        for p, spec in pairs:
            with open_backend(spec) as b:
                level[p.label] = b.describe().durability
    # RAM against RAM, disk against disk: each romulus has a file baseline of its own level
    assert level["romulus"] == level["tmpfs"]
    assert level["romulus?mode=msync"] == level["ssd"] == level["dax"]
    device = next(p for p in DEFAULT_PLAN if p.optional)
    assert device.label == "romulus?device=optane-1dimm" and device.role == "PM device model"


# -- the answer -----------------------------------------------------------------------------------


def _doc(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "parameters": {"sizes_mb": [10], "repeats": 5, "engine": "cryptography"},
        "sections": {},
        "provenance": {},
        "backends": {},
        "results": add_speedups(results),
    }


def test_report_ends_with_a_recommendation_per_durability_level() -> None:
    results = _fake_results()
    results[0]["save_s_max"] = 0.0105  # romulus vs tmpfs: clear
    results[4]["save_s_max"] = 0.045  # ssd 0.038 (…0.045) vs dax 0.040: overlapping
    md = render_markdown(_doc(results), [])
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[-1] == "## Recommendation"
    tail = md.split("## Recommendation", 1)[1]
    assert NOISE_RULE in tail and UNITS in md.split("\n## ", 1)[0]
    summary = [line for line in tail.splitlines() if line.startswith("| power-fail |")]
    assert summary and any(line.startswith("| process-crash |") for line in tail.splitlines())
    recs = {c["durability"]: c for c in recommendation(results)}
    assert recs["process-crash"]["save_fastest"] == "romulus"
    assert recs["process-crash"]["save_ratio"] == pytest.approx(2.0)
    assert recs["process-crash"]["save_beyond_noise"] is True
    assert recs["power-fail"]["save_fastest"] == "ssd"
    assert recs["power-fail"]["save_next"] == "dax"
    assert recs["power-fail"]["save_beyond_noise"] is False
    assert {r["durability"] for r in summary_rows(results)} == {"power-fail", "process-crash"}
    # the one cross-durability figure (the price of power-fail durability) says what it is
    cross = [line for line in tail.splitlines() if "durability costs here" in line]
    assert len(cross) == 2
    assert all(line.startswith("- Cross-durability ratio (not a like-for-like") for line in cross)


def test_noise_rule_is_non_overlapping_ranges() -> None:
    a = _row("a", "power-fail", 1.0, 1.0, spread=0.1)
    b = _row("b", "power-fail", 1.3, 1.3, spread=0.1)
    c = _row("c", "power-fail", 1.15, 1.15, spread=0.1)
    assert beyond_noise(a, b, "save") and not beyond_noise(a, c, "save")


def test_one_unit_system_in_fio_and_save_tables() -> None:
    from plinius.lab.bench.render import ENGINE_COLUMNS, SAVE_COLUMNS
    from plinius.lab.fio.report import TABLE_COLUMNS

    cols = [*SAVE_COLUMNS, *ENGINE_COLUMNS, *TABLE_COLUMNS]
    assert not [c for c in cols if "MB/s" in c and "MiB/s" not in c]
    assert "MiB/s" in TABLE_COLUMNS and "save MiB/s" in SAVE_COLUMNS
