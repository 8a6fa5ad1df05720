"""The ``freshness`` bench section in process: its report from a result made up here (rows, the
per-save estimate from the primitives, the hardware range, "software TPM" on every swtpm line),
the increment count, the simulated contender measured for real, the swtpm rows said "not run"
with an install hint when tpm2-pytss is missing, and its asv class on the simulated CPU. swtpm
itself runs in ``tests/system/test_bench_freshness_cli.py``. No assert is about speed."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from plinius.core.errors import ConfigError
from plinius.enclave import tpm_link
from plinius.lab.bench import freshness
from plinius.lab.bench.registry import section
from plinius.lab.bench.stats import median_interval

BENCH = Path(__file__).resolve().parents[2] / "asv_bench" / "benchmarks" / "bench_sections.py"


def _iv(*ms: float) -> dict[str, Any]:
    return median_interval(ms).as_json()


def _doc() -> dict[str, Any]:
    """A result as :func:`freshness.result` makes it: two swtpm rows measured, one not run."""
    rows: list[dict[str, Any]] = [
        {
            "id": "simulated",
            "label": "simulated CPU",
            "platform": "simulated",
            "counter_every": None,
            "window": freshness.window(freshness.SAVE_CONTENDERS[0]),
            "status": "ok",
            "seconds": [2e-4, 3e-4, 2.5e-4],
            "ms": _iv(0.2, 0.3, 0.25),
        },
        {
            "id": "swtpm",
            "label": freshness.SAVE_CONTENDERS[1].label,
            "platform": "tpm",
            "counter_every": "1",
            "window": freshness.window(freshness.SAVE_CONTENDERS[1]),
            "status": "ok",
            "ms": _iv(9.0, 10.0, 11.0),
            "increments": [80, 80, 80],
            "increments_per_save": 4.0,
            "vs_simulated": _iv(36.0, 40.0, 44.0),
        },
        {
            "id": "swtpm?counter_every=8",
            "label": freshness.SAVE_CONTENDERS[2].label,
            "platform": "tpm",
            "counter_every": "8",
            "window": freshness.window(freshness.SAVE_CONTENDERS[2]),
            "status": "ok",
            "ms": _iv(5.0, 5.5, 6.0),
            "increments": [10, 10, 10],
            "increments_per_save": 0.5,
        },
        {
            "id": "swtpm?counter_every=30s",
            "label": freshness.SAVE_CONTENDERS[3].label,
            "platform": "tpm",
            "counter_every": "30s",
            "window": freshness.window(freshness.SAVE_CONTENDERS[3]),
            "status": "not run",
            "reason": "swtpm is not installed: apt-get install swtpm swtpm-tools",
        },
    ]
    per_call = {"connect": 0.4, "lookup": 0.3, "nv_read": 0.1, "nv_increment": 1.0}
    per_call |= {"hmac": 0.2, "derive": 3.0, "table_write": 1.2}
    prims = [
        {"op": op, "label": what, "status": "ok", "ms": _iv(per_call[op])}
        for op, what in freshness.PRIMITIVES
    ]
    doc: dict[str, Any] = {
        "rounds": 3,
        "saves_per_round": 20,
        "calls_per_round": 10,
        "warmup_saves": 2,
        "cores": 2,
        "load": [1.0, 1.2],
        "disk": {"dir": "/var/tmp", "fs_type": "ext4", "device": "/dev/vda", "mount": "ext4"},
        "tpm": {"version": "swtpm 0.7.1", "state_on": "ext4 on /dev/vda"},
        "contenders": rows,
        "primitives": prims,
    }
    doc["explained"] = freshness.explained(doc)
    doc["hardware"] = freshness.hardware(doc)
    return doc


def test_the_table_has_a_row_per_contender_and_says_why_one_did_not_run() -> None:
    rows = freshness.table_rows(_doc())
    assert [r["platform"] for r in rows] == [p.label for p in freshness.SAVE_CONTENDERS]
    sim, one, eight, thirty = rows
    assert sim["NV increments per save"] == "no counter" and sim["× simulated"] == ""
    assert one["per save (ms)"].startswith("10 [") and one["NV increments per save"] == "4.00"
    assert one["× simulated"].startswith("40×")
    assert eight["NV increments per save"] == "0.50"
    assert thirty["per save (ms)"] == (
        "not run: swtpm is not installed: apt-get install swtpm swtpm-tools"
    )


def test_the_per_save_figure_is_rebuilt_from_the_primitives() -> None:
    got = {x["id"]: x for x in _doc()["explained"]}
    assert set(got) == {"swtpm", "swtpm?counter_every=8"}  # the not-run one has no figure
    # per change: connection + lookup + NV_Read + table write; 2 changes per save
    assert got["swtpm"]["per_change_ms"] == pytest.approx(0.4 + 0.3 + 0.1 + 1.2)
    assert got["swtpm"]["estimate_ms"] == pytest.approx(2 * 2.0 + 4 * 1.0)
    assert got["swtpm?counter_every=8"]["estimate_ms"] == pytest.approx(2 * 2.0 + 0.5 * 1.0)
    assert got["swtpm"]["measured_ms"] == pytest.approx(10.0)


def test_the_hardware_range_uses_the_counted_increments() -> None:
    doc = _doc()
    per = {p["counter_every"]: p["ms"] for p in doc["hardware"]["per_save"]}
    assert per == {"1": [40.0, 200.0], "8": [5.0, 25.0]}
    line = freshness.hardware_line(doc)
    assert "documented at roughly 10–50 ms" in line
    assert "a documented range, not a measurement of this machine" in line
    assert "40–200 ms per save" in line and "5–25 ms per save" in line


def test_every_line_that_names_swtpm_says_it_is_a_software_tpm() -> None:
    lines = "\n".join(freshness.markdown(_doc())).splitlines()
    named = [line for line in lines if "swtpm" in line]
    assert len(named) >= 8
    assert [line for line in named if "software TPM" not in line] == []
    text = "\n".join(lines)
    # the rollback window of each, as CounterEvery describes it
    assert "no rollback window" in text and "roll slots back by up to 7 changes" in text
    assert "over up to 30 s of saves" in text
    assert "other work was running on the machine" in text


def test_a_result_without_swtpm_renders_its_reasons_and_no_estimate() -> None:
    doc = _doc()
    for r in doc["contenders"][1:]:
        r.clear()
        r.update(id="x", label="swtpm (software TPM), counter_every=1", platform="tpm")
        r.update(counter_every="1", window="w", status="not run", reason="no tpm2-pytss")
    for p in doc["primitives"]:
        p.pop("ms")
        p.update(status="not run", reason="no tpm2-pytss")
    doc["explained"] = freshness.explained(doc)
    doc["hardware"] = freshness.hardware(doc)
    assert doc["explained"] == [] and doc["hardware"]["per_save"] == []
    text = "\n".join(freshness.markdown(doc))
    assert "not run: no tpm2-pytss" in text
    assert "no increments were counted here (swtpm did not run)" in text


def test_increments_are_counted_through_the_wrapped_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(tpm_link, "counter_increment", lambda e, h: calls.append(h))
    real = tpm_link.counter_increment
    with freshness.counting_increments() as count:
        tpm_link.counter_increment(None, 1)
        tpm_link.counter_increment(None, 2)
        assert count == [2]
    assert calls == [1, 2] and tpm_link.counter_increment is real


def _finite_interval(d: dict[str, Any]) -> bool:
    lo, hi = d["ci95"]
    return all(math.isfinite(v) for v in (lo, d["median"], hi)) and lo <= d["median"] <= hi


def test_the_simulated_contender_is_measured_and_leaves_nothing(tmp_path: Path) -> None:
    doc = freshness.measure(rounds=3, saves=4, calls=2, ids=["simulated"], root=tmp_path)
    (row,) = doc["contenders"]
    assert row["status"] == "ok" and len(row["seconds"]) == 3
    assert _finite_interval(row["ms"]) and "increments_per_save" not in row
    assert doc["primitives"] == [] and doc["disk"]["dir"] == str(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_without_tpm2_pytss_the_swtpm_rows_say_not_run_with_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pytss() -> Any:
        raise ConfigError(f"the tpm platform needs tpm2-pytss: {tpm_link.TPM_INSTALL_HINT}")

    monkeypatch.setattr(tpm_link, "pytss", no_pytss)
    doc = freshness.measure(rounds=2, saves=4, calls=2, root=tmp_path)
    rows = {r["id"]: r for r in doc["contenders"]}
    assert list(rows) == [p.id for p in freshness.SAVE_CONTENDERS]
    assert rows["simulated"]["status"] == "ok"
    for i in freshness.IDS[1:-1]:
        assert rows[i]["status"] == "not run"
        assert "pip install 'plinius[tpm]'" in rows[i]["reason"]
    assert [p["status"] for p in doc["primitives"]] == ["not run"] * len(freshness.PRIMITIVES)
    assert list(tmp_path.iterdir()) == []


def test_the_section_is_registered_outside_the_answer() -> None:
    from plinius.cli.bench import ANSWER_SECTIONS

    s = section("freshness")
    assert s.run is not None and s.render is not None and s.contenders is None
    assert "freshness" not in ANSWER_SECTIONS
    assert s.render({}) == []
    assert s.render({"freshness": _doc()})[0].startswith("## Freshness cost per save")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """The asv module as asv imports it, its scratch directories under ``tmp_path``."""
    monkeypatch.setenv("PLINIUS_DISK_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("bench_sections", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sections"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_sections", None)


def test_the_asv_class_times_a_contender_and_skips_what_does_not_exist(
    bench: ModuleType, tmp_path: Path
) -> None:
    cls = bench.FreshnessContenders
    assert cls.param_names == ["contender", "op"]
    assert cls.params == (list(freshness.IDS), list(freshness.OPS))
    obj = cls()
    obj.setup("simulated", "save")
    try:
        before = bench.contender_clock()
        obj.time_op("simulated", "save")
        assert bench.contender_clock() > before
    finally:
        obj.teardown("simulated", "save")
    for params in (("simulated", "nv_increment"), ("swtpm-primitives", "save")):
        with pytest.raises(NotImplementedError):
            obj.setup(*params)
        obj.teardown(*params)
    assert list(tmp_path.iterdir()) == []
