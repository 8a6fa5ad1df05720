"""Whether the machine was shared while the rounds ran, found out before and during the run.

A benchmark on a noisy VM is only as good as the quiet it had. Before the rounds and after every
round, :class:`Watch` samples three signs of contention: the load average against the cores,
the CPU time the hypervisor stole, and a fixed CPU probe (hashing the same buffer) whose time
grows when something else takes the cores. The save samples' own spread is *not* a sign: a disk
with fsync spreads on a quiet machine. When contended, the rounds go on (up to a bound and a time
budget) so the intervals can still separate; the report says so at the top.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from plinius.lab.reporting.provenance import cpu_times, load_average, steal_since

#: the probe hashes this many bytes (a few ms): long enough to time, short beside a round
PROBE_BYTES = 4 << 20
#: a probe this much slower than the fastest one seen means the cores were busy
PROBE_SLOWDOWN = 1.5
#: the load the benchmark itself adds while it runs (its engine keeps the cores busy), beyond
#: which the load average during the rounds says someone else is running too
OWN_LOAD = 1.0
#: more than this fraction of CPU time stolen by the hypervisor
STEAL_LIMIT = 0.05


@dataclass
class Watch:
    """Samples of load, steal and a CPU probe, one per round (and one before the first)."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    loads: list[float] = field(default_factory=list)
    probe_s: list[float] = field(default_factory=list)
    _cpu0: list[int] | None = None
    _buf: bytes = b""

    def sample(self) -> None:
        """One look at the machine: the 1-minute load and the time of one probe."""
        if self._cpu0 is None:
            self._cpu0 = cpu_times()
        if not self._buf:
            self._buf = bytes(PROBE_BYTES)
        load = load_average()
        if load:
            self.loads.append(load[0])
        t0 = time.perf_counter()
        hashlib.sha256(self._buf).digest()
        self.probe_s.append(time.perf_counter() - t0)

    def steal(self) -> float | None:
        """The fraction of CPU time stolen since the first sample (None: not exposed)."""
        return steal_since(self._cpu0)

    def slowdown(self) -> float | None:
        """The median probe over the fastest one: 1.0 on a quiet machine."""
        if len(self.probe_s) < 2 or min(self.probe_s) <= 0:
            return None
        return statistics.median(self.probe_s) / min(self.probe_s)

    def reasons(self) -> list[str]:
        """Why the figures may be noisy, one phrase each; empty when the machine was quiet."""
        why = []
        # during the rounds the benchmark's own threads count in the load (up to a core each)
        if self.loads and max(self.loads) > self.cores + OWN_LOAD:
            why.append(f"load average up to {max(self.loads):.1f} on {self.cores} cores")
        steal = self.steal()
        if steal is not None and steal > STEAL_LIMIT:
            why.append(f"CPU steal {steal:.0%}")
        slow = self.slowdown()
        if slow is not None and slow > PROBE_SLOWDOWN:
            why.append(f"a fixed CPU probe ran {slow:.1f}× slower than its fastest (median)")
        return why

    def as_json(self) -> dict[str, Any]:
        steal, slow = self.steal(), self.slowdown()
        return {
            "load_max": max(self.loads) if self.loads else None,
            "steal_during": None if steal is None else round(steal, 4),
            "probe_ms": [round(s * 1e3, 3) for s in self.probe_s],
            "probe_slowdown": None if slow is None else round(slow, 3),
            "contended": bool(self.reasons()),
            "reasons": self.reasons(),
        }


@dataclass(frozen=True)
class Extension:
    """How far the rounds of one workload may go on while the machine is contended: up to
    ``max_rounds`` in all, and only while another round fits before ``deadline``
    (``time.monotonic()``; None: no deadline)."""

    max_rounds: int
    deadline: float | None = None

    def more(self, watch: Watch, done: int, started: float) -> bool:
        """Whether to run one more round after ``done`` rounds begun at ``started``."""
        if done >= self.max_rounds or not watch.reasons():
            return False
        if self.deadline is None:
            return True
        per_round = (time.monotonic() - started) / max(done, 1)
        return time.monotonic() + per_round <= self.deadline
