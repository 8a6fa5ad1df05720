"""``plinius crash-test``: random SIGKILLs during training, with and without the mirror (Fig. 9).

Three runs of the same model, seed and data: *baseline* (mirror, no crash), *resilient* (mirror,
K kills, each followed by an immediate restart that resumes from the mirror) and *non-resilient*
(no mirror, the same kills, each restart begins again from iteration 0). Kills land after the
same numbers of executed iterations in both crashing runs, plus a random fraction of an
iteration, so some hit in the middle of a save.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plinius.core.errors import ConfigError
from plinius.lab.experiments.supervisor import ExperimentOptions, Supervisor, read_log, wait_until
from plinius.lab.experiments.vmloss import ReplicaTarget, VmSupervisor, billed_seconds, run_arms

RUNS = ("baseline", "resilient", "nonresilient")


@dataclass
class CrashOptions(ExperimentOptions):
    kills: int = 9
    timeout_s: float = 3600.0


def kill_points(iterations: int, kills: int, seed: int) -> list[int]:
    """``kills`` cumulative-iteration marks, one at a random place in each of ``kills`` equal
    stretches of the run (seeded), so consecutive kills are never next to each other."""
    if kills < 0 or iterations < 2:
        raise ConfigError("crash-test needs --kills >= 0 and --iterations >= 2")
    lo, hi = max(1, iterations // 20), max(2, iterations - iterations // 20)
    if kills > (hi - lo) // 2:
        raise ConfigError(
            f"--kills {kills} do not fit in --iterations {iterations}: at most "
            f"{(hi - lo) // 2} kills, or more iterations"
        )
    rng = random.Random(seed)
    width = (hi - lo) / max(1, kills)
    marks = []
    for k in range(kills):
        a = lo + k * width
        marks.append(int(a + width / 4 + rng.random() * width / 2))
    return marks


def drive_kills(
    sup: Supervisor,
    marks: list[int],
    rng: random.Random,
    deadline: float,
    tick: Callable[[str, int], None],
) -> None:
    sup.start()
    it_time = 0.05
    for k, wanted in enumerate(marks, 1):
        last_t, last_n = time.monotonic(), sup.executed
        mark = max(wanted, last_n + 1)  # every restarted process gets to train at least once

        def reached(mark: int = mark) -> bool:
            sup.last_iteration()
            return sup.executed >= mark or not sup.running()

        if not wait_until(reached, deadline - time.monotonic(), 0.005):
            raise TimeoutError(f"{sup.spec.backend}: no progress to iteration {mark}")
        if sup.executed > last_n:
            it_time = (time.monotonic() - last_t) / (sup.executed - last_n)
        if sup.poll_exit():
            return  # finished before this mark (nothing left to crash)
        time.sleep(rng.uniform(0.0, min(it_time, 1.0)))  # a random moment inside an iteration
        if not sup.kill(f"crash {k}"):
            if sup.poll_exit():
                return  # it finished during the pause: nothing left to crash
            continue
        tick("kill", sup.last_iteration())
        sup.start()
    if not wait_until(lambda: sup.poll_exit(), deadline - time.monotonic(), 0.05):
        raise TimeoutError(f"{sup.spec.backend}: the run did not finish in time")
    sup.last_iteration()


def run_summary(sup: Supervisor, backend: str) -> dict[str, Any]:
    """A finished run: the supervisor's summary, its loss curve and median mirror time."""
    rows = read_log(sup.log)
    summary = sup.summary()
    summary["curve"] = {
        "iteration": [int(r["iteration"]) for r in rows],
        "loss": [r["loss"] for r in rows],
        "avg_loss": [r["avg_loss"] for r in rows],
        "mirror_ms": [r["mirror_ms"] for r in rows],
    }
    ms = [r["mirror_ms"] for r in rows if r["mirror_ms"] > 0]
    summary["mirror_ms_median"] = statistics.median(ms) if ms else 0.0
    summary["backend"] = backend
    return summary


def run_crash_test(
    opts: CrashOptions,
    specs: dict[str, str],
    workdir: Path,
    tick: Callable[[str, int], None] = lambda kind, it: None,
) -> dict[str, Any]:
    marks = kill_points(opts.iterations, opts.kills, opts.seed)
    deadline = time.monotonic() + opts.timeout_s
    out: dict[str, Any] = {"kill_marks": marks}
    for run in RUNS:
        sup = Supervisor(opts.run_spec(specs[run], run != "nonresilient"), workdir / run)
        try:
            drive_kills(
                sup,
                [] if run == "baseline" else marks,
                random.Random(opts.seed + 1),
                deadline,
                tick,
            )
        finally:
            sup.stop()
        out[run] = run_summary(sup, specs[run])
    base = out["baseline"]["final"].get("weights_sha256")
    out["exact_resume"] = bool(base) and base == out["resilient"]["final"].get("weights_sha256")
    out["extra_iterations"] = {
        r: out[r]["iterations_executed"] - opts.iterations for r in ("resilient", "nonresilient")
    }
    return out


def markdown(doc: dict[str, Any]) -> str:
    p = doc["parameters"]
    lines = [
        "# plinius crash-test",
        "",
        f"Model `{p['model']}`, {p['iterations']} iterations, {p['kills']} SIGKILLs at random "
        f"moments (planned after {doc['result']['kill_marks']} executed iterations; the "
        "table gives where each kill really landed, from the logs), backend "
        f"`{p['backend']}`, seed {p['seed']}. Every restart is a new process.",
        "",
        "| run | starts | kills | killed after (executed) | iterations executed | "
        "extra vs no crash | wall s | median mirror ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    res = doc["result"]
    for run in RUNS:
        r = res[run]
        extra = r["iterations_executed"] - p["iterations"]
        lines.append(
            f"| {run} | {r['starts']} | {r['kills']} | {r.get('kills_after', [])} | "
            f"{r['iterations_executed']} | {extra} | "
            f"{r['wall_s']:.1f} | {r['mirror_ms_median']:.2f} |"
        )
    lines += [
        "",
        f"Exact resume (resilient final weights == baseline final weights): "
        f"**{'yes' if res['exact_resume'] else 'NO'}**.",
        "",
        "## Kills and restarts",
        "",
    ]
    for run in ("resilient", "nonresilient"):
        ev = ", ".join(
            f"{e['kind']}@{e['t']:.2f}s(it {e['iteration']})" for e in res[run]["events"]
        )
        lines.append(f"- {run}: {ev}")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["result"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    base, resi, non = (
        res["baseline"]["curve"],
        res["resilient"]["curve"],
        res["nonresilient"]["curve"],
    )
    a.plot(base["iteration"], base["avg_loss"], label="no crash", color="tab:gray", lw=2)
    a.plot(
        resi["iteration"],
        resi["avg_loss"],
        label="crash resilient (mirror)",
        color="tab:blue",
        lw=1.2,
        ls="--",
    )
    for e in res["resilient"]["events"]:
        if e["kind"] == "kill":
            a.axvline(e["iteration"], color="tab:red", ls=":", lw=1)
    a.set(title="(a) crash-resilient training", xlabel="training iteration", ylabel="avg loss")
    a.legend()
    xs = list(range(1, len(non["avg_loss"]) + 1))
    b.plot(xs, non["avg_loss"], color="tab:orange", label="no mirror: restart from scratch")
    b.plot(base["iteration"], base["avg_loss"], color="tab:gray", lw=1, ls="--", label="no crash")
    prev = 0
    for i, it in enumerate(non["iteration"], 1):
        if it < prev:  # the iteration count fell back: a restart from scratch
            b.axvline(i - 0.5, color="tab:red", ls=":", lw=1)
        prev = it
    b.set(
        title=f"(b) non-resilient: {len(xs)} iterations executed",
        xlabel="iterations executed",
        ylabel="avg loss",
    )
    b.legend()
    fig.suptitle(f"plinius crash-test ({doc['parameters']['model']}, red: SIGKILL)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_crash_vm_loss(
    opts: CrashOptions,
    specs: dict[str, str],
    workdir: Path,
    target: ReplicaTarget,
    every: int,
    price_per_hour: float,
    tick: Callable[[str, int], None] = lambda kind, it: None,
) -> dict[str, Any]:
    """``--vm-loss``: the same kill marks in every arm, each kill a VM loss; the cost bills each
    arm's up-time at ``price_per_hour`` (the paper trace's mean paid spot price)."""
    marks = kill_points(opts.iterations, opts.kills, opts.seed)
    deadline = time.monotonic() + opts.timeout_s

    def drive(sup: VmSupervisor) -> dict[str, Any]:
        try:
            drive_kills(sup, marks, random.Random(opts.seed + 1), deadline, tick)
        finally:
            sup.stop()
        summary = run_summary(sup, sup.spec.backend)
        summary["iterations_lost"] = summary["iterations_executed"] - opts.iterations
        summary["billed_s"] = billed_seconds(summary["events"])
        summary["cost_usd"] = summary["billed_s"] * price_per_hour / 3600
        summary["finished"] = sup.finished
        return summary

    out = run_arms(opts, specs, workdir, target, every, drive)
    out["kill_marks"] = marks
    out["price_usd_per_hour"] = price_per_hour
    return out
