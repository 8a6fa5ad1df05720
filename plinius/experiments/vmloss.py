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
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from plinius.backends.redis_server import INSTALL_HINT, RedisServer
from plinius.backends.registry import backend_class, open_backend, parse_spec
from plinius.errors import PliniusError
from plinius.experiments.placement import delete_instances, local_instances
from plinius.experiments.supervisor import ExperimentOptions, RunSpec, Supervisor

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


def run_arms(
    opts: ExperimentOptions,
    specs: dict[str, str],
    workdir: Path,
    target: ReplicaTarget,
    every: int,
    drive: Callable[[VmSupervisor], dict[str, Any]],
) -> dict[str, Any]:
    """Each arm through ``drive`` (kills at marks, or a spot trace); "not run" and why for the
    replica arm without a server; whether every deleted instance was gone at each restart."""
    out: dict[str, Any] = {
        "vm_loss": True,
        "runs": list(VM_RUNS),
        "replica": {"server": target.server, "every": every, "run": target.spec is not None},
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
    return out
