"""The answer of ``plinius bench``: one table per durability level at the user's workload, and a
recommendation by one rule: a winner only where its save interval clears the next option's,
else "tied". Options of different durability are never ranked against each other."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from plinius.lab.bench.answer import contention, markdown, options, recommend

WL = "size-50"
MB = 100 << 20


def _row(instance: str, durability: str, save: float, spread: float, **kw: Any) -> dict:
    rng = np.random.default_rng(zlib.crc32(instance.encode()))
    saves = list(save * (1 + spread * (rng.random(7) - 0.5)))
    return {
        "instance": instance,
        "durability": durability,
        "emulated": kw.get("emulated", False),
        "role": kw.get("role", ""),
        "models": kw.get("models"),
        "model": WL,
        "model_mb": 50,
        "bytes": MB,
        "samples": {"save": saves, "restore": [save / 2] * 7, **kw.get("extra", {})},
    }


def _doc(rows: list[dict], **extra: Any) -> dict[str, Any]:
    return {
        "parameters": {"rounds": 7, "answer": {"workload": WL, "step_s": 1.0, "every": 100}},
        "workloads": [{"workload": WL, "mirror_bytes": MB}],
        "results": rows,
        **extra,
    }


def test_overlapping_intervals_are_tied() -> None:
    doc = _doc([_row("ssd", "power-fail", 0.100, 0.4), _row("dax", "power-fail", 0.104, 0.4)])
    v = recommend(options(doc, WL, 1.0, 100), "power-fail")
    assert v.winner is None and "tied" in v.text and "`ssd`" in v.text and "`dax`" in v.text
    page = "\n".join(markdown(doc, WL, 1.0, 100))
    assert "**Recommendation (power-fail)**: **tied**" in page


def test_a_winner_only_beyond_the_noise() -> None:
    doc = _doc(
        [_row("romulus", "process-crash", 0.030, 0.05), _row("tmpfs", "process-crash", 0.075, 0.05)]
    )
    v = recommend(options(doc, WL, 1.0, 100), "process-crash")
    assert v.winner == "romulus" and "beyond the noise" in v.text


def test_the_verdict_pairs_rounds_as_the_targets_do() -> None:
    """A contended run slows both sides of a round alike: unpaired intervals overlap, the
    paired ratio (the targets table's) is clear, and the recommendation follows the ratio."""
    load = [1.0, 4.0, 1.1, 3.5, 1.05, 3.8, 2.5]
    fast = _row("romulus", "process-crash", 0.010, 0.0)
    slow = _row("tmpfs", "process-crash", 0.027, 0.0)
    fast["samples"]["save"] = [0.010 * x for x in load]
    slow["samples"]["save"] = [0.027 * x for x in load]
    opts = options(_doc([fast, slow]), WL, 1.0, 100)
    assert opts[0].save.hi > opts[1].save.lo  # the unpaired intervals overlap
    v = recommend(opts, "process-crash")
    assert v.winner == "romulus" and "2.7× [2.7–2.7] faster" in v.text, v.text


def test_levels_are_never_ranked_against_each_other_and_a_model_never_wins() -> None:
    doc = _doc(
        [
            _row("romulus", "process-crash", 0.030, 0.05, emulated=True),
            _row("optane", "process-crash", 0.010, 0.05, models="romulus"),
            _row("ssd", "power-fail", 0.120, 0.05),
        ]
    )
    opts = options(doc, WL, 1.0, 100)
    assert recommend(opts, "power-fail").winner == "ssd"  # alone at its level, not beaten by RAM
    assert recommend(opts, "process-crash").winner == "romulus"  # the model only adds delays
    page = markdown(doc, WL, 1.0, 100)
    text = "\n".join(page)
    assert "Cost of durability" in text and "4.0×" in text  # the one labelled cross-level line
    assert text.count("Cost of durability") == 1
    assert "*(emulated)*" in text and "a model of real PM, compare with `romulus`" in text


def test_the_answer_fits_one_screen() -> None:
    doc = _doc(
        [
            _row("romulus", "process-crash", 0.030, 0.05, emulated=True),
            _row("tmpfs", "process-crash", 0.075, 0.05),
            _row("ssd", "power-fail", 0.120, 0.05, extra={"restore_cold": [0.07] * 7}),
            _row("dax", "power-fail", 0.125, 0.05),
        ]
    )
    page = markdown(doc, WL, 1.0, 100)
    assert len(page) <= 60 and page[0] == "# Where should a 100.0 MiB encrypted mirror live?"
    assert sum(1 for line in page if line.startswith("**Recommendation (")) == 2
    assert page[-2:] == ["---", ""]  # everything else comes after the line


def test_overhead_and_work_lost_follow_the_users_step_and_interval() -> None:
    doc = _doc([_row("ssd", "power-fail", 0.200, 0.0)])
    (o,) = options(doc, WL, 0.5, 40)
    assert abs(o.overhead.median - 0.200 / 20) < 1e-9  # 200 ms per 40 × 0.5 s
    assert abs(o.lost_s - (10.0 + 0.100)) < 1e-9  # half an interval plus the restore


def test_contention_is_said_at_the_top() -> None:
    busy = _doc(
        [_row("ssd", "power-fail", 0.1, 0.05)],
        contention={"cores": 2, "load_before": 64.0, "load_after": 70.0, "steal_fraction": 0.2},
    )
    assert any("load average 64.0 on 2 cores before the run" in w for w in contention(busy))
    assert any("CPU steal 20%" in w for w in contention(busy))
    assert "Contended machine" in "\n".join(markdown(busy, WL, 1.0, 100)[:8])
    quiet = _doc(
        [_row("ssd", "power-fail", 0.1, 0.05)],
        contention={"cores": 2, "load_before": 0.3, "load_after": 0.1, "max_spread": 1.3},
    )
    assert contention(quiet) == []  # a disk's spread on a quiet machine is not contention


def test_what_the_rounds_saw_and_the_extra_rounds_are_said() -> None:
    watch = {"reasons": ["a fixed CPU probe ran 2.0× slower than its fastest (median)"]}
    doc = _doc(
        [_row("ssd", "power-fail", 0.1, 0.05)],
        contention={"cores": 2, "load_before": 0.3},
        rounds={WL: {"count": 12, "planned": 7, "contention": watch}},
    )
    top = "\n".join(markdown(doc, WL, 1.0, 100)[:8])
    assert "probe ran 2.0× slower" in top and "the rounds went on from 7 to 12" in top
    assert "Medians of 12 interleaved rounds" in top


def _peer(name: str, durability: str, save: float, sealed: bool) -> dict[str, Any]:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    saves = list(save * (1 + 0.05 * (rng.random(7) - 0.5)))
    facts = {"durability": durability, **({"engine": "openssl"} if sealed else {})}
    ops = {"save": {"seconds": saves}, "restore": {"seconds": [save / 2] * 7}}
    return {"section": "peers", "name": name, "workload": WL, "nbytes": MB, "ops": ops,
            "facts": facts, "errors": []}  # fmt: skip


def test_peers_are_shown_beside_the_options_and_never_win() -> None:
    doc = _doc(
        [
            _row("romulus", "process-crash", 0.030, 0.05),
            _row("tmpfs", "process-crash", 0.075, 0.05),
        ],
        contenders=[
            _peer("pickle (tmpfs)", "process-crash", 0.010, sealed=False),  # fastest of all
            _peer("numpy.save (tmpfs)", "process-crash", 0.020, sealed=False),
            _peer("pickle+aes-gcm+fsync (tmpfs)", "process-crash", 0.120, sealed=True),
            _peer("numpy.save+aes-gcm+fsync (tmpfs)", "process-crash", 0.150, sealed=True),
        ],
    )
    page = markdown(doc, WL, 1.0, 100)
    text = "\n".join(page)
    # the fastest of each kind is in the table, labelled; the slower ones stay below the line
    assert "`pickle (tmpfs)` *(peer: plaintext, not confidential)*" in text
    assert "`pickle+aes-gcm+fsync (tmpfs)` *(peer: AES-GCM + fsync by hand" in text
    assert "numpy.save (tmpfs)" not in text
    assert "**Recommendation (process-crash)**: **`romulus`**" in text  # a peer never wins
    line = next(x for x in page if x.startswith("Against what users do instead"))
    assert "`romulus` saves 4.0" in line and "faster, beyond the noise" in line
    assert len(page) <= 60


def test_the_answer_names_the_cpu_and_the_engine_the_run_chose() -> None:
    prov = {
        "cpu": {"model": "AMD EPYC 9B14", "cores": 2},
        "crypto_engine": "auto",
        "crypto_engine_choice": {"note": "cryptography/1 at every size"},
    }
    page = markdown(
        _doc([_row("romulus", "process-crash", 0.03, 0.05)], provenance=prov), WL, 1.0, 100
    )
    line = next(x for x in page if x.startswith("Measured on "))
    assert "AMD EPYC 9B14 (2 cores)" in line and "`auto` (cryptography/1 at every size)" in line
    assert page.index(line) < next(i for i, x in enumerate(page) if x.startswith("## "))
    assert not any(x.startswith("Measured on ") for x in markdown(_doc([]), WL, 1.0, 100))
