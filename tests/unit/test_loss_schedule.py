"""The shared VM-loss schedules of ``--vm-loss``: drawn once, before any arm runs."""

from __future__ import annotations

import numpy as np

from plinius.lab.experiments.vmloss import mark_schedule, same_losses
from plinius.lab.spot.experiment import loss_schedule
from plinius.lab.spot.trace import SpotTrace

BID = 0.10


def _trace(on: str) -> SpotTrace:
    """A trace from a pattern: ``1`` a slot at or below the bid, ``0`` above it."""
    return SpotTrace(np.array([0.08 if c == "1" else 0.30 for c in on]), 300, "test")


def test_spot_schedule_is_every_switch_off_inside_the_window() -> None:
    trace = _trace("0110011100110")
    got = loss_schedule(trace, BID, start=1, slots=11, slot_seconds=0.25)
    assert got == [
        {"index": 0, "slot": 3, "at_s": 0.5, "price": 0.30},
        {"index": 1, "slot": 8, "at_s": 1.75, "price": 0.30},
    ]  # the switch-off at slot 12 lies outside the window (slots 1..11)
    assert loss_schedule(trace, BID, start=0, slots=2, slot_seconds=1.0) == []  # never ran yet
    assert [e["at_s"] for e in loss_schedule(trace, BID, 1, 13, 0.15)] == [0.3, 1.05, 1.65]


def test_crash_schedule_is_drawn_once_and_seeded() -> None:
    a = mark_schedule([5, 20, 40], seed=7)
    assert a == mark_schedule([5, 20, 40], seed=7)
    assert [e["after_executed"] for e in a] == [5, 20, 40] and [e["index"] for e in a] == [0, 1, 2]
    assert all(0.0 <= e["fraction"] < 1.0 for e in a)
    assert a != mark_schedule([5, 20, 40], seed=8)


def test_same_losses_compares_every_arm_to_the_schedule() -> None:
    schedule = [{"index": 0, "slot": 3, "at_s": 0.5}, {"index": 1, "slot": 8, "at_s": 1.75}]
    met = [{**e, "hit": True, "t": e["at_s"] + 0.01} for e in schedule]
    assert same_losses(schedule, {"a": {"vm_losses": met}, "b": {"not_run": "no server"}})
    assert not same_losses(schedule, {"a": {"vm_losses": met[:1]}})  # one loss missing
    moved = [met[0], {**met[1], "slot": 9}]
    assert not same_losses(schedule, {"a": {"vm_losses": met}, "b": {"vm_losses": moved}})
