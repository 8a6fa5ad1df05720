"""The distributed bench section's pure logic: its results and ratios from a launch's samples,
its target verdicts (met, not met, not run and why), the unpaired W = 2 / W = 1 interval, its
report part, and the CLI's ``--world-size`` checks. No rank is launched here (the system test
does); no assert is about this machine's speed."""

from __future__ import annotations

import re
from typing import Any

import pytest

from plinius.cli.main import main
from plinius.core.errors import ConfigError
from plinius.lab.bench import distributed as d
from plinius.lab.bench.registry import NotRun, SuiteOptions, section
from plinius.lab.bench.verdicts import TargetTable

MIB = 1 << 20


def _contender(wrap: str, kind: str, ops: dict[str, list[float]], **kw: Any) -> dict[str, Any]:
    return {
        "id": f"{wrap}/{kind}@tmpfs",
        "name": f"{kind} {wrap}",
        "wrap": wrap,
        "kind": kind,
        "place": "tmpfs",
        "nbytes": 100 * MIB,
        "rank_bytes": 50 * MIB,
        "ops": {op: {"seconds": s, "per_rank": [[x, x] for x in s]} for op, s in ops.items()},
        "errors": kw.get("errors", []),
        "facts": {},
    }


def _run(world: int, role: str, contenders: list[dict[str, Any]], timing: bool = True) -> dict:
    return {
        "world": world,
        "role": role,
        "timing": timing,
        "rounds": 5 if timing else 1,
        "places": ["tmpfs"],
        "status": "ok",
        "contenders": contenders,
    }


FAST = [0.10, 0.11, 0.09, 0.10, 0.12]
SLOW = [0.40, 0.42, 0.39, 0.41, 0.45]


def _comparison(world: int = 2, timing: bool = True) -> dict[str, Any]:
    cs = []
    for wrap in d.WRAPS:
        cs += [
            _contender(wrap, "torchmirror", {d.SAVE: FAST, d.RESTORE: SLOW}),
            _contender(wrap, "dcp.save", {d.SAVE: SLOW, d.RESTORE: SLOW}),
            _contender(wrap, "dcp.async_save", {d.SAVE: FAST, d.SAVE_DONE: SLOW}),
        ]
    return _run(world, "comparison", cs, timing)


def _doc(runs: list[dict[str, Any]]) -> dict[str, Any]:
    got = d.result(
        runs,
        world_size=2,
        workload="resnet50+adam",
        specs=None,
        quick=False,
        storage={"tmpfs": {"dir": "/dev/shm", "mount": "tmpfs", "fs_type": "tmpfs", "note": "RAM"}},
        load=(0.5, 0.7),
    )
    return {d.NAME: got}


def _w1() -> dict[str, Any]:
    return _run(1, "scaling", [_contender("ddp", "torchmirror", {d.SAVE: [0.3, 0.31, 0.29]})])


def _targets(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    t = TargetTable("size-64")
    d.targets(doc, t)
    return {r.id: r.as_dict() for r in t.rows}


def test_ratios_are_paired_speedups_of_torchmirror() -> None:
    got = _doc([_comparison(), _w1()])[d.NAME]
    save = next(r for r in got["ratios"] if r["wrap"] == "ddp" and r["theirs"] == "dcp.save save")
    assert save["speedup"]["paired"] is True
    assert save["speedup"]["median"] == pytest.approx(0.41 / 0.10)
    load = next(r for r in got["ratios"] if r["theirs"] == "dcp.load restore")
    assert load["speedup"]["median"] == pytest.approx(1.0)
    worlds = sorted({r["world"] for r in got["scaling"]})
    assert worlds == [1, 2]


def test_targets_verdicts_at_w2() -> None:
    rows = _targets(_doc([_comparison(), _w1()]))
    assert rows["dist_save_vs_dcp_save_ddp"]["verdict"] == "met"
    assert rows["dist_save_vs_dcp_save_fsdp"]["verdict"] == "met"
    assert rows["dist_restore_vs_dcp_load_ddp"]["verdict"] in ("not met", "inconclusive")
    dedup = rows["dist_ddp_save_w2_vs_w1"]
    assert dedup["bar"] == "<= 0.6" and dedup["interval"]["paired"] is False
    assert dedup["measured"] == pytest.approx(0.10 / 0.30)
    assert dedup["verdict"] == "met"


def test_dedup_target_pairs_rank0_alone_in_the_same_rounds() -> None:
    comp = _comparison()
    comp["contenders"].append(_contender("ddp", d.SOLO, {d.SAVE: [0.2, 0.22, 0.18, 0.2, 0.24]}))
    doc = _doc([comp, _w1()])
    dedup = _targets(doc)["dist_ddp_save_w2_vs_w1"]
    assert dedup["interval"]["paired"] is True and "same rounds" in dedup["sides"]
    assert dedup["measured"] == pytest.approx(0.10 / 0.20) and dedup["verdict"] == "met"
    solo = [r for r in doc[d.NAME]["ratios"] if r["theirs"] == d.SOLO_LABEL]
    assert len(solo) == 1 and solo[0]["speedup"]["median"] == pytest.approx(2.0)
    assert "rank 0 alone" in "\n".join(d.markdown(doc[d.NAME]))


def test_targets_not_run_say_why() -> None:
    rows = _targets({})
    assert all(r["verdict"] == "not run" for r in rows.values())
    assert "did not run" in rows["dist_save_vs_dcp_save_ddp"]["why"]
    rows = _targets(_doc([_comparison(world=4, timing=False)]))
    assert "W = 4" in rows["dist_save_vs_dcp_save_ddp"]["why"]
    assert "W = 2, 1" in rows["dist_ddp_save_w2_vs_w1"]["why"]
    broken = _comparison()
    broken["contenders"][0] = _contender(
        "ddp", "torchmirror", {d.SAVE: FAST}, errors=["round 1 restore: IntegrityError: differs"]
    )
    rows = _targets(_doc([broken]))
    assert rows["dist_save_vs_dcp_save_ddp"]["verdict"] == "not run"
    assert "IntegrityError" in rows["dist_save_vs_dcp_save_ddp"]["why"]


def test_unpaired_ratio() -> None:
    iv = d.unpaired_ratio([2.0, 2.2, 1.8], [1.0, 1.1, 0.9, 1.0])
    assert iv.median == pytest.approx(2.0) and iv.paired is False
    assert iv.lo <= iv.median <= iv.hi
    assert d.unpaired_ratio([2.0, 2.2, 1.8], [1.0, 1.1, 0.9, 1.0]) == iv  # seeded
    with pytest.raises(ValueError):
        d.unpaired_ratio([1.0], [])


def test_report_names_storage_simulation_and_correctness_only() -> None:
    w4 = _comparison(world=4, timing=False)
    w4["role"] = "scaling"
    doc = _doc([_comparison(), _w1(), w4])[d.NAME]
    text = "\n".join(d.markdown(doc))
    assert "enclave is simulated" in text and "simulated CPU" in text
    assert "correctness only" in text and "RAM" in text
    assert "TorchMirror is × faster" in text
    assert "{" not in text  # every placeholder filled
    sweep = [r for r in doc["scaling"] if r["world"] == 4]
    assert sweep and all("ms" not in r for r in sweep)


def test_small_helpers() -> None:
    assert d.workload_of(()) == d.DEFAULT_WORKLOAD
    assert d.workload_of(("size-64", "bert-base")) == "bert-base+adam"
    assert d.workload_of(("gpt2-small+sgd-momentum",)) == "gpt2-small+sgd-momentum"
    assert d.ops_of("dcp.async_save") == (d.SAVE, d.SAVE_DONE)
    assert d.ops_of("torchmirror") == (d.SAVE, d.RESTORE)
    with pytest.raises(ValueError):
        d.ops_of("torch.save")
    with pytest.raises(ConfigError):
        d.check_world(0)


def test_quick_with_other_sections_leaves_it_out() -> None:
    from plinius.core.crypto import generate_key, make_engine

    opts = SuiteOptions([], [10.0], 1, make_engine(generate_key()), quick=True)
    run = section(d.NAME).run
    assert run is not None
    why = d.torch_missing()  # without torch (3.12, 3.13) it is not run for that reason instead
    with pytest.raises(NotRun, match=re.escape(why) if why else "--quick"):
        run(opts)


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_cli_refuses_a_bad_world_size_in_one_line(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--world-size", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--world-size" in err and len(err.strip().splitlines()) == 1


def test_cli_world_size_with_only_leaving_it_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--world-size", "2", "--only", "save"]) == 2
    err = capsys.readouterr().err
    assert "--world-size" in err and len(err.strip().splitlines()) == 1
