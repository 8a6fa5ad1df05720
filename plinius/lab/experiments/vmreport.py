"""The ``--vm-loss`` report and figure, shared by ``plinius crash-test`` and ``plinius spot``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plinius.lab.experiments.vmloss import COLORS, TITLES, VM_RUNS

#: results.json keys of a ``--vm-loss`` result, as the report documents them
KEYS = {
    "vm_loss": "true: every interruption deleted the run's local backend instances",
    "runs": "the arms, in order: local_only, local_replica, nonresilient",
    "replica": "the replica server (`server`), `every` R-th mirror copied, `run`, `reason` "
    "when not run",
    "loss_schedule": "the VM losses every arm replays, drawn once before any arm ran: `index` "
    "and the place (spot: `slot`, `at_s` seconds after the start, `price`; crash-test: "
    "`after_executed` iterations, then `fraction` of the next iteration)",
    "same_losses": "every arm that ran met every scheduled loss, in order, at its place",
    "<arm>.iterations_lost": "iterations executed beyond the target (work done again)",
    "<arm>.iterations_executed": "iterations run by all of the arm's processes together",
    "<arm>.wall_s": "real seconds from the arm's first start to its end",
    "<arm>.cost_usd": "dollars on the paper's trace (spot: paid slots of the replayed window; "
    "crash-test: up-seconds at the trace's mean paid price)",
    "<arm>.vm_losses": "one per scheduled loss, in order: the schedule's fields, `hit` (a "
    "running trainer was killed; false: the arm had already finished), `t` (seconds since the "
    "arm's start), `iteration`, `executed`, `deleted` (instance paths), `gone_at_restart`, "
    "`restart` (from scratch / restore from a replica / no mirror / none: the run had finished)",
    "<arm>.deleted_gone_at_restart": "every deleted instance was absent when the trainer restarted",
    "<arm>.events, .curve, .final": "start/kill/exit log, loss curve, the last run report",
    "<arm>.not_run": "why the arm did not run (only local_replica, without a server)",
    "same_final_weights": "every arm that ran ended with the same weights (exact resume)",
}


def _cell(value: Any, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def _replica_line(rep: dict[str, Any]) -> str:
    if not rep["run"]:
        return str(rep.get("reason", "not run"))
    every = "every mirror" if rep["every"] == 1 else f"one mirror in {rep['every']}"
    return f"{rep['server']}; it receives a copy of {every}."


def _place(event: dict[str, Any]) -> str:
    if "slot" in event:
        return f"slot {event['slot']} ({event['at_s']:g} s)"
    return f"after {event['after_executed']} executed + {event['fraction']:.2f} of an iteration"


def _met(losses: list[dict[str, Any]]) -> str:
    """``2`` or ``2 (1 after finishing)``: the scheduled losses an arm met."""
    late = sum(1 for loss in losses if not loss.get("hit", True))
    return f"{len(losses)}" + (f" ({late} after finishing)" if late else "")


def markdown(doc: dict[str, Any], title: str, setup: str) -> str:
    """The comparison table, what survived a VM loss, and the results.json keys."""
    res = doc["result"]
    lines = [
        f"# {title} --vm-loss",
        "",
        setup,
        "",
        "At each interruption the VM is lost: every *local* backend instance of the run (by the "
        "backend class's locality) and its state directory are deleted, then the trainer "
        "restarts. The owner's encrypted data file survives (the owner's input, e.g. on object "
        "storage), and so does the simulated platform location (`PLINIUS_PLATFORM_DIR`: fuse key "
        "and freshness counters). Keeping it stands in for a counter service that outlives the "
        "VM: on a real cloud a new VM is a new CPU.",
        "",
        f"Replica: {_replica_line(res['replica'])}",
        "",
        "Loss schedule (the same for every arm): "
        + ("; ".join(_place(e) for e in res.get("loss_schedule", [])) or "none")
        + ".",
        "",
        "| arm | VM losses | starts | restarts | iterations executed | iterations lost | "
        "wall s | cost USD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in VM_RUNS:
        r = res[run]
        if "not_run" in r:
            lines.append(f"| {TITLES[run]} | NOT RUN: {r['not_run']} | | | | | | |")
            continue
        restarts = sorted({loss.get("restart", "") for loss in r["vm_losses"]} - {""})
        lines.append(
            f"| {TITLES[run]} | {_met(r['vm_losses'])} | {r['starts']} | "
            f"{'; '.join(restarts) or '—'} | {r['iterations_executed']} | "
            f"{_cell(r['iterations_lost'])} | {r['wall_s']:.1f} | {r['cost_usd']:.5f} |"
        )
    ran = [r for r in VM_RUNS if "not_run" not in res[r]]
    gone = all(res[r]["deleted_gone_at_restart"] for r in ran)
    unfinished = [TITLES[r] for r in ran if not res[r].get("finished", True)]
    lines += [
        "",
        f"Deleted instances absent at every restart: **{'yes' if gone else 'NO'}**. "
        f"Every arm met the same scheduled losses: "
        f"**{'yes' if res.get('same_losses') else 'NO'}**. "
        f"Same final weights in every arm that ran: "
        f"**{'yes' if res['same_final_weights'] else 'NO'}**.",
        *(
            [
                "",
                f"**Partial results**: {', '.join(unfinished)} did not finish within the "
                "replayed window (a longer --window replays more).",
            ]
            if unfinished
            else []
        ),
        "",
        "## results.json keys",
        "",
        *[f"- `{k}`: {v}" for k, v in KEYS.items()],
    ]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path, title: str) -> None:
    """(a) model iteration against iterations executed, (b) iterations lost, (c) cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["result"]
    ran = [r for r in VM_RUNS if "not_run" not in res[r]]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2))
    for run in ran:
        it = res[run]["curve"]["iteration"]
        a.plot(range(1, len(it) + 1), it, color=COLORS[run], label=TITLES[run], lw=1.2)
    a.set(
        title="(a) progress (a fall: a VM loss undid work)",
        xlabel="iterations executed",
        ylabel="model iteration",
    )
    a.legend()
    names = [TITLES[r] for r in VM_RUNS]
    colors = [COLORS[r] for r in VM_RUNS]
    lost = [res[r].get("iterations_lost") or 0 for r in VM_RUNS]
    cost = [res[r].get("cost_usd", 0.0) for r in VM_RUNS]
    b.bar(names, lost, color=colors)
    c.bar(names, cost, color=colors)
    for ax, values in ((b, lost), (c, cost)):
        for i, run in enumerate(VM_RUNS):
            label = "not run" if "not_run" in res[run] else f"{values[i]:.4g}"
            ax.annotate(label, (i, values[i]), ha="center", va="bottom")
        ax.tick_params(axis="x", labelsize=8)
    b.set(title="(b) iterations lost", ylabel="iterations")
    c.set(title="(c) cost on the paper's trace", ylabel="USD")
    fig.suptitle(f"{title} --vm-loss: local only vs local + replica vs no mirror")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
