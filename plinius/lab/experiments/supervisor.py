"""Start, watch, SIGKILL and restart real trainer processes: the crash and spot experiments.

The trainer is ``plinius train`` in a child process appending one row per iteration to a CSV
loss log; the supervisor reads that log to know where the child is, kills it with SIGKILL (no
chance to clean up, as a crash or a reclaimed spot instance) and starts it again. Every start,
kill and exit is logged with its timestamp.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.core.errors import PliniusError


class TrainerFailed(PliniusError):
    """The trainer process exited with an error instead of finishing or being killed."""


@dataclass
class Event:
    t: float  # seconds since the experiment started
    kind: str  # start | kill | exit
    iteration: int  # last iteration in the log at that moment
    detail: str = ""


@dataclass
class RunSpec:
    """One trainer configuration the supervisor starts again and again."""

    model: str
    backend: str
    key_file: str
    iterations: int
    data: str | None
    mirror: bool
    seed: int = 0
    mirror_every: int = 1
    state_dir: str | None = None
    extra: list[str] = field(default_factory=list)
    #: the simulated CPU of this run (None: the user's); experiments use a throw-away one
    platform_dir: str | None = None
    #: ``--replica`` specs: copies of the mirror elsewhere (the VM-loss experiments)
    replicas: list[str] = field(default_factory=list)
    replica_every: int = 1

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.platform_dir:
            env["PLINIUS_PLATFORM_DIR"] = self.platform_dir
        return env

    def argv(self, log: Path, report: Path, fresh: bool) -> list[str]:
        args = [
            sys.executable, "-P", "-m", "plinius.cli.main", "train",
            "--model", self.model, "--backend", self.backend, "--key-file", self.key_file,
            "--iterations", str(self.iterations), "--seed", str(self.seed),
            "--mirror-every", str(self.mirror_every), "--log", str(log),
            "--report", str(report), "--json",
        ]  # fmt: skip
        if self.data:
            args += ["--data", self.data]
        if self.state_dir:
            args += ["--state-dir", self.state_dir]
        if not self.mirror:
            args.append("--no-mirror")
        if fresh:
            args.append("--fresh")
        for replica in self.replicas:
            args += ["--replica", replica]
        if self.replicas:
            args += ["--replica-every", str(self.replica_every)]
        return args + self.extra


@dataclass
class ExperimentOptions:
    """What every experiment's trainer runs share."""

    model: str = "batch"
    backend: str = DEFAULT_SCRATCH
    key_file: str = ""
    iterations: int = 500
    seed: int = 0
    data: str | None = None
    state_dir: str | None = None
    platform_dir: str | None = None

    def run_spec(self, backend_spec: str, mirror: bool) -> RunSpec:
        return RunSpec(
            model=self.model,
            backend=backend_spec,
            key_file=self.key_file,
            iterations=self.iterations,
            data=self.data,
            mirror=mirror,
            seed=self.seed,
            state_dir=self.state_dir,
            platform_dir=self.platform_dir,
        )


def read_log(path: Path) -> list[dict[str, float]]:
    """Rows of a CSV loss log (a half-written last line, left by a kill, is skipped)."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items()})
            except (TypeError, ValueError):
                continue
    return rows


class Supervisor:
    """Runs one trainer configuration as a sequence of processes."""

    def __init__(self, spec: RunSpec, workdir: Path, t0: float | None = None) -> None:
        self.spec = spec
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "loss.csv"
        self.report = self.dir / "report.json"
        self.t0 = time.monotonic() if t0 is None else t0
        self.events: list[Event] = []
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        self._rows_seen = 0
        self.executed = 0  # iterations run by all processes together
        self.finished = False  # the run reached its target: final, never restarted
        self.kills_after: list[int] = []  # executed iterations at each kill, as logged

    def now(self) -> float:
        return time.monotonic() - self.t0

    def last_iteration(self) -> int:
        rows = read_log(self.log)
        new = rows[self._rows_seen :]
        self.executed += len(new)
        self._rows_seen = len(rows)
        return int(rows[-1]["iteration"]) if rows else 0

    def start(self, fresh: bool | None = None) -> None:
        """Start (or restart) the trainer unless it runs, or the run already finished.

        A trainer that exited by itself since the last look (say, right at a slot boundary)
        is collected first: a finished run is final and is never started again. ``fresh``:
        pass ``--fresh`` (default: on the first start only).
        """
        if self.finished:
            return
        if self.proc is not None and self.proc.poll() is not None and self.poll_exit():
            return
        if self.running():
            return
        if fresh is None:
            fresh = self.starts == 0
        self.proc = subprocess.Popen(
            self.spec.argv(self.log, self.report, fresh),
            env=self.spec.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.starts += 1
        self.events.append(
            Event(self.now(), "start", self.last_iteration(), f"pid {self.proc.pid}")
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, why: str) -> bool:
        """SIGKILL the running trainer; False when it had already exited by itself."""
        if not self.running():
            if self.proc is not None:
                self.poll_exit()  # it ended by itself: record that exit, never lose it
            return False
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait()
        if code != -signal.SIGKILL:  # it exited on its own just before the signal
            self.proc.returncode = code
            self.poll_exit()
            return False
        it = self.last_iteration()
        self.kills_after.append(self.executed)
        self.events.append(Event(self.now(), "kill", it, why))
        self.proc = None
        return True

    def poll_exit(self) -> bool:
        """True once the trainer exited by itself having finished; raises if it failed."""
        if self.finished:
            return True
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.proc = None
        it = self.last_iteration()
        self.events.append(Event(self.now(), "exit", it, f"code {code}"))
        if code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {code}"
            raise TrainerFailed(f"the trainer failed ({self.spec.backend}): {last}")
        self.finished = True
        return True

    def final_report(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.report.read_text()))
        except (OSError, ValueError):
            return {}

    def summary(self) -> dict[str, Any]:
        return {
            "starts": self.starts,
            "kills": sum(e.kind == "kill" for e in self.events),
            "kills_after": list(self.kills_after),
            "iterations_executed": self.executed,
            "events": [asdict(e) for e in self.events],
            "wall_s": self.now(),
            "final": self.final_report(),
        }

    def stop(self) -> None:
        if self.running():
            self.kill("experiment stopped")


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
