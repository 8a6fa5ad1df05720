"""``plinius spot``: replay a spot price trace against real trainer processes (Fig. 10).

Time is scaled: one trace slot lasts ``slot_seconds`` real seconds, on a fixed clock from the
run's start (slot k begins ``k * slot_seconds`` after it, whatever starting or killing the
trainer took). In a slot whose price is above the bid the instance is off: the trainer process
is SIGKILLed (no warning, as a reclaimed spot instance). At or below the bid it runs: a stopped
trainer is started again and, with the mirror, resumes where it was; without it, it starts from
scratch. Both runs see the same trace window.

``--vm-loss`` replays the window only (``window`` slots from the start), and its *loss schedule*
is drawn from it before any arm runs: every slot where the price rises above the bid. Every
arm meets every scheduled loss (one that comes after an arm finished is recorded as such), so
the arms' costs compare like for like.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plinius.lab.experiments.supervisor import ExperimentOptions, Supervisor, read_log
from plinius.lab.experiments.vmloss import VM_RUNS, ReplicaTarget, VmSupervisor, run_arms
from plinius.lab.spot.trace import SpotTrace, TraceError

RUNS = ("resilient", "nonresilient")
DEFAULT_BID = 0.0955  # USD/hour: the paper's bid on its c3.2xlarge trace


@dataclass
class SpotOptions(ExperimentOptions):
    bid: float = DEFAULT_BID
    slot_seconds: float = 5.0
    start: int | None = None  # None: pick a window with interruptions
    window: int = 160


def pick_start(trace: SpotTrace, bid: float, window: int) -> int:
    """A start slot a little before an interruption, such that the next ``window`` slots hold at
    least two interruptions and the instance is on at least half of the time (the paper's run
    saw two); the first running slot when no such window exists."""
    trace.check_bid(bid)
    on = trace.running(bid)
    n = len(trace)
    drops = np.zeros(n, dtype=np.int64)
    drops[1:] = on[:-1] & ~on[1:]
    c_drop = np.concatenate([[0], np.cumsum(drops)])
    c_on = np.concatenate([[0], np.cumsum(on)])
    lead = max(2, window // 8)
    for d in np.flatnonzero(drops):
        s = int(d) - lead
        e = min(n, s + window)
        if s < 0 or not on[s]:
            continue
        if c_drop[e] - c_drop[s + 1] >= 2 and (c_on[e] - c_on[s]) * 2 >= e - s:
            return s
    return int(np.argmax(on))


def loss_schedule(
    trace: SpotTrace, bid: float, start: int, slots: int, slot_seconds: float
) -> list[dict[str, Any]]:
    """The VM losses of the window of ``slots`` slots from ``start``: each slot where the
    instance is switched off after having run, with its time on the replay's clock (``at_s``:
    seconds after the start) and price. Drawn once; every ``--vm-loss`` arm replays it."""
    on = trace.running(bid)
    out: list[dict[str, Any]] = []
    for slot in range(start + 1, min(len(trace), start + slots)):
        if on[slot - 1] and not on[slot]:
            at_s = round((slot - start) * slot_seconds, 6)
            out.append({"index": len(out), "slot": slot, "at_s": at_s})
            out[-1]["price"] = float(trace.prices[slot])
    return out


def replay(
    sup: Supervisor,
    opts: SpotOptions,
    trace: SpotTrace,
    start: int,
    tick: Callable[[int, bool], None],
    schedule: list[dict[str, Any]] | None = None,
    end: int | None = None,
) -> dict[str, Any]:
    """Run one trainer configuration through the trace from ``start`` (to ``end``, default the
    trace's end): killed in every slot above the bid, started again at or below it; its
    summary, cost and iterations lost. With a ``schedule`` (``--vm-loss``: a ``VmSupervisor``)
    each scheduled switch-off is that loss of the VM, and a loss the run did not live to meet
    (it finished before) is recorded too: every arm lists the whole schedule."""
    states: list[dict[str, Any]] = []
    done = False
    losses = {e["slot"]: e for e in schedule or []}
    stop = len(trace) if end is None else min(end, len(trace))
    try:
        clock = sup.now()
        for i, slot in enumerate(range(start, stop)):
            price = float(trace.prices[slot])
            on = price <= opts.bid
            if on:
                sup.start()
            elif slot in losses and isinstance(sup, VmSupervisor):
                sup.lose(losses.pop(slot))
            else:
                sup.kill(f"slot {slot}: price {price} above bid {opts.bid}")
            tick(slot, on)
            end_t = clock + (i + 1) * opts.slot_seconds
            while sup.now() < end_t:
                if sup.poll_exit():
                    done = True
                    break
                time.sleep(min(0.05, max(0.0, end_t - sup.now())))
            states.append(
                {
                    "slot": slot,
                    "price": price,
                    "on": on,
                    "t": sup.now(),
                    "iteration": sup.last_iteration(),
                }
            )
            if done:
                break
        if isinstance(sup, VmSupervisor):
            for event in losses.values():  # after the run finished: met, nothing to lose
                sup.lose(event)
    finally:
        sup.stop()
    rows = read_log(sup.log)
    used = states
    summary = sup.summary()
    summary.update(
        finished=done,
        slots_used=len(used),
        completion_trace_minutes=len(used) * trace.slot_seconds / 60,
        cost_usd=sum(s["price"] for s in used if s["on"]) * trace.slot_seconds / 3600,
        interruptions=sum(1 for a, b in itertools.pairwise(used) if a["on"] and not b["on"]),
        iterations_lost=max(0, sup.executed - opts.iterations) if done else None,
        states=used,
        curve={
            "iteration": [int(r["iteration"]) for r in rows],
            "loss": [r["loss"] for r in rows],
            "avg_loss": [r["avg_loss"] for r in rows],
            "time": [r["time"] for r in rows],
        },
    )
    return summary


def chosen_start(opts: SpotOptions, trace: SpotTrace) -> int:
    """``--start``, or a window with interruptions; refused outside the trace."""
    trace.check_bid(opts.bid)
    start = opts.start if opts.start is not None else pick_start(trace, opts.bid, opts.window)
    if not 0 <= start < len(trace):
        raise TraceError(f"--start {start} is outside the trace (0..{len(trace) - 1})")
    return start


def run_spot(
    opts: SpotOptions,
    trace: SpotTrace,
    specs: dict[str, str],
    workdir: Path,
    tick: Callable[[str, int, bool], None] = lambda run, slot, on: None,
) -> dict[str, Any]:
    start = chosen_start(opts, trace)
    out: dict[str, Any] = {"start_slot": start, "trace": trace.source}
    for run in RUNS:
        sup = Supervisor(opts.run_spec(specs[run], run == "resilient"), workdir / run)
        out[run] = replay(sup, opts, trace, start, functools.partial(tick, run))
        out[run]["backend"] = specs[run]
    out["complete"] = all(out[r]["finished"] for r in RUNS)
    return out


def markdown(doc: dict[str, Any]) -> str:
    p, res = doc["parameters"], doc["result"]
    lines = [
        "# plinius spot",
        "",
        f"Trace {res['trace']} from slot {res['start_slot']}, bid {p['bid']}, one 5-minute slot "
        f"replayed as {p['slot_seconds']} s; model `{p['model']}` to {p['iterations']} "
        f"iterations; backend `{p['backend']}`. Above the bid the trainer is SIGKILLed.",
        "",
        "| run | finished | interruptions | starts | iterations executed | iterations lost | "
        "completion (trace min) | cost USD | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in RUNS:
        r = res[run]
        lines.append(
            f"| {run} | {'yes' if r['finished'] else 'NO (trace ended)'} | {r['interruptions']} | "
            f"{r['starts']} | {r['iterations_executed']} | {r['iterations_lost']} | "
            f"{r['completion_trace_minutes']:.0f} | {r['cost_usd']:.4f} | {r['wall_s']:.1f} |"
        )
    arms = [res[run] for run in RUNS]
    lost = sum(r["iterations_lost"] or 0 for r in arms)
    lines += [
        "",
        f"**Totals**: {sum(r['finished'] for r in arms)} of {len(arms)} runs finished; "
        f"{sum(r['interruptions'] for r in arms)} interruptions, "
        f"{sum(r['starts'] for r in arms)} starts, "
        f"{sum(r['iterations_executed'] for r in arms)} iterations executed ({lost} lost); "
        f"cost ${sum(r['cost_usd'] for r in arms):.4f}; {sum(r['wall_s'] for r in arms):.1f} s "
        "wall.",
    ]
    if not res["complete"]:
        lines += ["", "**Partial results**: the trace ended before every run finished."]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["result"]
    slot_min = 5.0
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.5))
    for col, run in enumerate(RUNS):
        r = res[run]
        loss_ax, state_ax = axes[0][col], axes[1][col]
        xs = list(range(1, len(r["curve"]["avg_loss"]) + 1))
        loss_ax.plot(xs, r["curve"]["avg_loss"], color="tab:blue" if col == 0 else "tab:orange")
        label = "(a) resilient (mirror)" if col == 0 else "(c) non-resilient"
        loss_ax.set(title=f"{label}: loss", xlabel="iterations executed", ylabel="avg loss")
        t = [(s["slot"] - res["start_slot"]) * slot_min for s in r["states"]]
        on = [1 if s["on"] else 0 for s in r["states"]]
        state_ax.step(t, on, where="post", color="tab:green")
        state_ax.set(
            title=f"({'b' if col == 0 else 'd'}) instance state, {r['interruptions']} "
            f"interruptions, ${r['cost_usd']:.3f}",
            xlabel="trace time (min)",
            ylabel="state (1 = running)",
            ylim=(-0.1, 1.2),
        )
    fig.suptitle(f"plinius spot replay (bid {doc['parameters']['bid']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_spot_vm_loss(
    opts: SpotOptions,
    trace: SpotTrace,
    specs: dict[str, str],
    workdir: Path,
    target: ReplicaTarget,
    every: int,
    tick: Callable[[str, int, bool], None] = lambda run, slot, on: None,
) -> dict[str, Any]:
    """``--vm-loss``: every arm through the same trace window (``opts.window`` slots from the
    start), replaying one loss schedule drawn from it: each switch-off a VM loss."""
    start = chosen_start(opts, trace)
    end = min(len(trace), start + opts.window)
    schedule = loss_schedule(trace, opts.bid, start, opts.window, opts.slot_seconds)

    def drive(sup: VmSupervisor) -> dict[str, Any]:
        tick_arm = functools.partial(tick, sup.dir.name)
        return replay(sup, opts, trace, start, tick_arm, schedule=schedule, end=end)

    out = run_arms(opts, specs, workdir, target, every, drive, schedule)
    out.update(start_slot=start, end_slot=end, trace=trace.source)
    out["complete"] = all(out[r].get("finished", True) for r in VM_RUNS)
    return out
