"""``--vm-loss``: every interruption reclaims the whole VM, not only the trainer process.

At each kill the run's *local* backend instances (the backend class's ``locality``) and its
state directory (sealed keys: the VM's disk) are deleted before the trainer restarts; what is
off the machine stays: a replica server, the owner's encrypted data file (the owner's input, on
object storage) and the platform location (``PLINIUS_PLATFORM_DIR``: fuse key and freshness
counters). Keeping the platform stands in for a counter service that outlives the VM: on a real
cloud a new VM is a new CPU, and its counters would have to come from such a service.

Three arms: *local only* (the mirror dies with the VM: each restart is ``--fresh``, from
scratch), *local + replica* (``--replica`` on a Redis server outside the VM: each restart
restores from it) and the *non-resilient* baseline (no mirror at all).

The arms are paired: one *loss schedule* is drawn before any arm runs (``plinius spot``: the
slots of the replayed window where the price rises above the bid; ``plinius crash-test``: the
seeded kill marks, each with one seeded moment inside the next iteration) and every arm replays
all of it, so their costs compare like for like. Each arm records one entry per scheduled loss,
in order (``VmSupervisor.lose``): the loss met a running trainer (``hit``: it was killed and
the VM's local state deleted) or came after the arm had finished (recorded, nothing lost). An
arm that trains faster is never credited with fewer losses drawn.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import secrets
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from plinius.backends.redis_server import INSTALL_HINT, RedisServer
from plinius.backends.registry import backend_class, open_backend, parse_spec
from plinius.core.errors import PliniusError
from plinius.lab.experiments.placement import delete_instances, local_instances
from plinius.lab.experiments.supervisor import (
    ExperimentOptions,
    RunSpec,
    Supervisor,
    read_log,
    wait_until,
)

VM_RUNS = ("local_only", "local_replica", "nonresilient")
TITLES = {
    "local_only": "local only",
    "local_replica": "local + replica",
    "nonresilient": "non-resilient (no mirror)",
}
COLORS = {"local_only": "tab:orange", "local_replica": "tab:blue", "nonresilient": "tab:gray"}


@dataclass
class ReplicaTarget:
    """Where the replica arm copies its mirrors, or why that arm did not run."""

    spec: str | None  # None: the arm is not run
    server: str  # what it ran on, for the report (never a password: specs carry none)
    reason: str = ""


def _with_prefix(spec: str, tag: str) -> str:
    """``spec`` with a key prefix of its own, so a shared server's other data is never read."""
    name, location, options = parse_spec(spec)
    sep = "://" if spec[len(name) :].startswith("://") else ":"
    options["prefix"] = f"{options.get('prefix', 'plinius')}-vmloss-{tag}"
    return f"{name}{sep}{location}?{urlencode(options)}"


def _clear(spec: str) -> None:
    """Remove this experiment's copies from a server the user gave (best effort; the empty
    prefix keeps the backend's marker)."""
    with contextlib.suppress(PliniusError, OSError):
        backend = open_backend(spec)
        try:
            for blob in backend.blobs():
                backend.delete(blob)
        finally:
            backend.close()


@contextmanager
def replica_target(given: str | None) -> Iterator[ReplicaTarget]:
    """The given ``--replica`` server (under a key prefix of this experiment's own), else a
    ``redis-server`` started here in a temporary directory outside the VM's state, with AOF
    ``appendfsync always``; "not run" and the install hint when there is none."""
    tag = secrets.token_hex(4)
    if given:
        spec = _with_prefix(given, tag)
        try:
            yield ReplicaTarget(spec, f"given: {parse_spec(given)[1]}")
        finally:
            _clear(spec)
        return
    try:
        # killed with the experiment: an interrupted run leaves no server behind
        server = RedisServer(appendonly=True, appendfsync="always", die_with_parent=True)
    except PliniusError as exc:  # not installed: the install hint
        yield ReplicaTarget(None, "", f"not run: {exc}")
        return
    try:
        server.start()
    except (PliniusError, OSError) as exc:  # found but not startable
        server.close()
        yield ReplicaTarget(None, "", f"not run: cannot start redis-server ({exc}): {INSTALL_HINT}")
        return
    try:
        yield ReplicaTarget(
            f"{server.url}?prefix=plinius-vmloss-{tag}",
            f"redis-server started here on {server.host}:{server.port} (loopback, AOF "
            "appendfsync always, a temporary directory outside the VM state)",
        )
    finally:
        server.close()


def has_copy(specs: list[str]) -> bool:
    """True when an off-machine instance among ``specs`` holds a blob (a mirror survived)."""
    for spec in specs:
        if backend_class(parse_spec(spec)[0]).locality == "local":
            continue
        with contextlib.suppress(PliniusError, OSError):
            backend = open_backend(spec)
            try:
                if backend.blobs():
                    return True
            finally:
                backend.close()
    return False


class VmSupervisor(Supervisor):
    """A supervisor whose kills are VM losses: after each, the run's local instances and its
    state directory are deleted; a restart is ``--fresh`` unless an off-machine copy survived."""

    def __init__(self, spec: RunSpec, workdir: Path, t0: float | None = None) -> None:
        super().__init__(spec, workdir, t0)
        self.losses: list[dict[str, Any]] = []
        self._lost = False

    def kill(self, why: str) -> bool:
        if not super().kill(why):
            return False
        paths = local_instances([self.spec.backend, *self.spec.replicas])
        delete_instances(paths)
        if self.spec.state_dir:
            shutil.rmtree(self.spec.state_dir, ignore_errors=True)
        self.losses.append(
            {
                "t": self.now(),
                "iteration": self.events[-1].iteration,
                "executed": self.executed,
                "deleted": [str(p) for p in paths],
            }
        )
        self._lost = True
        return True

    def lose(self, event: Mapping[str, Any]) -> bool:
        """The scheduled VM loss ``event`` (its ``index`` and place in the shared schedule): a
        running trainer is killed and the VM's local state deleted (True); an arm that had
        already finished records the event, nothing deleted or restarted (False). Every
        scheduled loss becomes exactly one entry of ``losses``, so every arm lists the same."""
        if self.kill(f"VM loss {event['index']}"):
            self.losses[-1] = {**event, "hit": True, **self.losses[-1]}
            return True
        self.losses.append(
            {
                **event,
                "hit": False,
                "t": self.now(),
                "iteration": self.last_iteration(),
                "executed": self.executed,
                "deleted": [],
                "restart": "none: the run had finished"
                if self.finished
                else "none: no trainer was running",
            }
        )
        return False

    def start(self, fresh: bool | None = None) -> None:
        if self._lost and not self.finished and not self.running():
            loss = self.losses[-1]
            loss["gone_at_restart"] = all(not Path(p).exists() for p in loss["deleted"])
            if fresh is None and self.spec.mirror:
                fresh = not has_copy(self.spec.replicas)
            loss["restart"] = (
                "no mirror"
                if not self.spec.mirror
                else ("from scratch (--fresh)" if fresh else "restore from a replica")
            )
            self._lost = False
        super().start(fresh)

    def stop(self) -> None:
        if self.running():
            Supervisor.kill(self, "experiment stopped")  # the end of the run is no VM loss

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["vm_losses"] = self.losses
        return out


def arm_spec(
    opts: ExperimentOptions, run: str, backend: str, replica: str | None, every: int
) -> RunSpec:
    """The trainer configuration of one arm, with a state directory of its own (the VM's)."""
    spec = opts.run_spec(backend, run != "nonresilient")
    if opts.state_dir:  # never the user's own state directory: it would be wiped at each loss
        spec = replace(spec, state_dir=str(Path(opts.state_dir) / run))
    if run == "local_replica" and replica:
        spec = replace(spec, replicas=[replica], replica_every=every)
    return spec


def billed_seconds(events: list[dict[str, Any]]) -> float:
    """Seconds the instance was up: from each start to the kill or exit that ended it."""
    total, since = 0.0, None
    for e in events:
        if e["kind"] == "start":
            since = e["t"]
        elif since is not None:
            total += e["t"] - since
            since = None
    return total


def same_losses(schedule: Sequence[Mapping[str, Any]], arms: Mapping[str, Any]) -> bool:
    """True when every arm that ran lists every scheduled loss, in order, at its place."""
    for arm in arms.values():
        if "not_run" in arm:
            continue
        met = arm["vm_losses"]
        if len(met) != len(schedule):
            return False
        for event, loss in zip(schedule, met, strict=True):
            if any(loss.get(k) != v for k, v in event.items()):
                return False
    return True


def mark_schedule(marks: Sequence[int], seed: int) -> list[dict[str, Any]]:
    """``crash-test --vm-loss``'s loss schedule, drawn once for every arm: loss k after
    ``marks[k]`` executed iterations, ``fraction`` of the way into the next iteration (seeded)."""
    rng = random.Random(seed + 1)
    return [
        {"index": k, "after_executed": int(m), "fraction": round(rng.random(), 4)}
        for k, m in enumerate(marks)
    ]


def iteration_seconds(sup: Supervisor, last: int = 8) -> float:
    """The arm's current time per iteration, from its trainer's own log timestamps (0: none
    yet)."""
    rows = read_log(sup.log)[-last:]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(rows) if a["pid"] == b["pid"]]
    return max(0.0, statistics.median(gaps)) if gaps else 0.0


def drive_marks(
    sup: VmSupervisor,
    schedule: Sequence[Mapping[str, Any]],
    deadline: float,
    tick: Callable[[str, int], None],
) -> None:
    """Every loss of a ``mark_schedule``: once the arm has executed ``after_executed``
    iterations (and its restarted trainer at least one), ``fraction`` of one of its iterations
    later; the trainer restarts at once. Then the run to its end."""
    sup.start()
    for event in schedule:
        mark = max(int(event["after_executed"]), sup.executed + 1)

        def reached(mark: int = mark) -> bool:
            sup.last_iteration()
            return sup.executed >= mark or not sup.running()

        if not wait_until(reached, deadline - time.monotonic(), 0.002):
            raise TimeoutError(f"{sup.spec.backend}: no progress to iteration {mark}")
        if sup.running():
            time.sleep(float(event["fraction"]) * min(iteration_seconds(sup), 1.0))
        if sup.lose(event):
            tick("kill", int(sup.losses[-1]["iteration"]))
            sup.start()
    if not wait_until(sup.poll_exit, deadline - time.monotonic(), 0.05):
        raise TimeoutError(f"{sup.spec.backend}: the run did not finish in time")
    sup.last_iteration()


def run_mark_arms(
    opts: ExperimentOptions,
    specs: dict[str, str],
    workdir: Path,
    target: ReplicaTarget,
    every: int,
    marks: Sequence[int],
    price_per_hour: float,
    summarize: Callable[[VmSupervisor], dict[str, Any]],
    timeout_s: float,
    tick: Callable[[str, int], None] = lambda kind, it: None,
) -> dict[str, Any]:
    """``crash-test --vm-loss``: one ``mark_schedule`` of ``marks`` replayed by every arm; the
    cost bills each arm's up-time at ``price_per_hour`` (the paper trace's mean paid price)."""
    schedule = mark_schedule(marks, opts.seed)
    deadline = time.monotonic() + timeout_s

    def drive(sup: VmSupervisor) -> dict[str, Any]:
        try:
            drive_marks(sup, schedule, deadline, tick)
        finally:
            sup.stop()
        summary = summarize(sup)
        summary["iterations_lost"] = summary["iterations_executed"] - opts.iterations
        summary["billed_s"] = billed_seconds(summary["events"])
        summary["cost_usd"] = summary["billed_s"] * price_per_hour / 3600
        summary["finished"] = sup.finished
        return summary

    out = run_arms(opts, specs, workdir, target, every, drive, schedule)
    out["kill_marks"] = list(marks)
    out["price_usd_per_hour"] = price_per_hour
    return out


def run_arms(
    opts: ExperimentOptions,
    specs: dict[str, str],
    workdir: Path,
    target: ReplicaTarget,
    every: int,
    drive: Callable[[VmSupervisor], dict[str, Any]],
    schedule: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Each arm through ``drive``, which replays the shared loss ``schedule`` (kills at marks,
    or a spot trace's window); "not run" and why for the replica arm without a server; whether
    every deleted instance was gone at each restart; the schedule, and whether every arm met
    all of it (``same_losses``)."""
    out: dict[str, Any] = {
        "vm_loss": True,
        "runs": list(VM_RUNS),
        "replica": {"server": target.server, "every": every, "run": target.spec is not None},
        "loss_schedule": [dict(e) for e in schedule],
    }
    if target.spec is None:
        out["replica"]["reason"] = target.reason
    for run in VM_RUNS:
        if run == "local_replica" and target.spec is None:
            out[run] = {"not_run": target.reason}
            continue
        sup = VmSupervisor(arm_spec(opts, run, specs[run], target.spec, every), workdir / run)
        summary = drive(sup)
        summary["backend"] = specs[run]
        summary["deleted_gone_at_restart"] = all(
            loss.get("gone_at_restart", True) for loss in summary["vm_losses"]
        )
        out[run] = summary
    ran = [out[r] for r in VM_RUNS if "not_run" not in out[r]]
    shas = {r["final"].get("weights_sha256") for r in ran}
    out["same_final_weights"] = len(shas) == 1 and None not in shas
    out["same_losses"] = same_losses(schedule, {r: out[r] for r in VM_RUNS})
    return out
