"""Contention is found before and during the rounds, and a contended run gets more rounds
(within a bound and a deadline); a device model is a model however the user named it."""

from __future__ import annotations

import time

import pytest

from plinius.lab.bench.contenders import Contender, run_rounds
from plinius.lab.bench.contention import Extension, Watch
from plinius.lab.plan import modelled
from plinius.lab.profiles import InstancePlan


def _watch(loads: list[float], probes: list[float], cores: int = 2) -> Watch:
    w = Watch(cores=cores)
    w.loads, w.probe_s = loads, probes
    return w


def test_a_quiet_machine_has_no_reasons() -> None:
    w = _watch([0.4, 0.9], [0.0031, 0.0030, 0.0032])
    assert w.reasons() == [] and w.as_json()["contended"] is False


def test_load_above_the_cores_and_a_slowed_probe_are_reasons() -> None:
    assert "load average up to 5.0 on 2 cores" in _watch([1.0, 5.0], [0.003] * 3).reasons()
    slow = _watch([0.5], [0.003, 0.009, 0.009]).reasons()
    assert slow and "probe ran 3.0× slower" in slow[0]


def test_the_benchmarks_own_load_is_not_contention() -> None:
    """Its engine keeps both cores busy: a load of 2.5 on 2 cores during the rounds is itself."""
    assert _watch([2.0, 2.5, 2.9], [0.003] * 3).reasons() == []
    assert _watch([2.0, 3.4], [0.003] * 3).reasons()


def test_a_real_sample_records_load_and_probe() -> None:
    w = Watch()
    w.sample()
    w.sample()
    assert len(w.probe_s) == 2 and all(p > 0 for p in w.probe_s)
    assert set(w.as_json()) >= {"load_max", "probe_ms", "probe_slowdown", "reasons"}


def test_extension_goes_on_only_while_contended_within_its_bound_and_deadline() -> None:
    busy, quiet = _watch([9.0], [0.003] * 2), _watch([0.1], [0.003] * 2)
    now = time.monotonic()
    assert Extension(14).more(busy, 7, now) is True
    assert Extension(14).more(quiet, 7, now) is False
    assert Extension(14).more(busy, 14, now) is False  # the bound
    # rounds of 1 s each so far: another one would end after the deadline
    assert Extension(14, deadline=time.monotonic() + 0.5).more(busy, 7, now - 7.0) is False
    assert Extension(14, deadline=time.monotonic() + 60).more(busy, 7, now - 7.0) is True


def _contender(name: str, seen: list[str]) -> Contender:
    def run(op: str) -> float:
        seen.append(name)
        return 0.001

    return Contender("toy", name, "w", 1, ("save",), run)


def test_run_rounds_adds_the_rounds_more_asks_for() -> None:
    seen: list[str] = []
    asked: list[int] = []

    def more(done: int) -> bool:
        asked.append(done)
        return done < 5

    got = run_rounds([_contender("a", seen), _contender("b", seen)], 3, more=more)
    assert asked == [3, 4, 5]  # asked only after the planned rounds
    assert all(len(s.seconds["save"]) == 5 for s in got) and len(seen) == 10


@pytest.mark.parametrize(
    ("plan", "want"),
    [
        # the default plan's model and the pool it delays
        (["romulus", "romulus?device=optane-1dimm"], {"romulus?device=optane-1dimm": "romulus"}),
        # named by the user in --backends, with another option kept
        (
            ["romulus?mode=none", "romulus?device=optane-2dimm&mode=none"],
            {"romulus?device=optane-2dimm&mode=none": "romulus?mode=none"},
        ),
        # a model whose pool is not in the run: still a model, compared with nothing
        (["tmpfs", "romulus?device=optane-1dimm"], {"romulus?device=optane-1dimm": ""}),
        # device=none is no model
        (["romulus", "romulus?device=none"], {}),
    ],
)
def test_a_device_model_is_found_however_it_was_named(
    plan: list[str], want: dict[str, str]
) -> None:
    assert modelled([InstancePlan.from_text(t) for t in plan]) == want


def test_a_model_whose_pool_did_not_run_is_compared_with_nothing() -> None:
    """Its target is "not run", never a ratio against another instance (another durability)."""
    from plinius.lab.bench.sections.save import _models
    from plinius.lab.bench.verdicts import TargetTable

    def row(instance: str, models: str | None, durability: str) -> dict[str, object]:
        samples = {"save": [0.01, 0.02, 0.015], "restore": [0.01, 0.02, 0.015]}
        return {"instance": instance, "model": "w", "models": models, "samples": samples,
                "durability": durability}  # fmt: skip

    doc = {
        "results": [
            row("romulus?device=optane-2dimm&mode=msync", "", "power-fail"),
            row("romulus", None, "process-crash"),
        ]
    }
    t = TargetTable("w")
    _models(doc, "w", t)
    assert [r.verdict for r in t.rows] == ["not run", "not run"]
    assert all("its own pool" in r.why for r in t.rows)
