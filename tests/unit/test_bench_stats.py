"""Figures a reader can trust: bootstrap intervals, paired ratios, three-way target verdicts,
and the issue's targets table computed from a run's samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from plinius.lab.bench.stats import Interval, median_interval, ratio_interval, speedup, verdict
from plinius.lab.bench.targets import targets


def _noisy(center: float, n: int = 9, spread: float = 0.05, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(center * (1 + spread * rng.standard_normal(n)))


def test_interval_contains_the_median_and_is_deterministic() -> None:
    x = _noisy(1.0, 11)
    iv = median_interval(x)
    assert iv.median == pytest.approx(float(np.median(x)))
    assert iv.lo <= iv.median <= iv.hi and iv.lo < iv.hi and iv.n == 11
    assert median_interval(x) == iv  # seeded: a report redrawn from its JSON says the same
    assert min(x) <= iv.lo and iv.hi <= max(x)
    js = iv.as_json()
    assert set(js) == {"median", "ci95", "n"} and Interval.from_json(js) == iv


def test_interval_narrows_with_more_rounds() -> None:
    few = median_interval(_noisy(1.0, 7, seed=3))
    many = median_interval(_noisy(1.0, 200, seed=3))
    assert (many.hi - many.lo) < (few.hi - few.lo)


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        median_interval([])
    with pytest.raises(ValueError, match="finite"):
        median_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="> 0"):
        ratio_interval([1.0], [0.0])


def test_ratio_is_paired_by_round_when_rounds_match() -> None:
    # a drift shared by both sides round by round (the VM slowing down): pairing cancels it
    drift = np.linspace(1.0, 3.0, 9)
    slow, fast = list(2.0 * drift), list(1.0 * drift)
    paired = speedup(fast, slow)
    assert paired.paired is True and paired.median == pytest.approx(2.0)
    assert paired.lo <= 2.0 <= paired.hi
    indep = ratio_interval(slow, fast[:-1])  # one side lost a round: resampled independently
    assert indep.paired is False and indep.n == 8
    assert (indep.hi - indep.lo) > (paired.hi - paired.lo)
    # the bytes moved scale a throughput ratio
    assert speedup(fast, slow, bytes_ratio=0.5).median == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("iv", "bar", "at_least", "expected"),
    [
        (Interval(3.0, 2.6, 3.4, 9), 2.5, True, "met"),
        (Interval(2.0, 1.8, 2.2, 9), 2.5, True, "not met"),
        (Interval(2.5, 2.2, 2.9, 9), 2.5, True, "inconclusive"),
        (Interval(0.05, 0.02, 0.08, 9), 0.10, False, "met"),
        (Interval(0.15, 0.12, 0.2, 9), 0.10, False, "not met"),
        (Interval(0.1, 0.05, 0.14, 9), 0.10, False, "inconclusive"),
    ],
)
def test_three_verdicts(iv: Interval, bar: float, at_least: bool, expected: str) -> None:
    assert verdict(iv, bar, at_least) == expected


def test_verdicts_from_synthetic_samples() -> None:
    far = speedup(_noisy(1.0, seed=2), _noisy(4.0, seed=4))
    near = speedup(_noisy(1.0, spread=0.3, seed=5), _noisy(2.5, spread=0.3, seed=6))
    short = speedup(_noisy(1.0, seed=2), _noisy(1.5, seed=4))
    assert verdict(far, 2.5) == "met"
    assert verdict(near, 2.5) == "inconclusive"
    assert verdict(short, 2.5) == "not met"


# -- the targets table from a run's samples -------------------------------------------------------

MB = 64 << 20


def _contender(
    section: str, name: str, ident: str, ops: dict[str, list[float]], **facts: Any
) -> dict:
    return {
        "section": section,
        "id": f"{section}:{ident}",
        "name": name,
        "workload": "size-64",
        "nbytes": MB,
        "ops": {
            op: {"seconds": s, "interval": median_interval(s).as_json()} for op, s in ops.items()
        },
        "facts": facts,
        "errors": [],
    }


def _row(instance: str, durability: str, save: list[float], restore: list[float], **kw: Any):
    samples = {"save": save, "restore": restore, **kw.pop("extra", {})}
    return {
        "instance": instance,
        "durability": durability,
        "model": "size-64",
        "bytes": MB,
        "samples": samples,
        "role": kw.pop("role", ""),
    }


def _doc() -> dict[str, Any]:
    rom = _row("romulus", "process-crash", _noisy(0.010), _noisy(0.008))
    return {
        "workloads": [{"workload": "size-64", "full": True, "not_run": {}}],
        "results": [
            rom,
            _row("tmpfs", "process-crash", _noisy(0.030, seed=8), _noisy(0.012, seed=9)),
            # the pool msynced to the disk: what the fsynced peers on the disk are compared with
            _row("romulus?mode=msync", "power-fail", _noisy(0.010), _noisy(0.008)),
            _row(
                "ssd",
                "power-fail",
                _noisy(0.05),
                _noisy(0.012),
                extra={"restore_cold": _noisy(0.04, seed=3)},
            ),
        ],
        "contenders": [
            _contender(
                "limits",
                "aes-gcm (all cores)",
                "aes-gcm/openssl/2",
                {"encrypt": _noisy(0.0095), "decrypt": _noisy(0.005)},
                threads=2,
            ),
            _contender(
                "limits",
                "aes-gcm (1 thread)",
                "aes-gcm/openssl/1",
                {"encrypt": _noisy(0.02)},
                threads=1,
            ),
            _contender(
                "peers",
                "safetensors (tmpfs)",
                "safetensors@tmpfs",
                {"save": _noisy(0.03), "restore": _noisy(0.02), "restore_copy_": _noisy(0.2)},
                label="tmpfs",
                durability="process-crash",
            ),
            _contender(
                "peers",
                "torch.save+aes-gcm (ssd)",
                "torch.save+aes-gcm@ssd",
                {"save": _noisy(0.2)},
                label="ssd",
                durability="power-fail",
            ),
            # a peer named like another is never taken for it: targets name contenders by id
            _contender(
                "peers", "safetensors (tmpfs) twin", "other@tmpfs", {"save": _noisy(0.0001)}
            ),
        ],
        "overhead": [{"model": "mnist", "sync_overhead": 0.05, "async_overhead": 0.04}],
    }


def test_targets_table_from_samples() -> None:
    rows = {t["id"]: t for t in targets(_doc())}
    assert rows["save_vs_aes_all_cores"]["verdict"] == "met"  # 0.95× against a 0.80 bar
    assert "aes-gcm (all cores)" in rows["save_vs_aes_all_cores"]["sides"]
    assert rows["restore_vs_aes_all_cores"]["verdict"] == "not met"  # 0.625× vs 0.85
    assert rows["save_vs_safetensors_tmpfs"]["verdict"] == "met"  # 3×
    assert rows["save_vs_torch_aes_fsync_ssd"]["verdict"] == "met"  # 20× against 15
    # ranked against the faster materialising copy (numpy.copyto, not torch copy_)
    assert "safetensors (tmpfs) restore" in rows["restore_vs_safetensors_tmpfs"]["sides"]
    assert rows["save_romulus_vs_tmpfs"]["verdict"] == "met"
    assert rows["restore_romulus_vs_tmpfs"]["verdict"] == "not met"
    # no target: reported with its interval; missing inputs say so
    assert rows["save_msync_vs_ssd"]["verdict"] == "reported"  # no bar: the figure only
    assert rows["restore_pm_device_vs_romulus"]["verdict"] == "not run"
    assert "did not run" in rows["restore_pm_device_vs_romulus"]["why"]
    assert "3.2–3.5" in rows["save_pm_device_vs_romulus"]["reference"]
    # never a ratio across durability levels
    assert all(
        t["durability"].split(" vs ")[0] == t["durability"].split(" vs ")[-1]
        or "-" in t["durability"]
        for t in rows.values()
    )
    assert rows["overhead_sync"]["verdict"] == "met"
    assert rows["overhead_async"]["verdict"] == "not met"
    assert rows["overhead_async"]["point_estimate"] is True
    for t in rows.values():
        if t["interval"]:
            lo, hi = t["interval"]["ci95"]
            assert lo <= t["measured"] <= hi and t["interval"]["n"] >= 1


def test_target_without_inputs_says_not_run_and_why() -> None:
    doc = _doc()
    doc["contenders"] = []
    doc["workloads"][0]["not_run"] = {"peers": "not run: torch not importable"}
    rows = {t["id"]: t for t in targets(doc)}
    assert rows["save_vs_safetensors_tmpfs"]["verdict"] == "not run"
    assert rows["save_vs_safetensors_tmpfs"]["why"] == "not run: torch not importable"
    assert "limits" in rows["save_vs_aes_all_cores"]["why"]


def test_a_negative_overhead_is_no_measurable_overhead_never_a_met_target() -> None:
    doc = _doc()
    doc["overhead"] = [
        {
            "model": "mnist",
            "sync_overhead": -0.098,
            "sync_overhead_interval": {"median": -0.098, "ci95": [-0.15, 0.02], "n": 7},
            "async_overhead": 0.01,
            "async_overhead_interval": {"median": 0.01, "ci95": [0.004, 0.02], "n": 7},
        }
    ]
    rows = {t["id"]: t for t in targets(doc)}
    assert rows["overhead_sync"]["verdict"] == "no measurable overhead"
    assert rows["overhead_sync"]["why"].startswith("< 2.0%")
    assert rows["overhead_async"]["verdict"] == "met"  # 1 % [0.4–2 %] against 3 %


def test_the_run_engine_is_judged_against_the_fastest_way_measured() -> None:
    """The choice by measurement is right when the engine as mirrors call it (its all-cores
    way: one batch) is as fast as the best way the limits measured; a slower one is not met."""
    doc = _doc()
    doc["provenance"] = {"crypto_engine": "openssl"}
    rows = {t["id"]: t for t in targets(doc)}
    enc, dec = rows["engine_vs_fastest_aes_encrypt"], rows["engine_vs_fastest_aes_decrypt"]
    # the run's engine is openssl: its all-cores way against the fastest of the others (none:
    # this run measured only openssl's ways), so not run, and why
    assert enc["verdict"] == "not run" and "limits: encrypt" in enc["why"]
    assert dec["verdict"] == "not run"
    doc["provenance"] = {"crypto_engine": "auto"}
    doc["contenders"].append(
        _contender(
            "limits",
            "aes-gcm (all cores)",
            "aes-gcm/auto/2",
            {"encrypt": _noisy(0.0095, seed=3), "decrypt": _noisy(0.005, seed=4)},
            threads=2,
        )
    )
    rows = {t["id"]: t for t in targets(doc)}
    enc, dec = rows["engine_vs_fastest_aes_encrypt"], rows["engine_vs_fastest_aes_decrypt"]
    # auto as fast as openssl/2, the fastest other way: met, and never compared with itself
    assert enc["verdict"] == "met" and 0.95 <= enc["measured"] <= 1.05, enc
    assert enc["sides"] == "aes-gcm/auto/2 vs aes-gcm/openssl/2 encrypt (throughput)"
    assert dec["verdict"] == "met"
    # a run whose engine was slower than a way it could have chosen: not met
    doc["contenders"].append(
        _contender(
            "limits",
            "aes-gcm (cryptography/1)",
            "aes-gcm/cryptography/1",
            {"encrypt": _noisy(0.005, seed=5), "decrypt": _noisy(0.0025, seed=6)},
            threads=1,
        )
    )
    rows = {t["id"]: t for t in targets(doc)}
    assert rows["engine_vs_fastest_aes_encrypt"]["verdict"] == "not met"
    assert "vs aes-gcm/cryptography/1" in rows["engine_vs_fastest_aes_encrypt"]["sides"]
    # no provenance (or no way of the run's engine): not run, and why
    del doc["provenance"]
    rows = {t["id"]: t for t in targets(doc)}
    assert rows["engine_vs_fastest_aes_decrypt"]["verdict"] == "not run"
    assert "the run's engine" in rows["engine_vs_fastest_aes_decrypt"]["why"]
